//! A return on a foreign thread wakes a waiter on the other shard: the only connection
//! (`max_size` 1) was checked out on shard 0 by the main thread and is returned by another thread,
//! while a checkout on shard 1 finds nothing and waits. The return either lands on shard 0's stack
//! before the waiter flags it (the waiter's retry, or its first look, steals it) or sees the flag
//! and hands the connection straight to the waiter.
//!
//! Invariants: 4 (the waiter always completes; a lost wake-up is a loom deadlock), 1, 2, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn foreign_return_wakes_waiter() {
    check("foreign_return_wakes_waiter", || {
        let h = Harness::new(1, |c| c);
        let held = h.get(0).expect("the first checkout creates");
        let returner = thread::spawn(move || drop(held));
        let pool = h.pool();
        let waiter = thread::spawn(move || {
            let held = loom_tests::get(&pool, 1).expect("the waiter gets the returned connection");
            assert_eq!(held.id(), 0, "the only connection, reused");
        });
        returner.join().unwrap();
        waiter.join().unwrap();
        h.assert_quiescent();
        h.finish();
    });
}
