//! Many threads on few shards, hammering both pools; the invariants are checked at quiescence.
//! Bounded: a fixed number of operations per thread, and a watchdog aborts a hung run.

mod common;

use common::TestManager;
use shardpool::baseline::MutexPool;
use shardpool::pool::{bind_thread_to_shard, block_on};
use shardpool::{Config, ConnectionPool, PooledConn, ShardedPool};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const THREADS: usize = 8;
const OPS_PER_THREAD: usize = 100_000;
const KEYS: u32 = 2;
const MAX_SIZE: usize = 3;

/// A small deterministic generator (xorshift), so failures can be replayed from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn watchdog(limit: Duration) -> impl Drop {
    struct Cancel(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Cancel {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&done);
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !flag.load(Ordering::SeqCst) {
            if start.elapsed() > limit {
                eprintln!("stress test hung for {limit:?}: aborting");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    Cancel(done)
}

fn hammer<P: ConnectionPool<TestManager>>(make: impl Fn(TestManager, Config) -> P) {
    let _watchdog = watchdog(Duration::from_secs(120));
    let (m, tally) = TestManager::new();
    let config = Config::default()
        .shards(2)
        .max_size(MAX_SIZE)
        .max_idle_per_key(2)
        .max_total_idle(3)
        .wait_timeout(Some(Duration::from_secs(30)));
    let pool = make(m, config);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = pool.clone();
            let tally = Arc::clone(&tally);
            std::thread::spawn(move || {
                bind_thread_to_shard(t % 2);
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                let mut held = Vec::new();
                let mut timeouts = 0u64;
                for _ in 0..OPS_PER_THREAD {
                    let r = rng.next();
                    // Wait only while holding nothing: a thread that held one connection while
                    // waiting for another could deadlock with its mirror image (two keys, each
                    // full, each holder waiting for the other) until the wait timed out.
                    if held.is_empty() && !r.is_multiple_of(3) {
                        let key = (r >> 8) as u32 % KEYS;
                        match block_on(pool.get(&key)) {
                            Ok(conn) => {
                                tally.claim(conn.id);
                                held.push(conn);
                            }
                            Err(shardpool::Error::Timeout { .. }) => timeouts += 1,
                            Err(e) => panic!("unexpected checkout error: {e}"),
                        }
                    } else if let Some(mut conn) = held.pop() {
                        tally.release(conn.id);
                        match r % 16 {
                            0 => conn.discard(),
                            1 => {
                                conn.broken = true;
                                drop(conn);
                            }
                            2 => {
                                // Return on a foreign thread.
                                std::thread::spawn(move || drop(conn)).join().unwrap();
                            }
                            _ => drop(conn),
                        }
                    }
                    if r.is_multiple_of(4096) {
                        block_on(pool.maintain(t % 2));
                    }
                }
                for conn in held {
                    tally.release(conn.id);
                }
                timeouts
            })
        })
        .collect();
    let timeouts: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        timeouts, 0,
        "holders release promptly, so no 30 s wait times out"
    );
    let stats = pool.stats();
    let alive = tally.alive.load(Ordering::SeqCst) as u64;
    assert_eq!(stats.total.checked_out, 0, "{stats:?}");
    assert_eq!(stats.total.live, stats.total.idle + stats.total.checked_out);
    assert_eq!(
        stats.total.live, alive,
        "pool and reality agree on live connections"
    );
    assert!(stats.total.idle <= 3, "max_total_idle held");
    for key in 0..KEYS as usize {
        let peak = tally.peak_per_key[key].load(Ordering::SeqCst);
        assert!(
            peak <= MAX_SIZE,
            "key {key} peaked at {peak} > max_size {MAX_SIZE}"
        );
    }
    assert_eq!(
        tally.created.load(Ordering::SeqCst),
        tally.dropped.load(Ordering::SeqCst) + alive,
        "every created connection is either alive (idle) or dropped once"
    );
    assert_eq!(stats.total.checkouts, stats.total.returns);
    pool.close();
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        0,
        "close drops every idle connection"
    );
    assert_eq!(
        tally.created.load(Ordering::SeqCst),
        tally.dropped.load(Ordering::SeqCst)
    );
}

#[test]
fn sharded_pool_keeps_its_invariants_under_contention() {
    hammer(|m, c| ShardedPool::new(m, c).unwrap());
}

#[test]
fn mutex_pool_keeps_its_invariants_under_contention() {
    hammer(|m, c| MutexPool::new(m, c).unwrap());
}
