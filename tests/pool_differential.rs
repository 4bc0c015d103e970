//! The same random operation sequences on the sharded pool (one shard) and the mutex baseline must
//! give the same answers: the same connection ids, errors, and counters, step by step.

mod common;

use common::{Conn, TestManager};
use shardpool::baseline::MutexPool;
use shardpool::pool::block_on;
use shardpool::{Clock, Config, ConnectionPool, ManualClock, PooledConn, ShardedPool};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, PartialEq)]
enum Outcome {
    Got { id: u64, reused: bool },
    Timeout,
    CreateFailed,
    Done,
}

/// One pool under test with its clock, its manager's switches and the guards it has handed out.
struct Side<P: ConnectionPool<TestManager>> {
    pool: P,
    clock: ManualClock,
    tally: std::sync::Arc<common::Tally>,
    held: Vec<P::Guard>,
}

impl<P: ConnectionPool<TestManager>> Side<P> {
    fn new(make: impl Fn(TestManager, Config) -> P) -> Self {
        let clock = ManualClock::new();
        let (m, tally) = TestManager::new();
        let config = Config::default()
            .shards(1)
            .max_size(3)
            .max_idle_per_key(2)
            .max_total_idle(3)
            .min_idle(1)
            .idle_timeout(Some(Duration::from_secs(10)))
            .max_lifetime(Some(Duration::from_secs(45)))
            .wait_timeout(Some(Duration::from_millis(1)))
            .clock(Clock::Manual(clock.clone()));
        Side {
            pool: make(m, config),
            clock,
            tally,
            held: Vec::new(),
        }
    }

    fn apply(&mut self, op: u64) -> Outcome {
        let pick = |n: usize| (op >> 8) as usize % n.max(1);
        match op % 10 {
            0..=3 => match block_on(self.pool.get(&((op >> 16) as u32 % 2))) {
                Ok(conn) => {
                    let outcome = Outcome::Got {
                        id: conn.id,
                        reused: conn.is_reused(),
                    };
                    self.held.push(conn);
                    outcome
                }
                Err(shardpool::Error::Timeout { .. }) => Outcome::Timeout,
                Err(shardpool::Error::Create { .. }) => Outcome::CreateFailed,
                Err(e) => panic!("unexpected: {e}"),
            },
            4 | 5 if !self.held.is_empty() => {
                let i = pick(self.held.len());
                drop(self.held.swap_remove(i));
                Outcome::Done
            }
            6 if !self.held.is_empty() => {
                let i = pick(self.held.len());
                self.held.swap_remove(i).discard();
                Outcome::Done
            }
            7 if !self.held.is_empty() => {
                let i = pick(self.held.len());
                let conn: &mut Conn = &mut self.held[i];
                conn.broken = true;
                Outcome::Done
            }
            8 => {
                self.clock.advance(Duration::from_secs(op % 17));
                Outcome::Done
            }
            9 => {
                let fail = (op >> 4).is_multiple_of(4);
                self.tally.fail_creates.store(fail, Ordering::SeqCst);
                if (op >> 6).is_multiple_of(3) {
                    block_on(self.pool.maintain(0));
                }
                Outcome::Done
            }
            _ => Outcome::Done,
        }
    }
}

#[test]
fn both_pools_answer_alike() {
    for seed in 1..=40u64 {
        let mut sharded = Side::new(|m, c| ShardedPool::new(m, c).unwrap());
        let mut mutex = Side::new(|m, c| MutexPool::new(m, c).unwrap());
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for step in 0..400 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let a = sharded.apply(rng);
            let b = mutex.apply(rng);
            assert_eq!(a, b, "seed {seed} step {step}: op {rng:#x}");
            let (sa, sb) = (sharded.pool.stats().total, mutex.pool.stats().total);
            let pick = |s: shardpool::ShardStats| {
                (
                    s.checkouts,
                    s.creates,
                    s.prewarms,
                    s.closes,
                    s.expirations,
                    s.validation_failures,
                    s.timeouts,
                    s.create_errors,
                    s.idle,
                    s.live,
                )
            };
            assert_eq!(
                pick(sa),
                pick(sb),
                "seed {seed} step {step}: counters differ"
            );
        }
    }
}
