//! The tokio integration (issue #14, `shardpool::integrations::tokio`): worker threads bound to
//! their own shards while blocking-pool threads take none, waits on tokio's timer with no pool
//! timer thread, and a maintenance task that works and ends with the pool.
//!
//! Run: `cargo test -p shardpool --features tokio --test integration_tokio`

use shardpool::integrations::MaintenanceError;
use shardpool::integrations::tokio::{BindShards, TokioTimer, spawn_maintenance};
use shardpool::pool::current_shard;
use shardpool::{
    Config, ConnectionPool, Error, PooledConn, SendConnectionPool, SendManage, ShardedPool,
};
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::runtime::{Builder, Runtime, worker_index};

/// Connections are numbers. `alive` lives as long as the manager: a `Weak` to it tells whether
/// the pool (which owns the manager) was freed.
#[derive(Default)]
struct Numbers {
    alive: Arc<()>,
}

impl SendManage for Numbers {
    type Key = u8;
    type Conn = u64;
    type Error = Infallible;

    async fn create(&self, key: &u8) -> Result<u64, Infallible> {
        tokio::task::yield_now().await;
        Ok(u64::from(*key))
    }
}

/// The threads of this process named like the pool's default timer thread (`shardpool-timer`,
/// which fits the kernel's 15-byte thread names whole).
fn timer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "shardpool-timer")
        .count()
}

fn runtime(workers: usize) -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .bind_pool_shards()
        .build()
        .expect("a tokio runtime")
}

/// Worker `i` is bound to shard `i`, and only workers are: blocking tasks spawned while the
/// workers start (competing with them for the blocking pool's first threads) and after, run
/// unbound. With a counter handing out shards to every thread the runtime starts
/// (`on_thread_start`), the blocking threads would be bound and the workers' shards would not be
/// `0..WORKERS`.
#[test]
fn workers_take_their_index_as_shard_and_blocking_threads_take_none() {
    const WORKERS: usize = 3;
    let runtime = runtime(WORKERS);
    let probe = || (current_shard(), worker_index(), std::thread::current().id());
    let early: Vec<_> = (0..8)
        .map(|_| {
            runtime.spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(20));
                probe()
            })
        })
        .collect();

    // worker -> (thread, shard), as seen by tasks on bound workers.
    let mut bound: BTreeMap<usize, (ThreadId, usize)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while bound.len() < WORKERS {
        assert!(Instant::now() < deadline, "bound workers so far: {bound:?}");
        let probes: Vec<_> = (0..4 * WORKERS)
            .map(|_| {
                runtime.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    probe()
                })
            })
            .collect();
        for task in probes {
            let (shard, worker, thread) = runtime.block_on(task).unwrap();
            let worker = worker.expect("tasks run on worker threads");
            // `None`: a worker that has not parked yet (bound at its first park).
            if let Some(shard) = shard {
                assert_eq!(shard, worker, "worker {worker} is bound to shard {shard}");
                if let Some((seen, _)) = bound.insert(worker, (thread, shard)) {
                    assert_eq!(seen, thread, "worker {worker} changed threads");
                }
            }
        }
    }
    let threads: HashSet<ThreadId> = bound.values().map(|&(thread, _)| thread).collect();
    assert_eq!(threads.len(), WORKERS, "one thread per worker: {bound:?}");

    let late = runtime.spawn_blocking(probe);
    for task in early.into_iter().chain([late]) {
        let (shard, worker, thread) = runtime.block_on(task).unwrap();
        assert_eq!(
            (shard, worker),
            (None, None),
            "a blocking-pool thread was bound"
        );
        assert!(!threads.contains(&thread));
    }

    // A checkout on a bound worker uses the worker's shard.
    let pool = ShardedPool::new(Numbers::default(), Config::default().shards(WORKERS)).unwrap();
    let checks: Vec<_> = (0..4 * WORKERS)
        .map(|_| {
            let pool = pool.clone();
            runtime.spawn(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                // The checkout's shard is the calling thread's when `get_send` is called; read the
                // worker there too: the task may move to another worker while it awaits (the
                // manager's create yields).
                let (bound, worker) = (current_shard().is_some(), worker_index());
                let conn = pool.get_send(&1).await.unwrap();
                (bound, worker, conn.shard())
            })
        })
        .collect();
    for task in checks {
        let (bound, worker, shard) = runtime.block_on(task).unwrap();
        if bound {
            assert_eq!(Some(shard), worker);
        }
    }
}

