//! [`ShardedPool`]: per-shard lock-free idle stacks, stealing, permits, waiting and maintenance.
//!
//! # The checkout path
//!
//! 1. Look the key up in the key table (lock-free plain loads; see `keys`).
//! 2. Pop the shard's own idle stack (warmest first); check expiry and `is_valid`.
//! 3. Otherwise pop the other shards' stacks in steal order (nearest first).
//!    With `Config::validate_idle_after`, an entry from 2–3 that sat idle that long is then
//!    checked with the async `Manage::validate` (off the fast path, in the boxed slow future); one
//!    that fails is closed and 2–3 repeat.
//! 4. Otherwise take a permit (`live < max_size`, and with `max_total` a total permit too; when only
//!    the total refuses, close one idle connection of another key and try once more) and `create`.
//! 5. Otherwise register as a waiter (flagging the key), retry 2–4 once, then sleep until handed a
//!    connection, told to retry, closed, or timed out.
//!
//! The hot path (1–2 and the return) allocates nothing, touches no shared reference count and moves
//! no connection: an entry lives in one node of its key's idle stacks from creation to close
//! (`stack`), the stacks and the guard pass a lease on that node around, and the entry's own
//! `Arc<KeyPool>` keeps the node alive meanwhile.
//!
//! # Memory ordering
//!
//! The idle stack publishes connections (see `stack`). The handshakes of the module invariants
//! need no fence, because each pair of racing operations meets on one atomic word:
//! * waiter vs return: the first waiter sets `WAITING` on every idle stack of its key, then retries;
//!   a return's push CAS either lands first (the retry pops it) or sees the flag and hands off;
//! * waiter vs freed permit: the same flag on the permit word, which `release_permit`'s `fetch_sub`
//!   returns (it notifies) and the waiter's retry reads after setting it;
//! * waiter vs freed total permit (`max_total`): the `TOTAL_WAITING` flag on the total permit
//!   word, set by the first waiter on `Total::waiters` before its retry, which `Total::release`'s
//!   `fetch_sub` returns (it tells every waiter to retry);
//! * close vs return: `close` sets `CLOSED` on every stack, then drains; a push either lands first
//!   (drained) or is refused (the returner closes its connection).
//!
//! A return's successful push is the last thing it touches: from that instant another thread may
//! pop the entry, close the key and free the key pool.

use super::config::{Config, ConfigError, GiveBack, MAX_SHARDS, Validated};
use super::keys::{KeyTable, Keyed};
use super::leak::LeakTracker;
use super::metrics::{ShardCounters, ShardMetrics, Stats};
#[cfg(not(shardpool_loom_model_stack))]
use super::stack::IdleStacks;
use super::stack::{Lease, Refused};
// The loom models' linearizable stand-in for the idle stacks (see `stack_model`).
#[cfg(shardpool_loom_model_stack)]
use super::stack_model::IdleStacks;
use super::sync::{Arc, AtomicBool, AtomicUsize, Counter, Mutex, Ordering, lock};
use super::waiters::{Leftover, WaitQueue, WaitSignal, Waiter, Wake};
use super::{
    ConnectionPool, Error, KeyName, Manage, PooledConn, SendConnectionPool, SendManage,
    thread_shard, wrap_shard,
};
use crossbeam_utils::CachePadded;
use std::fmt;
use std::future::{Future, poll_fn};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

/// A lock-free, per-core sharded connection pool. Cloning it is cheap and gives another handle to
/// the same pool; the pool closes when the last handle is dropped.
///
/// # Examples
///
/// ```
/// use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
/// use std::convert::Infallible;
///
/// struct Counter(std::sync::atomic::AtomicU64);
/// impl Manage for Counter {
///     type Key = &'static str;
///     type Conn = u64;
///     type Error = Infallible;
///     async fn create(&self, _: &&'static str) -> Result<u64, Infallible> {
///         Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
///     }
/// }
///
/// let pool = ShardedPool::new(Counter(0.into()), Config::default().shards(2)).unwrap();
/// shardpool::pool::block_on(async {
///     let first = pool.get_on(0, &"db").await.unwrap();
///     assert_eq!(*first, 0);
///     drop(first); // back to shard 0's idle stack
///     let again = pool.get_on(0, &"db").await.unwrap();
///     assert_eq!(*again, 0, "reused, not created");
///     let stolen = { drop(again); pool.get_on(1, &"db").await.unwrap() };
///     assert_eq!(*stolen, 0, "shard 1 stole shard 0's idle connection");
/// });
/// assert_eq!(pool.stats().total.steals, 1);
/// ```
pub struct ShardedPool<M: Manage> {
    inner: Arc<Inner<M>>,
}

impl<M: Manage> Clone for ShardedPool<M> {
    fn clone(&self) -> Self {
        ShardedPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Manage> fmt::Debug for ShardedPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedPool")
            .field("shards", &self.inner.shared.config.shards)
            .field("total", &self.stats().total)
            .finish()
    }
}

/// A handle to a [`ShardedPool`] that does not keep it open, from [`ShardedPool::downgrade`]:
/// once every [`ShardedPool`] handle is dropped the pool closes and [`WeakPool::upgrade`] returns
/// `None`. Cloning it is cheap.
///
/// ```
/// # use shardpool::{Config, Manage, ShardedPool};
/// # struct M;
/// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
/// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
/// let pool = ShardedPool::new(M, Config::default().shards(3)).unwrap();
/// let weak = pool.downgrade();
/// // Background work upgrades for one step at a time, so it never keeps the pool alive.
/// let shards = weak.upgrade().map(|pool| shardpool::ConnectionPool::shard_count(&pool));
/// assert_eq!(shards, Some(3));
/// drop(pool);
/// assert!(weak.upgrade().is_none());
/// ```
#[cfg(not(shardpool_loom))]
pub struct WeakPool<M: Manage> {
    inner: super::sync::Weak<Inner<M>>,
}

#[cfg(not(shardpool_loom))]
impl<M: Manage> WeakPool<M> {
    /// A [`ShardedPool`] handle, or `None` once the pool has been dropped (every handle gone).
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let pool = ShardedPool::new(M, Config::default()).unwrap();
    /// let weak = pool.downgrade();
    /// let upgraded = weak.upgrade().expect("a handle is alive");
    /// drop(pool);
    /// assert!(weak.upgrade().is_some(), "`upgraded` is a handle too");
    /// drop(upgraded);
    /// assert!(weak.upgrade().is_none());
    /// ```
    pub fn upgrade(&self) -> Option<ShardedPool<M>> {
        self.inner.upgrade().map(|inner| ShardedPool { inner })
    }
}

#[cfg(not(shardpool_loom))]
impl<M: Manage> Clone for WeakPool<M> {
    fn clone(&self) -> Self {
        WeakPool {
            inner: self.inner.clone(),
        }
    }
}

#[cfg(not(shardpool_loom))]
impl<M: Manage> fmt::Debug for WeakPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPool")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

struct Inner<M: Manage> {
    shared: Arc<Shared<M>>,
    /// Which key pool serves which key; lock-free lookups.
    keys: KeyTable<KeyPool<M>>,
}

/// What every key pool of one pool shares.
struct Shared<M: Manage> {
    manager: M,
    config: Validated,
    metrics: Box<[ShardMetrics]>,
    /// With `max_total_idle`: per shard, the idle connections it holds across keys (an upper bound:
    /// a slot is reserved before the push and released after the pop).
    idle_budget: Option<Box<[CachePadded<AtomicUsize>]>>,
    /// Connections created so far, across keys: each one's number seeds its expiry jitter. Only
    /// counted with `expiry_jitter`.
    creations: Counter,
    /// With `leak_detection`: the checked-out connections, by key pool address and node index.
    leaks: Option<LeakTracker<(usize, u16), M::Key>>,
    /// With `max_total`: the permits of all keys together (invariant 7).
    total: Option<Total<M>>,
    /// The shard count without leak detection, 0 with it: the one comparison of
    /// `ShardedPool::site` both wraps the shard and sends leak detection to its cold path.
    site_limit: usize,
}

/// A checkout's shard and, with leak detection, its call site, in the one word the checkout future
/// carries (as it carried the shard alone before leak detection): the shard in the bits below
/// `SITE_SHIFT`, and above them the call site's number (`LeakTracker::site`; 0 without leak
/// detection). So the caller's `Location` stays out of the future and out of the fast path.
const SITE_SHIFT: u32 = 16;
const SHARD_MASK: usize = (1 << SITE_SHIFT) - 1;
const _: () = assert!(
    MAX_SHARDS <= SHARD_MASK + 1,
    "a shard fits below SITE_SHIFT"
);

/// With `Config::max_total`: the permits of all keys together (invariant 7).
struct Total<M: Manage> {
    max: usize,
    /// Total permits in use: connections of every key that exist or are being created, plus the
    /// [`TOTAL_WAITING`] flag while checkouts wait.
    live: CachePadded<AtomicUsize>,
    /// Held while a permit is taken, which takes the key's and the total's together
    /// (`KeyPool::try_acquire_both`): only its holder adds to either word, so what it checks cannot
    /// go up before it adds, and neither permit is ever taken and then given back.
    takers: Mutex<()>,
    /// Every waiting checkout of every key, queued here as well as on its key's queue: a freed
    /// total permit tells them all to retry (`WaitQueue::notify_all`).
    waiters: WaitQueue<Leased<M>>,
}

/// Set in `Total::live` while checkouts wait, so a freed total permit notifies them.
const TOTAL_WAITING: usize = 1 << (usize::BITS - 1);

