//! CPUs, NUMA nodes and the shard ↔ CPU ↔ node map.
//!
//! This module is plain `std` (no glommio, no sysfs crate): it is compiled in every build, the
//! loom build included. It answers three questions:
//!
//! 1. **What does the machine look like?** [`Topology::detect`] reads
//!    `/sys/devices/system/node/node*/cpulist` and `.../distance` (falling back to one node holding
//!    the online CPUs, then to `available_parallelism`). [`Topology::from_nodes`] builds one by hand,
//!    which is how the tests describe made-up machines.
//! 2. **Where does each shard run?** [`Topology::place`] turns a [`Placement`] (all cores, an
//!    explicit CPU list, or the CPUs of chosen NUMA nodes) into a [`ShardMap`]: shard `i` runs on
//!    CPU `map.cpu(i)`, which belongs to NUMA node `map.node(i)`.
//! 3. **Whom does a shard steal from?** [`ShardMap::steal_order`] lists, for every shard, the other
//!    shards nearest first (same node, then by node distance). Feed it to the pool's
//!    `Config::steal_order`.
//!
//! ```
//! use shardpool::topology::{Placement, Topology};
//!
//! // Two nodes of two CPUs each, made up by hand.
//! let topo = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
//! let map = topo.place(&Placement::AllCores, None).unwrap();
//! assert_eq!(map.len(), 4);
//! assert_eq!(map.node(2), 1);
//! // Shard 0 steals from shard 1 (same node) before shards 2 and 3.
//! assert_eq!(map.steal_order()[0], vec![1, 2, 3]);
//! ```

mod cpulist;
mod detect;
mod error;
mod place;

pub use cpulist::{format_cpu_list, parse_cpu_list};
pub use error::TopologyError;
pub use place::{Placement, ShardMap, ShardPlace};

use std::collections::{BTreeMap, BTreeSet};

/// Distance the kernel reports between a node and itself (`/sys/.../distance`, ACPI SLIT).
pub const LOCAL_DISTANCE: u32 = 10;
/// Distance assumed between two different nodes when the machine does not say.
pub const REMOTE_DISTANCE: u32 = 20;

/// One NUMA node: its id (as the kernel numbers it) and its online CPUs, ascending.
///
/// ```
/// # use shardpool::topology::{Node, Topology};
/// let topo = Topology::from_nodes(vec![(3, vec![5, 4])]).unwrap();
/// assert_eq!(topo.nodes(), [Node { id: 3, cpus: vec![4, 5] }]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Kernel node id (`nodeN`); ids may have gaps.
    pub id: usize,
    /// Online CPUs of this node, ascending, no duplicates.
    pub cpus: Vec<usize>,
}

/// The machine: NUMA nodes, their CPUs, and the distances between nodes.
///
/// Invariant: every CPU belongs to exactly one node; node ids are unique; every node has at
/// least one CPU.
///
/// ```
/// use shardpool::topology::{Placement, Topology};
///
/// // This machine, as sysfs describes it (one node holding every CPU without NUMA).
/// let here = Topology::detect();
/// assert!(!here.cpus().is_empty());
/// // A made-up one: two nodes of two CPUs; shards placed on node 1 only.
/// let topo = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
/// let map = topo.place(&Placement::Nodes(vec![1]), None).unwrap();
/// assert_eq!((map.len(), map.cpu(0), map.node(1)), (2, 2, 1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    /// `distances[(a, b)]` for node ids a, b; missing pairs use [`LOCAL_DISTANCE`] /
    /// [`REMOTE_DISTANCE`].
    distances: BTreeMap<(usize, usize), u32>,
}

impl Topology {
    /// Builds a topology from `(node id, cpus)` pairs. Distances default to
    /// [`LOCAL_DISTANCE`] within a node and [`REMOTE_DISTANCE`] across nodes; set others with
    /// [`Topology::with_distance`].
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
    /// assert_eq!(topo.node_of(3), Some(1));
    /// assert_eq!(topo.distance(0, 1), 20);
    /// ```
    pub fn from_nodes(nodes: Vec<(usize, Vec<usize>)>) -> Result<Topology, TopologyError> {
        let mut seen_cpus = BTreeSet::new();
        let mut seen_nodes = BTreeSet::new();
        let mut out = Vec::with_capacity(nodes.len());
        for (id, mut cpus) in nodes {
            if !seen_nodes.insert(id) {
                return Err(TopologyError::DuplicateNode(id));
            }
            if cpus.is_empty() {
                return Err(TopologyError::EmptyNode(id));
            }
            for &cpu in &cpus {
                if !seen_cpus.insert(cpu) {
                    return Err(TopologyError::DuplicateCpu(cpu));
                }
            }
            cpus.sort_unstable();
            out.push(Node { id, cpus });
        }
        if out.is_empty() {
            return Err(TopologyError::NoCpus);
        }
        out.sort_by_key(|n| n.id);
        Ok(Topology {
            nodes: out,
            distances: BTreeMap::new(),
        })
    }

