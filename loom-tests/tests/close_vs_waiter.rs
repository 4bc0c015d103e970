//! `close` races with a waiting checkout: the only connection (`max_size` 1) is held; one thread
//! checks out on shard 1 and waits; the other closes the pool, then returns the connection. The
//! waiter must finish (with `Error::Closed`, or with the connection if the hand-off came first) and
//! the returned connection must be dropped, not left idle in a closed pool.
//!
//! Invariants: 5, 4 (close wakes the waiter), 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};
use shardpool::{ConnectionPool, Error};

#[test]
fn close_vs_waiter() {
    check("close_vs_waiter", || {
        let h = Harness::new(1, |c| c);
        let held = h.get(0).expect("creates connection 0");
        let pool = h.pool();
        let waiter = thread::spawn(move || match loom_tests::get(&pool, 1) {
            Ok(held) => drop(held),
            Err(Error::Closed) => {}
            Err(other) => panic!("unexpected checkout error: {other}"),
        });
        let pool = h.pool();
        let closer = thread::spawn(move || {
            pool.close();
            drop(held);
        });
        closer.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(
            h.tracker.existing(),
            0,
            "invariant 5 broken: a connection outlived close and its return"
        );
        h.assert_quiescent();
        h.finish();
    });
}
