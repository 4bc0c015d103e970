//! `ShardedPool::set_max_size`: a key's `max_size` changed at run time (invariant 8). Shrinking
//! closes idle connections at once and returns over the new size; growing wakes waiters.

mod common;

use common::{Tally, TestManager, until_waiting};
use shardpool::pool::block_on;
use shardpool::{Config, ConfigError, ConnectionPool, Error, ShardedPool};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn pool(max_size: usize, limit: usize) -> (ShardedPool<TestManager>, Arc<Tally>) {
    let (m, tally) = TestManager::new();
    let config = Config::default()
        .shards(2)
        .max_size(max_size)
        .max_size_limit(limit)
        .idle_timeout(None)
        .wait_timeout(Some(Duration::from_secs(10)));
    (ShardedPool::new(m, config).expect("valid config"), tally)
}

#[test]
fn shrinking_closes_idle_connections_at_once() {
    let (pool, tally) = pool(4, 4);
    let conns: Vec<_> = (0..4)
        .map(|i| block_on(pool.get_on(i, &1)).unwrap())
        .collect();
    drop(conns);
    assert_eq!(pool.key_gauges(&1), Some((4, 4)), "four idle");
    pool.set_max_size(&1, 1).unwrap();
    assert_eq!(
        pool.key_gauges(&1),
        Some((1, 1)),
        "the shrink closed three idle connections"
    );
    assert_eq!(tally.alive.load(Ordering::SeqCst), 1);
    assert_eq!(pool.max_size_of(&1), Some(1));
}

#[test]
fn returns_over_the_new_size_close_and_creates_wait() {
    let (pool, tally) = pool(4, 4);
    let held: Vec<_> = (0..3)
        .map(|i| block_on(pool.get_on(i, &1)).unwrap())
        .collect();
    pool.set_max_size(&1, 2).unwrap();
    assert_eq!(pool.key_gauges(&1), Some((3, 0)), "nothing idle to close");
    // Over the new size, a checkout may not create: it waits (here until our deadline).
    let got = block_on(within(pool.get_on(0, &1), Duration::from_millis(50)));
    assert!(got.is_none(), "no create over the new size");
    for (n, conn) in held.into_iter().enumerate() {
        drop(conn);
        let (live, _) = pool.key_gauges(&1).unwrap();
        assert_eq!(
            live, 2,
            "after return {n}: the first one closed, the others are kept"
        );
    }
    assert_eq!(
        pool.key_gauges(&1),
        Some((2, 2)),
        "once every connection is back: within the new size, the rest kept idle"
    );
    assert_eq!(tally.alive.load(Ordering::SeqCst), 2);
    assert_eq!(pool.stats().total.closes, 1);
    // Back within the size, returns push again (the flag was cleared): no more closes.
    for _ in 0..3 {
        drop(block_on(pool.get_on(0, &1)).unwrap());
    }
    assert_eq!(pool.stats().total.closes, 1);
    assert_eq!(pool.key_gauges(&1), Some((2, 2)));
}

/// Polls `future` until it completes or `after` passes (`None`; the future is dropped, which
/// cancels a waiting checkout). The pool's own `wait_timeout` is 10 s in these tests.
async fn within<F: std::future::Future>(future: F, after: Duration) -> Option<F::Output> {
    let deadline = std::time::Instant::now() + after;
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        if std::time::Instant::now() >= deadline {
            return std::task::Poll::Ready(None);
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

#[test]
fn growing_wakes_a_waiter_which_creates() {
    let (pool, tally) = pool(1, 2);
    let held = block_on(pool.get_on(0, &1)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get_on(1, &1)).map(|conn| conn.id))
    };
    until_waiting(&pool, 1);
    pool.set_max_size(&1, 2).unwrap();
    let id = waiter
        .join()
        .unwrap()
        .expect("the grow let the waiter create");
    assert_ne!(id, held.id, "a second connection");
    assert_eq!(tally.created.load(Ordering::SeqCst), 2);
    drop(held);
}

