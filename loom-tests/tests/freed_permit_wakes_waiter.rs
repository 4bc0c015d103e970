//! A freed permit wakes a waiter: the only connection (`max_size` 1) is discarded (closed, its
//! permit freed) on one thread while a checkout on the other shard waits for it. The release's
//! `fetch_sub` on the permit word either comes before the waiter flags the word (the waiter's retry
//! takes the permit) or sees the flag and notifies the waiter, which then creates.
//!
//! Invariants: 4 (the waiter completes), 1 (the new connection is created only after the old one is
//! dropped), 2, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn freed_permit_wakes_waiter() {
    check("freed_permit_wakes_waiter", || {
        let h = Harness::new(1, |c| c);
        let held = h.get(0).expect("the first checkout creates");
        let discarder = thread::spawn(move || held.discard());
        let pool = h.pool();
        let waiter = thread::spawn(move || {
            let held = loom_tests::get(&pool, 1).expect("the waiter gets a new connection");
            assert_eq!(
                held.id(),
                1,
                "a second connection, created after the discard"
            );
        });
        discarder.join().unwrap();
        waiter.join().unwrap();
        h.assert_quiescent();
        h.finish();
    });
}
