//! Pool configuration, shared by [`ShardedPool`](super::ShardedPool) and
//! [`MutexPool`](crate::baseline::MutexPool), and checked once when a pool is built.

use super::clock::Clock;
use super::leak::{Leak, LeakDetection};
use super::stack::MAX_CAPACITY;
use std::fmt;
use std::time::Duration;

/// Limits and timeouts of a pool. Every setter is a builder step; [`Config::validate`] (called by the
/// pools' constructors) rejects inconsistent settings with a [`ConfigError`] that names the fix.
///
/// Limits are **per key** (per destination) unless their name says otherwise, as in a
/// per-destination proxy pool.
///
/// # Examples
///
/// ```
/// use shardpool::Config;
/// use std::time::Duration;
///
/// let config = Config::default()
///     .shards(4)
///     .max_size(32)
///     .max_idle_per_key(16)
///     .max_total_idle(256)
///     .idle_timeout(Some(Duration::from_secs(30)))
///     .wait_timeout(Some(Duration::from_millis(200)));
/// assert!(config.validate().is_ok());
/// assert!(Config::default().max_size(0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) shards: Option<usize>,
    pub(crate) max_size: usize,
    pub(crate) max_size_limit: Option<usize>,
    pub(crate) max_idle_per_key: Option<usize>,
    pub(crate) max_total_idle: Option<usize>,
    pub(crate) max_total: Option<usize>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) min_idle: usize,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) steal_order: Option<Vec<Vec<usize>>>,
    pub(crate) clock: Clock,
    pub(crate) validate_idle_after: Option<Duration>,
    pub(crate) max_waiters: Option<usize>,
    pub(crate) expiry_jitter: f64,
    pub(crate) leak_detection: Option<LeakDetection>,
}

impl Default for Config {
    /// One shard per available CPU, 64 live connections per key, every one of them allowed to idle,
    /// a 90 s idle timeout, no lifetime limit, no pre-warming, and checkouts that wait up to 30 s.
    fn default() -> Self {
        Config {
            shards: None,
            max_size: 64,
            max_size_limit: None,
            max_idle_per_key: None,
            max_total_idle: None,
            max_total: None,
            idle_timeout: Some(Duration::from_secs(90)),
            max_lifetime: None,
            min_idle: 0,
            wait_timeout: Some(Duration::from_secs(30)),
            steal_order: None,
            clock: Clock::Coarse,
            validate_idle_after: None,
            max_waiters: None,
            expiry_jitter: 0.0,
            leak_detection: None,
        }
    }
}

impl Config {
    /// The number of shards (default: the number of CPUs this process may use). Pools with one
    /// shard per executor thread use the executor count.
    #[must_use]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The most live (idle + checked out) connections per key. Default 64; at most [`MAX_SIZE`].
    ///
    /// Each connection lives in one cache-padded idle-stack node from creation to close, and a
    /// key, when first used, allocates a node per connection it may have: 128 bytes each for a
    /// connection type of up to about 90 bytes.
    #[must_use]
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// The largest `max_size` that [`ShardedPool::set_max_size`](super::ShardedPool::set_max_size)
    /// may give a key at run time. Default: `max_size`, so a key can be shrunk and grown back but
    /// not grown beyond its configured size. At most [`MAX_SIZE`].
    ///
    /// Each key allocates its node arena (see [`Config::max_size`]) for this many connections when
    /// it is first used, so a higher limit costs one node per connection of headroom per key (128
    /// bytes for a connection type of up to about 90 bytes), and nothing on the checkout or return
    /// path. [`MutexPool`](crate::baseline::MutexPool), which has no run-time resize, accepts and
    /// ignores it.
    ///
    /// ```
    /// use shardpool::{Config, ConfigError};
    /// assert!(Config::default().max_size(8).max_size_limit(32).validate().is_ok());
    /// let err = Config::default().max_size(8).max_size_limit(4).validate().unwrap_err();
    /// assert_eq!(err, ConfigError::MaxSizeAboveLimit { max_size: 8, limit: 4 });
    /// ```
    #[must_use]
    pub fn max_size_limit(mut self, limit: usize) -> Self {
        self.max_size_limit = Some(limit);
        self
    }

