//! Code generic over the pool spawns checkouts on tokio's multi-threaded runtime when the manager's
//! futures are `Send` (issue #14): a [`SendManage`] manager and a [`SendConnectionPool`] bound.
//!
//! `spawn_checkouts` and `spawn_maintenance` name no concrete pool, yet `tokio::spawn` accepts
//! their futures because `get_send` & co. are declared `Send`. What proves those declarations
//! true is the library itself: `ShardedPool`'s and `MutexPool`'s impls return the ordinary
//! checkout futures, and would not compile if those were not `Send` for a `SendManage` manager.
//! The `compile_fail` doctest on `SendConnectionPool` shows the same code over a plain
//! `ConnectionPool` bound does not compile. The tests below run both pools through the generic
//! code and check the results.

use shardpool::baseline::MutexPool;
use shardpool::{Config, Manage, PooledConn, SendConnectionPool, SendManage, ShardedPool};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the manager did, shared with the test.
#[derive(Debug, Default)]
struct Counts {
    created: AtomicU64,
    validated: AtomicU64,
}

/// A tokio manager: each future awaits (so a task may resume on another worker) and is `Send`.
#[derive(Debug, Default)]
struct TokioManager {
    counts: Arc<Counts>,
}

impl SendManage for TokioManager {
    type Key = u32;
    /// (key, creation number)
    type Conn = (u32, u64);
    type Error = std::io::Error;

    async fn create(&self, key: &u32) -> std::io::Result<(u32, u64)> {
        tokio::task::yield_now().await;
        // Ordering: a counter read after the tasks are joined (the join synchronises).
        let n = self.counts.created.fetch_add(1, Ordering::Relaxed);
        Ok((*key, n))
    }

    async fn validate(&self, _conn: &mut (u32, u64), _idle_for: Duration) -> bool {
        tokio::task::yield_now().await;
        // Ordering: as in `create`.
        self.counts.validated.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// Fails to compile unless `T` is `Send`.
fn assert_send<T: Send>(value: T) -> T {
    value
}

/// Spawns `tasks` checkouts on the runtime's workers, alternating keys 0 and 1 and shards 0 and
/// 1, each holding its connection across an await; returns each one's (key, reused).
async fn spawn_checkouts<P: SendConnectionPool<TokioManager>>(
    pool: &P,
    tasks: u32,
) -> Vec<(u32, bool)> {
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let key = i % 2;
                let conn = if i % 4 < 2 {
                    pool.get_send(&key).await
                } else {
                    pool.get_on_send((i / 4) as usize % 2, &key).await
                }
                .expect("a connection within the wait timeout");
                tokio::task::yield_now().await; // the guard is held across an await
                assert_eq!(conn.0, key, "a connection of the key asked for");
                (key, conn.is_reused())
            })
        })
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.expect("the task does not panic"));
    }
    results
}

/// Spawns one maintenance pass per shard.
async fn spawn_maintenance<P: SendConnectionPool<TokioManager>>(pool: &P) {
    for shard in 0..pool.shard_count() {
        let pool = pool.clone();
        tokio::spawn(async move { pool.maintain_send(shard).await })
            .await
            .expect("maintenance does not panic");
    }
}

/// Runs the generic code against one pool and checks what it saw.
async fn check<P: SendConnectionPool<TokioManager>>(pool: P, counts: &Counts) {
    // The futures are `Send` for the generic `P`, not only for a concrete pool.
    drop(assert_send(pool.get_send(&0)).await.expect("a connection"));
    drop(
        assert_send(pool.get_on_send(1, &1))
            .await
            .expect("a connection"),
    );

    let results = spawn_checkouts(&pool, 64).await;
    assert_eq!(results.len(), 64);
    for key in 0..2 {
        assert_eq!(results.iter().filter(|r| r.0 == key).count(), 32);
    }
    // Ordering: the tasks are joined.
    let created = counts.created.load(Ordering::Relaxed);
    assert!(created <= 4, "two keys, max_size 2 each: {created} created");
    // The two warm-up checkouts created one connection per key. Since then each checkout either
    // created one (not reused) or reused one, idle or handed over by a returning task.
    let fresh = results.iter().filter(|r| !r.1).count() as u64;
    assert_eq!(
        fresh + 2,
        created,
        "{fresh} fresh checkouts after 2 warm-up creates"
    );
    // Ordering: the tasks are joined.
    assert!(
        counts.validated.load(Ordering::Relaxed) > 0,
        "idle reuses were validated"
    );

    spawn_maintenance(&pool).await;
    let stats = pool.stats().total;
    assert!(stats.live <= 4, "{stats:?}");
    assert_eq!(stats.idle, stats.live, "everything came back: {stats:?}");
}

fn config() -> Config {
    Config::default()
        .shards(2)
        .max_size(2)
        .wait_timeout(Some(Duration::from_secs(10)))
        .validate_idle_after(Some(Duration::ZERO))
}

/// A `SendManage` is a `Manage` (the blanket implementation), so it fits every pool unchanged.
fn is_manage<M: Manage>() {}
const _: fn() = is_manage::<TokioManager>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_code_spawns_checkouts_of_the_sharded_pool() {
    let manager = TokioManager::default();
    let counts = Arc::clone(&manager.counts);
    let pool = ShardedPool::new(manager, config()).expect("valid config");
    check(pool, &counts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_code_spawns_checkouts_of_the_mutex_pool() {
    let manager = TokioManager::default();
    let counts = Arc::clone(&manager.counts);
    let pool = MutexPool::new(manager, config()).expect("valid config");
    check(pool, &counts).await;
}
