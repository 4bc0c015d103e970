//! Per-shard metrics: cache-padded counters on the hot path, summed into a [`Stats`] snapshot.
//!
//! Each checkout bumps exactly one outcome counter (a local hit, a steal, a create or a hand-off)
//! and each return bumps `returns`. Derived figures (checkouts, checked out) are computed in
//! [`Stats`].
//!
//! The two counters of a local checkout/return cycle (`local_hits`, `returns`) are
//! [`HotCounter`]s: the thread that owns the shard's counters adds with a plain load and store,
//! which costs about a nanosecond, where a `fetch_add` is a locked instruction (≈ 8 ns on the
//! machines we measure on; docs/benchmarks.md). The owner is the first thread bound to the shard
//! (`bind_thread_to_shard`) that counts there; it stays the owner for the pool's life. Any other
//! thread (a second thread bound to the same shard, a guard dropped elsewhere, `get_on` from a
//! foreign thread) adds with `fetch_add` into a second cell, so nothing is ever lost.

use super::sync::{Counter, HotCounter, MetricMutex};
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use std::time::Duration;

/// The counters of one shard.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    /// The token (`thread_token`) of the thread that owns the hot counters' owned cells; 0 until
    /// one claims them.
    owner: std::sync::atomic::AtomicU64,
    pub(crate) local_hits: HotCounter,
    pub(crate) steals: Counter,
    pub(crate) creates: Counter,
    pub(crate) prewarms: Counter,
    pub(crate) handoffs: Counter,
    pub(crate) returns: HotCounter,
    pub(crate) create_errors: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) waits: Counter,
    pub(crate) validation_failures: Counter,
    pub(crate) expirations: Counter,
    pub(crate) closes: Counter,
}

impl ShardCounters {
    /// Whether the calling thread owns the hot counters of shard `shard` (of `shards`), claiming
    /// them if nobody has and the thread is bound to that shard. Pass the answer to
    /// [`HotCounter::incr`].
    #[inline]
    pub(crate) fn owned_here(&self, shard: usize, shards: usize) -> bool {
        let token = super::thread_token();
        // Ordering: Relaxed. The word only decides which cell a thread writes: a thread compares it
        // with its own unique token, and the CAS below lets exactly one thread ever claim it (the
        // word's modification order), so no other memory needs ordering.
        let owner = self.owner.load(std::sync::atomic::Ordering::Relaxed);
        if owner == token {
            return true;
        }
        owner == 0
            && super::shard_of_current_thread(shards) == shard
            // Ordering: Relaxed, as above.
            && self
                .owner
                .compare_exchange(
                    0,
                    token,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// One shard's metrics: counters and the wait-time histogram (microseconds).
pub(crate) struct ShardMetrics {
    pub(crate) counters: CachePadded<ShardCounters>,
    wait_micros: MetricMutex<Histogram<u64>>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            counters: CachePadded::new(ShardCounters::default()),
            // 1 µs to 1 hour at 3 significant digits; these bounds are valid, so this cannot fail.
            wait_micros: MetricMutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }
}

impl ShardMetrics {
    /// Records how long a checkout waited (only checkouts that had to wait).
    pub(crate) fn record_wait(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let mut hist = self
            .wait_micros
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hist.saturating_record(micros.max(1));
    }

    /// A snapshot with the given gauges.
    pub(crate) fn snapshot(&self, idle: u64, live_hint: Option<u64>) -> ShardStats {
        let c = &self.counters;
        let hist = self
            .wait_micros
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pct = |q: f64| {
            if hist.is_empty() {
                0
            } else {
                hist.value_at_quantile(q)
            }
        };
        let mut stats = ShardStats {
            local_hits: c.local_hits.get(),
            steals: c.steals.get(),
            creates: c.creates.get(),
            prewarms: c.prewarms.get(),
            handoffs: c.handoffs.get(),
            returns: c.returns.get(),
            create_errors: c.create_errors.get(),
            timeouts: c.timeouts.get(),
            waits: c.waits.get(),
            validation_failures: c.validation_failures.get(),
            expirations: c.expirations.get(),
            closes: c.closes.get(),
            idle,
            wait_p50_us: pct(0.50),
            wait_p90_us: pct(0.90),
            wait_p99_us: pct(0.99),
            wait_max_us: if hist.is_empty() { 0 } else { hist.max() },
            ..ShardStats::default()
        };
        stats.checkouts = stats.local_hits + stats.steals + stats.creates + stats.handoffs;
        // Counters are read one by one while other threads run, so a return may be seen before
        // its checkout: clamp instead of underflowing.
        stats.checked_out = stats.checkouts.saturating_sub(stats.returns);
        stats.live = live_hint.unwrap_or(stats.idle + stats.checked_out);
        stats
    }
}

/// One shard's figures (or the pool's, summed). Counters count since the pool was built; gauges
/// (`idle`, `checked_out`, `live`) are the state at the snapshot.
///
/// Counters are read one at a time while the pool runs, so a snapshot under load is approximate;
/// at quiescence it is exact.
///
/// # Examples
///
/// ```
/// # use shardpool::ShardStats;
/// let s = ShardStats { local_hits: 9, creates: 1, checkouts: 10, ..ShardStats::default() };
/// assert_eq!(s.reuse_rate(), 0.9);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Successful checkouts: `local_hits + steals + creates + handoffs`.
    pub checkouts: u64,
    /// Checkouts served from the shard's own idle stack.
    pub local_hits: u64,
    /// Checkouts served by taking an idle connection from another shard.
    pub steals: u64,
    /// Checkouts that created a new connection.
    pub creates: u64,
    /// Connections created by maintenance to keep `min_idle` ready (not checkouts).
    pub prewarms: u64,
    /// Checkouts that waited and were handed a returned connection directly.
    pub handoffs: u64,
    /// Connections given back (returned or discarded) by guards of this shard.
    pub returns: u64,
    /// Failed `create` calls.
    pub create_errors: u64,
    /// Checkouts that gave up waiting.
    pub timeouts: u64,
    /// Checkouts that found the key exhausted and had to wait.
    pub waits: u64,
    /// Idle connections closed because `is_valid` said so.
    pub validation_failures: u64,
    /// Idle connections closed for idle timeout or lifetime.
    pub expirations: u64,
    /// Connections closed for any reason.
    pub closes: u64,
    /// Idle connections now in this shard's stacks.
    pub idle: u64,
    /// Connections now checked out through this shard.
    pub checked_out: u64,
    /// `idle + checked_out` for a shard; for the total, the pool's exact live count.
    pub live: u64,
    /// Median wait of checkouts that waited, in microseconds.
    pub wait_p50_us: u64,
    /// 90th percentile wait, in microseconds.
    pub wait_p90_us: u64,
    /// 99th percentile wait, in microseconds.
    pub wait_p99_us: u64,
    /// Longest wait, in microseconds.
    pub wait_max_us: u64,
}

impl ShardStats {
    /// The share of checkouts that reused a pooled connection (0 when there were none).
    pub fn reuse_rate(&self) -> f64 {
        if self.checkouts == 0 {
            0.0
        } else {
            1.0 - self.creates as f64 / self.checkouts as f64
        }
    }