/// Why a permit could not be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Full {
    /// The key has `max_size` live connections.
    Key,
    /// The pool has `max_total` live connections.
    Total,
}

impl<M: Manage> Total<M> {
    fn new(max: usize) -> Self {
        Total {
            max,
            live: CachePadded::new(AtomicUsize::new(0)),
            takers: Mutex::new(()),
            waiters: WaitQueue::default(),
        }
    }

    /// Gives a total permit back after its connection was dropped; tells every waiter to retry if
    /// any waits.
    fn release(&self) {
        // Ordering: Release pairs with the Acquire load in `KeyPool::try_acquire_both`: the
        // connection was dropped before a taker that reads this count creates another. The flag in
        // the value read settles the race with a registering waiter (invariant 7).
        let before = self.live.fetch_sub(1, Ordering::Release);
        // Seeded bug for the loom models (docs/protocol.md): a freed total permit tells nobody,
        // so a checkout waiting on the total sleeps on.
        if cfg!(shardpool_seeded_bug = "total_release_silent") {
            return;
        }
        if before & TOTAL_WAITING != 0 {
            self.waiters.notify_all();
        }
    }

    /// Whether checkouts wait while the total is at its cap, so that some may wait on the total
    /// rather than on their own key's `max_size` (a gauge: one load).
    fn blocks_waiters(&self) -> bool {
        // Ordering: Relaxed. Only a hint for maintenance; the handshake is `release`'s RMW.
        let word = self.live.load(Ordering::Relaxed);
        word & TOTAL_WAITING != 0 && word & !TOTAL_WAITING >= self.max
    }
}

impl<M: Manage> WaitSignal for Total<M> {
    fn set_waiting(&self, waiting: bool) {
        // Ordering: Relaxed, as for the key's permit word: a racing `release`'s fetch_sub is
        // ordered before or after this RMW in the word's modification order.
        if waiting {
            self.live.fetch_or(TOTAL_WAITING, Ordering::Relaxed);
        } else {
            self.live.fetch_and(!TOTAL_WAITING, Ordering::Relaxed);
        }
    }
}

/// One key's pool: an idle stack per shard, its permits and its waiters.
pub(crate) struct KeyPool<M: Manage> {
    key: M::Key,
    shared: Arc<Shared<M>>,
    /// One idle stack per shard, over one node arena that holds every entry of this key (see
    /// `stack`): `max_size` nodes.
    idle: IdleStacks<Entry<M>>,
    /// The permit word: permits in use (connections of this key that exist or are being created,
    /// invariant 1) in the bits of [`LIVE_MASK`], the key's `max_size` above [`CAP_SHIFT`], and the
    /// [`PERMIT_WAITING`] flag while checkouts wait. The cap shares the word so that a resize, a
    /// taker, a release and a registering waiter all meet on one atomic (invariant 8).
    live: CachePadded<AtomicUsize>,
    /// Held while the cap changes and while a return that met the `OVER` flag decides between
    /// closing and clearing it (`ShardedPool::set_max_size`, `KeyPool::settle_over`; invariant 8).
    /// Guards the count of connections a resize decision doomed whose permits are not yet released
    /// (`closing`): the connection is dropped outside the lock, then its permit is released and the
    /// count lowered together under it, so every decider reads `live - closing` exactly.
    resize: Mutex<usize>,
    closed: AtomicBool,
    waiters: WaitQueue<Leased<M>>,
}

/// An idle or checked-out connection with its bookkeeping. It lives in a node of its key pool's
/// idle stacks and owns an `Arc` to that key pool, which keeps the node alive (see [`Leased`]).
pub(crate) struct Entry<M: Manage> {
    conn: M::Conn,
    key_pool: Arc<KeyPool<M>>,
    /// Clock readings (see `Clock`): when the connection was created and last returned.
    created: u64,
    idle_since: u64,
    reused: bool,
    /// This connection's share of `expiry_jitter` (`Validated::cut_for`); 0 without jitter.
    cut: u32,
}

/// An entry in its node, held by one owner: a checkout, a guard, a waiter being handed it, or a
/// closer. Moving it moves a pointer and an index, not the connection.
type Leased<M> = Lease<Entry<M>>;

impl<M: Manage> Leased<M> {
    #[inline]
    fn entry(&self) -> &Entry<M> {
        // SAFETY: the entry in the node owns an `Arc` to the key pool whose stacks issued this
        // lease, and it leaves the node only by consuming the lease (`close`), so the node is alive
        // for as long as the lease is borrowed.
        unsafe { self.get() }
    }

    #[inline]
    fn entry_mut(&mut self) -> &mut Entry<M> {
        // SAFETY: as in `entry`.
        unsafe { self.get_mut() }
    }

    /// The key pool that owns this entry's node.
    #[inline]
    fn key_pool(&self) -> &KeyPool<M> {
        &self.entry().key_pool
    }

    /// Runs a check of manager code (`is_valid`, `recycle`) on the connection. Should the check
    /// panic, the unwind closes the lease, so the panic costs the pool neither the node nor the
    /// permit (invariant 3).
    #[inline(always)]
    fn check(self, shard: usize, check: impl FnOnce(&mut M::Conn) -> bool) -> (Self, bool) {
        let mut guard = CloseOnUnwind {
            lease: ManuallyDrop::new(self),
            shard,
        };
        let passed = check(&mut guard.lease.entry_mut().conn);
        (guard.disarm(), passed)
    }
}

/// Closes the lease it holds if dropped, which only an unwind (`Leased::check`) or a checkout
/// cancelled during `Manage::validate` (`KeyPool::passes_validation`) does.
struct CloseOnUnwind<M: Manage> {
    lease: ManuallyDrop<Leased<M>>,
    shard: usize,
}

impl<M: Manage> CloseOnUnwind<M> {
    #[inline(always)]
    fn disarm(self) -> Leased<M> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop), so this is the only take of the lease.
        unsafe { ManuallyDrop::take(&mut this.lease) }
    }
}

impl<M: Manage> Drop for CloseOnUnwind<M> {
    #[cold]
    fn drop(&mut self) {
        // SAFETY: drop runs once, and `disarm` (the only other take) never lets it run.
        unsafe { ManuallyDrop::take(&mut self.lease) }.close(self.shard);
    }
}

/// A taken permit, given back when this is dropped: when a create fails, is cancelled or panics,
/// and when a closing connection has been dropped (also if its `Drop` panicked). A create that
/// succeeds forgets it: the permit passes to the new connection.
struct Permit<'a, M: Manage>(&'a KeyPool<M>);

/// A permit of a connection that a resize decision counted in `KeyPool::resize` (closing): the
/// release and the count's decrement happen together under the lock (invariant 8).
struct DoomedPermit<'a, M: Manage>(&'a KeyPool<M>);

impl<M: Manage> Drop for DoomedPermit<'_, M> {
    fn drop(&mut self) {
        let mut closing = lock(&self.0.resize);
        self.0.release_permit();
        *closing -= 1;
    }
}

impl<M: Manage> Drop for Permit<'_, M> {
    fn drop(&mut self) {
        self.0.release_permit();
    }
}

/// Set in `KeyPool::live` while checkouts wait, so a freed permit notifies one of them.
const PERMIT_WAITING: usize = 1 << (usize::BITS - 1);

/// Where the key's `max_size` sits in `KeyPool::live`: 15 bits from here, below
/// [`PERMIT_WAITING`] even with a 32-bit `usize`.
const CAP_SHIFT: u32 = 15;
/// The permits in use, in `KeyPool::live`.
const LIVE_MASK: usize = (1 << CAP_SHIFT) - 1;
const _: () = assert!(
    super::config::MAX_SIZE <= LIVE_MASK && 2 * CAP_SHIFT < usize::BITS,
    "a key's live count and cap fit in their fields, below the flag"
);

/// The permits in use in a permit word.
#[inline(always)]
fn live_of(word: usize) -> usize {
    word & LIVE_MASK
}

/// The key's `max_size` in a permit word.
#[inline(always)]
fn cap_of(word: usize) -> usize {
    (word & !PERMIT_WAITING) >> CAP_SHIFT
}

/// How a checkout got its connection, for the metrics.
#[derive(Clone, Copy)]
enum Source {
    Local,
    Stolen,
    Created,
    HandedOff,
}

/// How `KeyPool::wait` ended.
enum Waited<M: Manage> {
    /// With a connection: handed off, or found idle on a retry.
    Got(Pooled<M>),
    /// With a permit taken on a retry: the caller creates the connection.
    Permit,
}

