//! The glommio integration (issue #14, `shardpool::integrations::glommio`): one pool shard per
//! executor, waits on the executor's timer with no pool timer thread, and a maintenance task per
//! executor that maintains its own shard and ends with the pool.
//!
//! Run: `cargo test -p shardpool --features runtime --test integration_glommio`

use shardpool::integrations::MaintenanceError;
use shardpool::integrations::glommio::{GlommioTimer, pool_config, spawn_maintenance};
use shardpool::runtime::{RuntimeOptions, spawn_shards};
use shardpool::topology::{Placement, ShardMap, Topology};
use shardpool::{Config, ConnectionPool, Error, Manage, PooledConn, ShardedPool};
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Connections are numbers. `alive` lives as long as the manager: a `Weak` to it tells whether
/// the pool (which owns the manager) was freed.
#[derive(Default)]
struct Numbers {
    alive: Arc<()>,
}

impl Manage for Numbers {
    type Key = u8;
    type Conn = u64;
    type Error = Infallible;

    async fn create(&self, key: &u8) -> Result<u64, Infallible> {
        Ok(u64::from(*key))
    }
}

/// Two shards on two made-up CPUs, unpinned (the test machine may have one CPU, or be busy).
fn two_shards() -> (ShardMap, RuntimeOptions) {
    let topology = Topology::from_nodes(vec![(0, vec![0]), (1, vec![1])]).unwrap();
    let map = topology.place(&Placement::AllCores, None).unwrap();
    let options = RuntimeOptions {
        pin: false,
        ..RuntimeOptions::default()
    };
    (map, options)
}

/// As in tests/integration_tokio.rs: threads named like the pool's default timer thread.
fn timer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "shardpool-timer")
        .count()
}

