//! The pool core: a lock-free, per-core sharded connection pool, independent of any runtime.
//!
//! # Invariants
//!
//! Every change to this module keeps these true; the loom models in `loom-tests/` check them under
//! every interleaving they explore (docs/protocol.md says which model checks which).
//!
//! 1. **Capacity.** For every key, `live ≤ max_size` at every instant, where `live` counts
//!    connections that exist (idle, checked out, or being created). A permit is taken from
//!    `KeyPool::live` *before* `create` runs and given back only *after* the connection is dropped.
//! 2. **One place.** A connection is in exactly one place: one shard's idle stack, one guard, one
//!    waiter's hand-off slot, or closed. It lives in one node of its key's idle stacks from create
//!    to close, and the place that holds it holds the node's one lease (`stack::Lease`); moving it
//!    between places moves the lease, never a copy, and no code path keeps a second reference.
//!    A closing connection gives its node back before its permit, so a create that holds a permit
//!    always finds a free node.
//! 3. **Nothing lost.** At quiescence, `live == idle + checked out` for every key, and every created
//!    connection is dropped exactly once: by `close`, by a failed check, by an idle limit, or when
//!    its pool or key is closed. A panic in the manager's `create`, `is_valid`, `validate` or
//!    `recycle`, or in a closing connection's `Drop`, reaches the caller and loses nothing either:
//!    the connection in hand is closed (its node and permit freed) during the unwind. So does a
//!    checkout cancelled while `validate` runs on the connection it took.
//! 4. **No lost wake-up.** A checkout that waits is woken when a connection is returned or a permit
//!    freed. The first waiter of a key sets a `WAITING` flag in every idle stack's head word and in
//!    the permit word, then retries once before sleeping; a return's push CAS or a release's
//!    `fetch_sub` on the same word either comes first (the retry sees it) or sees the flag (and hands
//!    the connection straight to the oldest waiter, or notifies one). A notification a waiter does
//!    not use is passed on (see `waiters`).
//! 5. **Clean close.** `close` sets the closed flag, then a `CLOSED` flag in every idle stack's head
//!    word, then drains; a return's push either lands before the flag (and is drained) or is refused
//!    (and the returner closes the connection). So every connection is dropped exactly once, and no
//!    checkout succeeds after `close` has returned (every success path re-checks the closed flag
//!    with the connection in hand).
//! 6. **Expiry.** A connection past its idle timeout or lifetime is never handed out: every
//!    checkout checks the connection it popped, and maintenance only drops what it popped itself,
//!    so expiry racing with checkout or steal can neither hand out nor double-drop a connection.
//! 7. **Total capacity.** With `Config::max_total`, `live across all keys ≤ max_total` at every
//!    instant. A connection holds a total permit (`Total::live`) from before `create` until after
//!    it is dropped, taken with its key's permit and given back just before it. Both are taken
//!    together under one lock (`Total::takers`), the only place that adds to either word, so a
//!    check of both counts stays true until the adds: no permit is ever taken and handed back,
//!    which would let a checkout fail on a permit that is in fact free. No lost wake-up for the
//!    total: a waiting checkout that the total refuses also joins `Total::waiters` (once per
//!    wait), whose first arrival sets `TOTAL_WAITING` in the total permit word, and retries before
//!    it sleeps; a release's `fetch_sub` on that word either comes first (the retry sees the free
//!    permit) or sees the flag and tells every waiter not yet told to retry (a broadcast, so a
//!    notification never lands only on a waiter its own key's `max_size` blocks). A checkout
//!    blocked by the total first closes one idle connection of another key, if any; one that then
//!    waits is woken by a freed total permit of any key, not by another key's return to idle (that
//!    frees no permit): `maintain` closes idle connections for it, and `wait_timeout` bounds it.
//! 8. **Resize.** A key's `max_size` lives in its permit word, next to the count and the
//!    `WAITING` flag, and `ShardedPool::set_max_size` changes it by an RMW on that word under the
//!    key's `resize` lock (and, with `max_total`, under `Total::takers`). So invariant 1 holds
//!    against the cap of the instant: a taker's check and add (a CAS, or a load and add under
//!    `Total::takers`, which the resize's CAS also holds, so it cannot lower the cap between the
//!    two) reads the cap of the same word. *Growing* wakes every waiter, with invariant 4's argument: a
//!    waiter's flag and the resize's CAS are RMWs of one word, so either the CAS comes first (the
//!    waiter's retry reads the new cap) or the CAS returns the flag and the resizer tells every
//!    queued waiter to retry (one that queues after that reads the new cap on its retry).
//!    *Shrinking* cannot make `live` exceed the new cap by a create after its CAS; while `live`
//!    is over it, an `OVER` flag, set in every idle stack's head word under the lock after the
//!    CAS, refuses every push: a return's push CAS either lands before the flag (the resizer's
//!    drain, after the flag, pops it) or is refused, and the returner, under the lock, decides
//!    to close its connection while `live - closing > cap` (`closing`, guarded by the lock,
//!    counts connections decided closed whose permits are not yet released) and otherwise
//!    clears the flag and pushes again; the drain decides each connection the same way. A
//!    decided connection is counted in `closing` under the lock, dropped after the unlock (its
//!    `Drop` may return another connection of the key, which takes the lock again), and its
//!    permit released and `closing` lowered together under the lock; so no two deciders both
//!    count a connection the other is closing (which took the key below its cap). The lock
//!    keeps a shrink from setting the flag between a returner's check and its clearing. So once
//!    every connection checked out at the shrink has come back, `live ≤ cap`. The flag costs the
//!    return nothing while clear: a push tests its three flags with one branch.
//!
//! # Layout
//!
//! * [`ShardedPool`]: shards × keys of idle stacks (bounded, lock-free LIFO: `stack`), a permit
//!   counter and a waiter queue per key, and per-shard metrics.
//! * `WeakPool`: a [`ShardedPool`] handle that does not keep the pool open, for background
//!   timers (`crate::integrations`); outside the protocol, so outside the invariants.
//! * [`crate::baseline::MutexPool`]: the `Mutex<HashMap<Key, VecDeque<Idle>>>` design, behind the
//!   same [`ConnectionPool`] trait.
//! * `sync`: the shim through which every atomic, lock, cell and `Arc` above is named, so the
//!   `shardpool_loom` cfg can swap in loom's.