    /// The most idle connections kept per key, across all shards. Default: `max_size_limit`,
    /// which is `max_size` unless set. At most that: with a `max_size_limit` above `max_size`,
    /// a key grown at run time ([`ShardedPool::set_max_size`](super::ShardedPool::set_max_size))
    /// may keep all its connections idle (and a key never has more idle than live).
    ///
    /// The limit is split evenly over the shards (each shard's idle stack holds its share, so the
    /// limit is exact); a return that finds its own shard's share full spills to the other shards
    /// in steal order, and closes only when all are full.
    #[must_use]
    pub fn max_idle_per_key(mut self, max_idle: usize) -> Self {
        self.max_idle_per_key = Some(max_idle);
        self
    }

    /// The most idle connections kept across all keys. Default: unlimited.
    #[must_use]
    pub fn max_total_idle(mut self, max_idle: usize) -> Self {
        self.max_total_idle = Some(max_idle);
        self
    }

    /// The most live (idle + checked out + being created) connections across all keys, on top of
    /// each key's `max_size`. Default: unlimited, and then the pool does no work for it.
    ///
    /// A checkout that may not create because the total is reached first closes one idle
    /// connection of another key, if it finds one, and creates in its place; otherwise it waits
    /// (bounded by `wait_timeout` and `max_waiters`, as any wait) until a connection of any key is
    /// closed, discarded, expired or detached. [`maintain`](super::ConnectionPool::maintain)
    /// closes idle connections of its shard for checkouts that wait on the total, so a
    /// connection that went idle after such a checkout began to wait frees its place within one
    /// maintenance pass. Taking a permit takes one pool-wide lock (not the checkout or return of an
    /// idle connection, only a create). Only [`ShardedPool`](super::ShardedPool) supports it:
    /// [`MutexPool`](crate::baseline::MutexPool) refuses it with
    /// [`ConfigError::Unsupported`].
    ///
    /// ```
    /// use shardpool::{Config, ConfigError};
    /// assert!(Config::default().max_size(8).max_total(100).validate().is_ok());
    /// let err = Config::default().max_total(0).validate().unwrap_err();
    /// assert_eq!(err, ConfigError::ZeroMaxTotal);
    /// ```
    #[must_use]
    pub fn max_total(mut self, max_total: usize) -> Self {
        self.max_total = Some(max_total);
        self
    }

    /// Closes connections idle this long (checked at checkout and by maintenance). `None`: never.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Closes connections this old, counted from creation. `None` (the default): never.
    #[must_use]
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Idle connections per key that maintenance keeps ready (pre-warming), spread over the shards.
    #[must_use]
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// How long a checkout waits when its key is exhausted. `None`: as long as it takes.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The order in which each shard steals from the others: `order[s]` lists the other shards,
    /// nearest first (see `shardpool::topology`). Default: `s+1, s+2, …` around the ring.
    #[must_use]
    pub fn steal_order(mut self, order: Vec<Vec<usize>>) -> Self {
        self.steal_order = Some(order);
        self
    }

    /// The clock used for timeouts and lifetimes (a [`ManualClock`](super::ManualClock) in tests).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs the manager's async [`Manage::validate`](super::Manage::validate) on an idle connection
    /// before reusing it, when it sat idle at least this long. `None` (the default): never, and the
    /// checkout path does not read the clock for it. `Some(Duration::ZERO)`: before every reuse.
    ///
    /// The synchronous [`Manage::is_valid`](super::Manage::is_valid) runs before every reuse
    /// either way. A connection that fails `validate` is closed (its permit freed, counted in
    /// `validation_failures`), and the checkout moves on to the next idle connection, or creates
    /// one within `max_size`, or waits.
    ///
    /// ```
    /// use shardpool::Config;
    /// use std::time::Duration;
    /// // PING only connections that sat idle for 5 s or more, as a gateway would.
    /// let config = Config::default().validate_idle_after(Some(Duration::from_secs(5)));
    /// assert!(config.validate().is_ok());
    /// ```
    #[must_use]
    pub fn validate_idle_after(mut self, after: Option<Duration>) -> Self {
        self.validate_idle_after = after;
        self
    }

