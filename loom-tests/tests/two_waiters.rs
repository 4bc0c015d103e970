//! Two waiters, one return and one freed permit: both connections (`max_size` 2) are held; two
//! checkouts (one per shard) wait; the main thread returns one connection and then discards the
//! other. Each waiter must get a connection: the oldest is handed the returned one (or takes it on
//! its retry), and the freed permit's notification reaches a waiter that can use it, even when the
//! waiter it first told was handed a connection instead (the notification is passed on).
//!
//! Invariants: 4 (no waiter left behind: a lost or swallowed notification is a loom deadlock),
//! 1, 2, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn two_waiters() {
    check("two_waiters", || {
        let h = Harness::new(2, |c| c);
        let returned = h.get(0).expect("creates connection 0");
        let discarded = h.get(0).expect("creates connection 1");
        let waiters: Vec<_> = (0..2)
            .map(|shard| {
                let pool = h.pool();
                thread::spawn(move || drop(loom_tests::get(&pool, shard).expect("a connection")))
            })
            .collect();
        // The main thread frees: three threads in all keeps the model small enough to explore.
        drop(returned);
        discarded.discard();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        h.assert_quiescent();
        h.finish();
    });
}
