//! A connection whose `Drop` returns another connection of the same key, while the key is over a
//! lowered `max_size`: the close must not hold the resize lock (review RZ2 of the D2 fix).
use shardpool::{Config, Manage, Pooled, ShardedPool};
use std::convert::Infallible;
use std::sync::mpsc;
use std::time::Duration;

struct Nest;
struct Conn(Option<Pooled<Nest>>);

impl Manage for Nest {
    type Key = u8;
    type Conn = Conn;
    type Error = Infallible;
    async fn create(&self, _: &u8) -> Result<Conn, Infallible> {
        Ok(Conn(None))
    }
}

/// The key's gauges at the end, or `None` if the thread hung for 5 s.
fn run(shrink_while_out: bool) -> Option<Option<(usize, usize)>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let config = Config::default()
            .shards(1)
            .max_size(2)
            .max_size_limit(2)
            .idle_timeout(None);
        let pool = ShardedPool::new(Nest, config).unwrap();
        let mut outer = pool.get_blocking(&1).unwrap();
        let inner = pool.get_blocking(&1).unwrap();
        outer.0 = Some(inner);
        if shrink_while_out {
            pool.set_max_size(&1, 1).unwrap();
            drop(outer); // over the cap: settle_over closes outer under the lock -> inner returns
        } else {
            drop(outer); // idle now, holding inner checked out
            pool.set_max_size(&1, 1).unwrap(); // drain closes outer under the lock
        }
        tx.send(pool.key_gauges(&1)).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

#[test]
fn return_over_cap_with_nested_conn() {
    assert_eq!(
        run(true),
        Some(Some((1, 1))),
        "no deadlock, and the key keeps one (live, idle)"
    );
}

#[test]
fn drain_with_nested_conn() {
    assert_eq!(
        run(false),
        Some(Some((1, 1))),
        "no deadlock, and the key keeps one (live, idle)"
    );
}
