//! The manager, connections, guard wrapper and model runner shared by every model (crate docs).

use loom::cell::UnsafeCell;
use shardpool::pool::{
    self, Config, ConnectionPool, Error, Manage, Pooled, PooledConn, ShardedPool,
};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

/// The one key every model checks out.
pub const KEY: u8 = 7;

/// The preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set. `scripts/loom.sh` sets it.
pub const DEFAULT_PREEMPTIONS: usize = 3;

/// Connection ids are bits of a `u64` in the tracker.
const MAX_IDS: usize = 64;

/// What the models know about the connections: created, existing, held, dropped, expired. Plain
/// `std` atomics (crate docs: bookkeeping outside the model). Every method asserts the invariant it
/// is about, naming it, so a loom failure says which one broke.
#[derive(Debug)]
pub struct Tracker {
    max_size: usize,
    /// The invariant and setting `max_size` stands for: `("1", "max_size")`, or with
    /// `max_total` `("7", "max_total")`.
    cap: (&'static str, &'static str),
    /// Bit `n`: the `n`-th call of `create` fails.
    failing_creates: u64,
    /// Calls of `create` so far; a connection's id is the number of its call.
    attempts: AtomicUsize,
    /// Connections that exist now (created, not yet dropped).
    existing: AtomicUsize,
    /// Bit `id`: connection `id` was dropped.
    dropped: AtomicU64,
    /// Bit `id`: connection `id` is held by a guard.
    held: AtomicU64,
    /// Connections with an id below this are expired: none may be handed out.
    expired_below: AtomicUsize,
}

impl Tracker {
    fn new(max_size: usize, failing_creates: u64) -> Self {
        Tracker {
            max_size,
            cap: ("1", "max_size"),
            failing_creates,
            attempts: AtomicUsize::new(0),
            existing: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            held: AtomicU64::new(0),
            expired_below: AtomicUsize::new(0),
        }
    }

    fn create(self: &Arc<Self>) -> Result<Conn, CreateFailed> {
        let attempt = self.attempts.fetch_add(1, SeqCst);
        assert!(
            attempt < MAX_IDS,
            "a model created over {MAX_IDS} connections"
        );
        if self.failing_creates & (1 << attempt) != 0 {
            return Err(CreateFailed { attempt });
        }
        let existing = self.existing.fetch_add(1, SeqCst) + 1;
        let (invariant, setting) = self.cap;
        assert!(
            existing <= self.max_size,
            "invariant {invariant} broken: {existing} connections exist, {setting} is {}",
            self.max_size
        );
        Ok(Conn {
            id: attempt,
            uses: UnsafeCell::new(0),
            tracker: Arc::clone(self),
            _leak_token: loom::sync::Arc::new(()),
        })
    }

    /// Calls of `create` so far (failed ones included).
    pub fn creates(&self) -> usize {
        self.attempts.load(SeqCst)
    }

    /// Connections that exist now.
    pub fn existing(&self) -> usize {
        self.existing.load(SeqCst)
    }

    /// Connections held by a guard now.
    pub fn held(&self) -> usize {
        self.held.load(SeqCst).count_ones() as usize
    }

    /// Whether connection `id` was dropped.
    pub fn is_dropped(&self, id: usize) -> bool {
        self.dropped.load(SeqCst) & (1 << id) != 0
    }

    /// Declares every connection created so far expired (call it right after advancing the clock
    /// past their idle timeout, while they are all idle).
    pub fn expire_all_so_far(&self) {
        self.expired_below.store(self.creates(), SeqCst);
    }

    fn take(&self, id: usize) {
        let before = self.held.fetch_or(1 << id, SeqCst);
        assert!(
            before & (1 << id) == 0,
            "invariant 2 broken: connection {id} is held by two guards"
        );
        assert!(
            id >= self.expired_below.load(SeqCst),
            "invariant 6 broken: expired connection {id} was handed out"
        );
    }

