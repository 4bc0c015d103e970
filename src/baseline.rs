//! The baseline: a `Mutex<HashMap<Key, VecDeque<Idle>>>` pool, the design most projects ship.
//!
//! It has the same limits, expiry, validation and waiting behaviour as [`ShardedPool`], behind the
//! same [`ConnectionPool`] trait, so benches, the server and tests can run either. Like a typical
//! per-destination proxy pool, every checkout and return takes one global lock, hashes the key
//! with the standard library's SipHash, and clones the key and the pool's `Arc` into the guard.
//! Idle connections are reused LIFO, as in the sharded pool, so the two behave alike in tests.
//!
//! [`ShardedPool`]: crate::ShardedPool

use crate::pool::leak::LeakTracker;
use crate::pool::metrics::ShardMetrics;
use crate::pool::sync::{Arc, Counter, Mutex, lock};
use crate::pool::waiters::{Leftover, WaitQueue, Waiter, Wake};
use crate::pool::{
    Config, ConfigError, ConnectionPool, Error, KeyName, Manage, PooledConn, SendConnectionPool,
    SendManage, Stats, Validated,
};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

/// The `Mutex<HashMap<Key, VecDeque<Idle>>>` baseline pool. Cheap to clone (a handle).
///
/// ```
/// use shardpool::baseline::MutexPool;
/// use shardpool::{Config, ConnectionPool, Manage};
/// # struct M;
/// # impl Manage for M { type Key = u8; type Conn = u32; type Error = std::io::Error;
/// #     async fn create(&self, _: &u8) -> std::io::Result<u32> { Ok(5) } }
/// let pool = MutexPool::new(M, Config::default().max_size(2)).unwrap();
/// let conn = shardpool::pool::block_on(pool.get(&1)).unwrap();
/// assert_eq!(*conn, 5);
/// ```
pub struct MutexPool<M: Manage> {
    inner: Arc<MutexInner<M>>,
}

impl<M: Manage> Clone for MutexPool<M> {
    fn clone(&self) -> Self {
        MutexPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Manage> fmt::Debug for MutexPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexPool")
            .field("total", &self.stats().total)
            .finish()
    }
}

struct MutexInner<M: Manage> {
    manager: M,
    config: Validated,
    state: Mutex<State<M>>,
    metrics: [ShardMetrics; 1],
    /// Connections created so far: each one's number seeds its expiry jitter (only counted with
    /// `expiry_jitter`).
    creations: Counter,
    /// With `leak_detection`: the checked-out connections, by a number given at checkout.
    leaks: Option<LeakTracker<u64, M::Key>>,
    /// The last such number handed out.
    checkouts_tracked: Counter,
}

struct State<M: Manage> {
    keys: HashMap<M::Key, KeyState<M>>,
    total_idle: usize,
    closed: bool,
}

struct KeyState<M: Manage> {
    /// Idle connections, most recently returned at the back.
    idle: VecDeque<Idle<M::Conn>>,
    live: usize,
    waiters: Arc<WaitQueue<Idle<M::Conn>>>,
}

impl<M: Manage> KeyState<M> {
    /// Under the lock: frees a permit and wakes a waiter to use it.
    fn free_permit(&mut self) {
        self.live -= 1;
        self.waiters.notify_one();
    }
}

/// Under the lock: frees a permit of a connection being closed when dropped, so a panic in
/// `is_valid` or in the connection's `Drop` loses no capacity. Nothing sees the order of the two
/// before the lock is released.
struct ClosingUnderLock<'a, M: Manage>(&'a mut KeyState<M>);

impl<M: Manage> Drop for ClosingUnderLock<'_, M> {
    fn drop(&mut self) {
        self.0.free_permit();
    }
}

/// A taken permit, freed (taking the lock) when this is dropped: when a create fails, is
/// cancelled or panics, and after a returned connection was closed (also if its `Drop` or
/// `recycle` panicked). A create that succeeds forgets it.
struct Permit<'a, M: Manage>(&'a MutexInner<M>, &'a M::Key);

impl<M: Manage> Drop for Permit<'_, M> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        self.0.release_permit(&mut state, self.1);
    }
}