    /// The most checkouts that may wait at once per key when every allowed connection is in use.
    /// A checkout beyond it fails at once with [`Error::Overloaded`](super::Error::Overloaded),
    /// so callers shed load instead of queueing into their own timeouts. `Some(0)`: never wait.
    /// Default `None`: no limit (waits are still bounded in time by `wait_timeout`).
    ///
    /// ```
    /// use shardpool::{Config, ConnectionPool, Error, Manage, ShardedPool};
    /// # struct M;
    /// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
    /// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
    /// let pool = ShardedPool::new(M, Config::default().max_size(1).max_waiters(0)).unwrap();
    /// let _held = shardpool::pool::block_on(pool.get(&0)).unwrap();
    /// let err = shardpool::pool::block_on(pool.get(&0)).unwrap_err();
    /// assert!(matches!(err, Error::Overloaded { max_waiters: 0 }));
    /// ```
    #[must_use]
    pub fn max_waiters(mut self, max_waiters: usize) -> Self {
        self.max_waiters = Some(max_waiters);
        self
    }

    /// Spreads each connection's `idle_timeout` and `max_lifetime` by up to this fraction
    /// (`0.0..=0.5`), so connections created in one burst do not all expire in one burst. Each
    /// connection's limits are shortened by its own share of `jitter`, fixed at its creation
    /// from a hash of its creation number (deterministic per connection); the limits stay upper
    /// bounds. Default `0.0`: no spread.
    ///
    /// ```
    /// use shardpool::Config;
    /// use std::time::Duration;
    /// // Connections live between 45 and 60 minutes.
    /// let config = Config::default()
    ///     .max_lifetime(Some(Duration::from_secs(3600)))
    ///     .expiry_jitter(0.25);
    /// assert!(config.validate().is_ok());
    /// assert!(Config::default().expiry_jitter(0.6).validate().is_err());
    /// ```
    #[must_use]
    pub fn expiry_jitter(mut self, jitter: f64) -> Self {
        self.expiry_jitter = jitter;
        self
    }

    /// Reports connections checked out for longer than `threshold` to `on_leak`, with the source
    /// location of their checkout (the caller of `get` or `get_on`): once when
    /// [`maintain`](super::ConnectionPool::maintain) finds one overdue, and again when it comes
    /// back (see [`Leak`] for an example). The callback runs on the thread that runs maintenance or
    /// returns the connection, after the pool's own bookkeeping; keep it quick (log, count).
    ///
    /// Default: off. Off, checkouts record nothing and carry no location, and the checkout and
    /// return path test it within tests they make anyway (the shard's range, the config's
    /// `Reuse` and `GiveBack` modes; measured in docs/benchmarks.md, "The hot path after issue 14").
    /// On, every checkout also takes two locks per pool (numbering its call site, recording it)
    /// and leaves the lock-free fast path, and every return takes one: a diagnostic mode.
    #[must_use]
    pub fn leak_detection(
        mut self,
        threshold: Duration,
        on_leak: impl Fn(&Leak) + Send + Sync + 'static,
    ) -> Self {
        self.leak_detection = Some(LeakDetection {
            threshold,
            on_leak: std::sync::Arc::new(on_leak),
        });
        self
    }