mod clock;
mod config;
mod error;
mod keys;
pub(crate) mod leak;
mod manage;
pub(crate) mod metrics;
pub(crate) mod sharded;
// Under `shardpool_loom_model_stack` the pool uses `stack_model` instead (loom-tests, docs/protocol.md);
// the real stack still compiles there (its `Refused`, `Lease` and `MAX_CAPACITY` are shared).
#[cfg_attr(shardpool_loom_model_stack, allow(dead_code))]
pub(crate) mod stack;
#[cfg(shardpool_loom_model_stack)]
pub(crate) mod stack_model;
pub(crate) mod sync;
mod timer;
pub(crate) mod waiters;

pub use clock::{Clock, ManualClock};
pub use config::{Config, ConfigError, MAX_EXPIRY_JITTER, MAX_SHARDS, MAX_SIZE, Validated};
pub use error::{Error, KeyName};
pub use leak::Leak;
pub use manage::{Manage, SendManage};
pub use metrics::{ShardStats, Stats};
#[cfg(not(shardpool_loom))]
pub use sharded::WeakPool;
pub use sharded::{Pooled, ShardedPool};

use std::fmt;
use std::future::Future;
use std::ops::DerefMut;

/// The interface both pools implement, so servers, benches and tests can switch between the
/// sharded pool and the [`MutexPool`](crate::baseline::MutexPool) baseline at run time (by
/// instantiating generic code with either).
///
/// # Examples
///
/// ```
/// use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
/// use shardpool::baseline::MutexPool;
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl Manage for Numbers {
/// #     type Key = u8; type Conn = u64; type Error = Infallible;
/// #     async fn create(&self, _: &u8) -> Result<u64, Infallible> { Ok(7) }
/// # }
///
/// async fn use_one<P: ConnectionPool<Numbers>>(pool: &P) -> u64 {
///     let conn = pool.get(&1).await.expect("a connection");
///     *conn
/// }
///
/// let config = Config::default().shards(2).max_size(4);
/// let sharded = ShardedPool::new(Numbers, config.clone()).unwrap();
/// let mutex = MutexPool::new(Numbers, config).unwrap();
/// assert_eq!(shardpool::pool::block_on(use_one(&sharded)), 7);
/// assert_eq!(shardpool::pool::block_on(use_one(&mutex)), 7);
/// ```
pub trait ConnectionPool<M: Manage>: Clone + Send + Sync + 'static {
    /// The guard a checkout returns; dropping it returns the connection.
    type Guard: PooledConn<M>;

    /// Checks out a connection to `key` on the current thread's shard (see
    /// [`bind_thread_to_shard`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes loses nothing and leaves nothing behind: a waiting
    /// checkout leaves its key's queue, and a connection handed to it meanwhile goes on to the next
    /// waiter or back to an idle stack; a `create` under way is dropped and its permit freed; a
    /// connection under [`Manage::validate`] is closed (its permit freed). The caller simply has no
    /// connection; a new checkout starts afresh (at the back of the wait queue). So it may be used
    /// in `select!` against a deadline of the caller's own.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
    /// shardpool::pool::block_on(async {
    ///     let conn = pool.get(&"orders-db").await.unwrap();
    ///     assert_eq!(*conn, 7);
    /// }); // `conn` went back to the pool when it was dropped
    /// assert_eq!(pool.stats().total.idle, 1);
    /// ```
    fn get(&self, key: &M::Key) -> impl Future<Output = Result<Self::Guard, Error<M::Error>>>;

    /// Checks out a connection to `key` on shard `shard` (taken modulo the shard count).
    ///
    /// Cancel safety: as [`ConnectionPool::get`].
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default().shards(4)).unwrap();
    /// let conn = shardpool::pool::block_on(pool.get_on(6, &"db")).unwrap();
    /// assert_eq!(conn.shard(), 2, "6 modulo 4 shards");
    /// ```
    fn get_on(
        &self,
        shard: usize,
        key: &M::Key,
    ) -> impl Future<Output = Result<Self::Guard, Error<M::Error>>>;

    /// One maintenance pass over shard `shard`: closes expired idle connections and creates
    /// connections up to `min_idle`. Call it from a timer on each shard (every second, say); the
    /// pool starts no thread of its own for it. On tokio and glommio, the `spawn_maintenance` of
    /// `shardpool::integrations` runs such a timer.
    ///
    /// While it sorts a shard's idle connections (microseconds), a checkout on that shard may find
    /// none and steal or create instead; nothing is lost, and `max_size` still holds.
    ///
    /// Cancel safety: reaping completes before the first await. Dropping the future while it
    /// pre-warms drops the `create` under way and frees its permit; connections already created
    /// are idle in the pool. The next pass carries on.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// use std::time::Duration;
    /// let config = Config::default().shards(1).idle_timeout(Some(Duration::from_millis(1)));
    /// let pool = ShardedPool::new(Numbers, config).unwrap();
    /// drop(shardpool::pool::block_on(pool.get(&"db")).unwrap()); // one idle connection
    /// std::thread::sleep(Duration::from_millis(20));
    /// shardpool::pool::block_on(pool.maintain(0)); // closes it: idle past its timeout
    /// assert_eq!(pool.stats().total.live, 0);
    /// ```
    fn maintain(&self, shard: usize) -> impl Future<Output = ()>;

    /// A snapshot of the pool's metrics.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default().shards(2)).unwrap();
    /// let conn = shardpool::pool::block_on(pool.get_on(1, &"db")).unwrap();
    /// let stats = pool.stats();
    /// assert_eq!((stats.total.creates, stats.total.checked_out), (1, 1));
    /// assert_eq!(stats.shards[1].creates, 1, "per shard too");
    /// drop(conn);
    /// ```
    fn stats(&self) -> Stats;

    /// Closes the pool: idle connections are closed now, checked-out ones when they come back,
    /// waiting and later checkouts fail with [`Error::Closed`].
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// use shardpool::Error;
    /// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
    /// drop(shardpool::pool::block_on(pool.get(&"db")).unwrap());
    /// pool.close();
    /// assert_eq!(pool.stats().total.live, 0, "the idle connection was closed");
    /// assert!(matches!(shardpool::pool::block_on(pool.get(&"db")), Err(Error::Closed)));
    /// ```
    fn close(&self);

    /// Forgets `key`: closes its idle connections; its checked-out ones close when they come back,
    /// and checkouts waiting on it fail with [`Error::Closed`]. A later checkout starts afresh. In
    /// [`ShardedPool`] it starts with a new `max_size` budget: until the old checked-out
    /// connections come back, the key can have up to twice `max_size` connections.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
    /// drop(shardpool::pool::block_on(pool.get(&"old-backend")).unwrap());
    /// pool.remove_key(&"old-backend");
    /// assert_eq!(pool.stats().total.idle, 0);
    /// // A later checkout of the same key starts afresh with a new connection.
    /// let conn = shardpool::pool::block_on(pool.get(&"old-backend")).unwrap();
    /// assert!(!conn.is_reused());
    /// ```
    fn remove_key(&self, key: &M::Key);

    /// The number of shards.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default().shards(3)).unwrap();
    /// assert_eq!(pool.shard_count(), 3);
    /// ```
    fn shard_count(&self) -> usize;
}