/// An idle connection under `Manage::validate`, holding its permit. Dropped (it failed, or the
/// checkout was cancelled), it closes the connection, then frees the permit (invariant 1).
struct Validating<'a, M: Manage> {
    idle: ManuallyDrop<Idle<M::Conn>>,
    inner: &'a MutexInner<M>,
    key: &'a M::Key,
}

impl<M: Manage> Drop for Validating<'_, M> {
    fn drop(&mut self) {
        // Freed after the connection is dropped, even if its `Drop` panics.
        let _permit = Permit(self.inner, self.key);
        self.inner.metrics[0].counters.closes.incr();
        // SAFETY: drop runs once, and the only other take forgets `self` first.
        drop(unsafe { ManuallyDrop::take(&mut self.idle) });
    }
}

impl<M: Manage> Default for KeyState<M> {
    fn default() -> Self {
        KeyState {
            idle: VecDeque::new(),
            live: 0,
            waiters: Arc::new(WaitQueue::default()),
        }
    }
}

struct Idle<C> {
    conn: C,
    created: u64,
    idle_since: u64,
    reused: bool,
    /// This connection's share of `expiry_jitter` (`Validated::cut_for`); 0 without jitter.
    cut: u32,
}

/// What a checkout found under the lock.
enum Found<C> {
    Idle(Idle<C>),
    Create,
    Wait,
}

/// A waiting checkout's place in its key's queue. Dropping it (on success, timeout or
/// cancellation) leaves the queue, and a connection handed over meanwhile goes back to the pool.
struct Registration<'a, M: Manage> {
    inner: &'a MutexInner<M>,
    key: &'a M::Key,
    queue: Arc<WaitQueue<Idle<M::Conn>>>,
    waiter: Arc<Waiter<Idle<M::Conn>>>,
}

impl<M: Manage> Drop for Registration<'_, M> {
    fn drop(&mut self) {
        if let Leftover::Item(idle) = self.queue.deregister(&self.waiter, &()) {
            let mut state = lock(&self.inner.state);
            self.inner.put_back(&mut state, self.key, idle);
        }
    }
}

