//! A failed create gives its permit back: two checkouts race for the only permit (`max_size` 1) and
//! the first `create` fails. The checkout that made it fails with `Error::Create`; the other, which
//! may be waiting for that permit, is woken by its release and creates.
//!
//! Invariants: 1, 3 (the failed create leaves no permit behind: live 1 at the end), 4.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};
use shardpool::Error;

#[test]
fn create_failure_releases_its_permit() {
    check("create_failure", || {
        let h = Harness::with_failing_creates(1, 0b1, |c| c);
        let threads: Vec<_> = (0..2)
            .map(|shard| {
                let pool = h.pool();
                thread::spawn(move || match loom_tests::get(&pool, shard) {
                    Ok(held) => {
                        assert_eq!(held.id(), 1, "the second create succeeds");
                        true
                    }
                    Err(Error::Create { error: failed, .. }) => {
                        assert_eq!(failed.attempt, 0, "only the first create fails");
                        false
                    }
                    Err(other) => panic!("unexpected checkout error: {other}"),
                })
            })
            .collect();
        let succeeded: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            succeeded.iter().filter(|&&ok| ok).count(),
            1,
            "exactly one checkout fails (the one whose create failed): {succeeded:?}"
        );
        h.assert_quiescent();
        assert_eq!(h.pool.key_gauges(&loom_tests::KEY), Some((1, 1)));
        h.finish();
    });
}
