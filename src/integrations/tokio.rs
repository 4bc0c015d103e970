//! The pool on tokio (feature `tokio`): worker threads bound to shards, waits on tokio's timer,
//! maintenance on tokio's timer. No thread of the pool's own.
//!
//! * [`BindShards::bind_pool_shards`] on the runtime [`Builder`]: worker thread `i` uses pool
//!   shard `i` (size the pool with one shard per worker); threads of the blocking pool
//!   (`spawn_blocking`) are never bound and take no shard.
//! * [`TokioTimer`] wraps your [`SendManage`] manager so that a checkout waits with
//!   `tokio::time::sleep`, not on the pool's default timer thread.
//! * [`spawn_maintenance`] spawns one task that runs [`SendConnectionPool::maintain_send`] on
//!   every shard at an interval, and ends when the pool is closed or dropped.
//!
//! ```
//! use shardpool::integrations::tokio::{BindShards, TokioTimer, spawn_maintenance};
//! use shardpool::{Config, ConnectionPool, SendManage, ShardedPool};
//! use std::time::Duration;
//! # use std::convert::Infallible;
//! # struct Numbers;
//! # impl SendManage for Numbers { type Key = u8; type Conn = u64; type Error = Infallible;
//! #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) } }
//!
//! let runtime = tokio::runtime::Builder::new_multi_thread()
//!     .worker_threads(2)
//!     .enable_time()
//!     .bind_pool_shards() // worker i -> shard i
//!     .build()?;
//! let pool = ShardedPool::new(TokioTimer(Numbers), Config::default().shards(2))?;
//! runtime.block_on(async {
//!     let maintenance = spawn_maintenance(&pool, Duration::from_secs(1))?;
//!     let p = pool.clone();
//!     let seven = tokio::spawn(async move { *p.get(&7).await.unwrap() }).await?;
//!     assert_eq!(seven, 7);
//!     maintenance.abort(); // or let it end with the pool
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use super::MaintenanceError;
use crate::pool::{SendConnectionPool, SendManage, ShardedPool};
use ::tokio::runtime::{Builder, Handle};
use ::tokio::task::JoinHandle;
use ::tokio::time::MissedTickBehavior;
use std::future::Future;
use std::time::Duration;

/// Binds the calling thread to the pool shard of its tokio worker
/// ([`tokio::runtime::worker_index`]: shard `i` for worker `i`)
/// and returns that shard; on any other thread (a blocking-pool thread, the thread of a
/// multi-threaded runtime's `block_on`, a thread outside tokio) it binds nothing and returns
/// `None`.
///
/// [`BindShards::bind_pool_shards`] calls it from the runtime's `on_thread_park` hook. Call it
/// yourself from your own `on_thread_park` hook if you set one (tokio keeps one hook per event).
///
/// ```
/// use shardpool::integrations::tokio::bind_worker_thread;
/// use shardpool::pool::current_shard;
///
/// let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
/// runtime.block_on(async {
///     // On a worker: bound to the worker's index.
///     let (bound, worker, shard) = tokio::spawn(async {
///         (bind_worker_thread(), tokio::runtime::worker_index(), current_shard())
///     })
///     .await
///     .unwrap();
///     assert!(bound.is_some());
///     assert_eq!((bound, shard), (worker, worker));
///     // On a blocking-pool thread: nothing.
///     let blocking = tokio::task::spawn_blocking(|| (bind_worker_thread(), current_shard()))
///         .await
///         .unwrap();
///     assert_eq!(blocking, (None, None));
/// });
/// ```
pub fn bind_worker_thread() -> Option<usize> {
    let worker = ::tokio::runtime::worker_index()?;
    crate::pool::bind_thread_to_shard(worker);
    Some(worker)
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for ::tokio::runtime::Builder {}
}