impl<M: Manage> ShardedPool<M> {
    /// Builds a pool, or says which setting is wrong.
    ///
    /// ```
    /// # use shardpool::{Config, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let err = ShardedPool::new(M, Config::default().max_size(0)).unwrap_err();
    /// assert!(err.to_string().contains("max_size is 0"));
    /// ```
    pub fn new(manager: M, config: Config) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        let shards = config.shards;
        let idle_budget = config.max_total_idle.map(|_| {
            (0..shards)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect()
        });
        let shared = Arc::new(Shared {
            manager,
            metrics: (0..shards).map(|_| ShardMetrics::default()).collect(),
            idle_budget,
            creations: Counter::new(),
            site_limit: if config.leak_detection.is_some() {
                0
            } else {
                shards
            },
            leaks: config
                .leak_detection
                .as_ref()
                .map(|detection| LeakTracker::new(detection, &config.clock)),
            total: config.max_total.map(Total::new),
            config,
        });
        Ok(ShardedPool {
            inner: Arc::new(Inner {
                shared,
                keys: KeyTable::new(),
            }),
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &Validated {
        &self.inner.shared.config
    }

    /// The manager the pool was built with.
    pub fn manager(&self) -> &M {
        &self.inner.shared.manager
    }

    /// A handle that does not keep the pool open (see [`WeakPool`]), for background work such as
    /// a maintenance timer that should end with the pool.
    ///
    /// ```
    /// # use shardpool::{Config, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let pool = ShardedPool::new(M, Config::default()).unwrap();
    /// let weak = pool.downgrade();
    /// assert!(weak.upgrade().is_some());
    /// drop(pool); // the last handle: the pool closes and is freed
    /// assert!(weak.upgrade().is_none());
    /// ```
    #[cfg(not(shardpool_loom))]
    pub fn downgrade(&self) -> WeakPool<M> {
        WeakPool {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Whether [`ConnectionPool::close`] was called on this pool (by any handle).
    ///
    /// ```
    /// # use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let pool = ShardedPool::new(M, Config::default()).unwrap();
    /// assert!(!pool.is_closed());
    /// pool.clone().close();
    /// assert!(pool.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.keys.write().is_closed()
    }

    /// Checks out a connection from a plain thread, blocking it until done. Uses the thread's shard.
    pub fn get_blocking(&self, key: &M::Key) -> Result<Pooled<M>, Error<M::Error>> {
        super::sync::block_on(self.get(key))
    }

    /// Live and idle connections of `key` now: `(live, idle)`, or `None` for an unknown key.
    pub fn key_gauges(&self, key: &M::Key) -> Option<(usize, usize)> {
        let kp = self.inner.keys.lookup(key)?;
        Some((kp.live_count(), kp.idle_count()))
    }

    /// Changes `key`'s `max_size` (its most live connections) at run time, to `max_size`.
    ///
    /// * Growing lets checkouts waiting on the key create at once: every one of them is told to
    ///   retry.
    /// * Shrinking closes idle connections of the key now, down to the new size (or until none is
    ///   idle), and refuses new creates above it at once. A checked-out connection that comes back
    ///   while the key is still over the new size is closed instead of kept, so the key is within
    ///   the new size once the connections in use at the time of the call have come back. Until
    ///   then it may have more.
    ///
    /// A key not seen yet is added (as its first checkout would add it) with this size; keys added
    /// later by checkouts start at `Config::max_size`, and so does a key that
    /// [`remove_key`](ConnectionPool::remove_key) removed and a checkout added again. The new size
    /// must be at least 1, at least `Config::min_idle`, and at most `Config::max_size_limit`
    /// (which defaults to `Config::max_size`: raise it to allow growth; `max_idle_per_key` then
    /// defaults to it too, so a grown key keeps its connections idle). The hot path does not
    /// change: while a shrunk key is over its size, its returns take the cold path (one flag in the
    /// idle stack's word), and otherwise nothing is added to a checkout or a return.
    ///
    /// This is a [`ShardedPool`] method: [`MutexPool`](crate::baseline::MutexPool) has no run-time
    /// resize.
    ///
    /// ```
    /// use shardpool::{Config, ConfigError, ConnectionPool, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = &'static str; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &&'static str) -> std::io::Result<()> { Ok(()) } }
    /// let pool = ShardedPool::new(M, Config::default().max_size(4).max_size_limit(8)).unwrap();
    /// let conns: Vec<_> = (0..3).map(|_| pool.get_blocking(&"db").unwrap()).collect();
    /// pool.set_max_size(&"db", 1).unwrap(); // three in use: over the new size
    /// assert_eq!(pool.max_size_of(&"db"), Some(1));
    /// drop(conns); // each return closes while the key is over its size; the last one is kept
    /// assert_eq!(pool.key_gauges(&"db"), Some((1, 1)), "(live, idle)");
    /// pool.set_max_size(&"db", 8).unwrap(); // growing, up to max_size_limit
    /// assert_eq!(
    ///     pool.set_max_size(&"db", 9),
    ///     Err(ConfigError::MaxSizeAboveLimit { max_size: 9, limit: 8 })
    /// );
    /// assert_eq!(pool.set_max_size(&"db", 0), Err(ConfigError::ZeroMaxSize));
    /// ```
    pub fn set_max_size(&self, key: &M::Key, max_size: usize) -> Result<(), ConfigError> {
        let config = &self.inner.shared.config;
        if max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        if max_size > config.max_size_limit {
            return Err(ConfigError::MaxSizeAboveLimit {
                max_size,
                limit: config.max_size_limit,
            });
        }
        if max_size < config.min_idle {
            return Err(ConfigError::MinIdleAboveSize {
                min_idle: config.min_idle,
                max_size,
            });
        }
        let kp = self.key_pool(key).map_err(|_| ConfigError::Closed)?;
        kp.resize(max_size);
        Ok(())
    }

    /// `key`'s `max_size` now (`Config::max_size` unless [`ShardedPool::set_max_size`] changed
    /// it), or `None` for a key the pool does not know.
    ///
    /// ```
    /// # use shardpool::{Config, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let pool = ShardedPool::new(M, Config::default().max_size(4)).unwrap();
    /// assert_eq!(pool.max_size_of(&1), None, "not used yet");
    /// drop(pool.get_blocking(&1).unwrap());
    /// assert_eq!(pool.max_size_of(&1), Some(4));
    /// ```
    pub fn max_size_of(&self, key: &M::Key) -> Option<usize> {
        Some(self.inner.keys.lookup(key)?.max_size())
    }

    /// The key pool of `key`, added if new; `Closed` once the pool is closed.
    fn key_pool(&self, key: &M::Key) -> Result<Arc<KeyPool<M>>, Error<M::Error>> {
        self.inner
            .keys
            .write()
            .get_or_insert(key, || KeyPool::new(key.clone(), &self.inner.shared))
            .ok_or(Error::Closed)
    }

    /// The checkout path (module docs). The future is small: the hit path runs inline at the first
    /// poll, and only a miss (create or wait, which allocate anyway) boxes the rest, so moving the
    /// future costs a few words, not the whole wait machinery.
    ///
    /// `site` is from [`ShardedPool::site`]: a shard below the shard count, and the call site.
    async fn checkout(&self, site: usize, key: &M::Key) -> Result<Pooled<M>, Error<M::Error>> {
        let shard = site & SHARD_MASK;
        // Fast path: a known key with an idle connection; no lock, no reference count. One config
        // field, read once, says which checks the popped connection needs (`Reuse`).
        if let Some(kp) = self.inner.keys.lookup(key) {
            let reuse = kp.shared.config.reuse;
            if let Some((lease, source)) = kp.take_idle_checked(shard, reuse.expiry()) {
                if !reuse.slow() {
                    return kp.finish(shard, lease, source);
                }
                // Validation or leak detection: the connection goes on to the slow future.
                let found = Some((lease, source));
                return Box::pin(self.checkout_slow(shard, key, found, site)).await;
            }
        }
        Box::pin(self.checkout_slow(shard, key, None, site)).await
    }

    /// The checkout's `site` word (`SITE_SHIFT`) for `shard` (any value: taken modulo the shard
    /// count). Without leak detection and with the shard in range, as it is after
    /// `bind_thread_to_shard(s)` with `s` below the shard count: one comparison.
    #[inline(always)]
    #[track_caller]
    fn site(&self, shard: usize) -> usize {
        if shard < self.inner.shared.site_limit {
            shard
        } else {
            self.site_slow(shard)
        }
    }

    /// `site` for a shard out of range, or with leak detection: numbers the caller's location.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn site_slow(&self, shard: usize) -> usize {
        let shared = &self.inner.shared;
        let shard = wrap_shard(shard, shared.config.shards);
        match &shared.leaks {
            None => shard,
            Some(leaks) => {
                shard | (leaks.site(Location::caller(), usize::MAX >> SITE_SHIFT) << SITE_SHIFT)
            }
        }
    }

    /// `find_or_wait`, and with leak detection the record of the checkout.
    async fn checkout_slow(
        &self,
        shard: usize,
        key: &M::Key,
        found: Option<(Leased<M>, Source)>,
        site: usize,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        let result = self.find_or_wait(shard, key, found).await;
        if let (Some(leaks), Ok(guard)) = (&self.inner.shared.leaks, &result) {
            let location = leaks.location(site >> SITE_SHIFT);
            leaks.checked_out(guard.leak_id(), guard.key().clone(), location);
        }
        result
    }

    /// Steps 2–5 of the checkout path with the key pool in hand; `found` is an idle connection
    /// the fast path took that may still need `Manage::validate`.
    async fn find_or_wait(
        &self,
        shard: usize,
        key: &M::Key,
        found: Option<(Leased<M>, Source)>,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        if let Some(found) = found {
            // The entry's own key pool: `key` may have been removed and re-added meanwhile.
            let kp = Arc::clone(&found.0.entry().key_pool);
            if let Some((lease, source)) = KeyPool::validated(&kp, shard, Some(found)).await {
                return kp.finish(shard, lease, source);
            }
        }
        // A known key (every checkout but its key's first) is found without the writers' lock or
        // a reference count: a key pool `lookup` reaches outlives the borrow of `self` (`keys`:
        // nothing a reader can reach is freed while the pool lives), and every waiting checkout
        // passes here.
        let added;
        let kp = match self.inner.keys.lookup(key) {
            Some(kp) => kp,
            None => {
                added = self.key_pool(key)?;
                &*added
            }
        };
        if let Some((lease, source)) = KeyPool::validated(kp, shard, kp.take_idle(shard)).await {
            return kp.finish(shard, lease, source);
        }
        if kp.acquire_or_evict(&self.inner.keys, shard).is_err() {
            match KeyPool::wait(kp, shard, &self.inner.keys).await? {
                Waited::Got(guard) => return Ok(guard),
                Waited::Permit => {}
            }
        }
        self.create(kp, shard).await
    }

    /// Creates a connection for `kp`, a permit already taken. The new entry holds its key pool's
    /// `Arc`, found under the writers' lock (a create costs far more than the lock). A pool closed,
    /// or a key removed, since the lookup creates nothing: the permit goes back and the checkout
    /// fails with `Closed`, as its `finish` would have after an unneeded connect.
    async fn create(&self, kp: &KeyPool<M>, shard: usize) -> Result<Pooled<M>, Error<M::Error>> {
        let Some(owned) = self.inner.keys.write().live_owner(kp) else {
            kp.release_permit();
            return Err(Error::Closed);
        };
        // Boxed apart, so the manager's `create` future (2 KiB for `tokio-postgres`) is not part of
        // every slow checkout's future: waiting ones never create, yet would allocate and move it.
        Box::pin(KeyPool::create(owned, shard)).await
    }
}

// The same futures as `ConnectionPool`'s, so the same checkout code: with `M: SendManage` the
// compiler proves them `Send` through the blanket `Manage` implementation's `Send` futures.
impl<M: SendManage> SendConnectionPool<M> for ShardedPool<M> {
    #[track_caller]
    #[inline]
    fn get_send(
        &self,
        key: &M::Key,
    ) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> + Send {
        ConnectionPool::get(self, key)
    }

    #[track_caller]
    #[inline]
    fn get_on_send(
        &self,
        shard: usize,
        key: &M::Key,
    ) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> + Send {
        ConnectionPool::get_on(self, shard, key)
    }

    #[inline]
    fn maintain_send(&self, shard: usize) -> impl Future<Output = ()> + Send {
        ConnectionPool::maintain(self, shard)
    }
}

impl<M: Manage> ConnectionPool<M> for ShardedPool<M> {
    type Guard = Pooled<M>;

    #[track_caller]
    fn get(&self, key: &M::Key) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> {
        self.checkout(self.site(thread_shard()), key)
    }

    #[track_caller]
    fn get_on(
        &self,
        shard: usize,
        key: &M::Key,
    ) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> {
        self.checkout(self.site(shard), key)
    }

    async fn maintain(&self, shard: usize) {
        if let Some(leaks) = &self.inner.shared.leaks {
            leaks.scan();
        }
        let shard = shard % self.inner.shared.config.shards;
        let key_pools: Vec<_> = self.inner.keys.write().pools().cloned().collect();
        for kp in &key_pools {
            kp.reap(shard);
            KeyPool::refill(kp, shard).await;
        }
        // Checkouts waiting while the total is at `max_total` and idle connections sit in other
        // keys: close up to one idle connection of this shard per waiter (invariant 7: each close frees a total
        // permit, which tells the waiters to retry).
        if let Some(total) = &self.inner.shared.total
            && total.blocks_waiters()
        {
            let mut wanted = total.waiters.len();
            for kp in &key_pools {
                while wanted > 0
                    && let Some(lease) = kp.pop_idle(shard)
                {
                    lease.close(shard);
                    wanted -= 1;
                }
            }
        }
    }

    fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let mut idle = vec![0u64; shared.config.shards];
        let mut live = 0u64;
        for kp in self.inner.keys.write().pools() {
            live += kp.live_count() as u64;
            for (shard, idle) in idle.iter_mut().enumerate() {
                *idle += kp.idle.len(shard) as u64;
            }
        }
        let shards = shared
            .metrics
            .iter()
            .zip(idle)
            .map(|(m, idle)| m.snapshot(idle, None))
            .collect();
        Stats::from_shards(&shared.metrics, shards, live)
    }

    fn close(&self) {
        self.inner.close();
    }

    fn remove_key(&self, key: &M::Key) {
        let removed = self.inner.keys.write().remove(key);
        // Seeded bug for the loom models (docs/protocol.md): the key leaves the table but its pool
        // is not closed, so its idle connections are never dropped.
        if let Some(kp) = removed
            && !cfg!(shardpool_seeded_bug = "remove_skips_close")
        {
            kp.close();
        }
    }

    fn shard_count(&self) -> usize {
        self.inner.shared.config.shards
    }
}

impl<M: Manage> Inner<M> {
    fn close(&self) {
        let key_pools = self.keys.write().close();
        for kp in key_pools {
            kp.close();
        }
    }
}

impl<M: Manage> Drop for Inner<M> {
    fn drop(&mut self) {
        // Idle entries hold their key pool's `Arc`; closing drains them and breaks that cycle.
        self.close();
    }
}

impl<M: Manage> Shared<M> {
    fn counters(&self, shard: usize) -> &ShardCounters {
        &self.metrics[shard].counters
    }

