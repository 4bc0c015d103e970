//! Latency recording (hdrhistogram, nanosecond resolution, 3 significant digits) and the open-loop
//! schedule that makes coordinated-omission correction possible.
//!
//! # Coordinated omission
//!
//! A load generator that waits for a slow answer before sending the next request stops offering
//! load exactly when the server is slow, so the slow period contributes few samples and the high
//! percentiles look better than what users would see ("coordinated omission", Gil Tene).
//!
//! * **Open loop** (`--rate`): every request has an *intended* start time on a fixed schedule
//!   ([`Schedule`]). A request that could not be sent on time (all stream slots busy) is sent as
//!   soon as a slot frees, and its latency is measured from the intended time, not from the
//!   moment it was sent. This is the correction; the uncorrected *service time* (from the actual
//!   send) is recorded too, so the two can be compared. A request whose slot was free before it
//!   was due waits on a timer; tokio's timers wake up to about 1 ms late, and that oversleep is
//!   the client's, not the server's, so such a request is measured from its actual send (at or
//!   just after the intended time): only waiting for a busy slot is charged. hdrhistogram's
//!   `record_correct` (which back-fills synthetic samples) is not used: with real intended times
//!   nothing needs guessing.
//! * **Closed loop** (no `--rate`): there is no intended schedule, only a fixed number of
//!   requests in flight; each latency is the time from send to completion. `record_correct`
//!   would invent an expected interval and back-fill samples that no user sent, so it is not
//!   applied. A closed loop answers "what throughput and service time at this concurrency";
//!   to see what users would see at a given arrival rate, use the open loop.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Highest latency the histograms track; longer values are clamped (and the call has long since
/// timed out anyway).
const MAX_NANOS: u64 = 3_600_000_000_000;

/// A latency histogram in nanoseconds.
///
/// # Example
///
/// ```
/// use shardpool::bench::LatencyHistogram;
/// use std::time::Duration;
///
/// let mut h = LatencyHistogram::new();
/// for us in 1..=100 {
///     h.record(Duration::from_micros(us));
/// }
/// let p50 = h.quantile(0.5).as_micros();
/// assert!((49..=51).contains(&p50));
/// assert_eq!(h.count(), 100);
/// ```
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram (1 ns .. 1 h, 3 significant digits).
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_NANOS, 3)
            .expect("constant bounds 1..1h with 3 significant digits are valid");
        LatencyHistogram { hist }
    }

    /// Records one latency (values over one hour are clamped to one hour).
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos())
            .unwrap_or(MAX_NANOS)
            .clamp(1, MAX_NANOS);
        self.hist.saturating_record(nanos);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail.
        self.hist
            .add(&other.hist)
            .expect("histograms share the same bounds");
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` in `[0, 1]` (zero when empty).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.hist.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.hist.value_at_quantile(q.clamp(0.0, 1.0)))
    }

    /// Min, mean, common percentiles and max.
    pub fn summary(&self) -> LatencySummary {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count(),
            min_us: us(self.hist.min()),
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(self.hist.value_at_quantile(0.5)),
            p90_us: us(self.hist.value_at_quantile(0.9)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        }
    }

    /// The percentile curve for plots: points evenly spaced on the "nines" axis
    /// (`-log10(1 - p)`) from 0 % to 99.99 %, `steps_per_nine` points per nine, then the max.
    pub fn percentile_curve(&self, steps_per_nine: u32) -> Vec<PercentilePoint> {
        if self.hist.is_empty() || steps_per_nine == 0 {
            return Vec::new();
        }
        let steps = 4 * steps_per_nine;
        let mut points: Vec<PercentilePoint> = (0..=steps)
            .map(|i| {
                let nines = f64::from(i) / f64::from(steps_per_nine);
                let q = 1.0 - 10f64.powf(-nines);
                PercentilePoint {
                    percentile: q * 100.0,
                    latency_us: self.hist.value_at_quantile(q) as f64 / 1000.0,
                }
            })
            .collect();
        points.push(PercentilePoint {
            percentile: 100.0,
            latency_us: self.hist.max() as f64 / 1000.0,
        });
        points
    }
}

/// Summary figures of a [`LatencyHistogram`], in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// One point of a percentile curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PercentilePoint {
    /// Percentile in `[0, 100]`.
    pub percentile: f64,
    /// Latency at that percentile, microseconds.
    pub latency_us: f64,
}

/// The intended start times of an open-loop request stream: request `k` is due at
/// `start + (k + phase) / rate`, computed from `k` (not by adding intervals) so it never drifts.
///
/// # Example
///
/// ```
/// use shardpool::bench::Schedule;
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let s = Schedule::new(t0, 1000.0, 0.0);
/// assert_eq!(s.intended(3) - t0, Duration::from_millis(3));
/// // Requests due before t0 + 10 ms:
/// assert_eq!(s.due_before(t0 + Duration::from_millis(10)), 10);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    phase: f64,
}

