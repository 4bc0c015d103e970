//! A shrink racing a create under `max_total` (reviewer RZ): `max_size` 2 → 1 while a checkout on
//! the other shard takes its permit with `KeyPool::try_acquire_both` (a load of the permit word
//! and a `fetch_add` under `Total::takers`, which a resize does not take). The main thread holds
//! connection 0 through the shrink, then returns it. Once all is back the key must have at most
//! one connection (invariant 8).
#![cfg(shardpool_loom)]

use loom::thread;
use loom_tests::{Harness, KEY, check};

#[test]
fn resize_shrink_total() {
    check("resize_shrink_total", || {
        let h = Harness::new(2, |c| c.max_size_limit(2).max_total(2));
        let held = h.get(0).expect("creates connection 0");
        let pool = h.pool();
        let taker = thread::spawn(move || {
            drop(loom_tests::get(&pool, 1).expect("a connection"));
        });
        h.pool.set_max_size(&KEY, 1).expect("a valid size");
        drop(held);
        taker.join().unwrap();
        h.assert_quiescent();
        h.assert_within(1);
        h.finish();
    });
}
