//! Placing shards on CPUs (all cores, a CPU list, or NUMA nodes) and the shard map with each
//! shard's steal order.

use super::{Topology, TopologyError, format_cpu_list, parse_cpu_list};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

impl Topology {
    /// Places `shards` shards (default: one per CPU of the placement) on CPUs.
    ///
    /// CPUs are taken in the placement's order: ascending for [`Placement::AllCores`], as
    /// given for [`Placement::Cpus`], node by node (as given) and ascending within a node for
    /// [`Placement::Nodes`]. With fewer shards than CPUs the first ones are used. One shard per
    /// CPU: asking for more shards than CPUs is an error, not oversubscription.
    ///
    /// ```
    /// # use shardpool::topology::{Placement, Topology};
    /// let topo = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
    /// let map = topo.place(&Placement::Nodes(vec![1]), None).unwrap();
    /// assert_eq!((map.cpu(0), map.cpu(1)), (2, 3));
    /// assert!(topo.place(&Placement::Cpus(vec![7]), None).is_err());
    /// ```
    pub fn place(
        &self,
        placement: &Placement,
        shards: Option<usize>,
    ) -> Result<ShardMap, TopologyError> {
        let cpus: Vec<usize> = match placement {
            Placement::AllCores => self.cpus(),
            Placement::Cpus(list) => {
                let mut seen = BTreeSet::new();
                for &cpu in list {
                    if self.node_of(cpu).is_none() {
                        return Err(TopologyError::UnknownCpu {
                            cpu,
                            online: self.cpus(),
                        });
                    }
                    if !seen.insert(cpu) {
                        return Err(TopologyError::DuplicateCpu(cpu));
                    }
                }
                list.clone()
            }
            Placement::Nodes(ids) => {
                let mut out = Vec::new();
                let mut seen = BTreeSet::new();
                for &id in ids {
                    let Some(node) = self.nodes.iter().find(|n| n.id == id) else {
                        return Err(TopologyError::UnknownNode {
                            node: id,
                            nodes: self.nodes.iter().map(|n| n.id).collect(),
                        });
                    };
                    if !seen.insert(id) {
                        return Err(TopologyError::DuplicateNode(id));
                    }
                    out.extend_from_slice(&node.cpus);
                }
                out
            }
        };
        if cpus.is_empty() {
            return Err(TopologyError::NoCpus);
        }
        let n = shards.unwrap_or(cpus.len());
        if n == 0 {
            return Err(TopologyError::ZeroShards);
        }
        if n > cpus.len() {
            return Err(TopologyError::TooManyShards {
                shards: n,
                cpus: cpus.len(),
            });
        }
        let places = cpus[..n]
            .iter()
            .map(|&cpu| ShardPlace {
                cpu,
                // Every CPU of `cpus` was checked to be in a node above.
                node: self.node_of(cpu).unwrap_or(0),
            })
            .collect();
        Ok(ShardMap {
            places,
            topology: self.clone(),
        })
    }
}

/// Where shards run: all online cores, an explicit CPU list, or the CPUs of chosen NUMA nodes.
///
/// Parses from `all`, `cpus:0-3,8` or `nodes:0,1`.
///
/// ```
/// # use shardpool::topology::Placement;
/// assert_eq!("cpus:0-2,5".parse::<Placement>().unwrap(), Placement::Cpus(vec![0, 1, 2, 5]));
/// assert_eq!("nodes:1".parse::<Placement>().unwrap(), Placement::Nodes(vec![1]));
/// assert!("cores:1".parse::<Placement>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Placement {
    /// Every online CPU, ascending.
    #[default]
    AllCores,
    /// These CPUs, in this order (shard i on the i-th).
    Cpus(Vec<usize>),
    /// The CPUs of these NUMA nodes, node by node.
    Nodes(Vec<usize>),
}

impl FromStr for Placement {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Placement, TopologyError> {
        let s = s.trim();
        if s == "all" {
            return Ok(Placement::AllCores);
        }
        if let Some(list) = s.strip_prefix("cpus:") {
            return Ok(Placement::Cpus(parse_cpu_list(list)?));
        }
        if let Some(list) = s.strip_prefix("nodes:") {
            return Ok(Placement::Nodes(parse_cpu_list(list)?));
        }
        Err(TopologyError::Parse(format!(
            "placement `{s}` not understood; use `all`, `cpus:0-3,8` or `nodes:0,1`"
        )))
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::AllCores => write!(f, "all"),
            Placement::Cpus(c) => write!(f, "cpus:{}", format_cpu_list(c)),
            Placement::Nodes(n) => write!(f, "nodes:{}", format_cpu_list(n)),
        }
    }
}

/// Where one shard runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlace {
    /// The CPU the shard's executor is pinned to.
    pub cpu: usize,
    /// The NUMA node of that CPU.
    pub node: usize,
}

/// The shard ↔ CPU ↔ node map produced by [`Topology::place`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    places: Vec<ShardPlace>,
    topology: Topology,
}

impl ShardMap {
    /// Number of shards.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// Always false: a map has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// CPU of shard `shard`. Panics if `shard >= len()` (a programming error).
    pub fn cpu(&self, shard: usize) -> usize {
        self.places[shard].cpu
    }

    /// NUMA node of shard `shard`. Panics if `shard >= len()`.
    pub fn node(&self, shard: usize) -> usize {
        self.places[shard].node
    }

    /// All places, indexed by shard.
    pub fn places(&self) -> &[ShardPlace] {
        &self.places
    }

