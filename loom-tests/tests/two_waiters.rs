//! Two waiters, one return and one freed permit: both connections (`max_size` 2) are held; two
//! checkouts (one per shard) wait; the main thread returns one connection and then discards the
//! other. Each waiter must get a connection: the oldest is handed the returned one (or takes it on
//! its retry), and the freed permit's notification reaches a waiter that can use it, even when the
//! waiter it first told was handed a connection instead (the notification is passed on).
//!
//! Invariants: 4 (no waiter left behind: a lost or swallowed notification is a loom deadlock),
//! 1, 2, 3.
//!
//! On the instrumented stack this model is explored with at most 2 preemptions. Three threads
//! over the real stack's atomics make the bound-3 space 5.2 million executions (about 15 minutes
//! of CI, two thirds of the whole loom step), against 297,000 at 2 (55 s). The model is about the
//! wait queue's hand-off and notification passing, not the stack: the mutex model, which stands
//! the linearizable stack in, still explores it at the full bound (54,000 executions), and on the
//! real stack the seeded bug `handoff_unlocked` (the bug this model found) fails at bound 2
//! (scripts/loom.sh). `LOOM_NO_CAPS=1` explores the full bound on both.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check_bounded};

/// The preemption cap: 2 on the instrumented stack, none (the script's bound) on the mutex model.
#[cfg(not(shardpool_loom_model_stack))]
const CAP: usize = 2;
#[cfg(shardpool_loom_model_stack)]
const CAP: usize = usize::MAX;

#[test]
fn two_waiters() {
    check_bounded("two_waiters", CAP, || {
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
