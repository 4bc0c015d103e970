//! Cross-shard steal against the owner's pop: one idle connection on shard 0; the owner (shard 0)
//! and a thief (shard 1) check out at once, use it and return it, with room for two connections.
//! Whichever loses the pop creates a second connection (or takes the first after its return), so
//! connections pushed by one thread are popped by the other: with the instrumented stack, loom
//! checks that each push publishes the connection to its popper (the `uses` cell of `Conn`).
//!
//! Invariants: 1, 2 (one guard per connection, accesses ordered by happens-before), 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn steal_vs_owner() {
    check("steal_vs_owner", || {
        let h = Harness::new(2, |c| c);
        drop(h.get(0).expect("the first checkout creates"));
        let threads: Vec<_> = (0..2)
            .map(|shard| {
                let pool = h.pool();
                thread::spawn(move || {
                    let held = loom_tests::get(&pool, shard).expect("a checkout succeeds");
                    drop(held);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        h.assert_quiescent();
        h.finish();
    });
}