    /// The topology the map was made from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// For every shard `s`, the other shards in the order `s` should steal from them: nearest
    /// NUMA node first (same node, then ascending node distance); among equally near shards,
    /// ring order starting after `s` (`s+1, s+2, …` wrapping), so that shards of one node do not
    /// all fall on the same victim first.
    ///
    /// ```
    /// # use shardpool::topology::{Placement, Topology};
    /// let topo = Topology::from_nodes(vec![(0, vec![0, 2]), (1, vec![1, 3])]).unwrap();
    /// let map = topo.place(&Placement::AllCores, None).unwrap(); // cpus 0,1,2,3
    /// assert_eq!(map.steal_order()[0], vec![2, 1, 3]);
    /// assert_eq!(map.steal_order()[3], vec![1, 0, 2]);
    /// ```
    pub fn steal_order(&self) -> Vec<Vec<usize>> {
        let n = self.places.len();
        (0..n)
            .map(|s| {
                let mut others: Vec<usize> = (0..n).filter(|&t| t != s).collect();
                others.sort_by_key(|&t| {
                    (
                        self.topology
                            .distance(self.places[s].node, self.places[t].node),
                        (t + n - s) % n,
                    )
                });
                others
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::two_by_four;

    #[test]
    fn steal_order_same_node_first() {
        let map = two_by_four().place(&Placement::AllCores, None).unwrap();
        let order = map.steal_order();
        assert_eq!(order.len(), 8);
        for (s, list) in order.iter().enumerate() {
            assert_eq!(list.len(), 7, "every other shard exactly once");
            assert!(!list.contains(&s));
            let same: Vec<usize> = list[..3].to_vec();
            assert!(
                same.iter().all(|&t| map.node(t) == map.node(s)),
                "shard {s}: first three victims {same:?} must be on its node"
            );
        }
        // Ring order within a node spreads first victims.
        assert_eq!(order[0], vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(order[2], vec![3, 0, 1, 4, 5, 6, 7]);
        assert_eq!(order[5], vec![6, 7, 4, 0, 1, 2, 3]);
    }

    #[test]
    fn steal_order_follows_distances() {
        // Four nodes in a line: 0 - 1 - 2 - 3, distance grows with hops.
        let mut topo =
            Topology::from_nodes((0..4).map(|n| (n, vec![n * 2, n * 2 + 1])).collect()).unwrap();
        for a in 0..4usize {
            for b in 0..4usize {
                if a != b {
                    topo = topo.with_distance(a, b, 10 + 6 * a.abs_diff(b) as u32);
                }
            }
        }
        let map = topo.place(&Placement::AllCores, None).unwrap();
        // Shard 2 (cpu 2, node 1): sibling 3, then node 0 and node 2 (distance 16), then node 3.
        let order = &map.steal_order()[2];
        assert_eq!(order[0], 3);
        let nodes: Vec<usize> = order.iter().map(|&t| map.node(t)).collect();
        let dists: Vec<u32> = nodes
            .iter()
            .map(|&n| map.topology().distance(1, n))
            .collect();
        assert!(
            dists.windows(2).all(|w| w[0] <= w[1]),
            "{dists:?} not ascending"
        );
        assert_eq!(&nodes[5..], &[3, 3]);
    }

    #[test]
    fn interleaved_cpus_and_sparse_nodes() {
        // Node ids with a gap, CPUs interleaved between nodes (common on 2-socket boxes).
        let topo = Topology::from_nodes(vec![(2, vec![1, 3]), (0, vec![0, 2])]).unwrap();
        assert_eq!(topo.nodes()[0].id, 0);
        let map = topo.place(&Placement::Cpus(vec![3, 0, 1]), None).unwrap();
        assert_eq!(
            map.places(),
            &[
                ShardPlace { cpu: 3, node: 2 },
                ShardPlace { cpu: 0, node: 0 },
                ShardPlace { cpu: 1, node: 2 },
            ]
        );
        assert_eq!(map.steal_order()[0], vec![2, 1]);
        assert_eq!(map.steal_order()[1], vec![2, 0]);
    }

    #[test]
    fn single_shard_has_nobody_to_steal_from() {
        let map = two_by_four().place(&Placement::AllCores, Some(1)).unwrap();
        assert_eq!(map.steal_order(), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn placement_by_nodes_and_errors() {
        let topo = two_by_four();
        let map = topo.place(&Placement::Nodes(vec![1, 0]), Some(5)).unwrap();
        let cpus: Vec<usize> = map.places().iter().map(|p| p.cpu).collect();
        assert_eq!(cpus, vec![4, 5, 6, 7, 0]);
        assert!(matches!(
            topo.place(&Placement::Nodes(vec![3]), None),
            Err(TopologyError::UnknownNode { node: 3, .. })
        ));
        assert!(matches!(
            topo.place(&Placement::Cpus(vec![1, 1]), None),
            Err(TopologyError::DuplicateCpu(1))
        ));
        assert!(matches!(
            topo.place(&Placement::AllCores, Some(9)),
            Err(TopologyError::TooManyShards { shards: 9, cpus: 8 })
        ));
        assert_eq!(
            topo.place(&Placement::AllCores, Some(0)),
            Err(TopologyError::ZeroShards)
        );
        let msg = topo
            .place(&Placement::Cpus(vec![42]), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("CPU 42") && msg.contains("0-7"), "{msg}");
    }
}
