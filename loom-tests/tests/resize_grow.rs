//! A grow wakes a waiter: `max_size` 1, its connection held by the main thread, a checkout on the
//! other shard waits; the main thread raises `max_size` to 2 and keeps its connection until the
//! waiter is done, so only the grow can let the waiter through. The grow's CAS on the permit word
//! either comes before the waiter flags the word (its retry sees the new cap and creates) or
//! returns the flag, and the resizer tells every queued waiter to retry.
//!
//! Invariants: 8 (a grow is a wake-up: losing it is a loom deadlock), 4, 1, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, KEY, check};

#[test]
fn resize_grow() {
    check("resize_grow", || {
        let h = Harness::resizable(1, 2);
        let held = h.get(0).expect("creates connection 0");
        let pool = h.pool();
        let waiter = thread::spawn(move || {
            let got = loom_tests::get(&pool, 1).expect("a connection after the grow");
            assert_eq!(got.id(), 1, "a second connection, allowed by the grow");
        });
        h.pool.set_max_size(&KEY, 2).expect("a valid size");
        waiter.join().unwrap();
        drop(held);
        h.assert_quiescent();
        h.assert_within(2);
        h.finish();
    });
}
