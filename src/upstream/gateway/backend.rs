//! One backend: its per-shard counters, ejection in episodes with a growing back-off, panic-mode
//! choice, and the statistics it reports.

use super::HealthConfig;
use crate::server::proto;
use crossbeam_utils::CachePadded;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one backend on one shard; only that shard writes them.
#[derive(Debug, Default)]
pub(super) struct ShardCounters {
    pub(super) requests: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) new_conns: AtomicU64,
    pub(super) reused: AtomicU64,
    pub(super) steals: AtomicU64,
    pub(super) stale_retries: AtomicU64,
}

/// Adds `d` to a counter only the current shard writes (a load and a store, no locked RMW).
pub(super) fn bump(c: &AtomicU64, d: i64) {
    // Ordering: Relaxed; a single writer (this shard), readers only want eventual statistics.
    c.store(
        c.load(Ordering::Relaxed).wrapping_add_signed(d),
        Ordering::Relaxed,
    );
}

pub(super) fn read(c: &AtomicU64) -> u64 {
    // Ordering: Relaxed statistic.
    c.load(Ordering::Relaxed)
}

/// Bits of [`Backend::health`] that hold the consecutive failures; the bits above hold the
/// ejection generation.
pub(super) const FAILURE_BITS: u32 = 20;
/// The consecutive-failure part of [`Backend::health`].
pub(super) const FAILURE_MASK: u64 = (1 << FAILURE_BITS) - 1;

/// What one call saw of its backend when it began; its outcome is judged against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CallStart {
    /// The backend's ejection generation.
    pub(super) generation: u64,
    /// The backend was ejected (a panic-mode call): its failure is part of that episode.
    pub(super) ejected: bool,
}

/// One backend: address, health state, per-shard counters.
///
/// Passive health works in *episodes*: a backend is ejected once per run of failures. A failure
/// counts only if the call began after the last ejection (same generation) and the backend is
/// not ejected now; the `eject_after`-th counted failure ejects it by moving the generation on
/// with a CAS, so of all the calls that fail together in one stall exactly one ejects, and the
/// calls that were in flight across the ejection count for nothing.
#[derive(Debug)]
pub struct Backend {
    pub(super) addr: SocketAddr,
    pub(super) shards: Vec<CachePadded<ShardCounters>>,
    /// Ejection generation (ejections so far) above [`FAILURE_BITS`], consecutive failures
    /// counted in this generation below: one word, so a failure counts for the generation it
    /// was seen in or not at all.
    pub(super) health: AtomicU64,
    /// Ejections in a row, the backoff's exponent: it restarts at 0 when the backend stayed in
    /// rotation at least as long as its last ejection lasted.
    pub(super) streak: AtomicU32,
    /// Milliseconds since the gateway's epoch when the last ejection began (0: never ejected).
    pub(super) ejected_at_ms: AtomicU64,
    /// Milliseconds since the gateway's epoch until which the backend is ejected: the end of
    /// the last ejection (0: never ejected).
    pub(super) ejected_until_ms: AtomicU64,
    /// The last active check failed.
    pub(super) active_down: AtomicBool,
}

/// The length of the `streak`-th ejection in a row (0: the first).
pub(super) fn backoff(cfg: &HealthConfig, streak: u32) -> Duration {
    cfg.backoff_base
        .saturating_mul(1u32 << streak.min(16))
        .min(cfg.backoff_max)
}

impl Backend {
    pub(super) fn new(addr: SocketAddr, shards: usize) -> Backend {
        Backend {
            addr,
            shards: (0..shards).map(|_| CachePadded::default()).collect(),
            health: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            ejected_at_ms: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
        }
    }

    pub(super) fn counters(&self, shard: usize) -> &ShardCounters {
        &self.shards[shard % self.shards.len()]
    }

