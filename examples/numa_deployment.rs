//! NUMA-aware deployment: serve gRPC from the CPUs of chosen NUMA nodes, with the pool's steal
//! order following node distances.
//!
//! ```text
//! cargo run --release --example numa_deployment -- [PLACEMENT] [LISTEN] [SECONDS]
//! # e.g. one process per node:
//! cargo run --release --example numa_deployment -- nodes:0 127.0.0.1:50051 60 &
//! cargo run --release --example numa_deployment -- nodes:1 127.0.0.1:50051 60 &
//! ```
//!
//! Both processes listen on the same address on purpose: the example sets
//! `ServerConfig::reuse_port_shared` (without it the second process would refuse a port in use),
//! so the kernel spreads connections over all shards of both processes. See docs/deployment.md
//! (Port ownership) for the risk, and for numactl, systemd and Kubernetes equivalents.
//!
//! It first prints the machine's topology and, for comparison, the steal order of a made-up
//! two-node machine (on a one-node machine the real order has no remote tier to show).

use shardpool::pool::{Config, ConnectionPool, Manage, ShardedPool};
use shardpool::runtime::{RuntimeOptions, ShardContext};
use shardpool::server::{GreetHandler, Server, ServerConfig, Status, pool_stats_source};
use shardpool::topology::{Placement, ShardMap, Topology, format_cpu_list};
use std::time::Duration;

/// A per-node resource, e.g. a client session to a node-local cache; pooled per shard.
struct LocalSessions;

impl Manage for LocalSessions {
    type Key = ();
    type Conn = Vec<u8>;
    type Error = std::io::Error;

    async fn create(&self, _key: &()) -> Result<Vec<u8>, std::io::Error> {
        // Allocated on the creating shard's thread, hence (first-touch) on its NUMA node.
        Ok(Vec::with_capacity(4096))
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        shardpool::runtime::sleep(duration)
    }
}

/// Greets using a pooled, node-local buffer.
struct NodeGreeter {
    pool: ShardedPool<LocalSessions>,
    node: usize,
}

impl GreetHandler for NodeGreeter {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        let mut buf = self
            .pool
            .get(&())
            .await
            .map_err(|e| Status::new(shardpool::server::Code::Unavailable, e.to_string()))?;
        buf.clear();
        buf.extend_from_slice(name.as_bytes());
        Ok(format!(
            "Hello, {}! (NUMA node {})",
            String::from_utf8_lossy(&buf),
            self.node
        ))
    }
}

fn print_map(title: &str, map: &ShardMap) {
    println!("{title}");
    for (shard, (p, order)) in map.places().iter().zip(map.steal_order()).enumerate() {
        println!(
            "  shard {shard}: cpu {} node {} steals from shards {order:?}",
            p.cpu, p.node
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let placement: Placement = args.next().as_deref().unwrap_or("nodes:0").parse()?;
    let listen = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:50051")
        .parse()?;
    let seconds: u64 = args.next().as_deref().unwrap_or("30").parse()?;

    let topology = Topology::detect();
    for node in topology.nodes() {
        println!("node {}: cpus {}", node.id, format_cpu_list(&node.cpus));
    }
    let example = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])])?;
    print_map(
        "made-up 2-node machine, all cores:",
        &example.place(&Placement::AllCores, None)?,
    );

    let map = topology.place(&placement, None)?;
    print_map(&format!("this machine, placement {placement}:"), &map);

    let pool = ShardedPool::new(
        LocalSessions,
        Config::default()
            .shards(map.len())
            .max_size(64)
            .steal_order(map.steal_order()),
    )?;
    let p = pool.clone();
    let server = Server::new(ServerConfig {
        listen,
        // One process per node, all on one port (see above).
        reuse_port_shared: true,
        ..ServerConfig::default()
    })
    .greeter(move |ctx: ShardContext| NodeGreeter {
        pool: p.clone(),
        node: ctx.node,
    })
    .pool_stats(pool_stats_source(pool.clone()))
    .start(&map, &RuntimeOptions::default())?;
    println!(
        "serving on {} for {seconds} s (try: h2load or any gRPC client; see docs/deployment.md)",
        server.local_addr()
    );
    std::thread::sleep(Duration::from_secs(seconds));
    let reports = server.shutdown(Duration::from_secs(5))?;
    pool.close();
    let calls: u64 = reports.iter().map(|r| r.calls).sum();
    println!("stopped after {calls} calls");
    Ok(())
}
