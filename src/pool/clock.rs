//! The pool's clock: cheap monotonic timestamps for idle timeouts and lifetimes.
//!
//! Every return stamps the connection and every checkout checks it, so the clock is read twice per
//! checkout/return cycle. [`Clock::Coarse`] reads `CLOCK_MONOTONIC_COARSE` on Linux (a vDSO read of the
//! last tick, a few nanoseconds, resolution one scheduler tick, 1–4 ms), which is ample for timeouts
//! measured in seconds; `benches/pool.rs` measures it against `Instant::now()`. Tests use a
//! [`ManualClock`] they advance by hand, so expiry is tested without sleeping.

use super::sync::Arc;
use super::sync::{AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

/// Where the pool reads the time.
///
/// # Examples
///
/// ```
/// use shardpool::{Clock, Config, ManualClock};
/// use std::time::Duration;
///
/// let manual = ManualClock::new();
/// let config = Config::default().clock(Clock::Manual(manual.clone()));
/// manual.advance(Duration::from_secs(5)); // every pool using `config` now sees 5 s pass
/// # let _ = config;
/// ```
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system's coarse monotonic clock (the default). Under the loom build time stands still,
    /// because loom needs every execution to be repeatable.
    #[default]
    Coarse,
    /// A clock that moves only when [`ManualClock::advance`] is called.
    Manual(ManualClock),
}

impl Clock {
    /// Nanoseconds since an arbitrary, fixed origin.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Clock::Coarse => coarse_now(),
            Clock::Manual(manual) => manual.now(),
        }
    }
}

#[cfg(all(target_os = "linux", not(shardpool_loom)))]
#[inline]
fn coarse_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every Linux
    // since 2.6.32 and clock_gettime only writes through the pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(all(not(target_os = "linux"), not(shardpool_loom)))]
fn coarse_now() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(shardpool_loom)]
fn coarse_now() -> u64 {
    0
}

/// A clock for tests: it starts at zero and moves only when told to. Clones share the same time.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading zero.
    ///
    /// ```
    /// let clock = shardpool::ManualClock::new();
    /// clock.advance(std::time::Duration::from_millis(1));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Ordering: Relaxed. The time is a plain value; the pool orders nothing by it.
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        // Ordering: Relaxed, as in `advance`.
        self.0.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({} ns)", self.now())
    }
}