#[test]
fn a_new_key_starts_at_the_size_set_for_it() {
    let (pool, tally) = pool(4, 4);
    pool.set_max_size(&7, 1).unwrap();
    assert_eq!(pool.max_size_of(&7), Some(1), "added with its own size");
    let _held = block_on(pool.get_on(0, &7)).unwrap();
    let second = block_on(within(pool.get_on(1, &7), Duration::from_millis(50)));
    assert!(
        second.is_none(),
        "a second connection would exceed the key's size"
    );
    assert_eq!(tally.created.load(Ordering::SeqCst), 1);
    assert_eq!(pool.max_size_of(&8), None);
    drop(block_on(pool.get_on(0, &8)).unwrap());
    assert_eq!(
        pool.max_size_of(&8),
        Some(4),
        "other keys keep Config::max_size"
    );
}

#[test]
fn bad_sizes_are_refused() {
    let (pool, _) = pool(2, 8);
    assert_eq!(pool.set_max_size(&1, 0), Err(ConfigError::ZeroMaxSize));
    assert_eq!(
        pool.set_max_size(&1, 9),
        Err(ConfigError::MaxSizeAboveLimit {
            max_size: 9,
            limit: 8
        })
    );
    assert_eq!(pool.max_size_of(&1), None, "a refused call adds no key");
    let (m, _) = TestManager::new();
    let prewarmed = ShardedPool::new(m, Config::default().max_size(4).min_idle(2)).unwrap();
    let err = prewarmed.set_max_size(&1, 1).unwrap_err();
    assert_eq!(
        err,
        ConfigError::MinIdleAboveSize {
            min_idle: 2,
            max_size: 1
        }
    );
    assert!(err.to_string().contains("below min_idle"), "{err}");
    pool.close();
    assert_eq!(pool.set_max_size(&1, 2), Err(ConfigError::Closed));
    assert!(matches!(block_on(pool.get(&1)), Err(Error::Closed)));
}

/// Four threads check out and return on both shards while the main thread resizes the key over
/// and over (1 to 4); no more than the limit (4) ever exist, and once the key is set to 2 and
/// every connection is back the key is within 2, with nothing lost.
#[test]
fn resizes_under_load_end_within_the_last_size() {
    let (pool, tally) = pool(4, 4);
    let workers: Vec<_> = (0..4usize)
        .map(|t| {
            let (pool, tally) = (pool.clone(), Arc::clone(&tally));
            std::thread::spawn(move || {
                for _ in 0..400 {
                    let conn = block_on(pool.get_on(t, &1)).expect("a connection");
                    tally.claim(conn.id);
                    std::thread::yield_now();
                    tally.release(conn.id);
                }
            })
        })
        .collect();
    for round in 0..300usize {
        pool.set_max_size(&1, 1 + round % 4).unwrap();
        std::thread::yield_now();
    }
    pool.set_max_size(&1, 2).unwrap();
    for worker in workers {
        worker.join().unwrap();
    }
    let (live, idle) = pool.key_gauges(&1).unwrap();
    assert!(live <= 2, "live {live} after the last resize to 2");
    assert_eq!(live, idle, "everything is back");
    assert_eq!(tally.alive.load(Ordering::SeqCst), live, "nothing lost");
    assert!(
        tally.peak_per_key[1].load(Ordering::SeqCst) <= 4,
        "never over the limit"
    );
}

/// With `max_size_limit` above `max_size` the idle limit defaults to the limit, so a key grown
/// at run time keeps every returned connection idle instead of closing those above the
/// configured `max_size`.
#[test]
fn a_grown_key_keeps_its_connections_idle() {
    let (pool, tally) = pool(2, 4);
    pool.set_max_size(&1, 4).unwrap();
    let conns: Vec<_> = (0..4)
        .map(|i| block_on(pool.get_on(i, &1)).unwrap())
        .collect();
    drop(conns);
    assert_eq!(pool.key_gauges(&1), Some((4, 4)), "all four kept idle");
    assert_eq!(pool.stats().total.closes, 0);
    assert_eq!(tally.alive.load(Ordering::SeqCst), 4);
}
