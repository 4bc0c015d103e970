//! The pool on glommio (feature `runtime`): one pool shard per executor, waits and maintenance on
//! each executor's own timer. No thread of the pool's own.
//!
//! * [`crate::runtime::spawn_shards`] already binds executor `i` to pool shard `i`;
//!   [`pool_config`] sizes the pool to match the [`ShardMap`] (and takes its steal order).
//! * [`GlommioTimer`] wraps your [`Manage`] manager so that a checkout waits on the executor's
//!   glommio timer, not on the pool's default timer thread.
//! * [`spawn_maintenance`], called on each executor, spawns a local task that maintains that
//!   executor's own shard at an interval, and ends when the pool is closed or dropped.
//!
//! ```
//! use shardpool::integrations::glommio::{GlommioTimer, pool_config, spawn_maintenance};
//! use shardpool::runtime::{RuntimeOptions, spawn_shards};
//! use shardpool::topology::{Placement, Topology};
//! use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
//! use std::time::Duration;
//! # use std::convert::Infallible;
//! # struct Numbers;
//! # impl Manage for Numbers { type Key = u8; type Conn = u64; type Error = Infallible;
//! #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) } }
//!
//! let map = Topology::detect().place(&Placement::AllCores, None)?;
//! let pool = ShardedPool::new(GlommioTimer(Numbers), pool_config(&map, Config::default()))?;
//! let p = pool.clone();
//! // `pin: false` for a doctest on a shared machine; a service keeps the default (pinned).
//! let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
//! let handles = spawn_shards(&map, &options, move |ctx| {
//!     let pool = p.clone();
//!     async move {
//!         let maintenance = spawn_maintenance(&pool, Duration::from_secs(1)).unwrap();
//!         let conn = pool.get(&7).await.unwrap(); // on this executor's shard
//!         assert_eq!(shardpool::PooledConn::shard(&conn), ctx.shard);
//!         maintenance.cancel();
//!     }
//! })?;
//! handles.join()?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use super::MaintenanceError;
use crate::pool::{Config, ConnectionPool, Manage, ShardedPool};
use crate::topology::ShardMap;
use std::future::Future;
use std::time::Duration;

/// `config` with one shard per executor of `map` and `map`'s steal order (nearest CPUs first),
/// for a pool shared by the executors [`spawn_shards`](crate::runtime::spawn_shards) starts from
/// `map`: executor `i` then checks out on shard `i`.
///
/// ```
/// use shardpool::integrations::glommio::pool_config;
/// use shardpool::topology::{Placement, Topology};
/// use shardpool::Config;
///
/// let topology = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
/// let map = topology.place(&Placement::AllCores, None).unwrap();
/// let config = pool_config(&map, Config::default().max_size(32)).validate().unwrap();
/// assert_eq!(config.shards(), 4);
/// ```
pub fn pool_config(map: &ShardMap, config: Config) -> Config {
    config.shards(map.len()).steal_order(map.steal_order())
}