    /// The clock, read only when some expiry rule needs it.
    #[inline]
    fn now(&self) -> u64 {
        if self.config.reads_clock {
            self.config.clock.now()
        } else {
            0
        }
    }

    /// Reserves a slot of shard `shard`'s total-idle budget (always succeeds without one).
    #[inline]
    fn reserve_idle(&self, shard: usize) -> bool {
        let Some(budget) = &self.idle_budget else {
            return true;
        };
        let limit = self
            .config
            .share(self.config.max_total_idle.unwrap_or(0), shard);
        let used = &budget[shard];
        // Ordering: Relaxed. The budget is an upper bound on idle entries; the stack itself
        // publishes the entries, so the count orders nothing.
        let mut current = used.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return false;
            }
            // Ordering: Relaxed, as above.
            match used.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Gives back a slot reserved by `reserve_idle`.
    #[inline]
    fn release_idle(&self, shard: usize) {
        if let Some(budget) = &self.idle_budget {
            // Ordering: Relaxed, as in `reserve_idle`.
            budget[shard].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The key table finds a key pool by its key (`keys`).
impl<M: Manage> Keyed for KeyPool<M> {
    type Key = M::Key;

    #[inline]
    fn key(&self) -> &M::Key {
        KeyPool::key(self)
    }
}

impl<M: Manage> KeyPool<M> {
    fn new(key: M::Key, shared: &Arc<Shared<M>>) -> Self {
        let config = &shared.config;
        KeyPool {
            key,
            // A node per connection that may exist (invariant 1), so creating one always finds a
            // free node (`new_entry`). `Config` caps `max_size` at the stacks' capacity.
            // `max_size_limit` nodes, so that `set_max_size` can grow the key up to it.
            idle: IdleStacks::new(
                (0..config.shards).map(|s| config.share(config.max_idle_per_key, s)),
                config.max_size_limit,
            ),
            shared: Arc::clone(shared),
            live: CachePadded::new(AtomicUsize::new(config.max_size << CAP_SHIFT)),
            resize: Mutex::new(0),
            closed: AtomicBool::new(false),
            waiters: WaitQueue::default(),
        }
    }

    /// The key this pool serves.
    pub(crate) fn key(&self) -> &M::Key {
        &self.key
    }

    #[inline]
    fn is_closed(&self) -> bool {
        // Ordering: Acquire pairs with the Release store in `close`, so a checkout that sees the key
        // closed also sees the closer's earlier writes. The close/return race itself is settled on
        // the stack words (module docs), not by this flag.
        self.closed.load(Ordering::Acquire)
    }

    /// Live connections of this key (a gauge).
    fn live_count(&self) -> usize {
        // Ordering: Relaxed. A gauge; it publishes nothing.
        live_of(self.live.load(Ordering::Relaxed))
    }

    /// This key's `max_size` now (a gauge).
    fn max_size(&self) -> usize {
        // Ordering: Relaxed. A gauge; it publishes nothing.
        cap_of(self.live.load(Ordering::Relaxed))
    }

    /// Idle connections of this key across shards (a gauge).
    fn idle_count(&self) -> usize {
        (0..self.shared.config.shards)
            .map(|shard| self.idle.len(shard))
            .sum()
    }

    /// Pops an acceptable idle entry: the shard's own first, then the other shards' in steal order.
    /// Expired and invalid entries met on the way are closed.
    #[inline]
    fn take_idle(&self, shard: usize) -> Option<(Leased<M>, Source)> {
        self.take_idle_checked(shard, self.shared.config.reuse.expiry())
    }

    /// `take_idle`, with the expiry test (`expiry`: `Reuse::expiry`) or without it, which is the
    /// same when neither `idle_timeout` nor `max_lifetime` is set: then nothing expires.
    #[inline]
    fn take_idle_checked(&self, shard: usize, expiry: bool) -> Option<(Leased<M>, Source)> {
        let mut now = None;
        if let Some(lease) = self.pop_acceptable(shard, shard, expiry, &mut now) {
            return Some((lease, Source::Local));
        }
        self.steal(shard, expiry, &mut now)
    }

    /// `take_idle_checked` after the own shard's stack had nothing acceptable.
    #[inline(never)]
    fn steal(
        &self,
        shard: usize,
        expiry: bool,
        now: &mut Option<u64>,
    ) -> Option<(Leased<M>, Source)> {
        self.shared.config.steal_order[shard]
            .iter()
            .find_map(|&victim| self.pop_acceptable(shard, victim, expiry, now))
            .map(|lease| (lease, Source::Stolen))
    }

    /// Pops shard `victim`'s stack for a checkout on shard `shard` until an entry passes the expiry
    /// (with `expiry`) and validity checks (invariant 6), closing those that fail. `now` is read
    /// once, when needed.
    #[inline]
    fn pop_acceptable(
        &self,
        shard: usize,
        victim: usize,
        expiry: bool,
        now: &mut Option<u64>,
    ) -> Option<Leased<M>> {
        let config = &self.shared.config;
        while let Some(lease) = self.pop_idle(victim) {
            // Seeded bug for the loom models (docs/protocol.md): stolen entries skip the expiry
            // check, so a steal can hand out an expired connection.
            let check_expiry =
                victim == shard || !cfg!(shardpool_seeded_bug = "steal_skips_expiry");
            if expiry && check_expiry {
                // An expiry rule is set, so `reads_clock` is: `Shared::now` without its test.
                let now = *now.get_or_insert_with(|| config.clock.now());
                let entry = lease.entry();
                if config.is_expired(entry.created, entry.idle_since, entry.cut, now) {
                    self.reject(shard, lease, |c| &c.expirations);
                    continue;
                }
            }
            match lease.check(shard, |conn| self.shared.manager.is_valid(conn)) {
                (lease, true) => return Some(lease),
                (lease, false) => self.reject(shard, lease, |c| &c.validation_failures),
            }
        }
        None
    }

    /// Runs `Manage::validate` on `found` when it is due (`Config::validate_idle_after`), closing
    /// each idle entry that fails and taking the next one (`take_idle`), until one passes or none
    /// is left. Without `validate_idle_after` it gives `found` back as it is.
    ///
    /// Cancel safety: dropped while `validate` runs, the entry under validation is closed (its
    /// permit freed); nothing else is held.
    async fn validated(
        this: &KeyPool<M>,
        shard: usize,
        mut found: Option<(Leased<M>, Source)>,
    ) -> Option<(Leased<M>, Source)> {
        if this.shared.config.validate_idle_after.is_none() {
            return found;
        }
        while let Some((lease, source)) = found {
            match KeyPool::passes_validation(this, shard, lease).await {
                (lease, true) => return Some((lease, source)),
                (lease, false) => this.reject(shard, lease, |c| &c.validation_failures),
            }
            found = this.take_idle(shard);
        }
        None
    }

    /// Runs `Manage::validate` on `lease` if it sat idle at least `validate_idle_after`; an entry
    /// not due passes. Dropped while `validate` runs, the entry is closed (`CloseOnUnwind`).
    async fn passes_validation(
        this: &KeyPool<M>,
        shard: usize,
        lease: Leased<M>,
    ) -> (Leased<M>, bool) {
        let shared = &*this.shared;
        let Some(idle_for) = shared
            .config
            .validation_due(lease.entry().idle_since, shared.now())
        else {
            return (lease, true);
        };
        let mut guard = CloseOnUnwind {
            lease: ManuallyDrop::new(lease),
            shard,
        };
        // Boxed for the reason `ShardedPool::create` boxes: the check is rare and does I/O, and
        // its future would otherwise grow every slow checkout's.
        let passed = Box::pin(
            shared
                .manager
                .validate(&mut guard.lease.entry_mut().conn, idle_for),
        )
        .await;
        (guard.disarm(), passed)
    }

    /// Closes an idle entry that failed a check, counting it in `counter`.
    #[cold]
    fn reject(&self, shard: usize, lease: Leased<M>, counter: fn(&ShardCounters) -> &Counter) {
        counter(self.shared.counters(shard)).incr();
        lease.close(shard);
    }

    /// Turns a leased entry into a guard, unless the key closed meanwhile (invariant 5).
    #[inline]
    fn finish(
        &self,
        shard: usize,
        lease: Leased<M>,
        source: Source,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        if self.is_closed() {
            lease.close(shard);
            return Err(Error::Closed);
        }
        let counters = self.shared.counters(shard);
        match source {
            Source::Local => counters
                .local_hits
                .incr(counters.owned_here(shard, self.shared.config.shards)),
            Source::Stolen => counters.steals.incr(),
            Source::Created => counters.creates.incr(),
            Source::HandedOff => counters.handoffs.incr(),
        }
        Ok(Pooled {
            lease: ManuallyDrop::new(lease),
            shard,
        })
    }

    /// Takes a permit if fewer than `max_size` are in use (invariant 1) and, with `max_total`,
    /// fewer than `max_total` across keys (invariant 7); says which limit refused it otherwise.
    fn try_acquire_permit(&self) -> Result<(), Full> {
        match &self.shared.total {
            None => {
                if self.try_acquire_key_permit() {
                    Ok(())
                } else {
                    Err(Full::Key)
                }
            }
            Some(total) => self.try_acquire_both(total),
        }
    }

    /// `try_acquire_permit` with `max_total`: the key's permit and a total one, taken together
    /// under `Total::takers`. Only takers add to either word, and they hold the lock, so a count
    /// checked here can only have gone down (a release) when it is added to: both limits hold
    /// without a permit ever being taken and given back (invariant 7).
    fn try_acquire_both(&self, total: &Total<M>) -> Result<(), Full> {
        // Seeded bug for the loom models (docs/protocol.md): the checks run without the lock, so
        // two takers of different keys can both see the last total permit free and both add.
        #[cfg(not(shardpool_seeded_bug = "total_unlocked"))]
        let _takers = lock(&total.takers);
        // Ordering: Acquire pairs with the Release in `release_permit`, as in
        // `try_acquire_key_permit`. A resize changes the cap in this word, by an RMW, so it is
        // ordered before or after this load; it adds no permit, so the check stays true until our
        // add (invariant 8).
        let word = self.live.load(Ordering::Acquire);
        if live_of(word) >= cap_of(word) {
            return Err(Full::Key);
        }
        // Ordering: Acquire pairs with the Release in `Total::release`: the connection whose total
        // permit we take over was dropped before we create its successor.
        if total.live.load(Ordering::Acquire) & !TOTAL_WAITING >= total.max {
            return Err(Full::Total);
        }
        // Ordering: Relaxed. The loads above synchronized with the releases they read; the adds
        // publish nothing (the connection does not exist yet), and as RMWs they cannot lose a
        // racing release's fetch_sub or a flag change.
        self.live.fetch_add(1, Ordering::Relaxed);
        // Ordering: Relaxed, as above.
        total.live.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a permit; when `max_total` refuses it, closes one idle connection of another key
    /// (`evict_elsewhere`) and tries once more.
    fn acquire_or_evict(&self, keys: &KeyTable<KeyPool<M>>, shard: usize) -> Result<(), Full> {
        match self.try_acquire_permit() {
            Err(Full::Total) if self.evict_elsewhere(keys, shard) => self.try_acquire_permit(),
            taken_or_refused => taken_or_refused,
        }
    }

    /// Closes one idle connection of a key other than this one, to free a total permit: the first
    /// found, trying each key's stacks from shard `shard` on in its steal order. Costs a lock of
    /// the key table, a `Vec` of its key pools, and at most one pop per key and shard. Whether one
    /// was closed.
    #[cold]
    fn evict_elsewhere(&self, keys: &KeyTable<KeyPool<M>>, shard: usize) -> bool {
        let pools: Vec<Arc<KeyPool<M>>> = keys.write().pools().cloned().collect();
        let order = std::iter::once(&shard).chain(&self.shared.config.steal_order[shard]);
        for kp in pools
            .iter()
            .filter(|kp| !std::ptr::eq(Arc::as_ptr(kp), self))
        {
            for &victim in order.clone() {
                if let Some(lease) = kp.pop_idle(victim) {
                    lease.close(shard);
                    return true;
                }
            }
        }
        false
    }

    /// Takes a permit of this key alone if fewer than `max_size` are in use (invariant 1).
    fn try_acquire_key_permit(&self) -> bool {
        // Ordering: Relaxed for the first look; the CAS below decides. The cap is read from the
        // same word, so a resize and this CAS are ordered by the word (invariant 8).
        let mut word = self.live.load(Ordering::Relaxed);
        while live_of(word) < cap_of(word) {
            // Ordering: Acquire on success pairs with the Release in `release_permit`, so the
            // connection whose permit we take over was dropped before we create its successor.
            match self.live.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => word = current,
            }
        }
        false
    }

    /// Gives a permit back after its connection was dropped, and notifies a waiter if any waits.
    /// With `max_total`, the total permit first (invariant 7), so that a waiter of this key
    /// notified below finds both free.
    fn release_permit(&self) {
        if let Some(total) = &self.shared.total {
            total.release();
        }
        // Ordering: Release pairs with the Acquire in `try_acquire_permit` (the drop happened first).
        // The flag in the value read settles the race with a registering waiter (module docs).
        let before = self.live.fetch_sub(1, Ordering::Release);
        if before & PERMIT_WAITING != 0 {
            self.waiters.notify_one();
        }
    }

    /// Creates a connection with a permit already taken and moves it into a node. The permit is
    /// given back if creation fails or the future is dropped (a cancelled checkout).
    async fn new_entry(this: &Arc<Self>) -> Result<Leased<M>, M::Error> {
        let permit = Permit(this);
        let conn = this.shared.manager.create(&this.key).await?;
        std::mem::forget(permit);
        let now = this.shared.now();
        let entry = Entry {
            conn,
            key_pool: Arc::clone(this),
            created: now,
            idle_since: now,
            reused: false,
            cut: this
                .shared
                .config
                .cut_for(|| this.shared.creations.fetch_incr()),
        };
        // A node is free: there is one per permit, and a closed entry gives its node back before
        // its permit (`Leased::close`), whose Release our permit's Acquire saw.
        Ok(this
            .idle
            .occupy(entry)
            .unwrap_or_else(|_| unreachable!("no free node while holding a permit")))
    }

    /// Creates a connection for a checkout (a permit already taken).
    async fn create(this: Arc<Self>, shard: usize) -> Result<Pooled<M>, Error<M::Error>> {
        match KeyPool::new_entry(&this).await {
            Ok(lease) => this.finish(shard, lease, Source::Created),
            Err(err) => {
                this.shared.counters(shard).create_errors.incr();
                Err(Error::Create {
                    key: KeyName::of(&this.key),
                    error: err,
                })
            }
        }
    }

    /// Waits for a connection: the slow path (module docs, step 5). Ends with a connection, or
    /// with a permit taken on a retry (the caller creates: the new entry needs the key pool's
    /// `Arc`, which the caller finds).
    async fn wait(
        this: &KeyPool<M>,
        shard: usize,
        keys: &KeyTable<KeyPool<M>>,
    ) -> Result<Waited<M>, Error<M::Error>> {
        let shared = &*this.shared;
        let mut registration = Registration::new(this, shard)?;
        let started = Instant::now();
        let mut sleep = pin!(shared.config.wait_timeout.map(|t| shared.manager.sleep(t)));
        loop {
            if this.is_closed() {
                return Err(Error::Closed);
            }
            if let Some((lease, source)) =
                KeyPool::validated(this, shard, this.take_idle(shard)).await
            {
                registration.leave(started);
                return this.finish(shard, lease, source).map(Waited::Got);
            }
            match this.acquire_or_evict(keys, shard) {
                Ok(()) => {
                    registration.leave(started);
                    return Ok(Waited::Permit);
                }
                // Refused by `max_total` for the first time in this wait: join the total's queue
                // (flagging its permit word), then retry once before sleeping (invariant 7).
                Err(Full::Total) if registration.join_total() => continue,
                Err(_) => {}
            }
            let woken = poll_fn(|cx| {
                if let Poll::Ready(wake) = pin!(registration.waiter.wait()).poll(cx) {
                    return Poll::Ready(Some(wake));
                }
                if let Some(sleep) = sleep.as_mut().as_pin_mut()
                    && sleep.poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            // `deadline_passed`: the sleep has completed, so it must not be polled again.
            let (handed, deadline_passed) = match woken {
                Some(Wake::Retry) => continue,
                Some(Wake::Closed) => {
                    registration.left = true;
                    return Err(Error::Closed);
                }
                Some(Wake::Handed(lease)) => {
                    registration.left = true;
                    (lease, false)
                }
                None => {
                    registration.left = true;
                    match this.waiters.deregister(&registration.waiter, this) {
                        Leftover::Item(lease) => (lease, true),
                        Leftover::Closed => return Err(Error::Closed),
                        Leftover::Nothing => {
                            shared.counters(shard).timeouts.incr();
                            return Err(Error::Timeout {
                                waited: started.elapsed(),
                            });
                        }
                    }
                }
            };
            shared.metrics[shard].record_wait(started.elapsed());
            let entry = handed.entry();
            // Handed-off entries were just returned, but the rules apply to them too (invariant 6).
            let (lease, acceptable) = if shared.config.is_expired(
                entry.created,
                entry.idle_since,
                entry.cut,
                shared.now(),
            ) {
                (handed, false)
            } else {
                match handed.check(shard, |conn| shared.manager.is_valid(conn)) {
                    (lease, true) => KeyPool::passes_validation(this, shard, lease).await,
                    failed => failed,
                }
            };
            if !acceptable {
                shared.counters(shard).validation_failures.incr();
                lease.close(shard);
                if deadline_passed {
                    shared.counters(shard).timeouts.incr();
                    return Err(Error::Timeout {
                        waited: started.elapsed(),
                    });
                }
                registration = Registration::new(this, shard)?;
                continue;
            }
            return this
                .finish(shard, lease, Source::HandedOff)
                .map(Waited::Got);
        }
    }

    /// Puts a returned (or re-shelved) entry back: onto shard `shard`'s stack, spilling to the other
    /// shards' stacks when it is full; straight to a waiter if one waits; closed when the key is
    /// closed or every stack is full (the idle limits).
    #[inline]
    fn put_idle(shard: usize, lease: Leased<M>) {
        let kp: *const KeyPool<M> = lease.key_pool();
        // SAFETY: the leased entry owns an `Arc` to the key pool until a push lands it on a stack.
        // The push's CAS is the last access to the key pool on that path; a refused push gives the
        // lease, and so the entry and its `Arc`, back, and `put_refused` touches the key pool only
        // while it holds the lease.
        let kp = unsafe { &*kp };
        // The common case, kept small enough to inline: room on the shard's own stack.
        if let Err(refused) = kp.try_place_on(shard, lease) {
            KeyPool::put_refused(shard, refused);
        }
    }

    /// The rest of `put_idle`, after the own shard's stack refused the entry.
    ///
    /// An associated function holding its own `Arc` to the key pool, not a `&self` method: closing
    /// the entry may drop the entry's `Arc`, possibly the last one (the pool was dropped
    /// meanwhile), and the key pool must not be freed while a `&KeyPool` argument is still live
    /// (rust-lang/rust#55005). The cold path can afford the reference count.
    #[cold]
    fn put_refused(shard: usize, refused: Refused<Leased<M>>) {
        let (Refused::Full(lease)
        | Refused::Waiting(lease)
        | Refused::Closed(lease)
        | Refused::Over(lease)) = &refused;
        let key_pool = Arc::clone(&lease.entry().key_pool);
        let refused = match refused {
            Refused::Full(lease) => match key_pool.place_elsewhere(shard, lease) {
                Ok(()) => return,
                Err(refused) => refused,
            },
            flagged => flagged,
        };
        match refused {
            Refused::Waiting(lease) => {
                let mut over = None;
                key_pool.waiters.hand_off(lease, &*key_pool, |lease| {
                    match key_pool.place(shard, lease) {
                        Ok(()) => {}
                        // Refused by `OVER` (invariant 8): settled after the queue's lock is
                        // released, since `settle_over` closes under the resize lock and a close
                        // may notify (resize lock, then queue lock). A flag left by a shrink that
                        // is stale by now must not close a connection the key has room for.
                        Err(Refused::Over(l)) => over = Some(l),
                        // With the queue locked and empty no stack is flagged WAITING, and the
                        // permit word's flag is clear too, so closing here cannot try to notify
                        // (which would take the queue's lock again). A freed total permit may
                        // notify the total's queue here: the lock order is a key's queue, then
                        // the total's, then a waiter's slot, and nothing takes them the other way.
                        Err(Refused::Full(l) | Refused::Closed(l) | Refused::Waiting(l)) => {
                            l.close(shard)
                        }
                    }
                });
                if let Some(lease) = over {
                    key_pool.settle_over(shard, lease);
                }
            }
            Refused::Over(lease) => key_pool.settle_over(shard, lease),
            Refused::Full(lease) | Refused::Closed(lease) => lease.close(shard),
        }
    }

    /// A return that met the `OVER` flag (the key's `max_size` was lowered; invariant 8): closes the
    /// entry while the key, less the connections already being closed, is over its cap; otherwise
    /// the flag is stale, so clears it and puts the entry back as a return would. Decided under
    /// `resize`, so a concurrent shrink cannot set the flag between our check and our clearing
    /// it; the close itself runs after the unlock (`Leased::close_doomed`).
    #[cold]
    fn settle_over(&self, shard: usize, lease: Leased<M>) {
        let mut closing = lock(&self.resize);
        // Ordering: Relaxed. The lock orders us after the last cap change and after every doomed
        // permit's release (released under it); a release outside the lock only lowers the count.
        let word = self.live.load(Ordering::Relaxed);
        // Seeded bug for the loom models (docs/protocol.md): a return over the cap clears the flag
        // and pushes, so the key keeps more connections than its lowered `max_size`.
        let over =
            live_of(word) - *closing > cap_of(word) && !cfg!(shardpool_seeded_bug = "over_pushes");
        if over {
            // Counted as closing under the lock, so the next decider does not count it; dropped
            // after the unlock, so its `Drop` may re-enter the pool.
            *closing += 1;
            drop(closing);
            lease.close_doomed(shard);
        } else {
            self.idle.set_over(false);
            drop(closing);
            KeyPool::put_idle(shard, lease);
        }
    }

    /// Sets this key's `max_size` to `max` (already validated): see `ShardedPool::set_max_size`.
    fn resize(&self, max: usize) {
        let resize = lock(&self.resize);
        // With `max_total`, a taker checks the cap by a load and adds by a `fetch_add`, both under
        // `Total::takers`: lowering the cap between the two would let it add above the new cap
        // after our CAS read the count (and so leave `OVER` clear). Holding `takers` keeps the CAS
        // out of that window (lock order: `resize`, then `takers`).
        // Seeded bug for the loom models (docs/protocol.md): the CAS runs without `takers`.
        let takers = self
            .shared
            .total
            .as_ref()
            .filter(|_| !cfg!(shardpool_seeded_bug = "resize_skips_takers"))
            .map(|total| lock(&total.takers));
        // Ordering: Relaxed for the first look; the CAS decides.
        let mut word = self.live.load(Ordering::Relaxed);
        loop {
            let new = (word & (PERMIT_WAITING | LIVE_MASK)) | (max << CAP_SHIFT);
            // Ordering: Relaxed. The cap publishes no memory; as an RMW on the permit word this CAS
            // is ordered with every taker's add, release's sub and waiter's flag (invariant 8).
            match self
                .live
                .compare_exchange_weak(word, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        drop(takers);
        // Over the new cap: from here every push is refused until a return finds the key back
        // within it (`settle_over`). Within it: clear a flag a shrink left behind.
        self.idle.set_over(live_of(word) > max);
        drop(resize);
        // Grown with checkouts waiting: they may now create. The flag was in the word our CAS
        // replaced, so every waiter that flagged it before is queued now (invariant 8).
        // Seeded bug for the loom models (docs/protocol.md): a grow tells no waiter.
        if max > cap_of(word)
            && word & PERMIT_WAITING != 0
            && !cfg!(shardpool_seeded_bug = "grow_silent")
        {
            self.waiters.notify_all();
        }
        // Close idle connections down to the new cap now; checked-out ones close as they return.
        // Each decision under the lock and each close after it, as in `settle_over`.
        for shard in 0..self.shared.config.shards {
            loop {
                let mut closing = lock(&self.resize);
                if self.live_count() - *closing <= self.max_size() {
                    break;
                }
                let Some(lease) = self.pop_idle(shard) else {
                    break;
                };
                *closing += 1;
                drop(closing);
                lease.close_doomed(shard);
            }
        }
    }

    /// Pushes `lease` onto shard `shard`'s stack or, when full, the others' in steal order,
    /// reserving total-idle budget as it goes. Gives the lease back when a stack is flagged (waiting
    /// or closed) or every stack is full or over budget.
    fn place(&self, shard: usize, lease: Leased<M>) -> Result<(), Refused<Leased<M>>> {
        match self.try_place_on(shard, lease) {
            Err(Refused::Full(lease)) => self.place_elsewhere(shard, lease),
            placed_or_flagged => placed_or_flagged,
        }
    }

    /// Pushes `lease` onto the first stack in shard `shard`'s steal order with room (the own
    /// shard's was full).
    fn place_elsewhere(
        &self,
        shard: usize,
        mut lease: Leased<M>,
    ) -> Result<(), Refused<Leased<M>>> {
        for &target in &self.shared.config.steal_order[shard] {
            lease = match self.try_place_on(target, lease) {
                Ok(()) => return Ok(()),
                Err(Refused::Full(back)) => back,
                Err(flagged) => return Err(flagged),
            };
        }
        Err(Refused::Full(lease))
    }

    /// Pops shard `shard`'s idle stack, giving the entry's slot of the total-idle budget back.
    #[inline(always)]
    fn pop_idle(&self, shard: usize) -> Option<Leased<M>> {
        let lease = self.idle.pop(shard)?;
        self.shared.release_idle(shard);
        Some(lease)
    }

    /// Pushes `lease` onto shard `target`'s stack within its total-idle budget. Over budget counts
    /// as full.
    #[inline(always)]
    fn try_place_on(&self, target: usize, lease: Leased<M>) -> Result<(), Refused<Leased<M>>> {
        if !self.shared.reserve_idle(target) {
            return Err(Refused::Full(lease));
        }
        let pushed = self.idle.push(target, lease);
        // Nothing of `self` may be touched after a successful push (module docs).
        if pushed.is_err() {
            self.shared.release_idle(target);
        }
        pushed
    }

    /// Closes the key: refuses every later push, fails its waiters and drains its stacks
    /// (invariant 5).
    fn close(&self) {
        // Ordering: Release pairs with the Acquire in `is_closed`.
        self.closed.store(true, Ordering::Release);
        // Seeded bug for the loom models (docs/protocol.md): drain first, flag after, so a return
        // landing in between stays idle in a closed key.
        let drain_first = cfg!(shardpool_seeded_bug = "drain_before_flag");
        if !drain_first {
            self.idle.close();
        }
        self.waiters.close(self);
        for shard in 0..self.shared.config.shards {
            while let Some(lease) = self.pop_idle(shard) {
                lease.close(shard);
            }
        }
        if drain_first {
            self.idle.close();
        }
    }

    /// Maintenance, part 1: closes expired entries on shard `shard`, keeping the rest in order.
    fn reap(&self, shard: usize) {
        let config = &self.shared.config;
        if config.idle_timeout.is_none() && config.max_lifetime.is_none() {
            return;
        }
        let now = self.shared.now();
        // Dropped at the end, or by the unwind should a connection's `Drop` panic.
        let mut keep = Reshelve {
            leases: Vec::new(),
            shard,
        };
        while let Some(lease) = self.pop_idle(shard) {
            let entry = lease.entry();
            if config.is_expired(entry.created, entry.idle_since, entry.cut, now) {
                self.shared.counters(shard).expirations.incr();
                lease.close(shard);
            } else {
                keep.leases.push(lease);
            }
        }
    }

    /// Maintenance, part 2: creates connections until shard `shard` holds its share of `min_idle`.
    async fn refill(this: &Arc<Self>, shard: usize) {
        let config = &this.shared.config;
        let want = config.share(config.min_idle, shard);
        // Not while checkouts wait on `max_total`: they need the permits more than the idle stack.
        let total_waits = || {
            this.shared
                .total
                .as_ref()
                .is_some_and(Total::blocks_waiters)
        };
        while this.idle.len(shard) < want
            && !this.is_closed()
            && !total_waits()
            && this.try_acquire_permit().is_ok()
        {
            match KeyPool::new_entry(this).await {
                Ok(lease) => {
                    this.shared.counters(shard).prewarms.incr();
                    KeyPool::put_idle(shard, lease);
                }
                Err(_) => {
                    this.shared.counters(shard).create_errors.incr();
                    break;
                }
            }
        }
    }
}

/// Leases that maintenance popped and keeps: dropping this puts them back on shard `shard`'s stack.
struct Reshelve<M: Manage> {
    /// Popped newest first.
    leases: Vec<Leased<M>>,
    shard: usize,
}

impl<M: Manage> Drop for Reshelve<M> {
    fn drop(&mut self) {
        // Oldest first, so the newest is on top again.
        while let Some(lease) = self.leases.pop() {
            KeyPool::put_idle(self.shard, lease);
        }
    }
}

impl<M: Manage> WaitSignal for KeyPool<M> {
    fn set_waiting(&self, waiting: bool) {
        self.idle.set_waiting(waiting);
        // Seeded bug for the loom models (docs/protocol.md): the permit word is not flagged, so a
        // freed permit does not wake a waiter.
        if cfg!(shardpool_seeded_bug = "no_permit_flag") {
            return;
        }
        // Ordering: Relaxed. The flag and the permit count share this word, so a racing release's
        // fetch_sub is ordered before or after this RMW in the word's modification order (module
        // docs); no other memory is published by the flag.
        if waiting {
            self.live.fetch_or(PERMIT_WAITING, Ordering::Relaxed);
        } else {
            self.live.fetch_and(!PERMIT_WAITING, Ordering::Relaxed);
        }
    }
}

impl<M: Manage> Leased<M> {
    /// Moves the entry out of its node and frees the node, drops the connection, and then frees
    /// its permit (in that order: invariant 1, and a node is free before a successor can be created
    /// to need one).
    fn close(self, shard: usize) {
        let stacks: *const IdleStacks<Entry<M>> = &self.key_pool().idle;
        // Seeded bug for the loom models (docs/protocol.md): the permit freed while the entry still
        // holds its node, so a racing create can find no free node.
        #[cfg(shardpool_seeded_bug = "permit_before_vacate")]
        self.key_pool().release_permit();
        // SAFETY: the leased entry owns an `Arc` to the key pool that owns `stacks`, and `vacate`
        // hands that entry back here only after its last access to them.
        let Entry { conn, key_pool, .. } = unsafe { &*stacks }.vacate(self);
        // Seeded bug for the loom models (docs/protocol.md): the permit freed while the connection
        // still exists, so a racing create can exceed `max_size`.
        #[cfg(shardpool_seeded_bug = "release_before_drop")]
        key_pool.release_permit();
        // Freed at the end of this scope, after the connection is dropped, even if its `Drop`
        // panics (invariant 3).
        #[cfg(not(any(
            shardpool_seeded_bug = "release_before_drop",
            shardpool_seeded_bug = "permit_before_vacate"
        )))]
        let _permit = Permit(&key_pool);
        key_pool.shared.counters(shard).closes.incr();
        drop(conn);
    }

    /// `close` for a connection counted in the resize lock's `closing`: dropped without the lock
    /// held (its `Drop` may return another connection of this key), then the permit released and
    /// the count lowered under the lock.
    fn close_doomed(self, shard: usize) {
        let stacks: *const IdleStacks<Entry<M>> = &self.key_pool().idle;
        // SAFETY: as in `close`.
        let Entry { conn, key_pool, .. } = unsafe { &*stacks }.vacate(self);
        let _permit = DoomedPermit(&key_pool);
        key_pool.shared.counters(shard).closes.incr();
        drop(conn);
    }
}

/// A waiter's place in its key's queue; leaving (or being dropped) deregisters it and puts back
/// anything handed to it meanwhile.
struct Registration<'a, M: Manage> {
    key_pool: &'a KeyPool<M>,
    waiter: Arc<Waiter<Leased<M>>>,
    shard: usize,
    /// Already out of the queue (woken with a hand-off or close, or deregistered).
    left: bool,
    /// On `Total::waiters` too (joined when `max_total` refused a permit; invariant 7).
    on_total: bool,
}

impl<'a, M: Manage> Registration<'a, M> {
    /// Queues a waiter, or fails with `Overloaded` when `max_waiters` already wait.
    fn new(key_pool: &'a KeyPool<M>, shard: usize) -> Result<Self, Error<M::Error>> {
        let max_waiters = key_pool.shared.config.max_waiters;
        // Registering flags the key's stacks and permit word before the caller's retry reads them
        // (invariant 4; module docs).
        let Some(waiter) = key_pool.waiters.register(key_pool, max_waiters) else {
            return Err(Error::Overloaded { max_waiters });
        };
        key_pool.shared.counters(shard).waits.incr();
        Ok(Registration {
            key_pool,
            waiter,
            shard,
            left: false,
            on_total: false,
        })
    }

    /// Joins the queue a freed total permit tells (`max_total`), flagging the total permit word
    /// before the caller's retry reads it (invariant 7). False if already on it (or no
    /// `max_total`): the caller sleeps instead of retrying again.
    fn join_total(&mut self) -> bool {
        let Some(total) = &self.key_pool.shared.total else {
            return false;
        };
        if std::mem::replace(&mut self.on_total, true) {
            return false;
        }
        total.waiters.enqueue(&self.waiter, total);
        true
    }

    /// Leaves the queue after succeeding on our own; records the wait.
    fn leave(&mut self, started: Instant) {
        self.key_pool.shared.metrics[self.shard].record_wait(started.elapsed());
        self.deregister();
    }

    /// Leaves the `max_total` queue, if on it (idempotent).
    fn leave_total(&mut self) {
        if std::mem::replace(&mut self.on_total, false)
            && let Some(total) = &self.key_pool.shared.total
        {
            total.waiters.remove(&self.waiter, total);
        }
    }

    fn deregister(&mut self) {
        self.leave_total();
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        match self
            .key_pool
            .waiters
            .deregister(&self.waiter, self.key_pool)
        {
            // Handed a connection we no longer need: pass it on (invariant 2: it is not lost).
            // Seeded bug for the loom models (docs/protocol.md): the leftover is forgotten, so a
            // waiter dropped during a hand-off takes the connection (and its permit) with it.
            // (A lease that is dropped leaks its entry and node: `stack::Lease`.)
            Leftover::Item(_forgotten) if cfg!(shardpool_seeded_bug = "leftover_forgotten") => {}
            Leftover::Item(lease) => KeyPool::put_idle(self.shard, lease),
            Leftover::Closed | Leftover::Nothing => {}
        }
    }
}

impl<M: Manage> Drop for Registration<'_, M> {
    fn drop(&mut self) {
        // Leaves the total's queue too, also when `left` was set by hand (woken with a hand-off
        // or close): the key's queue let the waiter go, the total's queue has not.
        self.deregister();
    }
}

/// A connection checked out of a [`ShardedPool`]. Dereferences to the connection; dropping it
/// returns the connection to the shard it was checked out on (from any thread).
///
/// ```
/// # use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
/// # struct M;
/// # impl Manage for M { type Key = u8; type Conn = Vec<u8>; type Error = std::io::Error;
/// #     async fn create(&self, _: &u8) -> std::io::Result<Vec<u8>> { Ok(Vec::new()) } }
/// let pool = ShardedPool::new(M, Config::default().shards(1)).unwrap();
/// let mut conn = shardpool::pool::block_on(pool.get(&0)).unwrap();
/// conn.push(1); // use it through DerefMut
/// conn.discard(); // broken? close it instead of returning it
/// assert_eq!(pool.stats().total.closes, 1);
/// ```
pub struct Pooled<M: Manage> {
    lease: ManuallyDrop<Leased<M>>,
    shard: usize,
}

impl<M: Manage> Deref for Pooled<M> {
    type Target = M::Conn;
    fn deref(&self) -> &M::Conn {
        &self.lease.entry().conn
    }
}

impl<M: Manage> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Conn {
        &mut self.lease.entry_mut().conn
    }
}

impl<M: Manage> fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("key", &self.lease.key_pool().key)
            .field("shard", &self.shard)
            .field("reused", &self.lease.entry().reused)
            .finish_non_exhaustive()
    }
}