    /// Checks the settings and fills in defaults that depend on others.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let shards = match self.shards {
            Some(0) => return Err(ConfigError::ZeroShards),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if shards > MAX_SHARDS {
            return Err(ConfigError::TooManyShards { shards });
        }
        if self.max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        if self.max_size > MAX_SIZE {
            return Err(ConfigError::MaxSizeTooLarge {
                max_size: self.max_size,
            });
        }
        let max_size_limit = self.max_size_limit.unwrap_or(self.max_size);
        if max_size_limit > MAX_SIZE {
            return Err(ConfigError::MaxSizeTooLarge {
                max_size: max_size_limit,
            });
        }
        if self.max_size > max_size_limit {
            return Err(ConfigError::MaxSizeAboveLimit {
                max_size: self.max_size,
                limit: max_size_limit,
            });
        }
        // Up to `max_size_limit`, so that a key grown at run time keeps its connections idle.
        let max_idle_per_key = self.max_idle_per_key.unwrap_or(max_size_limit);
        if max_idle_per_key > max_size_limit {
            return Err(ConfigError::IdleAboveSize {
                max_idle_per_key,
                max_size: max_size_limit,
            });
        }
        if let Some(total) = self.max_total_idle
            && total < max_idle_per_key.min(1)
        {
            return Err(ConfigError::ZeroTotalIdle);
        }
        if self.max_total == Some(0) {
            return Err(ConfigError::ZeroMaxTotal);
        }
        if self.min_idle > max_idle_per_key {
            return Err(ConfigError::MinIdleAboveIdle {
                min_idle: self.min_idle,
                max_idle_per_key,
            });
        }
        // Implied by the check above while the idle limit was at most `max_size`; with a
        // `max_size_limit` above `max_size` it is not, and `set_max_size` refuses the same pair.
        if self.min_idle > self.max_size {
            return Err(ConfigError::MinIdleAboveSize {
                min_idle: self.min_idle,
                max_size: self.max_size,
            });
        }
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::ZeroDuration { name });
            }
        }
        // `contains` is false for NaN too.
        if !(0.0..=MAX_EXPIRY_JITTER).contains(&self.expiry_jitter) {
            return Err(ConfigError::ExpiryJitter {
                jitter: self.expiry_jitter.to_string(),
            });
        }
        // The fraction in 32-bit fixed point: at most 2^31.
        let jitter = (self.expiry_jitter * 4_294_967_296.0) as u32;
        let steal_order = match &self.steal_order {
            Some(order) => {
                check_steal_order(order, shards)?;
                order.clone()
            }
            None => ring_steal_order(shards),
        };
        let reads_clock = self.idle_timeout.is_some()
            || self.max_lifetime.is_some()
            || self.validate_idle_after.is_some();
        Ok(Validated {
            shards,
            max_size: self.max_size,
            max_size_limit,
            max_idle_per_key,
            max_total_idle: self.max_total_idle,
            max_total: self.max_total,
            idle_timeout: self
                .idle_timeout
                .map(|t| Expiry::new(duration_nanos(t), jitter)),
            max_lifetime: self
                .max_lifetime
                .map(|t| Expiry::new(duration_nanos(t), jitter)),
            jitter,
            min_idle: self.min_idle,
            wait_timeout: self.wait_timeout,
            steal_order,
            clock: self.clock.clone(),
            reads_clock,
            validate_idle_after: self.validate_idle_after.map(duration_nanos),
            max_waiters: self.max_waiters.unwrap_or(usize::MAX),
            reuse: Reuse::new(
                self.idle_timeout.is_some() || self.max_lifetime.is_some(),
                self.validate_idle_after.is_some() || self.leak_detection.is_some(),
            ),
            give_back: if self.leak_detection.is_some() {
                GiveBack::Tracked
            } else if reads_clock {
                GiveBack::Clock
            } else {
                GiveBack::Plain
            },
            leak_detection: self.leak_detection.clone(),
        })
    }
}

/// The checks a checkout runs on a popped idle connection, decided once from the config so the
/// fast path reads one byte instead of one field per feature. Without either, the connection is
/// handed out as it is (after `Manage::is_valid`), with no clock read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reuse(u8);

impl Reuse {
    /// `idle_timeout` or `max_lifetime`: the expiry test, which reads the clock. Without either,
    /// nothing can expire, so the test and its clock read are skipped.
    const EXPIRY: u8 = 1;
    /// `validate_idle_after` or `leak_detection`: the connection goes on to the boxed slow future
    /// (`Manage::validate`, the leak record) instead of being handed out on the fast path.
    const SLOW: u8 = 2;

    fn new(expiry: bool, slow: bool) -> Self {
        Reuse((u8::from(expiry) * Self::EXPIRY) | (u8::from(slow) * Self::SLOW))
    }

    /// Whether a popped connection needs the expiry test (then the config reads the clock).
    #[inline]
    pub(crate) fn expiry(self) -> bool {
        self.0 & Self::EXPIRY != 0
    }

    /// Whether a popped connection goes on to the slow future.
    #[inline]
    pub(crate) fn slow(self) -> bool {
        self.0 & Self::SLOW != 0
    }
}

/// The work a return does besides recycling and pushing the connection, decided once from the
/// config so the return path tests one field instead of one per feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GiveBack {
    /// No rule reads the clock and no leak detection: no clock read, no lifetime test.
    Plain,
    /// Some rule reads the clock (`Validated::reads_clock`), no leak detection: the clock read
    /// (for `idle_since`) and the lifetime test.
    Clock,
    /// Leak detection: as `Clock` or `Plain` (by `reads_clock`), and the end of the checkout's
    /// record.
    Tracked,
}