/// A manager whose checkouts wait on the glommio timer of the executor they run on: [`Manage`]
/// for `GlommioTimer<M>` forwards every method to `M` except [`sleep`](Manage::sleep), which is
/// `glommio::timer::sleep` on a shard executor started by
/// [`spawn_shards`](crate::runtime::spawn_shards), so no pool timer thread is started. Elsewhere
/// (a plain thread, an executor started otherwise) it falls back to `M`'s own `sleep`.
///
/// glommio's timer is `!Send`, so its futures are not `Send` (glommio's I/O is not either).
///
/// ```
/// use shardpool::integrations::glommio::GlommioTimer;
/// use shardpool::topology::{Placement, Topology};
/// use shardpool::runtime::{RuntimeOptions, spawn_shards};
/// use shardpool::{Config, ConnectionPool, Error, Manage, ShardedPool};
/// use std::time::Duration;
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl Manage for Numbers { type Key = u8; type Conn = u64; type Error = Infallible;
/// #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) } }
///
/// let config = Config::default().shards(1).max_size(1).wait_timeout(Some(Duration::from_millis(20)));
/// let pool = ShardedPool::new(GlommioTimer(Numbers), config).unwrap();
/// let map = Topology::from_nodes(vec![(0, vec![0])]).unwrap().place(&Placement::AllCores, None).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let timed_out = spawn_shards(&map, &options, move |_| {
///     let pool = pool.clone();
///     async move {
///         let _held = pool.get(&1).await.unwrap();
///         // The second checkout waits 20 ms on the executor's timer, then gives up.
///         matches!(pool.get(&1).await, Err(Error::Timeout { .. }))
///     }
/// })
/// .unwrap()
/// .join()
/// .unwrap();
/// assert_eq!(timed_out, vec![true]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlommioTimer<M>(pub M);

impl<M: Manage> Manage for GlommioTimer<M> {
    type Key = M::Key;
    type Conn = M::Conn;
    type Error = M::Error;

    #[inline]
    fn create(&self, key: &Self::Key) -> impl Future<Output = Result<Self::Conn, Self::Error>> {
        self.0.create(key)
    }

    #[inline]
    fn is_valid(&self, conn: &mut Self::Conn) -> bool {
        self.0.is_valid(conn)
    }

    #[inline]
    fn validate(&self, conn: &mut Self::Conn, idle_for: Duration) -> impl Future<Output = bool> {
        self.0.validate(conn, idle_for)
    }

    #[inline]
    fn recycle(&self, conn: &mut Self::Conn) -> bool {
        self.0.recycle(conn)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        // Decided when the wait starts, on the thread that polls the checkout.
        let on_shard = crate::runtime::current_shard().is_some();
        async move {
            if on_shard {
                sleep_on_executor(duration).await;
            } else {
                self.0.sleep(duration).await;
            }
        }
    }
}

/// Spawns a local task on the current shard executor (started by
/// [`spawn_shards`](crate::runtime::spawn_shards)) that runs a maintenance pass
/// ([`ConnectionPool::maintain`]: expiry and `min_idle`) over this executor's own shard: at once,
/// then `every` after each pass ends, on the executor's glommio timer. Call it once on every
/// executor so every shard is maintained; a pass touches only its shard's idle stacks, on the
/// thread that owns them.
///
/// The task holds only a [`WeakPool`](crate::WeakPool): between passes it does not keep the pool
/// alive. It ends by itself after its next sleep once the pool is closed
/// ([`ConnectionPool::close`]) or its last handle is dropped. Call
/// [`cancel`](::glommio::task::JoinHandle::cancel) on the returned handle to stop it sooner; it
/// also ends with its executor.
///
/// Fails with [`MaintenanceError::ZeroInterval`] for a zero interval,
/// [`MaintenanceError::NoRuntime`] off a shard executor, and
/// [`MaintenanceError::ShardCountMismatch`] when the pool's shard count is not the executors'
/// (see [`pool_config`]).
///
/// ```
/// use shardpool::integrations::glommio::{pool_config, spawn_maintenance};
/// use shardpool::runtime::{RuntimeOptions, spawn_shards};
/// use shardpool::topology::{Placement, Topology};
/// use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
/// use std::time::Duration;
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl Manage for Numbers { type Key = u8; type Conn = u64; type Error = Infallible;
/// #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) } }
///
/// let map = Topology::from_nodes(vec![(0, vec![0, 1])]).unwrap().place(&Placement::AllCores, None).unwrap();
/// let pool = ShardedPool::new(Numbers, pool_config(&map, Config::default().min_idle(4))).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let p = pool.clone();
/// let done = spawn_shards(&map, &options, move |ctx| {
///     let pool = p.clone();
///     async move {
///         drop(pool.get(&1).await.unwrap()); // the key exists on this shard
///         let maintenance = spawn_maintenance(&pool, Duration::from_millis(5)).unwrap();
///         // Pre-warmed to this shard's share of min_idle: 2 of 4.
///         while pool.stats().shards[ctx.shard].idle < 2 {
///             glommio::timer::sleep(Duration::from_millis(2)).await;
///         }
///         maintenance.cancel();
///         ctx.shard
///     }
/// })
/// .unwrap()
/// .join()
/// .unwrap();
/// assert_eq!(done, vec![0, 1]);
/// ```
pub fn spawn_maintenance<M: Manage>(
    pool: &ShardedPool<M>,
    every: Duration,
) -> Result<::glommio::task::JoinHandle<()>, MaintenanceError> {
    if every.is_zero() {
        return Err(MaintenanceError::ZeroInterval);
    }
    let Some(ctx) = crate::runtime::current_shard() else {
        return Err(MaintenanceError::NoRuntime { runtime: "glommio" });
    };
    if pool.shard_count() != ctx.shards {
        return Err(MaintenanceError::ShardCountMismatch {
            pool: pool.shard_count(),
            executors: ctx.shards,
        });
    }
    let weak = pool.downgrade();
    let shard = ctx.shard;
    let task = ::glommio::spawn_local(async move {
        loop {
            let Some(pool) = weak.upgrade() else {
                return;
            };
            if pool.is_closed() {
                return;
            }
            pool.maintain(shard).await;
            drop(pool);
            sleep_on_executor(every).await;
        }
    });
    Ok(task.detach())
}

/// Beyond this a wait never ends in practice (a century), and glommio's timer would panic on a
/// deadline past `Instant`'s range (`Duration::MAX`, which `Config::wait_timeout` accepts).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `glommio::timer::sleep`, except that a duration of a century or more waits forever instead of
/// panicking the executor.
async fn sleep_on_executor(duration: Duration) {
    if duration < FOREVER {
        ::glommio::timer::sleep(duration).await;
    } else {
        std::future::pending::<()>().await;
    }
}