impl<M: Manage> PooledConn<M> for Pooled<M> {
    fn discard(self) {
        if self.lease.key_pool().shared.leaks.is_some() {
            let (shared, report) = self.untrack();
            self.discard_untracked();
            report_leak(&shared, report);
            return;
        }
        self.discard_untracked();
    }

    fn is_reused(&self) -> bool {
        self.lease.entry().reused
    }

    fn shard(&self) -> usize {
        self.shard
    }

    fn key(&self) -> &M::Key {
        &self.lease.key_pool().key
    }

    fn detach(self) -> M::Conn {
        if self.lease.key_pool().shared.leaks.is_some() {
            let (shared, report) = self.untrack();
            let conn = self.detach_untracked();
            report_leak(&shared, report);
            return conn;
        }
        self.detach_untracked()
    }
}

/// Calls the leak callback with `report`, if any, once the connection's return is done.
#[cold]
fn report_leak<M: Manage>(shared: &Shared<M>, report: Option<super::Leak>) {
    if let (Some(leaks), Some(report)) = (&shared.leaks, report) {
        leaks.report(&report);
    }
}

impl<M: Manage> Pooled<M> {
    /// This checkout's id among the pool's checked-out connections: its key pool and node.
    fn leak_id(&self) -> (usize, u16) {
        let key_pool: *const KeyPool<M> = self.lease.key_pool();
        (key_pool as usize, self.lease.index())
    }

