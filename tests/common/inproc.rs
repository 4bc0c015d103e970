//! Running a server inside the test process: an unpinned shard layout, a loopback config on
//! port 0, and a tokio runtime that bounds each test's client side in time.
#![allow(dead_code)] // each test binary compiles this module alone and uses only part of it

use shardpool::runtime::RuntimeOptions;
use shardpool::server::ServerConfig;
use shardpool::topology::{Placement, ShardMap, Topology};
use std::time::Duration;

/// How long the client side of one test may take.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// `n` shards on one NUMA node, not pinned (so tests do not fight over CPUs).
pub fn shards(n: usize) -> (ShardMap, RuntimeOptions) {
    let map = Topology::from_nodes(vec![(0, (0..n).collect())])
        .unwrap()
        .place(&Placement::AllCores, None)
        .unwrap();
    let opts = RuntimeOptions {
        pin: false,
        ..RuntimeOptions::default()
    };
    (map, opts)
}

/// The default server config, listening on 127.0.0.1:0.
pub fn local_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    }
}

/// Runs `f` on a two-worker tokio runtime; panics if it takes longer than [`TEST_LIMIT`].
pub fn run<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(TEST_LIMIT, f)
            .await
            .expect("test took too long");
    });
}

/// Polls `cond` every 10 ms for up to 10 s; panics naming `what` if it never holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
