//! A shrink racing a return and a checkout: `max_size` 2, connection 0 checked out. One thread
//! returns it, another checks a connection out on the other shard (popping connection 0, creating
//! connection 1, or waiting) and returns it, while the main thread lowers `max_size` to 1. Once
//! all is back the key must have at most one connection: a create after the shrink's CAS sees the
//! new cap, and a return either lands before the `OVER` flag (the shrink's drain closes it) or
//! meets the flag and closes its connection while the key is over the cap.
//!
//! Invariants: 8 (within the new size at quiescence), 1, 2, 3.
//!
//! On the instrumented stack this model is explored with at most 2 preemptions: three threads
//! over the real stack's atomics make the bound-3 space 1.29 million executions (171 s), against
//! 92,700 at 2 (14 s). The model is about the permit word and the `OVER` handshake, which the
//! mutex model, standing in the linearizable stack, explores at the full bound (13,400
//! executions, 2 s); on the real stack the seeded bug `over_pushes` still fails at bound 2
//! (scripts/loom.sh). `LOOM_NO_CAPS=1` explores the full bound on both.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, KEY, check_bounded};

/// The preemption cap: 2 on the instrumented stack, none (the script's bound) on the mutex model.
#[cfg(not(shardpool_loom_model_stack))]
const CAP: usize = 2;
#[cfg(shardpool_loom_model_stack)]
const CAP: usize = usize::MAX;

#[test]
fn resize_shrink() {
    check_bounded("resize_shrink", CAP, || {
        let h = Harness::resizable(2, 2);
        let returned = h.get(0).expect("creates connection 0");
        let returner = thread::spawn(move || drop(returned));
        let pool = h.pool();
        let taker = thread::spawn(move || {
            drop(loom_tests::get(&pool, 1).expect("a connection"));
        });
        h.pool.set_max_size(&KEY, 1).expect("a valid size");
        returner.join().unwrap();
        taker.join().unwrap();
        h.assert_quiescent();
        h.assert_within(1);
        h.finish();
    });
}