impl<M: Manage> MutexPool<M> {
    /// Builds the pool from the same [`Config`] as the sharded pool (its shard settings are
    /// ignored: this pool has one lock and reports one shard).
    ///
    /// `Config::max_total` is refused with [`ConfigError::Unsupported`]: this baseline does not
    /// implement a cap across keys.
    ///
    /// ```
    /// # use shardpool::{Config, ConfigError, Manage};
    /// # use shardpool::baseline::MutexPool;
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let err = MutexPool::new(M, Config::default().max_total(4)).unwrap_err();
    /// assert!(matches!(err, ConfigError::Unsupported { setting: "max_total", .. }));
    /// ```
    pub fn new(manager: M, config: Config) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        if config.max_total.is_some() {
            return Err(ConfigError::Unsupported {
                setting: "max_total",
                pool: "MutexPool",
            });
        }
        Ok(MutexPool {
            inner: Arc::new(MutexInner {
                manager,
                state: Mutex::new(State {
                    keys: HashMap::new(),
                    total_idle: 0,
                    closed: false,
                }),
                metrics: [ShardMetrics::default()],
                creations: Counter::new(),
                leaks: config
                    .leak_detection
                    .as_ref()
                    .map(|detection| LeakTracker::new(detection, &config.clock)),
                checkouts_tracked: Counter::new(),
                config,
            }),
        })
    }

    /// `find_or_wait`, and with leak detection the record of the checkout.
    async fn checkout(
        &self,
        key: &M::Key,
        location: &'static Location<'static>,
    ) -> Result<MutexPooled<M>, Error<M::Error>> {
        let mut result = self.find_or_wait(key).await;
        if let (Some(leaks), Ok(guard)) = (&self.inner.leaks, &mut result) {
            guard.leak_id = self.inner.checkouts_tracked.fetch_incr() + 1;
            leaks.checked_out(guard.leak_id, key.clone(), location);
        }
        result
    }

    async fn find_or_wait(&self, key: &M::Key) -> Result<MutexPooled<M>, Error<M::Error>> {
        let inner = &self.inner;
        let counters = &inner.metrics[0].counters;
        let mut waiting: Option<Registration<'_, M>> = None;
        let started = Instant::now();
        let mut sleep = pin!(inner.config.wait_timeout.map(|t| inner.manager.sleep(t)));
        loop {
            let found = {
                let mut state = lock(&inner.state);
                if state.closed {
                    return Err(Error::Closed);
                }
                let found = inner.find(&mut state, key);
                if matches!(found, Found::Wait) && waiting.is_none() {
                    let queue = Arc::clone(&state.keys[key].waiters);
                    let max_waiters = inner.config.max_waiters;
                    let Some(waiter) = queue.register(&(), max_waiters) else {
                        return Err(Error::Overloaded { max_waiters });
                    };
                    counters.waits.incr();
                    waiting = Some(Registration {
                        inner,
                        key,
                        queue,
                        waiter,
                    });
                }
                found
            };
            let registration = match found {
                Found::Idle(idle) => {
                    let Some(idle) = inner.validated(key, idle).await else {
                        // Closed; try the next idle connection, a permit, or wait.
                        continue;
                    };
                    if waiting.take().is_some() {
                        inner.metrics[0].record_wait(started.elapsed());
                    }
                    // One counter set for all threads (one shard): always the shared cell.
                    counters.local_hits.incr(false);
                    return Ok(self.guard(key, idle));
                }
                Found::Create => {
                    if waiting.take().is_some() {
                        inner.metrics[0].record_wait(started.elapsed());
                    }
                    return self.create(key).await;
                }
                Found::Wait => waiting.as_ref().expect("registered above"),
            };
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
                Some(Wake::Closed) => return Err(Error::Closed),
                Some(Wake::Handed(idle)) => (idle, false),
                None => match registration.queue.deregister(&registration.waiter, &()) {
                    Leftover::Item(idle) => (idle, true),
                    Leftover::Closed => return Err(Error::Closed),
                    Leftover::Nothing => {
                        counters.timeouts.incr();
                        return Err(Error::Timeout {
                            waited: started.elapsed(),
                        });
                    }
                },
            };
            let Some(handed) = inner.validated(key, handed).await else {
                if deadline_passed {
                    counters.timeouts.incr();
                    return Err(Error::Timeout {
                        waited: started.elapsed(),
                    });
                }
                // No longer queued (handed off): register afresh if it has to wait again.
                waiting = None;
                continue;
            };
            inner.metrics[0].record_wait(started.elapsed());
            counters.handoffs.incr();
            return Ok(self.guard(key, handed));
        }
    }

    async fn create(&self, key: &M::Key) -> Result<MutexPooled<M>, Error<M::Error>> {
        let inner = &self.inner;
        let counters = &inner.metrics[0].counters;
        let permit = Permit(inner, key);
        match inner.manager.create(key).await {
            Ok(conn) => {
                let now = inner.now();
                if lock(&inner.state).closed {
                    // The permit is freed after the connection is dropped.
                    drop(conn);
                    return Err(Error::Closed);
                }
                std::mem::forget(permit);
                counters.creates.incr();
                Ok(self.guard(
                    key,
                    Idle {
                        conn,
                        created: now,
                        idle_since: now,
                        reused: false,
                        cut: inner.config.cut_for(|| inner.creations.fetch_incr()),
                    },
                ))
            }
            Err(err) => {
                drop(permit);
                counters.create_errors.incr();
                Err(Error::Create {
                    key: KeyName::of(&key),
                    error: err,
                })
            }
        }
    }

    fn guard(&self, key: &M::Key, idle: Idle<M::Conn>) -> MutexPooled<M> {
        MutexPooled {
            idle: ManuallyDrop::new(idle),
            key: key.clone(),
            pool: Arc::clone(&self.inner),
            discarded: false,
            detached: false,
            leak_id: 0,
        }
    }
}

impl<M: Manage> MutexInner<M> {
    fn now(&self) -> u64 {
        self.config.clock.now()
    }

