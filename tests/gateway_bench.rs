//! Per-request cost of the upstream path, in-process, A/B/A/B on one glommio shard:
//!
//! * `dedicated`: the shard holds one connection per backend and exchanges on it directly;
//! * `sharded` / `mutex`: check out from the pool, exchange, return (the gateway's hot path);
//! * `connect`: a new connection per request (`--pool none`).
//!
//! One request in flight, against one origin on loopback; medians of the rounds are printed.
//! A measurement, not a test of speed (the machine is shared): it is `#[ignore]`d and run with
//!
//! ```sh
//! cargo test --release -p shardpool --features full --test gateway_bench -- --ignored --nocapture
//! ```
//!
//! It still checks every answer, and that the pooled hot path made one connection and no re-wrap.
#![cfg(feature = "upstream")]

use shardpool::baseline::MutexPool;
use shardpool::pool::{Config, ConnectionPool, ShardedPool};
use shardpool::runtime::{RuntimeOptions, spawn_shards};
use shardpool::topology::{Placement, Topology};
use shardpool::upstream::frame::{Code, Op};
use shardpool::upstream::origin::{Origin, OriginConfig};
use shardpool::upstream::{ConnectorConfig, UpstreamManager};
use std::net::SocketAddr;
use std::time::Instant;

const ROUNDS: usize = 7;
const PER_ROUND: usize = 20_000;

async fn one<P: ConnectionPool<UpstreamManager>>(pool: &P, addr: SocketAddr) {
    let mut conn = pool.get(&addr).await.unwrap();
    let x = conn.exchange(0, Op::Hello, "bench").await.unwrap();
    assert_eq!(x.response.code, Code::Ok);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement: run with --release --ignored --nocapture"]
fn per_request_cost_pooled_vs_dedicated_vs_connect() {
    let origin = Origin::start(OriginConfig {
        pin: true,
        ..OriginConfig::default()
    })
    .unwrap();
    let addr = origin.local_addr();
    // The client shard on the last CPU, the origin (pinned) on the first.
    let topo = Topology::detect();
    let last = *topo.cpus().last().unwrap();
    let map = topo.place(&Placement::Cpus(vec![last]), None).unwrap();
    let handles = spawn_shards(&map, &RuntimeOptions::default(), move |_ctx| async move {
        let manager = UpstreamManager::new(ConnectorConfig::default(), 1);
        let config = Config::default().shards(1).max_size(4);
        let sharded = ShardedPool::new(manager.clone(), config.clone()).unwrap();
        let mutex = MutexPool::new(manager.clone(), config).unwrap();
        let mut dedicated = manager.connect(addr).await.unwrap();
        let names = ["dedicated", "sharded", "mutex", "connect"];
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for round in 0..=ROUNDS {
            for (v, samples) in ns.iter_mut().enumerate() {
                let n = if v == 3 { PER_ROUND / 4 } else { PER_ROUND };
                let t = Instant::now();
                for _ in 0..n {
                    match v {
                        0 => {
                            let x = dedicated.exchange(0, Op::Hello, "bench").await.unwrap();
                            assert_eq!(x.response.code, Code::Ok);
                        }
                        1 => one(&sharded, addr).await,
                        2 => one(&mutex, addr).await,
                        _ => {
                            let mut c = manager.connect(addr).await.unwrap();
                            let x = c.exchange(0, Op::Hello, "bench").await.unwrap();
                            assert_eq!(x.response.code, Code::Ok);
                        }
                    }
                }
                // Round 0 warms up and is not counted.
                if round > 0 {
                    samples.push(t.elapsed().as_nanos() as f64 / n as f64);
                }
            }
        }
        let s = sharded.stats().total;
        assert_eq!(s.creates, 1, "the sharded pool's hot path reuses one connection");
        assert_eq!(manager.rewraps(), 0, "no re-wrap on the hot path");
        // Each round measures every variant back to back, so the ratio to `dedicated` is taken
        // within a round (the machine's load drifts between rounds) and its median reported.
        let mut out = String::new();
        for (name, samples) in names.iter().zip(ns.iter()) {
            let mut ratios: Vec<f64> = samples.iter().zip(&ns[0]).map(|(x, d)| x / d).collect();
            let ratio = median(&mut ratios);
            let m = median(&mut samples.clone());
            out.push_str(&format!(
                "{name:>9}: median {m:>8.0} ns/request ({:>7.0} req/s sequential), median per-round ratio to dedicated {ratio:.3}, rounds {:?}\n",
                1e9 / m,
                samples.iter().map(|x| x.round() as u64).collect::<Vec<_>>()
            ));
        }
        sharded.close();
        mutex.close();
        out
    })
    .unwrap();
    let out = handles.join().unwrap();
    println!("{}", out[0]);
    origin.stop();
}
