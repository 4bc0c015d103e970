//! Two returns over a lowered cap: `max_size` 2 → 1 with both connections checked out, then two
//! threads return them at once. Every interleaving must end with exactly one connection kept: the
//! first return over the cap closes (under the resize lock, permit included), the second then
//! finds the key within its cap and keeps its connection. Before the close moved under the lock,
//! both returns could read the count 2 and both close, leaving the key with none.
//!
//! Invariants: 8 (no more closes than the shrink needs), 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, KEY, check};

#[test]
fn resize_overclose() {
    check("resize_overclose", || {
        let h = Harness::resizable(2, 2);
        let a = h.get(0).expect("connection 0");
        let b = h.get(1).expect("connection 1");
        h.pool.set_max_size(&KEY, 1).expect("a valid size");
        let ta = thread::spawn(move || drop(a));
        let tb = thread::spawn(move || drop(b));
        ta.join().unwrap();
        tb.join().unwrap();
        h.assert_quiescent();
        let (live, _) = h.pool.key_gauges(&KEY).unwrap();
        assert_eq!(
            live, 1,
            "one return over the cap closes, the other is kept: {live} live"
        );
        h.finish();
    });
}

/// The shrink's drain against a return: connection 0 idle, connection 1 checked out; the main
/// thread lowers `max_size` 2 → 1 while another thread returns connection 1. The drain and the
/// return each close only while the key is over its cap, so exactly one connection is kept.
#[test]
fn resize_drain_vs_return() {
    check("resize_drain_vs_return", || {
        let h = Harness::resizable(2, 2);
        let idle = h.get(0).expect("connection 0");
        let held = h.get(1).expect("connection 1");
        drop(idle);
        let returner = thread::spawn(move || drop(held));
        h.pool.set_max_size(&KEY, 1).expect("a valid size");
        returner.join().unwrap();
        h.assert_quiescent();
        let (live, _) = h.pool.key_gauges(&KEY).unwrap();
        assert_eq!(live, 1, "the shrink needs one close: {live} live");
        h.finish();
    });
}