    pub(super) fn is_ejected(&self, now_ms: u64) -> bool {
        // Ordering: Relaxed; health state is advisory, a stale read only picks or skips a
        // backend one request late.
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub(super) fn is_healthy(&self, now_ms: u64) -> bool {
        // Ordering: Relaxed, as in `is_ejected`.
        !self.active_down.load(Ordering::Relaxed) && !self.is_ejected(now_ms)
    }

    /// The ejection generation: how many times the backend was ejected.
    pub(super) fn generation(&self) -> u64 {
        // Ordering: Relaxed; the generation only moves by CAS, and a call that read an older
        // value has its failure refused by that CAS (see `record_failure`).
        self.health.load(Ordering::Relaxed) >> FAILURE_BITS
    }

    /// What a call beginning now sees; `panic`: it was sent to an unhealthy backend because
    /// none is healthy.
    pub(super) fn begin(&self, panic: bool, now_ms: u64) -> CallStart {
        CallStart {
            generation: self.generation(),
            ejected: panic && self.is_ejected(now_ms),
        }
    }

    /// A call begun at `start` succeeded: the failure run of its generation ends.
    pub(super) fn record_success(&self, start: CallStart) {
        // Ordering: Relaxed (advisory, as in `is_ejected`); a load first, so the common case
        // writes nothing shared. A failed CAS means the word moved on: nothing to reset.
        let h = self.health.load(Ordering::Relaxed);
        if h & FAILURE_MASK != 0 && h >> FAILURE_BITS == start.generation {
            let _ = self.health.compare_exchange(
                h,
                h & !FAILURE_MASK,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A call begun at `start` failed in a way that blames the backend (see [`Blame`]).
    /// Returns the ejection's length if this failure ejected the backend.
    pub(super) fn record_failure(
        &self,
        start: CallStart,
        now_ms: u64,
        cfg: &HealthConfig,
    ) -> Option<Duration> {
        if cfg.eject_after == 0 || start.ejected || self.is_ejected(now_ms) {
            return None;
        }
        let eject_after = u64::from(cfg.eject_after).min(FAILURE_MASK);
        // Ordering: Relaxed; the CAS on the one word decides which failures count and which
        // one ejects, whatever the order the other health fields are seen in.
        let mut h = self.health.load(Ordering::Relaxed);
        loop {
            if h >> FAILURE_BITS != start.generation {
                // Ejected (and perhaps restored) since this call began: same episode.
                return None;
            }
            let failures = (h & FAILURE_MASK) + 1;
            let next = if failures >= eject_after {
                (start.generation + 1) << FAILURE_BITS
            } else {
                h + 1
            };
            match self
                .health
                .compare_exchange_weak(h, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) if failures >= eject_after => break,
                Ok(_) => return None,
                Err(seen) => h = seen,
            }
        }
        // This call won the generation: the one ejection of this episode. Only the winner
        // writes the fields below (until the next generation), so plain stores do.
        // Ordering: Relaxed, advisory (see `is_ejected`).
        let last_end = self.ejected_until_ms.load(Ordering::Relaxed);
        let mut streak = self.streak.load(Ordering::Relaxed);
        if streak > 0 {
            let last = backoff(cfg, streak - 1).as_millis() as u64;
            if now_ms >= last_end.saturating_add(last) {
                // Back in rotation at least as long as it was last out: a new streak.
                streak = 0;
            }
        }
        let length = backoff(cfg, streak);
        self.streak.store(streak + 1, Ordering::Relaxed);
        self.ejected_at_ms.store(now_ms, Ordering::Relaxed);
        self.ejected_until_ms
            .store(now_ms + length.as_millis() as u64 + 1, Ordering::Relaxed);
        Some(length)
    }

    /// A passing active check that began when the ejection generation was `generation` ends
    /// the current ejection, if that generation's is still running (a check that began
    /// before the ejection proves nothing about it). True if it ended one.
    pub(super) fn end_ejection_early(&self, generation: u64, now_ms: u64) -> bool {
        // Ordering: Relaxed, advisory. The CAS on `ejected_until_ms` fails if a newer
        // ejection wrote it meanwhile.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until > now_ms
            && self.generation() == generation
            && self
                .ejected_until_ms
                .compare_exchange(until, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(super) fn why_unhealthy(&self, now_ms: u64) -> String {
        // Ordering: Relaxed, as in `is_ejected`.
        if self.active_down.load(Ordering::Relaxed) {
            return format!("{}: failing active health checks", self.addr);
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        format!(
            "{}: ejected after consecutive failures, retried in {} ms",
            self.addr,
            until.saturating_sub(now_ms)
        )
    }
}

/// Panic mode: with no healthy backend, the one ejected longest ago (never-ejected ones first,
/// then the lowest index), as Envoy routes to all hosts rather than failing every call.
pub(super) fn panic_pick(backends: &[Arc<Backend>]) -> Option<usize> {
    // Ordering: Relaxed, advisory (see `Backend::is_ejected`).
    (0..backends.len()).min_by_key(|&i| backends[i].ejected_at_ms.load(Ordering::Relaxed))
}

/// A snapshot of one backend's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendStats {
    /// Address.
    pub addr: SocketAddr,
    /// Healthy now (not ejected, passing active checks).
    pub healthy: bool,
    /// Requests sent (attempts, including failed ones).
    pub requests: u64,
    /// Attempts that failed.
    pub errors: u64,
    /// Connections created (pooled or per request).
    pub connections_new: u64,
    /// Checkouts that reused a pooled connection.
    pub connections_reused: u64,
    /// Reused connections that last ran on another shard (re-wrapped here).
    pub steals: u64,
    /// Requests retried on a fresh connection after a stale pooled one failed.
    pub stale_retries: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Times the backend was ejected (one per failure episode).
    pub ejections: u64,
}

impl BackendStats {
    /// Reused / (reused + new) checkouts, in `[0, 1]` (1 when nothing was checked out).
    pub fn reuse_rate(&self) -> f64 {
        let all = self.connections_new + self.connections_reused;
        if all == 0 {
            1.0
        } else {
            self.connections_reused as f64 / all as f64
        }
    }
}

impl BackendStats {
    /// This snapshot as the `shardpool.v1.Backend` message of the admin RPCs.
    pub fn to_proto(&self) -> proto::Backend {
        proto::Backend {
            address: self.addr.to_string(),
            healthy: self.healthy,
            requests: self.requests,
            errors: self.errors,
            in_flight: self.in_flight,
            connections_new: self.connections_new,
            connections_reused: self.connections_reused,
            steals: self.steals,
            stale_retries: self.stale_retries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Error as PoolError;
    use crate::upstream::frame::{self, Code as FrameCode};
    use crate::upstream::gateway::greeter::{AttemptError, Blame, Phase, feed_health};
    use std::io;

    fn cfg() -> HealthConfig {
        HealthConfig {
            interval: None,
            eject_after: 3,
            backoff_base: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(30_000),
            ..HealthConfig::default()
        }
    }

    fn backend() -> Backend {
        Backend::new("127.0.0.1:7001".parse().unwrap(), 1)
    }

    /// Feeds `n` failures, each from a call begun just before it, at `now`.
    fn fail(b: &Backend, e: impl Fn() -> AttemptError, n: usize, now: u64) {
        for _ in 0..n {
            let start = b.begin(false, now);
            feed_health(b, start, &Err(e()), || now, &cfg());
        }
    }

    /// A named way to fail.
    type Case = (&'static str, fn() -> AttemptError);

    fn io(kind: io::ErrorKind) -> AttemptError {
        AttemptError::Io(io::Error::new(kind, "test"))
    }

    #[test]
    fn backend_caused_failures_eject() {
        let backend_caused: [Case; 5] = [
            ("connect refused", || {
                AttemptError::from_pool(PoolError::Create {
                    key: "backend".into(),
                    error: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
                })
            }),
            ("reset", || io(io::ErrorKind::ConnectionReset)),
            ("bad frame", || io(io::ErrorKind::InvalidData)),
            ("exchange timeout", || {
                AttemptError::timed_out(Phase::Exchange, Duration::from_secs(2))
            }),
            ("SERVER_ERROR", || {
                AttemptError::from_response(frame::Response::error(
                    FrameCode::ServerError,
                    "disk on fire",
                ))
                .unwrap_err()
            }),
        ];
        for (what, e) in backend_caused {
            assert_eq!(e().blame(), Blame::Backend, "{what}");
            let b = backend();
            fail(&b, e, 2, 10);
            assert!(b.is_healthy(10), "{what}: ejected before eject_after");
            fail(&b, e, 1, 10);
            assert!(!b.is_healthy(10), "{what}: not ejected after eject_after");
            assert_eq!(b.generation(), 1, "{what}");
        }
    }

    #[test]
    fn local_failures_never_eject() {
        let local: [Case; 3] = [
            ("pool wait timeout", || {
                AttemptError::from_pool(PoolError::Timeout {
                    waited: Duration::from_secs(2),
                })
            }),
            ("pool closed (shutdown)", || {
                AttemptError::from_pool(PoolError::Closed)
            }),
            ("request timeout while checking out", || {
                AttemptError::timed_out(Phase::Checkout, Duration::from_secs(2))
            }),
        ];
        for (what, e) in local {
            assert_eq!(e().blame(), Blame::Local, "{what}");
            let b = backend();
            fail(&b, e, 100, 10);
            assert!(b.is_healthy(10), "{what} ejected the backend");
            assert_eq!(b.generation(), 0, "{what}");
        }
    }

    #[test]
    fn request_caused_failures_never_eject() {
        for code in [FrameCode::BadRequest, FrameCode::TooLarge] {
            let e = || {
                AttemptError::from_response(frame::Response::error(code, "name too long"))
                    .unwrap_err()
            };
            assert_eq!(e().blame(), Blame::Request, "{code:?}");
            let b = backend();
            fail(&b, e, 100, 10);
            assert!(b.is_healthy(10), "{code:?} ejected the backend");
            assert_eq!(b.generation(), 0, "{code:?}");
        }
        assert_eq!(
            AttemptError::from_response(frame::Response::ok("Hello, a!")).unwrap(),
            "Hello, a!"
        );
    }

    #[test]
    fn one_failure_episode_is_one_ejection_and_backoff_grows_across_episodes_only() {
        let (b, cfg) = (backend(), cfg());
        let reset = || io(io::ErrorKind::ConnectionReset);
        // 85 calls in flight when a stall begins all fail together: one ejection.
        let starts: Vec<CallStart> = (0..85).map(|_| b.begin(false, 0)).collect();
        for s in &starts {
            feed_health(&b, *s, &Err(reset()), || 15, &cfg);
        }
        assert_eq!(b.generation(), 1);
        assert!(!b.is_healthy(15) && b.is_healthy(15 + 1001));
        // Calls sent to it in panic mode during the ejection do not extend it.
        for _ in 0..10 {
            let s = b.begin(true, 500);
            assert!(s.ejected);
            feed_health(&b, s, &Err(reset()), || 600, &cfg);
        }
        assert_eq!(b.generation(), 1);
        assert!(b.is_healthy(15 + 1001));
        // Still failing once back: a second episode, twice as long.
        fail(&b, reset, 3, 1100);
        assert_eq!(b.generation(), 2);
        assert!(!b.is_healthy(1100 + 2000) && b.is_healthy(1100 + 2001));
        // A success resets the failure run: two failures after it do not eject.
        let s = b.begin(false, 3200);
        fail(&b, reset, 2, 3200);
        feed_health(&b, s, &Ok("Hello".into()), || 3200, &cfg);
        fail(&b, reset, 2, 3200);
        assert_eq!(b.generation(), 2);
        // In rotation at least as long as the last ejection lasted (2 s): the streak restarts.
        fail(&b, reset, 1, 3101 + 2000);
        assert_eq!(b.generation(), 3);
        assert!(!b.is_healthy(5101 + 1000) && b.is_healthy(5101 + 1001));
    }

    #[test]
    fn a_passing_active_check_ends_an_ejection_begun_before_it() {
        let b = backend();
        let before = b.generation();
        fail(&b, || io(io::ErrorKind::ConnectionReset), 3, 100);
        assert!(!b.is_healthy(200));
        // A check that began before the ejection proves nothing about it.
        assert!(!b.end_ejection_early(before, 200));
        assert!(!b.is_healthy(200));
        assert!(b.end_ejection_early(b.generation(), 200));
        assert!(b.is_healthy(200));
        assert!(!b.end_ejection_early(b.generation(), 300), "nothing to end");
    }

    #[test]
    fn panic_mode_picks_the_backend_ejected_longest_ago() {
        let backends: Vec<Arc<Backend>> = (0..3).map(|_| Arc::new(backend())).collect();
        let reset = || io(io::ErrorKind::ConnectionReset);
        for (i, at) in [(0, 300), (1, 100), (2, 200)] {
            fail(&backends[i], reset, 3, at);
        }
        assert_eq!(panic_pick(&backends), Some(1));
        let mut with_fresh = backends.clone();
        with_fresh.push(Arc::new(backend()));
        assert_eq!(
            panic_pick(&with_fresh),
            Some(3),
            "never ejected comes first"
        );
        assert_eq!(panic_pick(&[]), None);
    }
}
