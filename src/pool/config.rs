//! Pool configuration, shared by [`ShardedPool`](super::ShardedPool) and
//! [`MutexPool`](crate::baseline::MutexPool), and checked once when a pool is built.

use super::clock::Clock;
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
    pub(crate) max_idle_per_key: Option<usize>,
    pub(crate) max_total_idle: Option<usize>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) min_idle: usize,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) steal_order: Option<Vec<Vec<usize>>>,
    pub(crate) clock: Clock,
}

impl Default for Config {
    /// One shard per available CPU, 64 live connections per key, every one of them allowed to idle,
    /// a 90 s idle timeout, no lifetime limit, no pre-warming, and checkouts that wait up to 30 s.
    fn default() -> Self {
        Config {
            shards: None,
            max_size: 64,
            max_idle_per_key: None,
            max_total_idle: None,
            idle_timeout: Some(Duration::from_secs(90)),
            max_lifetime: None,
            min_idle: 0,
            wait_timeout: Some(Duration::from_secs(30)),
            steal_order: None,
            clock: Clock::Coarse,
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

    /// The most idle connections kept per key, across all shards. Default: `max_size`.
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
        let max_idle_per_key = self.max_idle_per_key.unwrap_or(self.max_size);
        if max_idle_per_key > self.max_size {
            return Err(ConfigError::IdleAboveSize {
                max_idle_per_key,
                max_size: self.max_size,
            });
        }
        if let Some(total) = self.max_total_idle
            && total < max_idle_per_key.min(1)
        {
            return Err(ConfigError::ZeroTotalIdle);
        }
        if self.min_idle > max_idle_per_key {
            return Err(ConfigError::MinIdleAboveIdle {
                min_idle: self.min_idle,
                max_idle_per_key,
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
        let steal_order = match &self.steal_order {
            Some(order) => {
                check_steal_order(order, shards)?;
                order.clone()
            }
            None => ring_steal_order(shards),
        };
        Ok(Validated {
            shards,
            max_size: self.max_size,
            max_idle_per_key,
            max_total_idle: self.max_total_idle,
            idle_timeout: self.idle_timeout.map(duration_nanos),
            max_lifetime: self.max_lifetime.map(duration_nanos),
            min_idle: self.min_idle,
            wait_timeout: self.wait_timeout,
            steal_order,
            clock: self.clock.clone(),
        })
    }
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
    pub(crate) max_size: usize,
    pub(crate) max_idle_per_key: usize,
    pub(crate) max_total_idle: Option<usize>,
    pub(crate) idle_timeout: Option<u64>,
    pub(crate) max_lifetime: Option<u64>,
    pub(crate) min_idle: usize,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) steal_order: Vec<Vec<usize>>,
    pub(crate) clock: Clock,
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

    /// Whether an idle entry created at `created` and idle since `idle_since` has expired at `now`.
    #[inline]
    pub(crate) fn is_expired(&self, created: u64, idle_since: u64, now: u64) -> bool {
        self.idle_timeout
            .is_some_and(|t| now.saturating_sub(idle_since) >= t)
            || self.is_too_old(created, now)
    }

    /// Whether a connection created at `created` has outlived `max_lifetime` at `now`.
    #[inline]
    pub(crate) fn is_too_old(&self, created: u64, now: u64) -> bool {
        self.max_lifetime
            .is_some_and(|l| now.saturating_sub(created) >= l)
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
    /// `max_idle_per_key` above `max_size`.
    IdleAboveSize {
        /// The requested idle limit.
        max_idle_per_key: usize,
        /// The live limit it exceeds.
        max_size: usize,
    },
    /// `max_size` above [`MAX_SIZE`].
    MaxSizeTooLarge {
        /// The requested live limit.
        max_size: usize,
    },
    /// `max_total_idle(0)` while keys may keep idle connections.
    ZeroTotalIdle,
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
            ConfigError::ZeroTotalIdle => write!(
                f,
                "max_total_idle is 0: allow at least one idle connection, or set \
                 max_idle_per_key(0) to keep none"
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
                Config::default().max_size(MAX_SIZE + 1),
                "spread the destination over several keys",
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
        assert!(!v.is_expired(0, 50, 59));
        assert!(v.is_expired(0, 50, 60), "idle for the full timeout");
        assert!(v.is_expired(0, 95, 100), "lifetime reached");
        assert!(v.is_too_old(0, 100));
        assert!(!v.is_too_old(0, 99));
    }
}