    fn add(&mut self, other: &ShardStats) {
        self.checkouts += other.checkouts;
        self.local_hits += other.local_hits;
        self.steals += other.steals;
        self.creates += other.creates;
        self.prewarms += other.prewarms;
        self.handoffs += other.handoffs;
        self.returns += other.returns;
        self.create_errors += other.create_errors;
        self.timeouts += other.timeouts;
        self.waits += other.waits;
        self.validation_failures += other.validation_failures;
        self.expirations += other.expirations;
        self.closes += other.closes;
        self.idle += other.idle;
        self.checked_out += other.checked_out;
        self.live += other.live;
    }
}

/// A snapshot of a pool: each shard and the total.
///
/// The total's wait percentiles come from the merged histograms of all shards.
///
/// ```
/// use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
/// # struct M;
/// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
/// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
/// let pool = ShardedPool::new(M, Config::default().shards(2)).unwrap();
/// drop(shardpool::pool::block_on(pool.get_on(1, &0)).unwrap());
/// let stats = pool.stats();
/// assert_eq!(stats.shards.len(), 2);
/// assert_eq!(stats.shards[1].creates, 1);
/// assert_eq!((stats.total.live, stats.total.idle, stats.total.checked_out), (1, 1, 0));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// One entry per shard, in shard order.
    pub shards: Vec<ShardStats>,
    /// The sum over shards (wait percentiles merged, `live` exact).
    pub total: ShardStats,
}

impl Stats {
    /// Sums shard snapshots; `live` is the pool's exact live count.
    pub(crate) fn from_shards(
        metrics: &[ShardMetrics],
        shards: Vec<ShardStats>,
        live: u64,
    ) -> Self {
        let mut total = ShardStats::default();
        for s in &shards {
            total.add(s);
        }
        let mut merged =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        for m in metrics {
            let hist = m
                .wait_micros
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Same bounds on both sides, so adding cannot fail.
            let _ = merged.add(&*hist);
        }
        if !merged.is_empty() {
            total.wait_p50_us = merged.value_at_quantile(0.50);
            total.wait_p90_us = merged.value_at_quantile(0.90);
            total.wait_p99_us = merged.value_at_quantile(0.99);
            total.wait_max_us = merged.max();
        }
        total.live = live;
        total.checked_out = live.saturating_sub(total.idle);
        Stats { shards, total }
    }
}

#[cfg(all(test, not(shardpool_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first thread bound to a shard owns its hot counters; threads bound elsewhere, and a
    /// second thread bound to the same shard, do not.
    #[test]
    fn the_first_bound_thread_owns_the_hot_counters() {
        let counters = Arc::new(ShardCounters::default());
        let owned_on = |bound: usize, shard: usize| {
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || {
                crate::pool::bind_thread_to_shard(bound);
                (counters.owned_here(shard, 2), counters.owned_here(shard, 2))
            })
            .join()
            .unwrap()
        };
        assert_eq!(owned_on(1, 0), (false, false), "bound to another shard");
        assert_eq!(owned_on(0, 0), (true, true), "claims, then keeps");
        assert_eq!(
            owned_on(2, 0),
            (false, false),
            "shard 2 % 2 == 0, but 0 is taken"
        );
    }

    /// Threads bound to the same shard count concurrently, the owner without an atomic
    /// read-modify-write and the others with one; no increment is lost.
    #[test]
    fn owner_and_others_together_lose_no_increment() {
        const THREADS: usize = 4;
        const EACH: u64 = 100_000;
        let counters = Arc::new(ShardCounters::default());
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let counters = Arc::clone(&counters);
                std::thread::spawn(move || {
                    crate::pool::bind_thread_to_shard(0);
                    let mut owned = 0;
                    for _ in 0..EACH {
                        let owner = counters.owned_here(0, 1);
                        owned += u64::from(owner);
                        counters.returns.incr(owner);
                    }
                    owned
                })
            })
            .collect();
        let owned: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(counters.returns.get(), THREADS as u64 * EACH);
        assert_eq!(
            owned.iter().filter(|&&n| n == EACH).count(),
            1,
            "exactly one owner, for all its increments: {owned:?}"
        );
    }
}