    /// Runs `Manage::validate` on `idle`, taken from the pool with its permit, if it sat idle at
    /// least `validate_idle_after` (outside the lock). `None`: it failed and was closed, its permit
    /// freed. Cancelled while `validate` runs, it closes the connection likewise.
    async fn validated(&self, key: &M::Key, idle: Idle<M::Conn>) -> Option<Idle<M::Conn>> {
        let idle_for = self.config.validation_due(idle.idle_since, self.now());
        let Some(idle_for) = idle_for else {
            return Some(idle);
        };
        let mut closing = Validating {
            idle: ManuallyDrop::new(idle),
            inner: self,
            key,
        };
        if self
            .manager
            .validate(&mut closing.idle.conn, idle_for)
            .await
        {
            let mut closing = ManuallyDrop::new(closing);
            // SAFETY: `closing` is never dropped (ManuallyDrop), so this is the only take.
            return Some(unsafe { ManuallyDrop::take(&mut closing.idle) });
        }
        self.metrics[0].counters.validation_failures.incr();
        drop(closing);
        None
    }

    /// Under the lock: an idle connection, a permit to create, or "wait".
    fn find(&self, state: &mut State<M>, key: &M::Key) -> Found<M::Conn> {
        if !state.keys.contains_key(key) {
            state.keys.insert(key.clone(), KeyState::default());
        }
        let State {
            keys, total_idle, ..
        } = state;
        let ks = keys.get_mut(key).expect("inserted above");
        let counters = &self.metrics[0].counters;
        let now = self.now();
        while let Some(mut idle) = ks.idle.pop_back() {
            *total_idle -= 1;
            let closing = ClosingUnderLock(&mut *ks);
            if self
                .config
                .is_expired(idle.created, idle.idle_since, idle.cut, now)
            {
                counters.expirations.incr();
            } else if !self.manager.is_valid(&mut idle.conn) {
                counters.validation_failures.incr();
            } else {
                std::mem::forget(closing);
                return Found::Idle(idle);
            }
            counters.closes.incr();
            drop(idle);
            drop(closing);
        }
        if ks.live < self.config.max_size {
            ks.live += 1;
            return Found::Create;
        }
        Found::Wait
    }

    /// Under the lock: frees a permit and wakes a waiter to use it.
    fn release_permit(&self, state: &mut State<M>, key: &M::Key) {
        if let Some(ks) = state.keys.get_mut(key) {
            ks.free_permit();
        }
    }

    /// Under the lock: a returned connection goes to the oldest waiter, or idles if the limits
    /// allow, or closes.
    fn put_back(&self, state: &mut State<M>, key: &M::Key, idle: Idle<M::Conn>) {
        let counters = &self.metrics[0].counters;
        let max_total = self.config.max_total_idle.unwrap_or(usize::MAX);
        let max_idle = self.config.max_idle_per_key;
        let State {
            keys,
            total_idle,
            closed,
        } = state;
        let Some(ks) = keys.get_mut(key) else {
            // The key was removed while the connection was out; its permits went with it.
            drop(idle);
            counters.closes.incr();
            return;
        };
        if *closed {
            // Under the lock, so the permit can go first: a panicking `Drop` then loses none.
            ks.live -= 1;
            counters.closes.incr();
            drop(idle);
            return;
        }
        let KeyState {
            idle: shelf,
            live,
            waiters,
        } = ks;
        waiters.hand_off(idle, &(), |idle| {
            if shelf.len() < max_idle && *total_idle < max_total {
                shelf.push_back(idle);
                *total_idle += 1;
            } else {
                // Over the idle limits. No waiter needs the freed permit: the queue is empty. As
                // above, the permit goes first.
                *live -= 1;
                counters.closes.incr();
                drop(idle);
            }
        });
    }
}

// The same futures as `ConnectionPool`'s, so the same checkout code: with `M: SendManage` the
// compiler proves them `Send` through the blanket `Manage` implementation's `Send` futures.
impl<M: SendManage> SendConnectionPool<M> for MutexPool<M> {
    #[track_caller]
    #[inline]
    fn get_send(
        &self,
        key: &M::Key,
    ) -> impl Future<Output = Result<MutexPooled<M>, Error<M::Error>>> + Send {
        ConnectionPool::get(self, key)
    }

    #[track_caller]
    #[inline]
    fn get_on_send(
        &self,
        shard: usize,
        key: &M::Key,
    ) -> impl Future<Output = Result<MutexPooled<M>, Error<M::Error>>> + Send {
        ConnectionPool::get_on(self, shard, key)
    }

    #[inline]
    fn maintain_send(&self, shard: usize) -> impl Future<Output = ()> + Send {
        ConnectionPool::maintain(self, shard)
    }
}

impl<M: Manage> ConnectionPool<M> for MutexPool<M> {
    type Guard = MutexPooled<M>;