    /// With leak detection: ends the record of this checkout (before the connection leaves the
    /// guard, so a new checkout of the same node cannot be confused with it), keeping `Shared`
    /// alive for the report.
    #[cold]
    fn untrack(&self) -> (Arc<Shared<M>>, Option<super::Leak>) {
        let shared = Arc::clone(&self.lease.key_pool().shared);
        let report = shared
            .leaks
            .as_ref()
            .and_then(|leaks| leaks.returned(&self.leak_id()));
        (shared, report)
    }

    fn discard_untracked(self) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop), so this is the only take of the lease.
        let lease = unsafe { ManuallyDrop::take(&mut this.lease) };
        let shared = &*lease.key_pool().shared;
        let counters = shared.counters(this.shard);
        counters
            .returns
            .incr(counters.owned_here(this.shard, shared.config.shards));
        lease.close(this.shard);
    }

    fn detach_untracked(self) -> M::Conn {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop), so this is the only take of the lease.
        let lease = unsafe { ManuallyDrop::take(&mut this.lease) };
        let shard = this.shard;
        let stacks: *const IdleStacks<Entry<M>> = &lease.key_pool().idle;
        // SAFETY: the leased entry owns an `Arc` to the key pool that owns `stacks`, and `vacate`
        // hands that entry back here only after its last access to them.
        let Entry { conn, key_pool, .. } = unsafe { &*stacks }.vacate(lease);
        let shared = &*key_pool.shared;
        let counters = shared.counters(shard);
        counters
            .returns
            .incr(counters.owned_here(shard, shared.config.shards));
        // The node is free before the permit (invariant 2's order, as in `Leased::close`); the
        // connection is no longer the pool's, so invariant 1 no longer counts it.
        key_pool.release_permit();
        conn
    }
}