/// Binds a tokio runtime's worker threads to pool shards: [`BindShards::bind_pool_shards`].
///
/// ```
/// use shardpool::integrations::tokio::BindShards;
/// let runtime = tokio::runtime::Builder::new_current_thread().bind_pool_shards().build().unwrap();
/// # drop(runtime);
/// ```
pub trait BindShards: sealed::Sealed {
    /// Makes worker thread `i` of the runtime use pool shard `i` (taken modulo each pool's shard
    /// count, so build the pool with `Config::shards` equal to the worker count), with the
    /// runtime's `on_thread_park` hook ([`bind_worker_thread`]).
    ///
    /// Only worker threads park, so only they are bound: threads of the blocking pool
    /// (`spawn_blocking`, `block_in_place`'s replacements before they run the scheduler) take no
    /// shard, whenever they start. A checkout on them uses the pool's default, a shard given
    /// round-robin. A worker is bound the first time it runs out of work (which an idle runtime's
    /// workers do as soon as they start) and again at every park, so after `block_in_place`
    /// hands a worker to another thread, that thread takes the worker's shard at its first park.
    /// Two gaps, both costing locality only (the pool is correct from any shard): a task a
    /// worker runs before its first park checks out on the round-robin default shard, and a
    /// thread that gave its worker away in `block_in_place` keeps that worker's shard when it
    /// goes back to the blocking pool.
    ///
    /// This replaces an `on_thread_park` hook set before it, and a later `on_thread_park`
    /// replaces it: to keep both, call [`bind_worker_thread`] from your hook.
    ///
    /// ```
    /// use shardpool::integrations::tokio::BindShards;
    /// use shardpool::pool::current_shard;
    /// use std::time::Duration;
    ///
    /// let runtime = tokio::runtime::Builder::new_multi_thread()
    ///     .worker_threads(2)
    ///     .enable_time()
    ///     .bind_pool_shards()
    ///     .build()
    ///     .unwrap();
    /// runtime.block_on(async {
    ///     let blocking = tokio::task::spawn_blocking(current_shard).await.unwrap();
    ///     assert_eq!(blocking, None, "blocking-pool threads are not bound");
    ///     // A worker that has parked once is bound to its index.
    ///     let (worker, shard) = tokio::spawn(async {
    ///         tokio::time::sleep(Duration::from_millis(5)).await;
    ///         (tokio::runtime::worker_index(), current_shard())
    ///     })
    ///     .await
    ///     .unwrap();
    ///     assert!(shard.is_none() || shard == worker);
    /// });
    /// ```
    fn bind_pool_shards(&mut self) -> &mut Self;
}

impl BindShards for Builder {
    fn bind_pool_shards(&mut self) -> &mut Self {
        self.on_thread_park(|| {
            bind_worker_thread();
        })
    }
}