    #[track_caller]
    fn get(&self, key: &M::Key) -> impl Future<Output = Result<MutexPooled<M>, Error<M::Error>>> {
        self.checkout(key, Location::caller())
    }

    #[track_caller]
    fn get_on(
        &self,
        _shard: usize,
        key: &M::Key,
    ) -> impl Future<Output = Result<MutexPooled<M>, Error<M::Error>>> {
        self.checkout(key, Location::caller())
    }

    async fn maintain(&self, _shard: usize) {
        let inner = &self.inner;
        if let Some(leaks) = &inner.leaks {
            leaks.scan();
        }
        let want = inner.config.min_idle;
        let mut missing = Vec::new();
        {
            let mut state = lock(&inner.state);
            let now = inner.now();
            let counters = &inner.metrics[0].counters;
            let State {
                keys, total_idle, ..
            } = &mut *state;
            // Every count is settled before the first expired connection drops, still under the
            // lock: nobody sees the permits freed early, and a panicking `Drop` loses none.
            let mut expired = Vec::new();
            for (key, ks) in keys.iter_mut() {
                let before = expired.len();
                let mut keep = VecDeque::with_capacity(ks.idle.len());
                for idle in ks.idle.drain(..) {
                    if inner
                        .config
                        .is_expired(idle.created, idle.idle_since, idle.cut, now)
                    {
                        expired.push(idle);
                    } else {
                        keep.push_back(idle);
                    }
                }
                ks.idle = keep;
                let reaped = expired.len() - before;
                ks.live -= reaped;
                *total_idle -= reaped;
                let short = want
                    .saturating_sub(ks.idle.len())
                    .min(inner.config.max_size - ks.live);
                missing.push((key.clone(), short));
            }
            counters.expirations.add(expired.len() as u64);
            counters.closes.add(expired.len() as u64);
            drop(expired);
            drop(state);
        }
        for (key, short) in missing {
            // One permit at a time, each held by a guard, so a cancelled or panicking create
            // loses none.
            for _ in 0..short {
                {
                    let mut state = lock(&inner.state);
                    let closed = state.closed;
                    match state.keys.get_mut(&key) {
                        Some(ks) if !closed && ks.live < inner.config.max_size => ks.live += 1,
                        _ => break,
                    }
                }
                let permit = Permit(inner, &key);
                match inner.manager.create(&key).await {
                    Ok(conn) => {
                        std::mem::forget(permit);
                        inner.metrics[0].counters.prewarms.incr();
                        let now = inner.now();
                        let idle = Idle {
                            conn,
                            created: now,
                            idle_since: now,
                            reused: false,
                            cut: inner.config.cut_for(|| inner.creations.fetch_incr()),
                        };
                        inner.put_back(&mut lock(&inner.state), &key, idle);
                    }
                    Err(_) => {
                        inner.metrics[0].counters.create_errors.incr();
                        break;
                    }
                }
            }
        }
    }

    fn stats(&self) -> Stats {
        let (idle, live) = {
            let state = lock(&self.inner.state);
            let live: usize = state.keys.values().map(|ks| ks.live).sum();
            (state.total_idle as u64, live as u64)
        };
        let shard = self.inner.metrics[0].snapshot(idle, Some(live));
        Stats::from_shards(&self.inner.metrics, vec![shard], live)
    }

    fn close(&self) {
        let drained: Vec<_> = {
            let mut state = lock(&self.inner.state);
            state.closed = true;
            state.total_idle = 0;
            state
                .keys
                .values_mut()
                .map(|ks| {
                    let idle: Vec<_> = ks.idle.drain(..).collect();
                    ks.live -= idle.len();
                    ks.waiters.close(&());
                    idle
                })
                .collect()
        };
        let closed: usize = drained.iter().map(Vec::len).sum();
        self.inner.metrics[0].counters.closes.add(closed as u64);
    }

    fn remove_key(&self, key: &M::Key) {
        let removed = lock(&self.inner.state).keys.remove(key);
        if let Some(ks) = removed {
            let mut state = lock(&self.inner.state);
            state.total_idle -= ks.idle.len();
            drop(state);
            self.inner.metrics[0]
                .counters
                .closes
                .add(ks.idle.len() as u64);
            ks.waiters.close(&());
        }
    }