impl<M: Manage> Drop for Pooled<M> {
    fn drop(&mut self) {
        // One test of a config field picks the return's work (`GiveBack`).
        match self.lease.key_pool().shared.config.give_back {
            GiveBack::Plain => {
                // SAFETY: drop runs once and nothing touches `lease` after it; `discard` and
                // `detach` never reach here.
                let lease = unsafe { ManuallyDrop::take(&mut self.lease) };
                Pooled::give_back::<false>(lease, self.shard);
            }
            GiveBack::Clock => {
                // SAFETY: as above.
                let lease = unsafe { ManuallyDrop::take(&mut self.lease) };
                Pooled::give_back::<true>(lease, self.shard);
            }
            GiveBack::Tracked => self.drop_tracked(),
        }
    }
}

impl<M: Manage> Pooled<M> {
    /// `Drop` with leak detection: ends the checkout's record, returns the connection, then
    /// reports it if it had been reported overdue.
    #[cold]
    fn drop_tracked(&mut self) {
        let (shared, report) = self.untrack();
        // SAFETY: called only from `drop`, which runs once; nothing touches `lease` after it.
        let lease = unsafe { ManuallyDrop::take(&mut self.lease) };
        if shared.config.reads_clock {
            Pooled::give_back::<true>(lease, self.shard);
        } else {
            Pooled::give_back::<false>(lease, self.shard);
        }
        report_leak(&shared, report);
    }

