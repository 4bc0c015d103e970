//! `Config::max_total`: the cap on live connections across keys (invariant 7), on the sharded pool
//! (the mutex baseline refuses the setting).

mod common;

use common::{Tally, TestManager, until_waiting};
use shardpool::baseline::MutexPool;
use shardpool::pool::block_on;
use shardpool::{Config, ConfigError, ConnectionPool, Error, PooledConn, ShardedPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn pool(max_size: usize, max_total: usize) -> (ShardedPool<TestManager>, Arc<Tally>) {
    let (m, tally) = TestManager::new();
    let config = Config::default()
        .shards(2)
        .max_size(max_size)
        .max_total(max_total)
        .idle_timeout(None)
        .wait_timeout(Some(Duration::from_secs(10)));
    (ShardedPool::new(m, config).expect("valid config"), tally)
}

#[test]
fn the_total_cap_holds_over_many_keys_and_threads() {
    let (pool, tally) = pool(2, 3);
    let done = Arc::new(AtomicBool::new(false));
    // Maintenance closes idle connections for checkouts waiting on the total (a waiter is not
    // woken by another key's return to idle, only by a freed permit).
    let maintainer = {
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                for shard in 0..2 {
                    block_on(pool.maintain(shard));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let workers: Vec<_> = (0..6u32)
        .map(|t| {
            let (pool, tally) = (pool.clone(), Arc::clone(&tally));
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    let key = (t + i) % 5;
                    let conn = block_on(pool.get_on(t as usize, &key)).expect("a connection");
                    tally.claim(conn.id);
                    assert!(
                        tally.alive.load(Ordering::SeqCst) <= 3,
                        "max_total exceeded"
                    );
                    std::thread::yield_now(); // hold it a moment: more overlap, more contention
                    tally.release(conn.id);
                    if i % 7 == 0 {
                        conn.discard();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    maintainer.join().unwrap();
    assert!(
        tally.peak.load(Ordering::SeqCst) <= 3,
        "never more than max_total"
    );
    for key in 0..5 {
        assert!(
            tally.peak_per_key[key].load(Ordering::SeqCst) <= 2,
            "max_size per key"
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.total.live, tally.alive.load(Ordering::SeqCst) as u64);
    assert_eq!(stats.total.checked_out, 0);
    drop(pool);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        0,
        "every connection closed"
    );
}

#[test]
fn an_idle_connection_of_another_key_makes_room() {
    let (pool, tally) = pool(2, 1);
    drop(block_on(pool.get_on(0, &1)).unwrap());
    assert_eq!(
        pool.key_gauges(&1),
        Some((1, 1)),
        "key 1 idles one connection"
    );
    let other = block_on(pool.get_on(1, &2)).expect("key 2 creates in key 1's place");
    assert_eq!(
        pool.key_gauges(&1),
        Some((0, 0)),
        "key 1's idle connection was closed"
    );
    assert_eq!(pool.stats().total.closes, 1);
    assert_eq!(
        pool.stats().total.waits,
        0,
        "no wait: room was made at once"
    );
    drop(other);
    assert_eq!(tally.peak.load(Ordering::SeqCst), 1);
}

#[test]
fn a_freed_permit_of_another_key_wakes_a_total_waiter() {
    let (pool, tally) = pool(2, 1);
    let held = block_on(pool.get_on(0, &1)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get_on(1, &2)).map(|c| c.key))
    };
    until_waiting(&pool, 1);
    held.discard(); // frees the total permit: the waiter creates for key 2
    assert_eq!(waiter.join().unwrap().unwrap(), 2);
    assert_eq!(tally.peak.load(Ordering::SeqCst), 1);

    // A return to idle frees no permit; maintenance closes the idle connection for the waiter.
    let held = block_on(pool.get_on(0, &3)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get_on(1, &4)).map(|c| c.key))
    };
    until_waiting(&pool, 2);
    drop(held);
    block_on(pool.maintain(0));
    assert_eq!(waiter.join().unwrap().unwrap(), 4);
    assert_eq!(tally.peak.load(Ordering::SeqCst), 1);
}

#[test]
fn a_checkout_blocked_by_the_total_times_out() {
    let (m, tally) = TestManager::new();
    let config = Config::default()
        .shards(2)
        .max_total(1)
        .wait_timeout(Some(Duration::from_millis(30)));
    let pool = ShardedPool::new(m, config).unwrap();
    let held = block_on(pool.get_on(0, &1)).unwrap();
    let err = block_on(pool.get_on(1, &2)).unwrap_err();
    let Error::Timeout { waited } = err else {
        panic!("expected a timeout, got {err}");
    };
    assert!(waited >= Duration::from_millis(30));
    drop(held);
    assert_eq!(pool.stats().total.timeouts, 1);
    assert_eq!(tally.created.load(Ordering::SeqCst), 1);
}

#[test]
fn the_mutex_baseline_refuses_max_total() {
    let (m, _) = TestManager::new();
    let err = MutexPool::new(m, Config::default().max_total(2)).unwrap_err();
    assert_eq!(
        err,
        ConfigError::Unsupported {
            setting: "max_total",
            pool: "MutexPool"
        }
    );
    assert!(err.to_string().contains("use ShardedPool"));
}

/// Maintenance makes room only for checkouts the total blocks: a checkout waiting on its own key's
/// `max_size` (the total has room for it) does not cost another key its idle connection, nor stop
/// its pre-warming.
#[test]
fn maintenance_keeps_other_keys_idle_for_a_checkout_its_own_key_blocks() {
    let (m, _tally) = TestManager::new();
    let config = Config::default()
        .shards(1)
        .max_size(1)
        .max_total(2)
        .idle_timeout(None)
        .wait_timeout(Some(Duration::from_secs(10)));
    let pool = ShardedPool::new(m, config).expect("valid config");
    drop(block_on(pool.get(&2)).unwrap()); // key 2: one idle connection
    let held = block_on(pool.get(&1)).unwrap(); // the total is at its cap (2)
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get(&1)).map(|c| c.id))
    };
    until_waiting(&pool, 1);
    block_on(pool.maintain(0));
    assert_eq!(
        pool.key_gauges(&2),
        Some((1, 1)),
        "key 2's idle connection was closed for a checkout its own key blocks"
    );
    let held_id = held.id;
    drop(held); // handed to the waiter
    assert_eq!(waiter.join().unwrap().expect("handed off"), held_id);
}