    fn give_back(&self, id: usize) {
        self.held.fetch_and(!(1 << id), SeqCst);
    }

    fn dropped(&self, id: usize) {
        let before = self.dropped.fetch_or(1 << id, SeqCst);
        assert!(
            before & (1 << id) == 0,
            "invariant 3 broken: connection {id} dropped twice"
        );
        assert!(
            self.held.load(SeqCst) & (1 << id) == 0,
            "invariant 2 broken: connection {id} dropped while a guard holds it"
        );
        self.existing.fetch_sub(1, SeqCst);
    }
}

/// A pooled connection of the models.
pub struct Conn {
    id: usize,
    /// Written by every user and by the drop, so loom checks they are ordered (crate docs).
    uses: UnsafeCell<usize>,
    tracker: Arc<Tracker>,
    /// A loom allocation: loom's leak check fails an execution that never drops this connection.
    _leak_token: loom::sync::Arc<()>,
}

impl Conn {
    /// Uses the connection: a write loom checks against every other access to it.
    fn touch(&self) {
        // SAFETY: the pointer is valid for the cell's lifetime; loom checks (and panics on) any
        // access not ordered with this one, which is the point.
        self.uses.with_mut(|uses| unsafe { *uses += 1 });
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conn({})", self.id)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.touch();
        self.tracker.dropped(self.id);
    }
}

/// The `create` the model told to fail.
#[derive(Debug)]
pub struct CreateFailed {
    /// Which call of `create` it was (0 for the first).
    pub attempt: usize,
}

impl fmt::Display for CreateFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "create #{} failed as the model asked", self.attempt)
    }
}

impl std::error::Error for CreateFailed {}

/// The manager of the models: creates tracked [`Conn`]s, failing the calls the model chose.
pub struct Manager(Arc<Tracker>);

impl Manage for Manager {
    type Key = u8;
    type Conn = Conn;
    type Error = CreateFailed;

    async fn create(&self, _key: &u8) -> Result<Conn, CreateFailed> {
        self.0.create()
    }
}

/// A checked-out connection as a caller holds it: marked held in the tracker and used once.
/// Dropping it returns the connection (on whatever thread drops it).
#[derive(Debug)]
pub struct Held {
    guard: Option<Pooled<Manager>>,
}

impl Held {
    fn new(guard: Pooled<Manager>) -> Self {
        guard.tracker.take(guard.id);
        guard.touch();
        Held { guard: Some(guard) }
    }

    /// The connection's id (its `create` call).
    pub fn id(&self) -> usize {
        self.guard.as_ref().map_or(usize::MAX, |g| g.id)
    }

    /// Closes the connection instead of returning it, which frees its permit.
    pub fn discard(mut self) {
        if let Some(guard) = self.release() {
            guard.discard();
        }
    }

    fn release(&mut self) -> Option<Pooled<Manager>> {
        let guard = self.guard.take()?;
        guard.touch();
        guard.tracker.give_back(guard.id);
        Some(guard)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.release());
    }
}

/// A pool of two shards for key [`KEY`], and the tracker of its connections.
pub struct Harness {
    /// The pool under test.
    pub pool: ShardedPool<Manager>,
    /// What the models know about its connections.
    pub tracker: Arc<Tracker>,
}

impl Harness {
    /// Two shards, `max_size` live connections per key, no idle timeout, waits without a deadline
    /// (sleeps never fire under loom). `tune` changes anything else.
    pub fn new(max_size: usize, tune: impl FnOnce(Config) -> Config) -> Self {
        Self::with_failing_creates(max_size, 0, tune)
    }

    /// As [`Harness::new`], and call `n` of `create` fails for every bit `n` set in `failing`.
    pub fn with_failing_creates(
        max_size: usize,
        failing: u64,
        tune: impl FnOnce(Config) -> Config,
    ) -> Self {
        Self::build(max_size, max_size, failing, tune)
    }