/// The largest [`Config::expiry_jitter`].
pub const MAX_EXPIRY_JITTER: f64 = 0.5;

/// An expiry limit (idle timeout or lifetime) in clock nanoseconds, with the shortest it can be
/// after jitter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expiry {
    /// The limit without jitter.
    limit: u64,
    /// The limit shortened by the whole jitter fraction: no connection expires sooner.
    floor: u64,
}

impl Expiry {
    fn new(limit: u64, jitter: u32) -> Self {
        Expiry {
            limit,
            floor: limit - cut(limit, jitter),
        }
    }

    /// Whether `elapsed` reaches this limit for a connection whose share of the jitter is `cut`.
    /// The common case, under the floor, compares once, as without jitter.
    #[inline]
    fn reached(&self, elapsed: u64, cut_of_conn: u32) -> bool {
        elapsed >= self.floor && elapsed >= self.limit - cut(self.limit, cut_of_conn)
    }
}

/// `limit × fraction`, the fraction in 32-bit fixed point.
fn cut(limit: u64, fraction: u32) -> u64 {
    ((u128::from(limit) * u128::from(fraction)) >> 32) as u64
}

/// A connection's share of the jitter (`Validated::jitter`, 32-bit fixed point), from its
/// creation number `n`: the fraction of its limits cut off, the same for the same `n`.
pub(crate) fn connection_cut(jitter: u32, n: u64) -> u32 {
    // splitmix64's finalizer: consecutive numbers give unrelated, evenly spread values.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((u64::from(jitter) * (z >> 32)) >> 32) as u32
}

/// The most shards a pool may have.
pub const MAX_SHARDS: usize = 4096;

/// The most live connections one key may have ([`Config::max_size`]): the capacity of a key's node
/// arena, whose indices are 14 bits wide (see the idle stacks in docs/ARCHITECTURE.md).
///
/// ```
/// use shardpool::{Config, ConfigError, MAX_SIZE};
/// assert!(Config::default().max_size(MAX_SIZE).validate().is_ok());
/// let err = Config::default().max_size(MAX_SIZE + 1).validate().unwrap_err();
/// assert!(matches!(err, ConfigError::MaxSizeTooLarge { .. }));
/// ```
pub const MAX_SIZE: usize = MAX_CAPACITY;

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ring_steal_order(shards: usize) -> Vec<Vec<usize>> {
    (0..shards)
        .map(|s| (1..shards).map(|d| (s + d) % shards).collect())
        .collect()
}

fn check_steal_order(order: &[Vec<usize>], shards: usize) -> Result<(), ConfigError> {
    if order.len() != shards {
        return Err(ConfigError::StealOrder(format!(
            "it has {} rows but the pool has {shards} shards; give one row per shard",
            order.len()
        )));
    }
    for (shard, row) in order.iter().enumerate() {
        let mut seen = vec![false; shards];
        for &victim in row {
            if victim >= shards {
                return Err(ConfigError::StealOrder(format!(
                    "row {shard} names shard {victim}, but shards are numbered 0..{shards}"
                )));
            }
            if victim == shard {
                return Err(ConfigError::StealOrder(format!(
                    "row {shard} names its own shard; list only the others"
                )));
            }
            if std::mem::replace(&mut seen[victim], true) {
                return Err(ConfigError::StealOrder(format!(
                    "row {shard} names shard {victim} twice"
                )));
            }
        }
    }
    Ok(())
}

