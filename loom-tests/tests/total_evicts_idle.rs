//! `max_total` makes room by closing another key's idle connection: `max_total` 1 (each key's
//! `max_size` 1). The main thread leaves a connection of key 1 idle on shard 0; then one thread
//! checks out key 2 on shard 1 while another checks out key 1 on shard 0, and each discards what
//! it got. Key 2's checkout is refused by the total: it closes key 1's idle connection (unless key
//! 1's checkout took it first) and creates, or waits for key 1's discard. Key 1's checkout reuses
//! its idle connection, or, if it was closed, is refused by the total in turn and waits for key 2's
//! discard. An eviction racing key 1's own pop must neither hand one connection to two owners nor
//! drop it twice.
//!
//! Invariants: 7 (never two connections; both checkouts complete), 2, 3, 1.
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, check};

#[test]
fn total_evicts_idle() {
    check("total_evicts_idle", || {
        let h = Harness::with_total(1, 1);
        drop(loom_tests::get_key(&h.pool, 0, 1).expect("key 1 creates"));
        let threads: Vec<_> = [(1, 2u8), (0, 1u8)]
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
        h.finish();
    });
}
