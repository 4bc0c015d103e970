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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Distance the kernel reports between a node and itself (`/sys/.../distance`, ACPI SLIT).
pub const LOCAL_DISTANCE: u32 = 10;
/// Distance assumed between two different nodes when the machine does not say.
pub const REMOTE_DISTANCE: u32 = 20;

/// One NUMA node: its id (as the kernel numbers it) and its online CPUs, ascending.
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    /// `distances[(a, b)]` for node ids a, b; missing pairs use [`LOCAL_DISTANCE`] /
    /// [`REMOTE_DISTANCE`].
    distances: BTreeMap<(usize, usize), u32>,
}

/// Why a topology or a placement could not be built. The message names the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// The description has no CPU at all.
    NoCpus,
    /// A CPU appears twice (in one node or in two).
    DuplicateCpu(usize),
    /// A node id appears twice.
    DuplicateNode(usize),
    /// A node with no CPUs was given by hand.
    EmptyNode(usize),
    /// A placement names a CPU that is not online.
    UnknownCpu {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs that exist.
        online: Vec<usize>,
    },
    /// A placement names a node that does not exist.
    UnknownNode {
        /// The node asked for.
        node: usize,
        /// The nodes that exist.
        nodes: Vec<usize>,
    },
    /// Zero shards were asked for.
    ZeroShards,
    /// More shards than CPUs in the placement (thread-per-core: one shard per CPU).
    TooManyShards {
        /// Shards asked for.
        shards: usize,
        /// CPUs available in the placement.
        cpus: usize,
    },
    /// A CPU list or placement string could not be parsed.
    Parse(String),
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::NoCpus => write!(f, "the topology has no CPUs"),
            TopologyError::DuplicateCpu(c) => {
                write!(f, "CPU {c} is listed twice; list each CPU once")
            }
            TopologyError::DuplicateNode(n) => write!(f, "NUMA node {n} is listed twice"),
            TopologyError::EmptyNode(n) => write!(f, "NUMA node {n} has no CPUs"),
            TopologyError::UnknownCpu { cpu, online } => write!(
                f,
                "CPU {cpu} is not online; online CPUs are {}",
                format_cpu_list(online)
            ),
            TopologyError::UnknownNode { node, nodes } => write!(
                f,
                "NUMA node {node} does not exist; nodes are {}",
                format_cpu_list(nodes)
            ),
            TopologyError::ZeroShards => {
                write!(f, "at least one shard is needed (--shards 1 or more)")
            }
            TopologyError::TooManyShards { shards, cpus } => write!(
                f,
                "{shards} shards asked for but the placement has only {cpus} CPUs; \
                 use --shards {cpus} or fewer, or place on more CPUs (one shard per CPU)"
            ),
            TopologyError::Parse(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for TopologyError {}

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

    /// Reads the machine's topology from sysfs (`/sys/devices/system`), keeping only the CPUs this
    /// process may run on (`Cpus_allowed_list` of `/proc/self/status`, which reflects `taskset`,
    /// `numactl --cpunodebind`, systemd `CPUAffinity=` and cgroup cpusets such as Kubernetes'
    /// static CPU manager). Falls back to one node holding CPUs `0..available_parallelism` when
    /// sysfs is not readable.
    pub fn detect() -> Topology {
        let topo = Topology::from_sysfs(Path::new("/sys/devices/system")).unwrap_or_else(|_| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            Topology {
                nodes: vec![Node {
                    id: 0,
                    cpus: (0..n).collect(),
                }],
                distances: BTreeMap::new(),
            }
        });
        match std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| allowed_cpus_from_status(&status))
        {
            Some(allowed) => topo.restrict_to(&allowed),
            None => topo,
        }
    }

    /// Keeps only the CPUs in `allowed` (nodes left without CPUs disappear). If nothing would
    /// remain, the topology is returned unchanged (the mask was not about these CPUs).
    ///
    /// ```
    /// # use shardpool::topology::Topology;
    /// let topo = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
    /// let mine = topo.restrict_to(&[2, 3]);
    /// assert_eq!(mine.cpus(), vec![2, 3]);
    /// assert_eq!(mine.nodes().len(), 1);
    /// assert_eq!(mine.distance(0, 1), 20); // distances are kept
    /// ```
    pub fn restrict_to(&self, allowed: &[usize]) -> Topology {
        let nodes: Vec<Node> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let cpus: Vec<usize> = n
                    .cpus
                    .iter()
                    .copied()
                    .filter(|c| allowed.contains(c))
                    .collect();
                (!cpus.is_empty()).then_some(Node { id: n.id, cpus })
            })
            .collect();
        if nodes.is_empty() {
            return self.clone();
        }
        Topology {
            nodes,
            distances: self.distances.clone(),
        }
    }

    /// Reads a topology from a sysfs-shaped tree rooted at `root` (normally
    /// `/sys/devices/system`): `cpu/online`, `node/nodeN/cpulist`, `node/nodeN/distance`.
    /// Only online CPUs are kept; a machine without `node/` is one node 0.
    pub fn from_sysfs(root: &Path) -> Result<Topology, TopologyError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| TopologyError::Parse(format!("cannot read {}: {e}", p.display())))
        };
        let online: BTreeSet<usize> = parse_cpu_list(read(&root.join("cpu/online"))?.trim())?
            .into_iter()
            .collect();
        let mut nodes = Vec::new();
        let mut node_dirs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(root.join("node")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|s| s.strip_prefix("node")) else {
                    continue;
                };
                if let Ok(id) = id.parse::<usize>() {
                    node_dirs.push((id, entry.path()));
                }
            }
        }
        node_dirs.sort();
        for (id, dir) in &node_dirs {
            let cpus: Vec<usize> = parse_cpu_list(read(&dir.join("cpulist"))?.trim())?
                .into_iter()
                .filter(|c| online.contains(c))
                .collect();
            if !cpus.is_empty() {
                nodes.push((*id, cpus));
            }
        }
        if nodes.is_empty() {
            nodes.push((0, online.iter().copied().collect()));
        }
        let mut topo = Topology::from_nodes(nodes)?;
        // `distance` lists the distance to every node, in node-id order of all node dirs.
        let all_ids: Vec<usize> = node_dirs.iter().map(|(id, _)| *id).collect();
        for (id, dir) in &node_dirs {
            let Ok(text) = std::fs::read_to_string(dir.join("distance")) else {
                continue;
            };
            for (other, d) in all_ids.iter().zip(text.split_whitespace()) {
                if let Ok(d) = d.parse::<u32>() {
                    topo.distances.insert((*id, *other), d);
                }
            }
        }
        Ok(topo)
    }

    /// The NUMA nodes, by ascending id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All CPUs, ascending.
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
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.id)
    }

    /// Distance between two nodes (10 = local, as in the kernel's SLIT numbers).
    pub fn distance(&self, a: usize, b: usize) -> u32 {
        match self.distances.get(&(a, b)) {
            Some(&d) => d,
            None if a == b => LOCAL_DISTANCE,
            None => REMOTE_DISTANCE,
        }
    }

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