/// A checkout that waits does so on tokio's timer: no `shardpool-timer` thread appears. The
/// control at the end (the same wait from a plain thread, where `TokioTimer` falls back to the
/// pool's timer thread) shows the check sees that thread when it exists. With `TokioTimer::sleep`
/// forwarding to the inner manager, the first assertion fails.
#[test]
fn waits_on_tokios_timer_without_a_timer_thread() {
    let runtime = runtime(2);
    let wait = Duration::from_millis(30);
    let config = Config::default()
        .shards(2)
        .max_size(1)
        .wait_timeout(Some(wait));
    let pool = ShardedPool::new(TokioTimer(Numbers::default()), config).unwrap();
    runtime.block_on(async {
        let held = pool.get(&1).await.unwrap();
        let p = pool.clone();
        let started = Instant::now();
        // `get_send`: the wrapper keeps checkouts `Send`, so they can be spawned.
        let waited = tokio::spawn(async move { p.get_send(&1).await.map(drop) })
            .await
            .unwrap();
        assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");
        assert!(started.elapsed() >= wait);
        drop(held);
    });
    assert_eq!(
        timer_threads(),
        0,
        "a checkout started the pool's timer thread"
    );

    // Control: off tokio the wrapper falls back to the inner manager's `sleep`, the timer thread.
    let held = pool.get_blocking(&1).unwrap();
    let started = Instant::now();
    assert!(matches!(pool.get_blocking(&1), Err(Error::Timeout { .. })));
    assert!(started.elapsed() >= wait);
    drop(held);
    assert_eq!(timer_threads(), 1, "the check sees the timer thread");
}

/// Waits until `done` or fails after a generous deadline (the machine may be busy).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The task pre-warms every shard, and ends (freeing the pool) once the last handle is dropped:
/// it holds only a weak reference. With a strong one the pool would never be freed and the task
/// never end.
#[test]
fn maintenance_refills_every_shard_and_ends_when_the_pool_is_dropped() {
    let runtime = runtime(2);
    let manager = Numbers::default();
    let alive: Weak<()> = Arc::downgrade(&manager.alive);
    let pool =
        ShardedPool::new(TokioTimer(manager), Config::default().shards(2).min_idle(4)).unwrap();
    runtime.block_on(async {
        drop(pool.get_on(0, &1).await.unwrap()); // the key exists
        let task = spawn_maintenance(&pool, Duration::from_millis(5)).unwrap();
        eventually("2 idle connections on each shard", || {
            pool.stats().shards.iter().all(|shard| shard.idle == 2)
        })
        .await;
        assert_eq!(
            pool.stats().total.prewarms,
            3,
            "one was created by the checkout"
        );
        drop(pool);
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the task ends once the pool is dropped")
            .unwrap();
    });
    assert!(
        alive.upgrade().is_none(),
        "the pool (and its manager) was freed"
    );
}

/// The task ends at its next tick once the pool is closed, though handles remain.
#[test]
fn maintenance_ends_when_the_pool_is_closed() {
    let runtime = runtime(1);
    let pool = ShardedPool::new(TokioTimer(Numbers::default()), Config::default()).unwrap();
    runtime.block_on(async {
        let task = spawn_maintenance(&pool, Duration::from_millis(5)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "it runs while the pool is open");
        pool.close();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the task ends once the pool is closed")
            .unwrap();
    });
}

/// Aborting the handle stops the task; the pool is then freed with its last handle.
#[test]
fn maintenance_stops_when_aborted_and_leaks_nothing() {
    let runtime = runtime(1);
    let manager = Numbers::default();
    let alive: Weak<()> = Arc::downgrade(&manager.alive);
    let pool = ShardedPool::new(TokioTimer(manager), Config::default()).unwrap();
    runtime.block_on(async {
        let task = spawn_maintenance(&pool, Duration::from_millis(5)).unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(*pool.get(&3).await.unwrap(), 3, "the pool still works");
    });
    drop(pool);
    assert!(alive.upgrade().is_none());
}

/// Bad input is an error, not a panic (`tokio::time::interval` panics on a zero period,
/// `tokio::spawn` outside a runtime).
#[test]
fn maintenance_rejects_a_zero_interval_and_a_missing_runtime() {
    let pool = ShardedPool::new(TokioTimer(Numbers::default()), Config::default()).unwrap();
    let err = spawn_maintenance(&pool, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err, MaintenanceError::NoRuntime { runtime: "tokio" });
    assert!(err.to_string().contains("no tokio runtime"), "{err}");
    let runtime = runtime(1);
    let _in_runtime = runtime.enter();
    let err = spawn_maintenance(&pool, Duration::ZERO).unwrap_err();
    assert_eq!(err, MaintenanceError::ZeroInterval);
}