    /// The return: the connection goes back to shard `shard`, or closes (too old, or refused by
    /// `recycle`). `CLOCK`: some rule reads the clock (`Validated::reads_clock`), so it is read
    /// without `Shared::now`'s test. Without `CLOCK` it reads no clock and skips the lifetime
    /// test, which is the same when no rule reads the clock: then `now()` is 0 and nothing is too
    /// old.
    #[inline(always)]
    fn give_back<const CLOCK: bool>(lease: Leased<M>, shard: usize) {
        let shared: *const Shared<M> = &*lease.key_pool().shared;
        // SAFETY: the entry's key pool owns an `Arc` to `Shared`, and this function holds the lease
        // (so the entry and its key pool) until `close` or `put_idle` consumes it, after which
        // `shared` is not used.
        let shared = unsafe { &*shared };
        let counters = shared.counters(shard);
        counters
            .returns
            .incr(counters.owned_here(shard, shared.config.shards));
        let now = if CLOCK { shared.config.clock.now() } else { 0 };
        let entry = lease.entry();
        if CLOCK && shared.config.is_too_old(entry.created, entry.cut, now) {
            counters.expirations.incr();
            lease.close(shard);
            return;
        }
        let (mut lease, recycled) = lease.check(shard, |conn| shared.manager.recycle(conn));
        if !recycled {
            lease.close(shard);
            return;
        }
        let entry = lease.entry_mut();
        entry.idle_since = now;
        entry.reused = true;
        KeyPool::put_idle(shard, lease);
    }
}
