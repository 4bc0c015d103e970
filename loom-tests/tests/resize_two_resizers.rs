//! Two resizes at once against a return and a checkout: `max_size` 2 with connections 0 and 1
//! checked out; one thread lowers `max_size` to 1 while another raises it back to 2, and the main
//! thread returns connection 0 meanwhile, then connection 1. Once all is back the key must be
//! within whichever size won (the lock orders the two CASes), with nothing lost.
//!
//! Invariants: 8 (two cap changes at once), 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, KEY, check};

#[test]
fn resize_two_resizers() {
    check("resize_two_resizers", || {
        let h = Harness::resizable(2, 2);
        let a = h.get(0).expect("connection 0");
        let b = h.get(1).expect("connection 1");
        let p1 = h.pool();
        let shrink = thread::spawn(move || p1.set_max_size(&KEY, 1).expect("a valid size"));
        let p2 = h.pool();
        let grow = thread::spawn(move || p2.set_max_size(&KEY, 2).expect("a valid size"));
        drop(a);
        drop(b);
        shrink.join().unwrap();
        grow.join().unwrap();
        h.assert_quiescent();
        let size = h.pool.max_size_of(&KEY).expect("a known key");
        h.assert_within(size);
        h.finish();
    });
}
