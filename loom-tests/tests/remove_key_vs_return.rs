//! `remove_key` races with a return and a checkout of the same key: one connection idle on shard 0
//! and one checked out (`max_size` 2). One thread removes the key; the other returns its connection
//! and then checks out again on shard 1. The return lands on the old key pool before its stacks are
//! flagged `CLOSED` (and `remove_key` drains it) or is refused (and the returner closes it). The
//! checkout either wins the old idle connection before the removal (and closes it on return) or
//! finds the key gone and starts a new key pool; a checkout that overlaps the removal may instead
//! fail with `Error::Closed`, as the key's waiters do. Once `remove_key` has returned, in
//! happens-before, a checkout must succeed, and never with one of the old connections.
//!
//! Invariants: 5 for one key (every connection of the removed key pool is dropped exactly once by
//! the time both threads are done), 1 per key pool, 2, 3.
#![cfg(shardpool_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use loom_tests::{Harness, KEY, check};
use shardpool::{ConnectionPool, Error};

#[test]
fn remove_key_vs_return() {
    check("remove_key_vs_return", || {
        let h = Harness::with_key_churn(2);
        let held = h.get(0).expect("creates connection 0");
        drop(h.get(0).expect("creates connection 1")); // idle on shard 0
        let removed = Arc::new(AtomicBool::new(false));
        let remover = {
            let pool = h.pool();
            let removed = Arc::clone(&removed);
            thread::spawn(move || {
                pool.remove_key(&KEY);
                removed.store(true, Ordering::Release);
            })
        };
        let pool = h.pool();
        let user = thread::spawn(move || {
            drop(held);
            let after_remove = removed.load(Ordering::Acquire);
            match loom_tests::get(&pool, 1) {
                Ok(again) => assert!(
                    !after_remove || again.id() >= 2,
                    "invariant 5 broken: connection {} of the removed key was handed out after \
                     remove_key returned",
                    again.id()
                ),
                // A checkout that overlaps the removal may fail as the key's waiters do.
                Err(Error::Closed) => assert!(
                    !after_remove,
                    "a checkout that started after remove_key returned failed: the key must start \
                     afresh"
                ),
                Err(other) => panic!("unexpected checkout error: {other}"),
            }
        });
        remover.join().unwrap();
        user.join().unwrap();
        for old in [0, 1] {
            assert!(
                h.tracker.is_dropped(old),
                "invariant 5 broken: connection {old} of the removed key outlived the removal"
            );
        }
        h.assert_quiescent();
        h.finish();
    });
}
