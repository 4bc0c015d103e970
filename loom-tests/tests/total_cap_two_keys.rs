//! `max_total` across two keys: `max_total` 1 (each key's `max_size` 1), and two threads, one per
//! key and shard, each check a connection out and discard it. Whichever takes the one total permit
//! second is refused by the total (its own key's permit is free): it finds no idle connection of
//! the other key to close, waits, and must be woken by the other key's discard, whose
//! `Total::release` either comes before the waiter flags the total permit word (the waiter's retry
//! takes the permit) or sees the flag and tells it to retry.
//!
//! Invariants: 7 (never two connections across the keys; the tracker checks it at every create,
//! and a lost total wake-up is a loom deadlock), 1, 2, 3.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn total_cap_two_keys() {
    check("total_cap_two_keys", || {
        let h = Harness::with_total(1, 1);
        let threads: Vec<_> = [(0, 1u8), (1, 2u8)]
            .into_iter()
            .map(|(shard, key)| {
                let pool = h.pool();
                thread::spawn(move || {
                    let held = loom_tests::get_key(&pool, shard, key).expect("a checkout");
                    held.discard();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        h.assert_quiescent_keys(&[1, 2]);
        assert_eq!(
            h.tracker.creates(),
            2,
            "one connection per key, one after the other"
        );
        h.finish();
    });
}