    /// As [`Harness::new`], for models that remove [`KEY`]: invariant 1 holds per key pool, and
    /// after `remove_key` the old key pool's connections close as they come back while a new key
    /// pool may already create up to `max_size`, so up to twice `max_size` may exist at once.
    pub fn with_key_churn(max_size: usize) -> Self {
        Self::build(max_size, 2 * max_size, 0, |c| c)
    }

    /// As [`Harness::new`], with `max_total` across keys: at most `max_total` connections may
    /// exist at once over every key (invariant 7), which the tracker checks at every create.
    pub fn with_total(max_size: usize, max_total: usize) -> Self {
        let mut tracker = Tracker::new(max_total, 0);
        tracker.cap = ("7", "max_total");
        Self::build_with(max_size, tracker, |c| c.max_total(max_total))
    }

    /// As [`Harness::new`], for models that resize [`KEY`] (`ShardedPool::set_max_size`, invariant
    /// 8): `max_size` to start with, up to `limit` (`Config::max_size_limit`), which the tracker
    /// checks at every create. That the key is within a lowered size once its connections are back
    /// the model checks itself ([`Harness::assert_within`]).
    pub fn resizable(max_size: usize, limit: usize) -> Self {
        Self::build(max_size, limit, 0, |c| c.max_size_limit(limit))
    }

    /// Invariant 8 at quiescence: [`KEY`] has at most `max_size` live connections, and as many
    /// exist.
    pub fn assert_within(&self, max_size: usize) {
        let (live, _) = self.pool.key_gauges(&KEY).unwrap_or((0, 0));
        assert!(
            live <= max_size && self.tracker.existing() <= max_size,
            "invariant 8 broken: {live} live connections ({} exist) after resizing max_size to \
             {max_size}",
            self.tracker.existing()
        );
    }

    fn build(
        max_size: usize,
        max_existing: usize,
        failing: u64,
        tune: impl FnOnce(Config) -> Config,
    ) -> Self {
        Self::build_with(max_size, Tracker::new(max_existing, failing), tune)
    }

    fn build_with(max_size: usize, tracker: Tracker, tune: impl FnOnce(Config) -> Config) -> Self {
        let tracker = Arc::new(tracker);
        let config = tune(
            Config::default()
                .shards(2)
                .max_size(max_size)
                .idle_timeout(None)
                .wait_timeout(None),
        );
        let pool = ShardedPool::new(Manager(Arc::clone(&tracker)), config)
            .expect("the model's configuration is valid");
        Harness { pool, tracker }
    }

    /// Checks a connection to [`KEY`] out on `shard`, blocking (under loom) until done.
    pub fn get(&self, shard: usize) -> Result<Held, Error<CreateFailed>> {
        get(&self.pool, shard)
    }

    /// A handle for another thread.
    pub fn pool(&self) -> ShardedPool<Manager> {
        self.pool.clone()
    }

    /// Invariant 3 while the pool lives, with no checkout or return under way: every connection
    /// that exists is idle or held, and the pool's count of live connections agrees.
    pub fn assert_quiescent(&self) {
        let (live, idle) = self.pool.key_gauges(&KEY).unwrap_or((0, 0));
        let held = self.tracker.held();
        assert_eq!(
            live,
            idle + held,
            "invariant 3 broken: live {live} != idle {idle} + checked out {held}"
        );
        assert_eq!(
            live,
            self.tracker.existing(),
            "invariant 3 broken: the pool counts {live} live connections, {} exist",
            self.tracker.existing()
        );
    }