    /// Sets the distance between nodes `a` and `b` (both directions).
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(0, vec![0]), (1, vec![1]), (2, vec![2])])
    ///     .unwrap()
    ///     .with_distance(0, 2, 12);
    /// assert_eq!(topo.distance(2, 0), 12);
    /// ```
    #[must_use]
    pub fn with_distance(mut self, a: usize, b: usize, distance: u32) -> Topology {
        self.distances.insert((a, b), distance);
        self.distances.insert((b, a), distance);
        self
    }

    /// The NUMA nodes, by ascending id.
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(1, vec![2, 3]), (0, vec![1, 0])]).unwrap();
    /// assert_eq!(topo.nodes()[0].id, 0);
    /// assert_eq!(topo.nodes()[0].cpus, vec![0, 1]);
    /// assert_eq!(topo.cpus(), vec![0, 1, 2, 3]);
    /// assert_eq!((topo.node_of(2), topo.node_of(9)), (Some(1), None));
    /// assert_eq!((topo.distance(1, 1), topo.distance(0, 1)), (10, 20));
    /// ```
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All CPUs, ascending.
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(1, vec![2, 3]), (0, vec![1, 0])]).unwrap();
    /// assert_eq!(topo.nodes()[0].id, 0);
    /// assert_eq!(topo.nodes()[0].cpus, vec![0, 1]);
    /// assert_eq!(topo.cpus(), vec![0, 1, 2, 3]);
    /// assert_eq!((topo.node_of(2), topo.node_of(9)), (Some(1), None));
    /// assert_eq!((topo.distance(1, 1), topo.distance(0, 1)), (10, 20));
    /// ```
    pub fn cpus(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self
            .nodes
            .iter()
            .flat_map(|n| n.cpus.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }

    /// The node a CPU belongs to, or `None` for an unknown CPU.
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(1, vec![2, 3]), (0, vec![1, 0])]).unwrap();
    /// assert_eq!(topo.nodes()[0].id, 0);
    /// assert_eq!(topo.nodes()[0].cpus, vec![0, 1]);
    /// assert_eq!(topo.cpus(), vec![0, 1, 2, 3]);
    /// assert_eq!((topo.node_of(2), topo.node_of(9)), (Some(1), None));
    /// assert_eq!((topo.distance(1, 1), topo.distance(0, 1)), (10, 20));
    /// ```
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.id)
    }

    /// Distance between two nodes (10 = local, as in the kernel's SLIT numbers).
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(1, vec![2, 3]), (0, vec![1, 0])]).unwrap();
    /// assert_eq!(topo.nodes()[0].id, 0);
    /// assert_eq!(topo.nodes()[0].cpus, vec![0, 1]);
    /// assert_eq!(topo.cpus(), vec![0, 1, 2, 3]);
    /// assert_eq!((topo.node_of(2), topo.node_of(9)), (Some(1), None));
    /// assert_eq!((topo.distance(1, 1), topo.distance(0, 1)), (10, 20));
    /// ```
    pub fn distance(&self, a: usize, b: usize) -> u32 {
        match self.distances.get(&(a, b)) {
            Some(&d) => d,
            None if a == b => LOCAL_DISTANCE,
            None => REMOTE_DISTANCE,
        }
    }
}

/// Two NUMA nodes: CPUs 0-3 on node 0, 4-7 on node 1.
#[cfg(test)]
pub(crate) fn two_by_four() -> Topology {
    Topology::from_nodes(vec![(0, (0..4).collect()), (1, (4..8).collect())]).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_nodes_rejects_bad_descriptions() {
        assert_eq!(
            Topology::from_nodes(vec![(0, vec![0]), (1, vec![0])]),
            Err(TopologyError::DuplicateCpu(0))
        );
        assert_eq!(
            Topology::from_nodes(vec![(0, vec![0]), (0, vec![1])]),
            Err(TopologyError::DuplicateNode(0))
        );
        assert_eq!(
            Topology::from_nodes(vec![(0, vec![])]),
            Err(TopologyError::EmptyNode(0))
        );
        assert_eq!(Topology::from_nodes(vec![]), Err(TopologyError::NoCpus));
    }
}