/// Waits on the executor's timer until `done`, or fails after a generous deadline.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// `pool_config` gives the pool one shard per executor, and each executor checks out on its own.
#[test]
fn each_executor_checks_out_on_its_own_shard() {
    let (map, options) = two_shards();
    let pool = ShardedPool::new(Numbers::default(), pool_config(&map, Config::default())).unwrap();
    assert_eq!(pool.shard_count(), map.len());
    let p = pool.clone();
    let shards = spawn_shards(&map, &options, move |ctx| {
        let pool = p.clone();
        async move { (ctx.shard, pool.get(&1).await.unwrap().shard()) }
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(shards, vec![(0, 0), (1, 1)]);
}

/// A checkout that waits does so on the executor's timer: no `shardpool-timer` thread appears.
/// The control at the end (the same wait from a plain thread, where `GlommioTimer` falls back to
/// the pool's timer thread) shows the check sees that thread when it exists. With
/// `GlommioTimer::sleep` forwarding to the inner manager, the first assertion fails.
#[test]
fn waits_on_the_executors_timer_without_a_timer_thread() {
    let (map, options) = two_shards();
    let wait = Duration::from_millis(30);
    let config = pool_config(&map, Config::default().max_size(1).wait_timeout(Some(wait)));
    let pool = ShardedPool::new(GlommioTimer(Numbers::default()), config).unwrap();
    let p = pool.clone();
    let results = spawn_shards(&map, &options, move |ctx| {
        let pool = p.clone();
        async move {
            // A key per shard, so each shard waits on its own.
            let key = ctx.shard as u8;
            let held = pool.get(&key).await.unwrap();
            let started = Instant::now();
            let waited = pool.get(&key).await.map(drop);
            drop(held);
            (
                matches!(waited, Err(Error::Timeout { .. })),
                started.elapsed() >= wait,
            )
        }
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(results, vec![(true, true), (true, true)]);
    assert_eq!(
        timer_threads(),
        0,
        "a checkout started the pool's timer thread"
    );

    // Control: off a shard the wrapper falls back to the inner manager's `sleep`, the timer thread.
    let held = pool.get_blocking(&7).unwrap();
    assert!(matches!(pool.get_blocking(&7), Err(Error::Timeout { .. })));
    drop(held);
    assert_eq!(timer_threads(), 1, "the check sees the timer thread");
}

/// `task` finished within a generous deadline: `Some(true)` if it ended by itself, `Some(false)`
/// if it was cancelled, `None` if it is still running.
async fn ended(task: glommio::task::JoinHandle<()>) -> Option<bool> {
    futures_lite::future::or(async { Some(task.await.is_some()) }, async {
        glommio::timer::sleep(Duration::from_secs(20)).await;
        None
    })
    .await
}

/// Each executor's task pre-warms its own shard, and every task ends by itself once the pool's
/// last handle is dropped (they hold weak references); the pool is then freed. With a strong
/// reference in the tasks they would never end (`None` below) and the pool never be freed.
#[test]
fn maintenance_refills_each_shard_and_ends_when_the_pool_is_dropped() {
    let (map, options) = two_shards();
    let manager = Numbers::default();
    let alive: Weak<()> = Arc::downgrade(&manager.alive);
    let pool = ShardedPool::new(
        GlommioTimer(manager),
        pool_config(&map, Config::default().min_idle(4)),
    )
    .unwrap();
    drop(pool.get_blocking(&1).unwrap()); // the key exists
    let weak = pool.downgrade();
    let (ready, shards_ready) = std::sync::mpsc::channel();
    let handles = spawn_shards(&map, &options, move |ctx| {
        let (weak, ready) = (weak.clone(), ready.clone());
        async move {
            let pool = weak.upgrade().expect("the test holds the pool");
            let task = spawn_maintenance(&pool, Duration::from_millis(5)).unwrap();
            eventually("2 idle connections on this shard", || {
                pool.stats().shards[ctx.shard].idle == 2
            })
            .await;
            drop(pool);
            ready.send(()).unwrap();
            ended(task).await
        }
    })
    .unwrap();
    for _ in 0..map.len() {
        shards_ready
            .recv_timeout(Duration::from_secs(30))
            .expect("each shard pre-warmed");
    }
    assert_eq!(
        pool.stats().total.prewarms,
        3,
        "one was created by the checkout"
    );
    drop(pool);
    let ended = handles.join().unwrap();
    assert_eq!(
        ended,
        vec![Some(true), Some(true)],
        "each task ended by itself"
    );
    assert!(
        alive.upgrade().is_none(),
        "the pool (and its manager) was freed"
    );
}

/// A task ends after its next sleep once the pool is closed, though handles remain; a cancelled
/// one stops at once. (Two pools, so shard 1's close cannot end shard 0's task first.)
#[test]
fn maintenance_ends_when_the_pool_is_closed_or_cancelled() {
    let (map, options) = two_shards();
    let config = || pool_config(&map, Config::default());
    let open = ShardedPool::new(Numbers::default(), config()).unwrap();
    let closing = ShardedPool::new(Numbers::default(), config()).unwrap();
    let results = spawn_shards(&map, &options, move |ctx| {
        let (open, closing) = (open.clone(), closing.clone());
        async move {
            let pool = if ctx.shard == 0 { &open } else { &closing };
            let task = spawn_maintenance(pool, Duration::from_millis(5)).unwrap();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            if ctx.shard == 0 {
                task.cancel();
            } else {
                closing.close();
            }
            ended(task).await
        }
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(results, vec![Some(false), Some(true)]);
}

/// Bad input is an error, not a panic: a zero interval, a call off a shard executor, a pool whose
/// shard count is not the executors'.
#[test]
fn maintenance_rejects_bad_input() {
    let (map, options) = two_shards();
    let pool = ShardedPool::new(Numbers::default(), pool_config(&map, Config::default())).unwrap();
    let err = spawn_maintenance(&pool, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err, MaintenanceError::NoRuntime { runtime: "glommio" });
    assert!(
        err.to_string().contains("not on a glommio shard executor"),
        "{err}"
    );
    let three = ShardedPool::new(Numbers::default(), Config::default().shards(3)).unwrap();
    let errors = spawn_shards(&map, &options, move |_| {
        let (pool, three) = (pool.clone(), three.clone());
        async move {
            (
                spawn_maintenance(&pool, Duration::ZERO).unwrap_err(),
                spawn_maintenance(&three, Duration::from_secs(1)).unwrap_err(),
            )
        }
    })
    .unwrap()
    .join()
    .unwrap();
    for (zero, mismatch) in errors {
        assert_eq!(zero, MaintenanceError::ZeroInterval);
        assert_eq!(
            mismatch,
            MaintenanceError::ShardCountMismatch {
                pool: 3,
                executors: 2
            }
        );
    }
}

/// Durations past `Instant`'s range (which glommio's timer would panic on, taking the executor
/// with it) wait forever instead: a maintenance interval and a checkout's wait timeout of
/// `Duration::MAX`.
#[test]
fn huge_durations_wait_instead_of_panicking_the_executor() {
    let (map, options) = two_shards();
    let config = pool_config(&map, Config::default())
        .max_size(1)
        .wait_timeout(Some(Duration::MAX));
    let pool = ShardedPool::new(GlommioTimer(Numbers::default()), config).unwrap();
    let results = spawn_shards(&map, &options, move |ctx| {
        let pool = pool.clone();
        async move {
            let task = spawn_maintenance(&pool, Duration::MAX).unwrap();
            let mut waited = false;
            if ctx.shard == 0 {
                let held = pool.get(&1).await.unwrap();
                // A checkout that waits with a wait timeout of Duration::MAX, and is then cancelled.
                let checkout = async { Some(pool.get(&1).await.map(drop)) };
                let deadline = async {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    None
                };
                waited = futures_lite::future::or(checkout, deadline).await.is_none();
                drop(held);
            }
            glommio::timer::sleep(Duration::from_millis(20)).await; // the task sleeps "forever"
            task.cancel();
            waited
        }
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(results, vec![true, false]);
}
