//! Reading the machine: sysfs NUMA nodes and distances, and the process's CPU affinity.

use super::{Node, Topology, TopologyError, parse_cpu_list};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

impl Topology {
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
}

/// The `Cpus_allowed_list` of a `/proc/<pid>/status` text.
fn allowed_cpus_from_status(status: &str) -> Option<Vec<usize>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| parse_cpu_list(list.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Placement;
    use crate::topology::two_by_four;

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
}
