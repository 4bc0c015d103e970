//! Why a topology or a placement could not be built.

use super::format_cpu_list;
use std::fmt;

/// Why a topology or a placement could not be built. The message names the fix.
///
/// ```
/// use shardpool::topology::{Placement, Topology, TopologyError};
///
/// let topo = Topology::from_nodes(vec![(0, vec![0, 1])]).unwrap();
/// let e = topo.place(&Placement::AllCores, Some(3)).unwrap_err();
/// assert_eq!(e, TopologyError::TooManyShards { shards: 3, cpus: 2 });
/// assert!(e.to_string().contains("--shards 2 or fewer"));
/// assert_eq!(
///     Topology::from_nodes(vec![(0, vec![0]), (1, vec![0])]).unwrap_err(),
///     TopologyError::DuplicateCpu(0)
/// );
/// ```
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
