//! Expiry races with a steal: an idle connection on shard 0 has passed its idle timeout (manual
//! clock). Maintenance of shard 0 reaps it while a checkout on shard 1 steals from shard 0. Exactly
//! one of them pops it and closes it; the checkout never gets it and creates a fresh connection.
//!
//! Invariants: 6 (no expired connection handed out, none dropped twice), 1, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};
use shardpool::{Clock, ConnectionPool, ManualClock};
use std::time::Duration;

#[test]
fn expiry_vs_steal() {
    check("expiry_vs_steal", || {
        let clock = ManualClock::new();
        let h = Harness::new(2, |c| {
            c.idle_timeout(Some(Duration::from_secs(10)))
                .clock(Clock::Manual(clock.clone()))
        });
        drop(h.get(0).expect("creates connection 0")); // idle on shard 0
        clock.advance(Duration::from_secs(11));
        h.tracker.expire_all_so_far();
        let pool = h.pool();
        let maintainer = thread::spawn(move || shardpool::pool::block_on(pool.maintain(0)));
        let pool = h.pool();
        let thief = thread::spawn(move || {
            let held = loom_tests::get(&pool, 1).expect("a fresh connection");
            assert_eq!(held.id(), 1);
        });
        maintainer.join().unwrap();
        thief.join().unwrap();
        assert!(h.tracker.is_dropped(0), "the expired connection was closed");
        h.assert_quiescent();
        h.finish();
    });
}