/// Parses a kernel-style CPU list (`0-3,8,10-11`) into ascending-as-written numbers.
///
/// ```
/// # use shardpool::topology::parse_cpu_list;
/// assert_eq!(parse_cpu_list("0-2,7").unwrap(), vec![0, 1, 2, 7]);
/// assert!(parse_cpu_list("3-1").is_err());
/// ```
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, TopologyError> {
    let bad = |part: &str| {
        TopologyError::Parse(format!(
            "bad CPU list item `{part}` in `{s}`; expected numbers and ranges like `0-3,8`"
        ))
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad(part))?;
                let b: usize = b.trim().parse().map_err(|_| bad(part))?;
                if a > b || b - a > 65_536 {
                    return Err(bad(part));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    if out.is_empty() {
        return Err(TopologyError::Parse(format!("empty CPU list `{s}`")));
    }
    Ok(out)
}

/// The `Cpus_allowed_list` of a `/proc/<pid>/status` text.
fn allowed_cpus_from_status(status: &str) -> Option<Vec<usize>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| parse_cpu_list(list.trim()).ok())
}

/// Formats numbers as a compact kernel-style list (`0-3,8`).
pub fn format_cpu_list(list: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < list.len() {
        let start = list[i];
        let mut end = start;
        while i + 1 < list.len() && list[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_four() -> Topology {
        // Node 0: cpus 0-3, node 1: cpus 4-7.
        Topology::from_nodes(vec![(0, (0..4).collect()), (1, (4..8).collect())]).unwrap()
    }

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

    #[test]
    fn sysfs_tree_is_read() {
        let root = std::env::temp_dir().join(format!("shardpool-topo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let w = |p: &str, s: &str| {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        // CPU 3 is offline; node 1 distance table says 21.
        w("cpu/online", "0-2,4-5\n");
        w("node/node0/cpulist", "0-2\n");
        w("node/node0/distance", "10 21\n");
        w("node/node1/cpulist", "3-5\n");
        w("node/node1/distance", "21 10\n");
        w("node/possible", "0-1\n");
        let topo = Topology::from_sysfs(&root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(topo.cpus(), vec![0, 1, 2, 4, 5]);
        assert_eq!(topo.node_of(4), Some(1));
        assert_eq!(topo.node_of(3), None);
        assert_eq!(topo.distance(0, 1), 21);
        assert_eq!(topo.distance(1, 1), 10);
    }

    #[test]
    fn affinity_mask_limits_the_cpus() {
        let status =
            "Name:\tshardpool\nCpus_allowed:\tf0\nCpus_allowed_list:\t4-5,7\nMems_allowed:\t1\n";
        assert_eq!(allowed_cpus_from_status(status), Some(vec![4, 5, 7]));
        assert_eq!(allowed_cpus_from_status("Name:\tx\n"), None);
        let topo = two_by_four().restrict_to(&[4, 5, 7]);
        let map = topo.place(&Placement::AllCores, None).unwrap();
        assert_eq!(
            map.places().iter().map(|p| p.cpu).collect::<Vec<_>>(),
            vec![4, 5, 7]
        );
        assert!(topo.place(&Placement::Nodes(vec![0]), None).is_err());
        // A mask about other CPUs leaves the topology as it was.
        assert_eq!(two_by_four().restrict_to(&[99]), two_by_four());
    }

    #[test]
    fn detect_finds_this_machine() {
        let topo = Topology::detect();
        assert!(!topo.cpus().is_empty());
        let map = topo.place(&Placement::AllCores, None).unwrap();
        assert_eq!(map.len(), topo.cpus().len());
    }

    #[test]
    fn cpu_list_round_trip() {
        for s in ["0", "0-3", "0-3,8,10-11", "5,7"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(s).unwrap()), s);
        }
        for bad in ["", "a", "1-", "-1", "4-2", "1,,x"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(Placement::Cpus(vec![0, 1, 2, 5]).to_string(), "cpus:0-2,5");
        assert_eq!("all".parse::<Placement>().unwrap(), Placement::AllCores);
    }
}