impl Schedule {
    /// A schedule of `rate` requests per second from `start`, shifted by `phase` intervals
    /// (in `[0, 1)`: client shards use different phases so they do not fire in bursts together).
    pub fn new(start: Instant, rate: f64, phase: f64) -> Self {
        Schedule { start, rate, phase }
    }

    /// When request `k` should start.
    pub fn intended(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64((k as f64 + self.phase) / self.rate)
    }

    /// How many requests are due strictly before `t`.
    pub fn due_before(&self, t: Instant) -> u64 {
        let secs = t.saturating_duration_since(self.start).as_secs_f64();
        let due = (secs * self.rate - self.phase).ceil();
        if due <= 0.0 { 0 } else { due as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let mut h = LatencyHistogram::new();
        for ms in 1..=1000 {
            h.record(Duration::from_micros(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.min_us - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p90_us - 900.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999_us - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean_us - 500.5).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn empty_histogram_is_all_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.summary(), LatencySummary::default());
        assert!(h.percentile_curve(10).is_empty());
        assert_eq!(h.quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn merge_adds_samples_and_extremes_clamp() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30));
        b.record(Duration::from_secs(100_000));
        b.record(Duration::ZERO);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        // Clamped to one hour (hdrhistogram reports the top of the value's 0.1 % bucket).
        let max = a.quantile(1.0);
        assert!(
            max >= Duration::from_secs(3600) && max <= Duration::from_secs(3605),
            "{max:?}"
        );
        assert!(a.quantile(0.0) <= Duration::from_nanos(1));
    }

    #[test]
    fn curve_is_monotonic_and_spans_four_nines() {
        let mut h = LatencyHistogram::new();
        for i in 1..=100_000u64 {
            h.record(Duration::from_nanos(i * 100));
        }
        let curve = h.percentile_curve(20);
        assert_eq!(curve.len(), 4 * 20 + 2);
        assert_eq!(curve[0].percentile, 0.0);
        assert!((curve[curve.len() - 2].percentile - 99.99).abs() < 1e-9);
        assert_eq!(curve.last().unwrap().percentile, 100.0);
        for pair in curve.windows(2) {
            assert!(pair[0].percentile < pair[1].percentile);
            assert!(pair[0].latency_us <= pair[1].latency_us);
        }
    }

    #[test]
    fn schedule_does_not_drift_and_counts_due_requests() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 3.0, 0.5);
        assert_eq!(s.intended(0) - t0, Duration::from_secs_f64(0.5 / 3.0));
        let far = s.intended(3_000_000) - t0;
        assert!(
            far.as_secs_f64() - 1_000_000.0 - 0.5 / 3.0 < 1e-6,
            "{far:?}"
        );
        assert_eq!(s.due_before(t0), 0);
        assert_eq!(s.due_before(t0 + Duration::from_secs(1)), 3);
        assert_eq!(s.due_before(s.intended(7)), 7);
    }

    /// Simulates one request slot against a server that stalls for 1 s once. The corrected
    /// latency (from the schedule) must see the stall in its high percentiles; the service time
    /// (from the actual send) sees just one slow call, which is the coordinated omission.
    #[test]
    fn open_loop_correction_exposes_a_stall() {
        let t0 = Instant::now();
        let rate = 1000.0;
        let schedule = Schedule::new(t0, rate, 0.0);
        let mut corrected = LatencyHistogram::new();
        let mut service = LatencyHistogram::new();
        let mut slot_free = t0;
        for k in 0..10_000u64 {
            let intended = schedule.intended(k);
            let sent = intended.max(slot_free);
            let took = if k == 5_000 {
                Duration::from_secs(1)
            } else {
                Duration::from_micros(100)
            };
            let done = sent + took;
            slot_free = done;
            corrected.record(done - intended);
            service.record(done - sent);
        }
        // Service time: only one sample of 10 000 is slow, so p99 is still 100 µs.
        assert!(service.quantile(0.99) <= Duration::from_micros(101));
        // Corrected: ~1000 requests were due during the stall, each waiting up to 1 s: ~10 % of
        // the samples are slow, p99 is hundreds of milliseconds.
        assert!(corrected.quantile(0.99) >= Duration::from_millis(800));
        assert!(corrected.quantile(0.5) <= Duration::from_micros(101));
    }
}
