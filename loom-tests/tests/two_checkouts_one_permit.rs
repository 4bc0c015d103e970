//! Two checkouts on different shards race for the only permit (`max_size` 1): one creates, the
//! other steals the returned connection, is handed it, or waits for it. With two shards and
//! `max_size` 1, shard 1's idle stack has room for nothing, so a return on shard 1 spills to
//! shard 0's stack.
//!
//! Invariants: 1 (never two connections), 2 (never two guards), 3 (quiescent counts, every
//! connection dropped once), 4 (the loser of the race is woken: otherwise loom reports a deadlock).
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn two_checkouts_one_permit() {
    check("two_checkouts_one_permit", || {
        let h = Harness::new(1, |c| c);
        let threads: Vec<_> = (0..2)
            .map(|shard| {
                let pool = h.pool();
                thread::spawn(move || {
                    let held = loom_tests::get(&pool, shard).expect("a checkout succeeds");
                    drop(held);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        h.assert_quiescent();
        assert_eq!(h.tracker.creates(), 1, "one permit, one connection, reused");
        h.finish();
    });
}