    /// [`Harness::assert_quiescent`] over several keys: summed over `keys`, every connection that
    /// exists is idle or held, and the pool's count agrees.
    pub fn assert_quiescent_keys(&self, keys: &[u8]) {
        let (live, idle) = keys.iter().fold((0, 0), |(live, idle), key| {
            let (l, i) = self.pool.key_gauges(key).unwrap_or((0, 0));
            (live + l, idle + i)
        });
        let held = self.tracker.held();
        assert_eq!(
            live,
            idle + held,
            "invariant 3 broken: live {live} != idle {idle} + checked out {held}"
        );
        assert_eq!(
            live,
            self.tracker.existing(),
            "invariant 3 broken: the pool counts {live} live connections, {} exist",
            self.tracker.existing()
        );
        assert_eq!(
            live as u64,
            self.pool.stats().total.live,
            "the stats' total live count disagrees with the keys'"
        );
    }

    /// Drops the pool and checks invariant 3's end: every connection ever created was dropped
    /// exactly once (a second drop already panicked; loom's leak check covers the tokens).
    pub fn finish(self) {
        let Harness { pool, tracker } = self;
        drop(pool);
        assert_eq!(
            tracker.existing(),
            0,
            "invariant 3 broken: connections outlived their pool"
        );
    }
}

/// Checks a connection to [`KEY`] out of `pool` on `shard`, blocking (under loom) until done.
pub fn get(pool: &ShardedPool<Manager>, shard: usize) -> Result<Held, Error<CreateFailed>> {
    get_key(pool, shard, KEY)
}

/// Checks a connection to `key` out of `pool` on `shard`, blocking (under loom) until done.
pub fn get_key(
    pool: &ShardedPool<Manager>,
    shard: usize,
    key: u8,
) -> Result<Held, Error<CreateFailed>> {
    pool::block_on(pool.get_on(shard, &key)).map(Held::new)
}

/// Starts a checkout of [`KEY`] on `shard`, polls it once, and drops it: a caller that gives up
/// on a waiting checkout (a timeout of its own, a cancelled task). A checkout ready at its first
/// poll is used and returned. Whether it was still pending when dropped.
pub fn poll_once_then_drop(pool: &ShardedPool<Manager>, shard: usize) -> bool {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut checkout = std::pin::pin!(pool.get_on(shard, &KEY));
    match checkout
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(guard)) => {
            drop(Held::new(guard));
            false
        }
        Poll::Ready(Err(e)) => panic!("unexpected checkout error: {e}"),
        Poll::Pending => true,
    }
}

/// Explores `model` with loom under the preemption bound `LOOM_MAX_PREEMPTIONS` (default
/// [`DEFAULT_PREEMPTIONS`]) and prints how many executions it explored.
pub fn check(name: &str, model: impl Fn() + Sync + Send + 'static) {
    check_bounded(name, usize::MAX, model);
}

/// [`check`] with the preemption bound capped at `max_bound`, for a model whose state space at
/// the usual bound is too large for CI; the model file says why its cap still reaches the
/// interleavings it is about (and its seeded bug must fail under the cap). `LOOM_NO_CAPS=1` lifts
/// every cap, for the long run (`LOOM_NO_CAPS=1 ./scripts/loom.sh`, docs/protocol.md).
pub fn check_bounded(name: &str, max_bound: usize, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    let uncapped = std::env::var_os("LOOM_NO_CAPS").is_some_and(|v| v == "1");
    let bound = builder
        .preemption_bound
        .unwrap_or(DEFAULT_PREEMPTIONS)
        .min(if uncapped { usize::MAX } else { max_bound });
    builder.preemption_bound = Some(bound);
    let bound = builder.preemption_bound;
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&executions);
    builder.check(move || {
        counter.fetch_add(1, SeqCst);
        model();
    });
    eprintln!(
        "loom model {name}: {} executions, preemption bound {bound:?}, stand-in: {}",
        executions.load(SeqCst),
        STAND_IN
    );
}

/// Which idle-stack stand-in the pool was built with.
#[cfg(not(shardpool_loom_model_stack))]
pub const STAND_IN: &str = "instrumented stack";
/// Which idle-stack stand-in the pool was built with.
#[cfg(shardpool_loom_model_stack)]
pub const STAND_IN: &str = "mutex model";