/// A manager whose checkouts wait on tokio's timer: [`SendManage`] for `TokioTimer<M>` forwards
/// every method to `M` except [`sleep`](SendManage::sleep), which is `tokio::time::sleep` on a
/// tokio runtime, so no pool timer thread is started. Off a tokio runtime (a plain thread's
/// [`ShardedPool::get_blocking`], say) it falls back to `M`'s own `sleep`.
///
/// Its futures are `Send` as `M`'s are, so the pool is a [`SendConnectionPool`].
///
/// # Panics
///
/// As `tokio::time::sleep`: a checkout that has to wait panics on a runtime built without its
/// timer (call `enable_time` or `enable_all` on the runtime builder).
///
/// ```
/// use shardpool::integrations::tokio::TokioTimer;
/// use shardpool::{Config, ConnectionPool, Error, SendManage, ShardedPool};
/// use std::time::Duration;
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl SendManage for Numbers { type Key = u8; type Conn = u64; type Error = Infallible;
/// #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) } }
///
/// let config = Config::default().max_size(1).wait_timeout(Some(Duration::from_millis(20)));
/// let pool = ShardedPool::new(TokioTimer(Numbers), config).unwrap();
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// runtime.block_on(async {
///     let held = pool.get(&1).await.unwrap();
///     // The second checkout waits 20 ms on tokio's timer, then gives up.
///     assert!(matches!(pool.get(&1).await, Err(Error::Timeout { .. })));
///     drop(held);
/// });
/// let _inner: &Numbers = &pool.manager().0; // the wrapped manager
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokioTimer<M>(pub M);

impl<M: SendManage> SendManage for TokioTimer<M> {
    type Key = M::Key;
    type Conn = M::Conn;
    type Error = M::Error;

    #[inline]
    fn create(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send {
        SendManage::create(&self.0, key)
    }

    #[inline]
    fn is_valid(&self, conn: &mut Self::Conn) -> bool {
        SendManage::is_valid(&self.0, conn)
    }

    #[inline]
    fn validate(
        &self,
        conn: &mut Self::Conn,
        idle_for: Duration,
    ) -> impl Future<Output = bool> + Send {
        SendManage::validate(&self.0, conn, idle_for)
    }

    #[inline]
    fn recycle(&self, conn: &mut Self::Conn) -> bool {
        SendManage::recycle(&self.0, conn)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        // Decided when the wait starts, on the thread that polls the checkout.
        let on_tokio = Handle::try_current().is_ok();
        async move {
            if on_tokio {
                ::tokio::time::sleep(duration).await;
            } else {
                SendManage::sleep(&self.0, duration).await;
            }
        }
    }
}

/// The maintenance interval the docs suggest: one second. Shorter intervals reap expired
/// connections sooner (an idle connection lives up to `idle_timeout` plus one interval) and
/// refill `min_idle` sooner, at the cost of a pass over every key of every shard each time.
///
/// ```
/// assert_eq!(shardpool::integrations::tokio::MAINTENANCE_INTERVAL.as_secs(), 1);
/// ```
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Spawns a task on the current tokio runtime that runs a maintenance pass
/// ([`SendConnectionPool::maintain_send`]: expiry and `min_idle`) over every shard of `pool`, one
/// shard after another: at once, then every `every` ([`MAINTENANCE_INTERVAL`] is a good start;
/// a pass that overruns delays the next one rather than bunching them).
///
/// The task holds only a [`WeakPool`](crate::WeakPool): between passes it does not keep the pool
/// alive. It ends by itself at its next tick once the pool is closed
/// ([`ConnectionPool::close`](crate::ConnectionPool::close)) or its last handle is dropped (a
/// pass under way finishes first, then drops the pool if it held the last handle). Abort the
/// returned handle to stop it sooner; dropping the handle leaves it running, as with
/// `tokio::spawn`.
///
/// Fails with [`MaintenanceError::ZeroInterval`] for a zero interval and
/// [`MaintenanceError::NoRuntime`] outside a tokio runtime.
///
/// ```
/// use shardpool::integrations::tokio::spawn_maintenance;
/// use shardpool::{Config, ConnectionPool, SendManage, ShardedPool};
/// use std::time::Duration;
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl SendManage for Numbers { type Key = u8; type Conn = u64; type Error = Infallible;
/// #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) } }
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// let pool = ShardedPool::new(Numbers, Config::default().shards(2).min_idle(4)).unwrap();
/// runtime.block_on(async {
///     drop(pool.get(&1).await.unwrap()); // the key exists: maintenance keeps 4 idle for it
///     let task = spawn_maintenance(&pool, Duration::from_millis(10)).unwrap();
///     while pool.stats().total.idle < 4 {
///         tokio::time::sleep(Duration::from_millis(5)).await;
///     }
///     drop(pool); // the last handle: the task ends at its next tick
///     task.await.unwrap();
/// });
/// ```
pub fn spawn_maintenance<M: SendManage>(
    pool: &ShardedPool<M>,
    every: Duration,
) -> Result<JoinHandle<()>, MaintenanceError> {
    if every.is_zero() {
        return Err(MaintenanceError::ZeroInterval);
    }
    let runtime =
        Handle::try_current().map_err(|_| MaintenanceError::NoRuntime { runtime: "tokio" })?;
    let weak = pool.downgrade();
    Ok(runtime.spawn(async move {
        let mut ticks = ::tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(pool) = weak.upgrade() else {
                return;
            };
            if pool.is_closed() {
                return;
            }
            for shard in 0..crate::ConnectionPool::shard_count(&pool) {
                pool.maintain_send(shard).await;
            }
        }
    }))
}