/// A configuration after [`Config::validate`]: every default resolved, every limit consistent.
///
/// ```
/// let v = shardpool::Config::default().shards(3).max_size(8).validate().unwrap();
/// assert_eq!(v.shards(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct Validated {
    pub(crate) shards: usize,
    /// Every new key's `max_size`; `ShardedPool::set_max_size` changes one key's.
    pub(crate) max_size: usize,
    /// `Config::max_size_limit`: the nodes each key allocates, and the most `set_max_size` allows.
    pub(crate) max_size_limit: usize,
    pub(crate) max_idle_per_key: usize,
    pub(crate) max_total_idle: Option<usize>,
    /// `Config::max_total`; `None`: unlimited.
    pub(crate) max_total: Option<usize>,
    pub(crate) idle_timeout: Option<Expiry>,
    pub(crate) max_lifetime: Option<Expiry>,
    /// `Config::expiry_jitter` in 32-bit fixed point; 0 without jitter.
    pub(crate) jitter: u32,
    pub(crate) min_idle: usize,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) steal_order: Vec<Vec<usize>>,
    pub(crate) clock: Clock,
    /// Whether any rule needs the time: an idle timeout, a lifetime or validation by idle time.
    pub(crate) reads_clock: bool,
    /// `Config::validate_idle_after`, in clock nanoseconds.
    pub(crate) validate_idle_after: Option<u64>,
    /// `Config::max_waiters`; `usize::MAX` without a limit.
    pub(crate) max_waiters: usize,
    /// What a checkout does with an idle connection it pops: the one test of the fast path.
    pub(crate) reuse: Reuse,
    /// What a return does besides pushing the connection: the one test of the return path.
    pub(crate) give_back: GiveBack,
    pub(crate) leak_detection: Option<LeakDetection>,
}

impl Validated {
    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Shard `shard`'s share of `total`, spreading the remainder over the first shards, so the
    /// shares add up to `total` exactly.
    pub(crate) fn share(&self, total: usize, shard: usize) -> usize {
        total / self.shards + usize::from(shard < total % self.shards)
    }

    /// Whether an idle entry created at `created` and idle since `idle_since`, with jitter share
    /// `cut` (`connection_cut`), has expired at `now`.
    #[inline]
    pub(crate) fn is_expired(&self, created: u64, idle_since: u64, cut: u32, now: u64) -> bool {
        self.idle_timeout
            .is_some_and(|t| t.reached(now.saturating_sub(idle_since), cut))
            || self.is_too_old(created, cut, now)
    }

    /// How long a connection idle since `idle_since` sat idle at `now`, if that is long enough to
    /// be validated before reuse (`Config::validate_idle_after`).
    #[inline]
    pub(crate) fn validation_due(&self, idle_since: u64, now: u64) -> Option<Duration> {
        let after = self.validate_idle_after?;
        let idle_for = now.saturating_sub(idle_since);
        (idle_for >= after).then(|| Duration::from_nanos(idle_for))
    }

    /// Whether a connection created at `created`, with jitter share `cut`, has outlived
    /// `max_lifetime` at `now`.
    #[inline]
    pub(crate) fn is_too_old(&self, created: u64, cut: u32, now: u64) -> bool {
        self.max_lifetime
            .is_some_and(|l| l.reached(now.saturating_sub(created), cut))
    }

    /// The jitter share of the connection created `n()`-th (0, and `n` not called, without
    /// jitter).
    #[inline]
    pub(crate) fn cut_for(&self, n: impl FnOnce() -> u64) -> u32 {
        if self.jitter == 0 {
            0
        } else {
            connection_cut(self.jitter, n())
        }
    }
}

