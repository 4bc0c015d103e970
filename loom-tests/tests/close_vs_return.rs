//! `close` races with a return and a checkout: one connection idle on shard 0 and one checked out
//! (`max_size` 2). One thread closes the pool; the other returns its connection and then checks out
//! on shard 1. The return either lands before the stacks are flagged `CLOSED` (and `close` drains
//! it) or is refused (and the returner closes it); the checkout either wins the idle connection
//! before `close` (and closes it on return) or fails with `Error::Closed`.
//!
//! Invariants: 5 (every connection dropped exactly once by the time both threads are done; a
//! checkout that starts after `close` returned, in happens-before, fails), 2, 3.
#![cfg(shardpool_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use loom_tests::{Harness, check};
use shardpool::{ConnectionPool, Error};

#[test]
fn close_vs_return() {
    check("close_vs_return", || {
        let h = Harness::new(2, |c| c);
        let held = h.get(0).expect("creates connection 0");
        drop(h.get(0).expect("creates connection 1")); // idle on shard 0
        let closed = Arc::new(AtomicBool::new(false));
        let closer = {
            let pool = h.pool();
            let closed = Arc::clone(&closed);
            thread::spawn(move || {
                pool.close();
                closed.store(true, Ordering::Release);
            })
        };
        let pool = h.pool();
        let user = thread::spawn(move || {
            drop(held);
            let after_close = closed.load(Ordering::Acquire);
            match loom_tests::get(&pool, 1) {
                Ok(_held) => assert!(!after_close, "a checkout succeeded after close returned"),
                Err(Error::Closed) => {}
                Err(other) => panic!("unexpected checkout error: {other}"),
            }
        });
        closer.join().unwrap();
        user.join().unwrap();
        assert_eq!(
            h.tracker.existing(),
            0,
            "invariant 5 broken: a connection outlived close and its return"
        );
        assert!(
            matches!(h.get(0), Err(Error::Closed)),
            "checkout after close"
        );
        h.assert_quiescent();
        h.finish();
    });
}
