//! Maintenance races with a checkout on the same shard: the only connection (`max_size` 1) is idle
//! on shard 0 and not expired. Maintenance pops it to sort out expired ones and puts it back; a
//! checkout on shard 0 meanwhile may find the stack empty and no permit free, and wait. The
//! put-back then sees the `WAITING` flag and hands the connection over, or lands first and the
//! waiter's retry pops it.
//!
//! Invariants: 6 (maintenance drops nothing it should keep, and nothing twice), 4, 2, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};
use shardpool::{Clock, ConnectionPool, ManualClock};
use std::time::Duration;

#[test]
fn maintain_vs_checkout() {
    check("maintain_vs_checkout", || {
        let clock = ManualClock::new();
        let h = Harness::new(1, |c| {
            c.idle_timeout(Some(Duration::from_secs(10)))
                .clock(Clock::Manual(clock.clone()))
        });
        drop(h.get(0).expect("creates connection 0")); // idle on shard 0
        clock.advance(Duration::from_secs(5)); // not expired
        let pool = h.pool();
        let maintainer = thread::spawn(move || shardpool::pool::block_on(pool.maintain(0)));
        let pool = h.pool();
        let user = thread::spawn(move || {
            let held = loom_tests::get(&pool, 0).expect("the connection");
            assert_eq!(held.id(), 0, "the live connection was kept, not replaced");
        });
        maintainer.join().unwrap();
        user.join().unwrap();
        assert_eq!(h.tracker.creates(), 1);
        h.assert_quiescent();
        h.finish();
    });
}