/// A [`ConnectionPool`] whose futures are `Send`, for a [`SendManage`] manager: code generic over
/// the pool can spawn its checkouts on a multi-threaded runtime (`tokio::spawn`) without naming the
/// concrete pool type.
///
/// For a concrete pool and a manager with `Send` futures, [`ConnectionPool::get`]'s future is
/// already `Send`; but code generic over `P: ConnectionPool<M>` cannot know it, and bounding the
/// method's return type (`P::get(..): Send`) needs return-type notation, unstable on Rust 1.95.
/// This trait says it instead: its methods return the same futures as [`ConnectionPool`]'s (the
/// same checkout code), declared `Send`. [`ShardedPool`] and
/// [`MutexPool`](crate::baseline::MutexPool) implement it for every [`SendManage`] manager.
///
/// The methods have names of their own (`get_send`, not `get`): with the same names, a call
/// such as `pool.get(&key)` on a `P: SendConnectionPool<M>` would be ambiguous between the two
/// traits (E0034; shadowing a supertrait's method is unstable), and every caller would have to
/// write `SendConnectionPool::get(&pool, &key)`.
///
/// # Examples
///
/// ```
/// use shardpool::baseline::MutexPool;
/// use shardpool::{Config, SendConnectionPool, SendManage, ShardedPool};
/// use std::convert::Infallible;
///
/// struct Numbers;
///
/// impl SendManage for Numbers {
///     type Key = u8;
///     type Conn = u64;
///     type Error = Infallible;
///
///     async fn create(&self, key: &u8) -> Result<u64, Infallible> {
///         Ok(u64::from(*key) * 10)
///     }
/// }
///
/// /// Checks out on whichever worker thread is free; no concrete pool is named.
/// fn spawn_get<P: SendConnectionPool<Numbers>>(pool: P, key: u8) -> tokio::task::JoinHandle<u64> {
///     tokio::spawn(async move { *pool.get_send(&key).await.expect("a connection") })
/// }
///
/// let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
/// let config = Config::default().shards(2);
/// let sharded = ShardedPool::new(Numbers, config.clone()).unwrap();
/// let mutex = MutexPool::new(Numbers, config).unwrap();
/// runtime.block_on(async {
///     assert_eq!(spawn_get(sharded, 4).await.unwrap(), 40);
///     assert_eq!(spawn_get(mutex, 5).await.unwrap(), 50);
/// });
/// ```
///
/// The same function over a plain [`ConnectionPool`] does not compile, even with this `Send`
/// manager: the generic code cannot know that `get`'s future is `Send`.
///
/// ```compile_fail
/// # use shardpool::{ConnectionPool, SendManage};
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl SendManage for Numbers {
/// #     type Key = u8; type Conn = u64; type Error = Infallible;
/// #     async fn create(&self, key: &u8) -> Result<u64, Infallible> { Ok(u64::from(*key)) }
/// # }
/// fn spawn_get<P: ConnectionPool<Numbers>>(pool: P, key: u8) -> tokio::task::JoinHandle<u64> {
///     // error: future cannot be sent between threads safely
///     tokio::spawn(async move { *pool.get(&key).await.expect("a connection") })
/// }
/// ```
pub trait SendConnectionPool<M: SendManage>: ConnectionPool<M> {
    /// [`ConnectionPool::get`], with a `Send` future: the same checkout, on the current thread's
    /// shard. Cancel safety: as [`ConnectionPool::get`].
    ///
    /// ```
    /// use shardpool::{Config, SendConnectionPool, SendManage, ShardedPool};
    /// # use std::convert::Infallible;
    /// # struct M;
    /// # impl SendManage for M { type Key = u8; type Conn = u64; type Error = Infallible;
    /// #     async fn create(&self, _: &u8) -> Result<u64, Infallible> { Ok(3) } }
    /// let pool = ShardedPool::new(M, Config::default()).unwrap();
    /// let checkout = pool.get_send(&1);
    /// let _: &dyn Send = &checkout; // `Send`, and declared so for any `SendConnectionPool`
    /// assert_eq!(*shardpool::pool::block_on(checkout).unwrap(), 3);
    /// ```
    fn get_send(
        &self,
        key: &M::Key,
    ) -> impl Future<Output = Result<Self::Guard, Error<M::Error>>> + Send;

    /// [`ConnectionPool::get_on`], with a `Send` future: the same checkout, on shard `shard`
    /// (taken modulo the shard count). Cancel safety: as [`ConnectionPool::get`].
    ///
    /// ```
    /// use shardpool::{Config, PooledConn, SendConnectionPool, SendManage, ShardedPool};
    /// # use std::convert::Infallible;
    /// # struct M;
    /// # impl SendManage for M { type Key = u8; type Conn = u64; type Error = Infallible;
    /// #     async fn create(&self, _: &u8) -> Result<u64, Infallible> { Ok(3) } }
    /// let pool = ShardedPool::new(M, Config::default().shards(2)).unwrap();
    /// let conn = shardpool::pool::block_on(pool.get_on_send(1, &1)).unwrap();
    /// assert_eq!(conn.shard(), 1);
    /// ```
    fn get_on_send(
        &self,
        shard: usize,
        key: &M::Key,
    ) -> impl Future<Output = Result<Self::Guard, Error<M::Error>>> + Send;

    /// [`ConnectionPool::maintain`], with a `Send` future: the same maintenance pass over shard
    /// `shard`, which a multi-threaded runtime may run on any worker. Cancel safety: as
    /// [`ConnectionPool::maintain`].
    ///
    /// ```
    /// use shardpool::{Config, ConnectionPool, SendConnectionPool, SendManage, ShardedPool};
    /// # use std::convert::Infallible;
    /// # struct M;
    /// # impl SendManage for M { type Key = u8; type Conn = u64; type Error = Infallible;
    /// #     async fn create(&self, _: &u8) -> Result<u64, Infallible> { Ok(3) } }
    /// let pool = ShardedPool::new(M, Config::default().shards(1).min_idle(2)).unwrap();
    /// drop(shardpool::pool::block_on(pool.get_send(&1)).unwrap()); // the key exists
    /// let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    /// let maintained = pool.clone();
    /// let task = runtime.spawn(async move { maintained.maintain_send(0).await });
    /// runtime.block_on(task).unwrap();
    /// assert_eq!(pool.stats().total.live, 2, "pre-warmed to min_idle");
    /// ```
    fn maintain_send(&self, shard: usize) -> impl Future<Output = ()> + Send;
}

/// A checked-out connection. Dereferences to the connection; dropping it gives the connection back
/// to the pool.
///
/// ```
/// use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
/// # struct M;
/// # impl Manage for M { type Key = &'static str; type Conn = String; type Error = std::io::Error;
/// #     async fn create(&self, _: &&'static str) -> std::io::Result<String> { Ok(String::new()) } }
/// let pool = ShardedPool::new(M, Config::default().shards(1)).unwrap();
/// let mut conn = shardpool::pool::block_on(pool.get(&"cache")).unwrap();
/// conn.push_str("in use"); // DerefMut to the connection
/// assert_eq!((*conn.key(), conn.shard(), conn.is_reused()), ("cache", 0, false));
/// drop(conn); // returned
/// assert!(shardpool::pool::block_on(pool.get(&"cache")).unwrap().is_reused());
/// ```
pub trait PooledConn<M: Manage>: DerefMut<Target = M::Conn> + Send + fmt::Debug {
    /// Closes the connection instead of returning it (for example after an I/O error).
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
    /// let conn = shardpool::pool::block_on(pool.get(&"db")).unwrap();
    /// conn.discard(); // closed, not returned: its permit is free
    /// assert_eq!(pool.stats().total.live, 0);
    /// ```
    fn discard(self);

    /// Whether this connection was used before (came from the pool rather than `create`).
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
    /// let first = shardpool::pool::block_on(pool.get(&"db")).unwrap();
    /// assert!(!first.is_reused(), "just created");
    /// drop(first);
    /// assert!(shardpool::pool::block_on(pool.get(&"db")).unwrap().is_reused());
    /// ```
    fn is_reused(&self) -> bool;

    /// The shard this checkout was made on; the connection goes back to that shard.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default().shards(2)).unwrap();
    /// let conn = shardpool::pool::block_on(pool.get_on(1, &"db")).unwrap();
    /// assert_eq!(conn.shard(), 1);
    /// ```
    fn shard(&self) -> usize;

    /// The key the connection belongs to.
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct Numbers;
    /// # impl Manage for Numbers {
    /// #     type Key = &'static str; type Conn = u32; type Error = std::convert::Infallible;
    /// #     async fn create(&self, _: &&'static str) -> Result<u32, Self::Error> { Ok(7) }
    /// # }
    /// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
    /// let conn = shardpool::pool::block_on(pool.get(&"db")).unwrap();
    /// assert_eq!(*conn.key(), "db");
    /// ```
    fn key(&self) -> &M::Key;

    /// Takes the connection out of the pool for good (to hand it to code that owns it, or to
    /// upgrade it to something the pool does not manage). Its permit is freed at once, so the key
    /// may create a successor; the connection no longer counts against `max_size`, is never
    /// checked, recycled or closed by the pool, and is counted as a return.
    ///
    /// ```
    /// use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = String; type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<String> { Ok("socket".into()) } }
    /// let pool = ShardedPool::new(M, Config::default().max_size(1)).unwrap();
    /// let conn: String = shardpool::pool::block_on(pool.get(&0)).unwrap().detach();
    /// assert_eq!(conn, "socket");
    /// assert_eq!(pool.stats().total.live, 0, "its permit is free: the key may create again");
    /// ```
    fn detach(self) -> M::Conn;
}

/// What the pool remembers about the calling thread.
struct ThreadSlot {
    /// The shard it is bound to (`usize::MAX`: none yet).
    shard: std::cell::Cell<usize>,
    /// Its token: unique among all threads the process ever ran, never 0 once assigned (0: none
    /// yet). Shards' hot counters are owned by a token (`metrics`).
    token: std::cell::Cell<u64>,
}

impl ThreadSlot {
    const fn new() -> Self {
        ThreadSlot {
            shard: std::cell::Cell::new(usize::MAX),
            token: std::cell::Cell::new(0),
        }
    }
}

// Read on every checkout and return, so `const` (see the shim).
sync::const_thread_local! {
    static THREAD: ThreadSlot = ThreadSlot::new();
}

/// Hands out shards to threads that never called [`bind_thread_to_shard`], round-robin.
static NEXT_UNBOUND_SHARD: sync::Counter = sync::Counter::new();

/// Hands out thread tokens; the first is 1.
static NEXT_THREAD_TOKEN: sync::Counter = sync::Counter::new();

/// Binds the calling thread to shard `shard` for every pool's [`ConnectionPool::get`] (taken modulo
/// each pool's shard count). Thread-per-core runtimes call it once per executor thread.
///
/// Threads that never call it are given shards round-robin on first use.
///
/// ```
/// shardpool::pool::bind_thread_to_shard(1);
/// assert_eq!(shardpool::pool::current_shard(), Some(1));
/// ```
pub fn bind_thread_to_shard(shard: usize) {
    THREAD.with(|t| t.shard.set(shard));
}

/// The shard the calling thread is bound to, if it is.
///
/// ```
/// std::thread::spawn(|| {
///     assert_eq!(shardpool::pool::current_shard(), None, "a new thread is bound to nothing");
///     shardpool::pool::bind_thread_to_shard(3);
///     assert_eq!(shardpool::pool::current_shard(), Some(3));
/// })
/// .join()
/// .unwrap();
/// ```
pub fn current_shard() -> Option<usize> {
    THREAD.with(|t| Some(t.shard.get()).filter(|&s| s != usize::MAX))
}

/// The calling thread's shard in a pool of `shards` shards.
#[inline]
pub(crate) fn shard_of_current_thread(shards: usize) -> usize {
    wrap_shard(thread_shard(), shards)
}

/// The shard the calling thread is bound to (any value: each pool takes it modulo its shard
/// count); an unbound thread is bound round-robin first.
#[inline]
pub(crate) fn thread_shard() -> usize {
    THREAD.with(|t| {
        let mut shard = t.shard.get();
        if shard == usize::MAX {
            shard = NEXT_UNBOUND_SHARD.fetch_incr() as usize % MAX_SHARDS;
            t.shard.set(shard);
        }
        shard
    })
}

/// `shard % shards`, without an integer division (tens of cycles) in the common case,
/// `shard < shards`.
#[inline]
pub(crate) fn wrap_shard(shard: usize, shards: usize) -> usize {
    if shard < shards {
        shard
    } else {
        shard % shards
    }
}

/// The calling thread's token (see `ThreadSlot`).
#[inline]
pub(crate) fn thread_token() -> u64 {
    // Only the load is inline: with the first-use path in the closure, LLVM outlined
    // `LocalKey::with`, a call on every checkout (callgrind, examples/hot_path.rs).
    match THREAD.with(|t| t.token.get()) {
        0 => new_thread_token(),
        token => token,
    }
}

/// Gives the calling thread its token, the first time it asks.
#[cold]
#[inline(never)]
fn new_thread_token() -> u64 {
    let token = NEXT_THREAD_TOKEN.fetch_incr() + 1;
    THREAD.with(|t| t.token.set(token));
    token
}

/// Runs a future to completion on the current thread, for using a pool from plain threads.
///
/// ```
/// assert_eq!(shardpool::pool::block_on(async { 1 + 1 }), 2);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    sync::block_on(future)
}