/// A configuration the pool cannot run with. The message says what to change.
///
/// ```
/// use shardpool::{Config, ConfigError};
/// let err = Config::default().max_size(4).max_idle_per_key(9).validate().unwrap_err();
/// assert!(matches!(err, ConfigError::IdleAboveSize { max_idle_per_key: 9, max_size: 4 }));
/// assert_eq!(
///     err.to_string(),
///     "max_idle_per_key (9) is above max_size (4): lower it or raise max_size"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `shards(0)`.
    ZeroShards,
    /// More shards than [`MAX_SHARDS`].
    TooManyShards {
        /// The requested shard count.
        shards: usize,
    },
    /// `max_size(0)`.
    ZeroMaxSize,
    /// `max_idle_per_key` above `max_size` (above `max_size_limit`, when that is set).
    IdleAboveSize {
        /// The requested idle limit.
        max_idle_per_key: usize,
        /// The live limit it exceeds (`max_size_limit`, when that is set).
        max_size: usize,
    },
    /// `max_size` (or `max_size_limit`) above [`MAX_SIZE`].
    MaxSizeTooLarge {
        /// The requested live limit.
        max_size: usize,
    },
    /// `max_size` above `max_size_limit`, in the config or in
    /// [`ShardedPool::set_max_size`](super::ShardedPool::set_max_size).
    MaxSizeAboveLimit {
        /// The requested live limit.
        max_size: usize,
        /// `Config::max_size_limit`.
        limit: usize,
    },
    /// `max_size` below `min_idle`: in the config (possible once `max_size_limit` lets the idle
    /// limit exceed `max_size`), or in [`ShardedPool::set_max_size`](super::ShardedPool::set_max_size).
    MinIdleAboveSize {
        /// `Config::min_idle`.
        min_idle: usize,
        /// The requested live limit.
        max_size: usize,
    },
    /// A run-time change of a pool that is closed.
    Closed,
    /// `max_total_idle(0)` while keys may keep idle connections.
    ZeroTotalIdle,
    /// `max_total(0)`: no connection could ever be created.
    ZeroMaxTotal,
    /// A setting this pool does not implement (the other pool does).
    Unsupported {
        /// The setting's name.
        setting: &'static str,
        /// The pool that refused it.
        pool: &'static str,
    },
    /// `min_idle` above `max_idle_per_key`.
    MinIdleAboveIdle {
        /// The requested pre-warm count.
        min_idle: usize,
        /// The idle limit it exceeds.
        max_idle_per_key: usize,
    },
    /// A timeout or lifetime of zero.
    ZeroDuration {
        /// The setting's name.
        name: &'static str,
    },
    /// A malformed steal order; the text says where.
    StealOrder(String),
    /// `expiry_jitter` outside `0.0..=0.5` (or not a number).
    ExpiryJitter {
        /// The requested jitter, as written.
        jitter: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroShards => write!(f, "shards is 0: a pool needs at least one shard"),
            ConfigError::TooManyShards { shards } => {
                write!(f, "shards is {shards}: use at most {MAX_SHARDS}")
            }
            ConfigError::ZeroMaxSize => {
                write!(
                    f,
                    "max_size is 0: allow at least one live connection per key"
                )
            }
            ConfigError::IdleAboveSize {
                max_idle_per_key,
                max_size,
            } => write!(
                f,
                "max_idle_per_key ({max_idle_per_key}) is above max_size ({max_size}): \
                 lower it or raise max_size"
            ),
            ConfigError::MaxSizeTooLarge { max_size } => write!(
                f,
                "max_size ({max_size}) is above {MAX_SIZE}, the most live connections one key \
                 can have: lower it, or spread the destination over several keys"
            ),
            ConfigError::MaxSizeAboveLimit { max_size, limit } => write!(
                f,
                "max_size ({max_size}) is above max_size_limit ({limit}): lower it, or build the \
                 pool with a higher max_size_limit"
            ),
            ConfigError::MinIdleAboveSize { min_idle, max_size } => write!(
                f,
                "max_size ({max_size}) is below min_idle ({min_idle}): pre-warming could never \
                 reach min_idle; raise it"
            ),
            ConfigError::Closed => write!(f, "the pool is closed: there is nothing to change"),
            ConfigError::ZeroTotalIdle => write!(
                f,
                "max_total_idle is 0: allow at least one idle connection, or set \
                 max_idle_per_key(0) to keep none"
            ),
            ConfigError::ZeroMaxTotal => write!(
                f,
                "max_total is 0: no connection could ever be created; allow at least one, or \
                 leave it unset for no limit"
            ),
            ConfigError::Unsupported { setting, pool } => write!(
                f,
                "{setting} is not supported by {pool}: use ShardedPool, or leave it unset"
            ),
            ConfigError::MinIdleAboveIdle {
                min_idle,
                max_idle_per_key,
            } => write!(
                f,
                "min_idle ({min_idle}) is above max_idle_per_key ({max_idle_per_key}): \
                 the pool could never keep that many idle"
            ),
            ConfigError::ZeroDuration { name } => write!(
                f,
                "{name} is zero: every connection would expire at once; use None to disable it"
            ),
            ConfigError::StealOrder(why) => write!(f, "steal_order is malformed: {why}"),
            ConfigError::ExpiryJitter { jitter } => write!(
                f,
                "expiry_jitter is {jitter}: use a fraction from 0.0 (no spread) to \
                 {MAX_EXPIRY_JITTER}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(all(test, not(shardpool_loom)))]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_name_the_fix() {
        let cases: Vec<(Config, &str)> = vec![
            (Config::default().shards(0), "at least one shard"),
            (
                Config::default().max_size(0),
                "at least one live connection",
            ),
            (
                Config::default().max_size(4).max_idle_per_key(5),
                "lower it or raise max_size",
            ),
            (
                Config::default().max_size(4).min_idle(5),
                "could never keep that many idle",
            ),
            (Config::default().max_total_idle(0), "max_total_idle is 0"),
            (Config::default().max_total(0), "max_total is 0"),
            (
                Config::default().idle_timeout(Some(Duration::ZERO)),
                "idle_timeout is zero",
            ),
            (
                Config::default().max_lifetime(Some(Duration::ZERO)),
                "max_lifetime is zero",
            ),
            (
                Config::default().shards(2).steal_order(vec![vec![1]]),
                "one row per shard",
            ),
            (
                Config::default()
                    .shards(2)
                    .steal_order(vec![vec![1], vec![1]]),
                "its own shard",
            ),
            (
                Config::default()
                    .shards(2)
                    .steal_order(vec![vec![2], vec![0]]),
                "numbered 0..2",
            ),
            (
                Config::default()
                    .shards(3)
                    .steal_order(vec![vec![1, 1], vec![0], vec![0]]),
                "twice",
            ),
            (Config::default().shards(MAX_SHARDS + 1), "use at most"),
            (
                Config::default().expiry_jitter(0.51),
                "expiry_jitter is 0.51",
            ),
            (Config::default().expiry_jitter(-0.1), "from 0.0"),
            (
                Config::default().expiry_jitter(f64::NAN),
                "expiry_jitter is NaN",
            ),
            (
                Config::default().max_size(MAX_SIZE + 1),
                "spread the destination over several keys",
            ),
            (
                Config::default().max_size(8).max_size_limit(MAX_SIZE + 1),
                "spread the destination over several keys",
            ),
            (
                Config::default().max_size(8).max_size_limit(7),
                "higher max_size_limit",
            ),
            (
                Config::default().max_size(2).max_size_limit(8).min_idle(4),
                "below min_idle",
            ),
        ];
        for (config, fix) in cases {
            let err = config.validate().expect_err("must be rejected");
            assert!(
                err.to_string().contains(fix),
                "{err} should mention {fix:?}"
            );
        }
    }

    #[test]
    fn defaults_resolve() {
        let v = Config::default().shards(3).max_size(10).validate().unwrap();
        assert_eq!(v.max_idle_per_key, 10);
        assert_eq!(v.steal_order, vec![vec![1, 2], vec![2, 0], vec![0, 1]]);
        let shares: Vec<_> = (0..3).map(|s| v.share(10, s)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(shares.iter().sum::<usize>(), 10);
    }

    #[test]
    fn expiry_rules() {
        let v = Config::default()
            .idle_timeout(Some(Duration::from_nanos(10)))
            .max_lifetime(Some(Duration::from_nanos(100)))
            .validate()
            .unwrap();
        assert!(!v.is_expired(0, 50, 0, 59));
        assert!(v.is_expired(0, 50, 0, 60), "idle for the full timeout");
        assert!(v.is_expired(0, 95, 0, 100), "lifetime reached");
        assert!(v.is_too_old(0, 0, 100));
        assert!(!v.is_too_old(0, 0, 99));
    }

    #[test]
    fn jitter_shortens_limits_within_its_fraction() {
        let v = Config::default()
            .idle_timeout(None)
            .max_lifetime(Some(Duration::from_nanos(1_000_000)))
            .expiry_jitter(0.5)
            .validate()
            .unwrap();
        let lives: Vec<u64> = (0..1000)
            .map(|n| {
                let cut = v.cut_for(|| n);
                assert_eq!(cut, v.cut_for(|| n), "deterministic per connection");
                (0..=1_000_000u64)
                    .step_by(1000)
                    .find(|&t| v.is_too_old(0, cut, t))
                    .unwrap()
            })
            .collect();
        let (min, max) = (lives.iter().min().unwrap(), lives.iter().max().unwrap());
        assert!(
            *min >= 500_000,
            "never shorter than limit × (1 − jitter): {min}"
        );
        assert!(*max <= 1_000_000, "never longer than the limit: {max}");
        assert!(
            max - min >= 400_000,
            "spread over most of the range: {min}..{max}"
        );
        let off = Config::default().validate().unwrap();
        assert_eq!(off.cut_for(|| unreachable!("no hash without jitter")), 0);
    }
}
