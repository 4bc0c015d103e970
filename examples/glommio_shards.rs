//! Embedding the pool in a thread-per-core glommio program (no gRPC server).
//!
//! One glommio executor per CPU, pinned; one `ShardedPool` shared by all of them, with each
//! executor thread bound to its own pool shard (`spawn_shards` does that), the pool sized to the
//! executors and the steal order taken from the machine's topology, same NUMA node first
//! (`pool_config`). Waits use each executor's glommio timer (`GlommioTimer`), and each executor
//! maintains its own shard on that timer (`spawn_maintenance`). Each shard runs 64 tasks that
//! check a "session" out, hold it across a yield, and give it back; the pool's per-shard
//! statistics are printed at the end.
//!
//! ```text
//! cargo run --release --example glommio_shards
//! ```

use shardpool::integrations::glommio::{GlommioTimer, pool_config, spawn_maintenance};
use shardpool::pool::{Config, ConnectionPool, Manage, ShardedPool};
use shardpool::runtime::{RuntimeOptions, spawn_shards};
use shardpool::topology::{Placement, Topology};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A stand-in for a real connection: counts its uses.
#[derive(Debug)]
struct Session {
    uses: u64,
}

/// Creates sessions; a real manager would connect to a backend here.
struct Sessions {
    created: AtomicU64,
}

impl Manage for Sessions {
    type Key = &'static str;
    type Conn = Session;
    type Error = std::io::Error;

    async fn create(&self, _backend: &&'static str) -> Result<Session, std::io::Error> {
        // Ordering: Relaxed, a statistic; nothing else is published through it.
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(Session { uses: 0 })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topology = Topology::detect();
    let map = topology.place(&Placement::AllCores, None)?;
    let pool = ShardedPool::new(
        // Waits on the executor's glommio timer instead of the pool's default timer thread.
        GlommioTimer(Sessions {
            created: AtomicU64::new(0),
        }),
        pool_config(&map, Config::default().max_size(256)),
    )?;

    let p = pool.clone();
    let handles = spawn_shards(&map, &RuntimeOptions::default(), move |ctx| {
        let pool = p.clone();
        async move {
            // Expiry and min_idle for this executor's shard, every second, on its timer.
            let maintenance = spawn_maintenance(&pool, Duration::from_secs(1))
                .expect("on a shard executor, with one pool shard per executor");
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let pool = pool.clone();
                    glommio::spawn_local(async move {
                        for _ in 0..1000 {
                            // `get` uses this thread's shard: a hit, a steal or a create.
                            let mut session = pool.get(&"db").await?;
                            session.uses += 1;
                            glommio::executor().yield_now().await;
                        }
                        Ok::<_, shardpool::pool::Error<std::io::Error>>(())
                    })
                })
                .collect();
            let mut failed = 0;
            for t in tasks {
                if let Err(e) = t.await {
                    eprintln!("shard {}: {e}", ctx.shard);
                    failed += 1;
                }
            }
            maintenance.cancel();
            (ctx, failed)
        }
    })?;
    for (ctx, failed) in handles.join()? {
        println!(
            "shard {} on cpu {} (NUMA node {}): {failed} tasks failed",
            ctx.shard, ctx.cpu, ctx.node
        );
    }

    let stats = pool.stats();
    for (i, s) in stats.shards.iter().enumerate() {
        println!(
            "pool shard {i}: {} checkouts, {} local hits, {} steals, {} creates, {} hand-offs, {} idle",
            s.checkouts, s.local_hits, s.steals, s.creates, s.handoffs, s.idle
        );
    }
    let t = &stats.total;
    println!(
        "total: {} checkouts, reuse {:.3}%, {} live connections, wait p99 {} µs",
        t.checkouts,
        100.0 * t.reuse_rate(),
        t.live,
        t.wait_p99_us
    );
    pool.close();
    Ok(())
}