    fn shard_count(&self) -> usize {
        1
    }
}

/// A connection checked out of a [`MutexPool`]; dropping it returns the connection.
///
/// ```
/// use shardpool::baseline::MutexPool;
/// use shardpool::{Config, ConnectionPool, Manage, PooledConn};
/// # struct M;
/// # impl Manage for M { type Key = u8; type Conn = u32; type Error = std::io::Error;
/// #     async fn create(&self, _: &u8) -> std::io::Result<u32> { Ok(1) } }
/// let pool = MutexPool::new(M, Config::default()).unwrap();
/// let conn = shardpool::pool::block_on(pool.get(&3)).unwrap();
/// assert_eq!((*conn, *conn.key()), (1, 3));
/// conn.discard();
/// assert_eq!(pool.stats().total.live, 0);
/// ```
pub struct MutexPooled<M: Manage> {
    idle: ManuallyDrop<Idle<M::Conn>>,
    key: M::Key,
    pool: Arc<MutexInner<M>>,
    discarded: bool,
    /// The connection was taken out (`detach`): `idle` is empty.
    detached: bool,
    /// With leak detection, this checkout's number (`MutexInner::leaks`); 0: not tracked.
    leak_id: u64,
}

impl<M: Manage> Deref for MutexPooled<M> {
    type Target = M::Conn;
    fn deref(&self) -> &M::Conn {
        &self.idle.conn
    }
}

impl<M: Manage> DerefMut for MutexPooled<M> {
    fn deref_mut(&mut self) -> &mut M::Conn {
        &mut self.idle.conn
    }
}

impl<M: Manage> fmt::Debug for MutexPooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexPooled")
            .field("key", &self.key)
            .field("reused", &self.idle.reused)
            .finish_non_exhaustive()
    }
}

impl<M: Manage> PooledConn<M> for MutexPooled<M> {
    fn discard(mut self) {
        self.discarded = true;
    }

    fn is_reused(&self) -> bool {
        self.idle.reused
    }

    fn shard(&self) -> usize {
        0
    }

    fn key(&self) -> &M::Key {
        &self.key
    }

    fn detach(mut self) -> M::Conn {
        self.detached = true;
        // SAFETY: `detached` tells `drop` (which runs next, when `self` goes) not to take `idle`
        // again.
        unsafe { ManuallyDrop::take(&mut self.idle) }.conn
    }
}

impl<M: Manage> Drop for MutexPooled<M> {
    fn drop(&mut self) {
        let report = match &self.pool.leaks {
            Some(leaks) if self.leak_id != 0 => leaks.returned(&self.leak_id),
            _ => None,
        };
        self.give_back();
        if let (Some(leaks), Some(report)) = (&self.pool.leaks, report) {
            leaks.report(&report);
        }
    }
}

impl<M: Manage> MutexPooled<M> {
    /// The return: back to the pool, or closed (discarded, too old, refused by `recycle`), or
    /// only the permit freed (detached). Runs once, from `drop`.
    fn give_back(&mut self) {
        let pool = &self.pool;
        // Freed after the connection is closed, also if `recycle` or the connection's `Drop`
        // panics; forgotten if the connection goes back to the pool.
        let permit = Permit(pool, &self.key);
        let counters = &pool.metrics[0].counters;
        if self.detached {
            // The connection left with `detach`; the permit is freed as this returns.
            counters.returns.incr(false);
            return;
        }
        // SAFETY: drop runs once and nothing touches `idle` after it; `detach` took nothing.
        let mut idle = unsafe { ManuallyDrop::take(&mut self.idle) };
        // Shared by every thread, as at checkout.
        counters.returns.incr(false);
        let now = pool.now();
        // The same order as the sharded pool: discarded, then too old, then refused by recycle.
        let too_old = !self.discarded && pool.config.is_too_old(idle.created, idle.cut, now);
        if self.discarded || too_old || !pool.manager.recycle(&mut idle.conn) {
            if too_old {
                counters.expirations.incr();
            }
            counters.closes.incr();
            drop(idle);
            return;
        }
        std::mem::forget(permit);
        idle.idle_since = now;
        idle.reused = true;
        let mut state = lock(&pool.state);
        pool.put_back(&mut state, &self.key, idle);
    }
}
