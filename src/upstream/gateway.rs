//! Gateway mode: each `SayHello` goes to an upstream backend over a pooled connection.
//!
//! A [`Gateway`] holds the backend set, the pool (any [`ConnectionPool`] of
//! [`UpstreamManager`], or none: connect per request), the balancing policy and the health
//! state. [`Gateway::install`] plugs it into a [`Server`]: one [`GatewayGreeter`] per shard and
//! the pool's statistics. [`Gateway::start_health_checks`] runs the active checks.
//!
//! Per request: refuse a name longer than [`frame::MAX_HELLO_NAME`] (`INVALID_ARGUMENT`, before
//! any backend sees it), pick a healthy backend ([`Balance`]), check a connection out on this
//! shard, exchange one frame, return the connection. A request that fails on a *reused*
//! connection because the backend had closed it is retried once through the pool (the stale
//! connection is discarded first, so the retry stays within the pool's limits). Other failures
//! are classed by who they blame ([`Blame`]): the backend's (connect, reset, timeout,
//! `SERVER_ERROR`) count toward ejection and fail over once to another healthy backend; ours
//! (pool wait, shutdown) fail over without counting; the request's (`BAD_REQUEST`) are answered
//! `INVALID_ARGUMENT` at once. Ejection works in episodes (see [`Backend`]); a passing active
//! check ends an ejection early; with no healthy backend the call goes to the backend ejected
//! longest ago (panic mode) and, if that fails too, is answered `UNAVAILABLE` with the reasons.

use super::balance::{Balance, Picker};
use super::conn::{ConnectorConfig, Exchange, UpstreamManager, drop_thread_wrappers};
use super::frame::{self, Code as FrameCode, Op};
use crate::pool::{ConnectionPool, Error as PoolError, PooledConn};
use crate::runtime::ShardContext;
use crate::server::{BackendAdmin, Code, GreetHandler, Health, Server, Status, proto};
use crossbeam_utils::CachePadded;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Health checking and ejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active check period (`None`: no active checks).
    pub interval: Option<Duration>,
    /// Active check timeout (connect, PING, answer).
    pub timeout: Duration,
    /// Consecutive backend-caused failures that eject a backend (0: never eject). Failures of
    /// calls that were in flight when it was ejected do not count again (one ejection per
    /// failure episode).
    pub eject_after: u32,
    /// First ejection length; doubled per further episode in a row (an episode that starts
    /// after the backend stayed in rotation at least as long as its last ejection starts over
    /// at this length). A passing active check ends an ejection early.
    pub backoff_base: Duration,
    /// Longest ejection.
    pub backoff_max: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Some(Duration::from_secs(1)),
            timeout: Duration::from_millis(500),
            eject_after: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Gateway settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// How backends are chosen.
    pub balance: Balance,
    /// Health checks and ejection.
    pub health: HealthConfig,
    /// Longest time one upstream attempt may take (checkout + exchange).
    pub request_timeout: Duration,
    /// How connections are made.
    pub connector: ConnectorConfig,
    /// The most backends the gateway may have at once ([`DEFAULT_MAX_BACKENDS`]). Each backend
    /// may hold up to the pool's `max_size` upstream connections and runs its own health
    /// checks, so this bounds what anyone who may add backends at run time (the admin RPCs,
    /// SIGHUP) can make the gateway open; the binary reserves descriptors for this many.
    pub max_backends: usize,
}

/// [`GatewayConfig::max_backends`] by default.
pub const DEFAULT_MAX_BACKENDS: usize = 64;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            balance: Balance::RoundRobin,
            health: HealthConfig::default(),
            request_timeout: Duration::from_secs(2),
            connector: ConnectorConfig::default(),
            max_backends: DEFAULT_MAX_BACKENDS,
        }
    }
}

/// A backend could not be added: the gateway has [`GatewayConfig::max_backends`] already.
///
/// ```
/// use shardpool::upstream::BackendsFull;
/// let e = BackendsFull { max: 2 };
/// assert!(e.to_string().contains("--max-backends"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendsFull {
    /// The limit that was reached.
    pub max: usize,
}

impl std::fmt::Display for BackendsFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} backends are allowed (--max-backends, SHARDPOOL_MAX_BACKENDS, \
             upstream.max_backends): remove one before adding another, list no more in a reload, \
             or restart with a higher limit",
            self.max
        )
    }
}

impl std::error::Error for BackendsFull {}

/// Counters of one backend on one shard; only that shard writes them.
#[derive(Debug, Default)]
struct ShardCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    new_conns: AtomicU64,
    reused: AtomicU64,
    steals: AtomicU64,
    stale_retries: AtomicU64,
}

/// Adds `d` to a counter only the current shard writes (a load and a store, no locked RMW).
fn bump(c: &AtomicU64, d: i64) {
    // Ordering: Relaxed; a single writer (this shard), readers only want eventual statistics.
    c.store(
        c.load(Ordering::Relaxed).wrapping_add_signed(d),
        Ordering::Relaxed,
    );
}

fn read(c: &AtomicU64) -> u64 {
    // Ordering: Relaxed statistic.
    c.load(Ordering::Relaxed)
}

/// Bits of [`Backend::health`] that hold the consecutive failures; the bits above hold the
/// ejection generation.
const FAILURE_BITS: u32 = 20;
/// The consecutive-failure part of [`Backend::health`].
const FAILURE_MASK: u64 = (1 << FAILURE_BITS) - 1;

/// What one call saw of its backend when it began; its outcome is judged against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CallStart {
    /// The backend's ejection generation.
    generation: u64,
    /// The backend was ejected (a panic-mode call): its failure is part of that episode.
    ejected: bool,
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
    addr: SocketAddr,
    shards: Vec<CachePadded<ShardCounters>>,
    /// Ejection generation (ejections so far) above [`FAILURE_BITS`], consecutive failures
    /// counted in this generation below: one word, so a failure counts for the generation it
    /// was seen in or not at all.
    health: AtomicU64,
    /// Ejections in a row, the backoff's exponent: it restarts at 0 when the backend stayed in
    /// rotation at least as long as its last ejection lasted.
    streak: AtomicU32,
    /// Milliseconds since the gateway's epoch when the last ejection began (0: never ejected).
    ejected_at_ms: AtomicU64,
    /// Milliseconds since the gateway's epoch until which the backend is ejected: the end of
    /// the last ejection (0: never ejected).
    ejected_until_ms: AtomicU64,
    /// The last active check failed.
    active_down: AtomicBool,
}

/// The length of the `streak`-th ejection in a row (0: the first).
fn backoff(cfg: &HealthConfig, streak: u32) -> Duration {
    cfg.backoff_base
        .saturating_mul(1u32 << streak.min(16))
        .min(cfg.backoff_max)
}

impl Backend {
    fn new(addr: SocketAddr, shards: usize) -> Backend {
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

    fn counters(&self, shard: usize) -> &ShardCounters {
        &self.shards[shard % self.shards.len()]
    }

    fn is_ejected(&self, now_ms: u64) -> bool {
        // Ordering: Relaxed; health state is advisory, a stale read only picks or skips a
        // backend one request late.
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    fn is_healthy(&self, now_ms: u64) -> bool {
        // Ordering: Relaxed, as in `is_ejected`.
        !self.active_down.load(Ordering::Relaxed) && !self.is_ejected(now_ms)
    }

    /// The ejection generation: how many times the backend was ejected.
    fn generation(&self) -> u64 {
        // Ordering: Relaxed; the generation only moves by CAS, and a call that read an older
        // value has its failure refused by that CAS (see `record_failure`).
        self.health.load(Ordering::Relaxed) >> FAILURE_BITS
    }

    /// What a call beginning now sees; `panic`: it was sent to an unhealthy backend because
    /// none is healthy.
    fn begin(&self, panic: bool, now_ms: u64) -> CallStart {
        CallStart {
            generation: self.generation(),
            ejected: panic && self.is_ejected(now_ms),
        }
    }

    /// A call begun at `start` succeeded: the failure run of its generation ends.
    fn record_success(&self, start: CallStart) {
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
    fn record_failure(
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
    fn end_ejection_early(&self, generation: u64, now_ms: u64) -> bool {
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

    fn why_unhealthy(&self, now_ms: u64) -> String {
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
fn panic_pick(backends: &[Arc<Backend>]) -> Option<usize> {
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

/// The server's `AddBackend` / `RemoveBackend` / `ListBackends` RPCs act on the gateway
/// ([`Gateway::install`] attaches it).
impl<P: ConnectionPool<UpstreamManager>> BackendAdmin for Gateway<P> {
    fn add_backend(&self, addr: SocketAddr) -> Result<bool, String> {
        Gateway::add_backend(self, addr).map_err(|full| full.to_string())
    }

    fn remove_backend(&self, addr: SocketAddr) -> bool {
        Gateway::remove_backend(self, addr)
    }

    fn list_backends(&self) -> Vec<proto::Backend> {
        self.backend_stats()
            .iter()
            .map(BackendStats::to_proto)
            .collect()
    }
}

/// A Prometheus metric of [`Gateway::prometheus`]: name, type, value of one backend.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BackendStats) -> f64,
);

/// The backend list, swapped whole on change; shards cache it and re-read on a version bump.
#[derive(Debug)]
struct BackendSet {
    version: AtomicU64,
    list: RwLock<Arc<Vec<Arc<Backend>>>>,
}

/// What the gateway shares between shards and threads.
struct Shared<P> {
    pool: Option<P>,
    manager: UpstreamManager,
    backends: BackendSet,
    config: GatewayConfig,
    shards: usize,
    epoch: Instant,
    health: RwLock<Option<Health>>,
}

impl<P> Shared<P> {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        Arc::clone(
            &self
                .backends
                .list
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn version(&self) -> u64 {
        // Ordering: Acquire, pairs with the Release increment in `replace`: a shard that sees
        // the new version reads the new list (under the lock anyway).
        self.backends.version.load(Ordering::Acquire)
    }

    fn update_health_table(&self) {
        let now = self.now_ms();
        let any = self.snapshot().iter().any(|b| b.is_healthy(now));
        if let Some(h) = &*self.health.read().unwrap_or_else(PoisonError::into_inner) {
            h.set_serving("helloworld.Greeter", any);
        }
    }
}

/// The gateway: backends, pool, balancing and health. Cheap to clone.
///
/// ```no_run
/// use shardpool::pool::{Config, ShardedPool};
/// use shardpool::runtime::RuntimeOptions;
/// use shardpool::server::{Server, ServerConfig};
/// use shardpool::topology::{Placement, Topology};
/// use shardpool::upstream::{Gateway, GatewayConfig, UpstreamManager};
///
/// let map = Topology::detect().place(&Placement::AllCores, None).unwrap();
/// let config = GatewayConfig::default();
/// let manager = UpstreamManager::new(config.connector.clone(), map.len());
/// let pool = ShardedPool::new(manager.clone(), Config::default().shards(map.len())).unwrap();
/// let gateway = Gateway::new(config, Some(pool), manager, map.len());
/// gateway.add_backend("127.0.0.1:7001".parse().unwrap()).unwrap();
/// let server = gateway.install(Server::new(ServerConfig::default()));
/// let _checks = gateway.start_health_checks();
/// let running = server.start(&map, &RuntimeOptions::default()).unwrap();
/// # drop(running);
/// ```
pub struct Gateway<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for Gateway<P> {
    fn clone(&self) -> Self {
        Gateway {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P: ConnectionPool<UpstreamManager>> Gateway<P> {
    /// A gateway with no backends. `pool: None` connects per request (no pooling). `manager`
    /// makes the per-request and retry connections; give it the pool's manager (a clone), so
    /// both share the wrapper inboxes.
    pub fn new(
        config: GatewayConfig,
        pool: Option<P>,
        manager: UpstreamManager,
        shards: usize,
    ) -> Gateway<P> {
        Gateway {
            shared: Arc::new(Shared {
                pool,
                manager,
                backends: BackendSet {
                    version: AtomicU64::new(0),
                    list: RwLock::new(Arc::new(Vec::new())),
                },
                config,
                shards: shards.max(1),
                epoch: Instant::now(),
                health: RwLock::new(None),
            }),
        }
    }

    fn replace(&self, edit: impl FnOnce(&mut Vec<Arc<Backend>>) -> bool) -> bool {
        let mut list = self
            .shared
            .backends
            .list
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<Arc<Backend>> = list.as_ref().clone();
        let changed = edit(&mut next);
        if changed {
            *list = Arc::new(next);
            // Ordering: Release, pairs with the Acquire load in `Shared::version`.
            self.shared.backends.version.fetch_add(1, Ordering::Release);
        }
        drop(list);
        if changed {
            self.shared.update_health_table();
        }
        changed
    }

    /// Adds a backend; `Ok(false)` if it was already there, `Err` (and no change) if the
    /// gateway has [`GatewayConfig::max_backends`] backends already.
    pub fn add_backend(&self, addr: SocketAddr) -> Result<bool, BackendsFull> {
        let (shards, max) = (self.shared.shards, self.shared.config.max_backends);
        let mut full = false;
        let added = self.replace(|list| {
            if list.iter().any(|b| b.addr == addr) {
                return false;
            }
            if list.len() >= max {
                full = true;
                return false;
            }
            list.push(Arc::new(Backend::new(addr, shards)));
            true
        });
        if full {
            return Err(BackendsFull { max });
        }
        Ok(added)
    }

    /// Removes a backend and closes its idle pooled connections; `false` if it was not there.
    /// Requests already using it finish.
    pub fn remove_backend(&self, addr: SocketAddr) -> bool {
        let removed = self.replace(|list| {
            let before = list.len();
            list.retain(|b| b.addr != addr);
            list.len() != before
        });
        match &self.shared.pool {
            Some(pool) if removed => pool.remove_key(&addr),
            _ => {}
        }
        removed
    }

    /// Makes the backend set exactly `addrs` (duplicates count once), in one step: calls see
    /// the old set or the new one, never a mix. Kept backends keep their counters and health;
    /// removed ones lose their idle pooled connections (calls using them finish). Returns
    /// (added, removed), or `Err` and no change if `addrs` holds more than
    /// [`GatewayConfig::max_backends`] backends.
    pub fn set_backends(&self, addrs: &[SocketAddr]) -> Result<(usize, usize), BackendsFull> {
        let mut wanted: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !wanted.contains(a) {
                wanted.push(*a);
            }
        }
        let max = self.shared.config.max_backends;
        if wanted.len() > max {
            return Err(BackendsFull { max });
        }
        let shards = self.shared.shards;
        let (mut added, mut removed) = (0, Vec::new());
        self.replace(|list| {
            removed = list
                .iter()
                .filter(|b| !wanted.contains(&b.addr))
                .map(|b| b.addr)
                .collect();
            list.retain(|b| wanted.contains(&b.addr));
            for a in &wanted {
                if !list.iter().any(|b| b.addr == *a) {
                    list.push(Arc::new(Backend::new(*a, shards)));
                    added += 1;
                }
            }
            added > 0 || !removed.is_empty()
        });
        if let Some(pool) = &self.shared.pool {
            for a in &removed {
                pool.remove_key(a);
            }
        }
        Ok((added, removed.len()))
    }

    /// The configured backend addresses.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.shared.snapshot().iter().map(|b| b.addr).collect()
    }

    /// Connections re-wrapped on another shard (see [`UpstreamManager::rewraps`]).
    pub fn rewraps(&self) -> u64 {
        self.shared.manager.rewraps()
    }

    /// The pool, if any.
    pub fn pool(&self) -> Option<&P> {
        self.shared.pool.as_ref()
    }

    /// Per-backend metrics.
    pub fn backend_stats(&self) -> Vec<BackendStats> {
        let now = self.shared.now_ms();
        self.shared
            .snapshot()
            .iter()
            .map(|b| {
                let sum = |f: fn(&ShardCounters) -> &AtomicU64| -> u64 {
                    b.shards.iter().map(|c| read(f(c))).sum()
                };
                BackendStats {
                    addr: b.addr,
                    healthy: b.is_healthy(now),
                    requests: sum(|c| &c.requests),
                    errors: sum(|c| &c.errors),
                    connections_new: sum(|c| &c.new_conns),
                    connections_reused: sum(|c| &c.reused),
                    steals: sum(|c| &c.steals),
                    stale_retries: sum(|c| &c.stale_retries),
                    in_flight: sum(|c| &c.in_flight),
                    ejections: b.generation(),
                }
            })
            .collect()
    }

    /// Per-backend metrics in the Prometheus text format: a HELP and a TYPE line per family,
    /// one series per backend (`backend` label), and the process-wide re-wrap counter.
    pub fn prometheus(&self) -> String {
        let stats = self.backend_stats();
        let mut out = String::new();
        let metrics: [Metric; 10] = [
            (
                "requests_total",
                "Requests sent to the backend (attempts, including failed ones).",
                "counter",
                |s| s.requests as f64,
            ),
            (
                "errors_total",
                "Attempts at the backend that failed.",
                "counter",
                |s| s.errors as f64,
            ),
            (
                "healthy",
                "1 if the backend is healthy now (not ejected, passing active checks), else 0.",
                "gauge",
                |s| f64::from(u8::from(s.healthy)),
            ),
            (
                "connections_new_total",
                "Connections to the backend created (pooled or per request).",
                "counter",
                |s| s.connections_new as f64,
            ),
            (
                "connections_reused_total",
                "Checkouts that reused a pooled connection to the backend.",
                "counter",
                |s| s.connections_reused as f64,
            ),
            (
                "steals_total",
                "Reused connections that last ran on another shard (re-wrapped here).",
                "counter",
                |s| s.steals as f64,
            ),
            (
                "stale_retries_total",
                "Requests retried on a fresh connection after a stale pooled one failed.",
                "counter",
                |s| s.stale_retries as f64,
            ),
            (
                "in_flight",
                "Requests to the backend in flight now.",
                "gauge",
                |s| s.in_flight as f64,
            ),
            (
                "reuse_ratio",
                "Reused / (reused + new) checkouts, 0 to 1 (1 when nothing was checked out).",
                "gauge",
                BackendStats::reuse_rate,
            ),
            (
                "ejections_total",
                "Times the backend was ejected (one per failure episode).",
                "counter",
                |s| s.ejections as f64,
            ),
        ];
        for (name, help, kind, get) in metrics {
            let _ = writeln!(
                out,
                "# HELP shardpool_upstream_{name} {help}\n# TYPE shardpool_upstream_{name} {kind}"
            );
            for s in &stats {
                let _ = writeln!(
                    out,
                    "shardpool_upstream_{name}{{backend=\"{}\"}} {}",
                    s.addr,
                    get(s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP shardpool_upstream_rewraps_total Connections dup'ed and re-wrapped (a steal by \
             another shard, or a wrapper lost with a failed request).\n\
             # TYPE shardpool_upstream_rewraps_total counter"
        );
        let _ = writeln!(
            out,
            "shardpool_upstream_rewraps_total {}",
            self.shared.manager.rewraps()
        );
        out
    }

    /// Installs the gateway in `server`: a [`GatewayGreeter`] per shard, the pool's statistics
    /// (if pooled), the backend RPCs of `shardpool.v1.Admin` (through [`BackendAdmin`]), and the
    /// server's health table (`helloworld.Greeter` is NOT_SERVING while no backend is healthy).
    pub fn install<F, H>(
        &self,
        server: Server<F>,
    ) -> Server<impl Fn(ShardContext) -> GatewayGreeter<P> + Send + Sync + 'static>
    where
        F: Fn(ShardContext) -> H + Send + Sync + 'static,
        H: GreetHandler,
    {
        *self
            .shared
            .health
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(server.health());
        self.shared.update_health_table();
        let shared = Arc::clone(&self.shared);
        let server = server
            .greeter(move |ctx: ShardContext| GatewayGreeter::new(Arc::clone(&shared), ctx))
            .backend_admin(Arc::new(self.clone()));
        match &self.shared.pool {
            Some(pool) => server.pool_stats(crate::server::pool_stats_source(pool.clone())),
            None => server,
        }
    }

    /// Starts the active health checks (a thread; `None` if disabled). Dropping the returned
    /// handle stops it.
    pub fn start_health_checks(&self) -> Option<HealthChecker> {
        let interval = self.shared.config.health.interval?;
        let shared = Arc::clone(&self.shared);
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("upstream-health".into())
            .spawn(move || {
                loop {
                    for b in shared.snapshot().iter() {
                        let generation = b.generation();
                        let ok = ping(b.addr, shared.config.health.timeout).is_ok();
                        // Ordering: Relaxed, advisory (see `Backend::is_ejected`).
                        let was_down = b.active_down.swap(!ok, Ordering::Relaxed);
                        if was_down == ok {
                            tracing::info!(backend = %b.addr, healthy = ok, "active health check changed");
                        }
                        if ok && b.end_ejection_early(generation, shared.now_ms()) {
                            tracing::info!(backend = %b.addr, "a passing active check ended the ejection");
                        }
                    }
                    shared.update_health_table();
                    let (lock, cv) = &*stop2;
                    let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = cv
                        .wait_timeout_while(guard, interval, |stopped| !*stopped)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *guard {
                        return;
                    }
                }
            })
            .ok()?;
        Some(HealthChecker {
            stop,
            thread: Some(thread),
        })
    }
}

/// One active check: connect, PING, expect `OK`, all within `timeout`.
fn ping(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut buf = Vec::with_capacity(8);
    frame::encode_request(Op::Ping, "", &mut buf);
    s.write_all(&buf)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > frame::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    buf.resize(len, 0);
    s.read_exact(&mut buf)?;
    match frame::decode_response(&buf)?.code {
        FrameCode::Ok => Ok(()),
        other => Err(io::Error::other(format!("PING answered {other:?}"))),
    }
}

/// The active health-check thread; dropping it stops the thread.
pub struct HealthChecker {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            // The thread only sleeps and pings; a panic there has nothing left to clean up.
            let _ = t.join();
        }
    }
}

/// Who a failed attempt says something about; only [`Blame::Backend`] counts toward ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blame {
    /// The backend: it refused or dropped the connection, did not answer in time, sent
    /// garbage, or reported its own failure (`SERVER_ERROR`). Counts, and the call fails over.
    Backend,
    /// This gateway: the pool's wait ran out (every allowed connection busy), the request
    /// timeout ran out before a connection was checked out, or the pool is closed (shutdown).
    /// Does not count; the call fails over.
    Local,
    /// The request: the backend refused it (`BAD_REQUEST`, `TOO_LARGE`). Does not count, and
    /// is not retried elsewhere (every backend would refuse it).
    Request,
}

/// How far one attempt got, so a timeout can be blamed right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a pooled connection.
    Checkout,
    /// Connecting (no pool) or exchanging the frames with the backend.
    Exchange,
}

/// Why one attempt on one backend failed.
#[derive(Debug)]
enum AttemptError {
    /// Connecting, sending or reading failed (refused, reset, closed, a bad frame).
    Io(io::Error),
    /// No answer within the request timeout once the request was the backend's.
    Timeout(Duration),
    /// The backend answered `SERVER_ERROR`.
    ServerError(String),
    /// The backend refused the request (`BAD_REQUEST` or `TOO_LARGE`).
    Refused(FrameCode, String),
    /// Our side failed (see [`Blame::Local`]).
    Local(String),
}

impl AttemptError {
    /// Who the failure is about.
    fn blame(&self) -> Blame {
        match self {
            AttemptError::Io(_) | AttemptError::Timeout(_) | AttemptError::ServerError(_) => {
                Blame::Backend
            }
            AttemptError::Refused(..) => Blame::Request,
            AttemptError::Local(_) => Blame::Local,
        }
    }

    /// A failed checkout: creating the connection is the backend's part, waiting and a
    /// closed pool are ours.
    fn from_pool(e: PoolError<io::Error>) -> AttemptError {
        match e {
            PoolError::Create { error, .. } => AttemptError::Io(error),
            other @ (PoolError::Timeout { .. }
            | PoolError::Closed
            | PoolError::Overloaded { .. }) => AttemptError::Local(other.to_string()),
        }
    }

    /// The request timeout ran out during `phase`.
    fn timed_out(phase: Phase, timeout: Duration) -> AttemptError {
        match phase {
            Phase::Checkout => AttemptError::Local(format!(
                "no pooled connection became available within the request timeout {timeout:?}"
            )),
            Phase::Exchange => AttemptError::Timeout(timeout),
        }
    }

    /// The backend's answer: the greeting, or the error it stands for.
    fn from_response(response: frame::Response) -> Result<String, AttemptError> {
        match response.code {
            FrameCode::Ok => Ok(response.message),
            FrameCode::ServerError => Err(AttemptError::ServerError(response.message)),
            code @ (FrameCode::BadRequest | FrameCode::TooLarge) => {
                Err(AttemptError::Refused(code, response.message))
            }
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Io(e) => write!(f, "{e}"),
            AttemptError::Timeout(t) => write!(f, "no answer within {t:?}"),
            AttemptError::ServerError(e) => write!(f, "the backend failed: {e}"),
            AttemptError::Refused(code, e) => {
                write!(f, "the backend refused the request ({code:?}): {e}")
            }
            AttemptError::Local(e) => f.write_str(e),
        }
    }
}

/// A stale pooled connection: the backend closed it while idle, so nothing was answered.
fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
    )
}

/// Decrements a shard's in-flight count when the attempt ends (also when cancelled).
struct InFlight<'a>(&'a ShardCounters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        bump(&self.0.in_flight, -1);
    }
}

/// The per-shard `SayHello` handler of gateway mode.
pub struct GatewayGreeter<P> {
    shared: Arc<Shared<P>>,
    shard: usize,
    picker: Picker,
    cache: RefCell<(u64, Arc<Vec<Arc<Backend>>>)>,
}

impl<P: ConnectionPool<UpstreamManager>> GatewayGreeter<P> {
    fn new(shared: Arc<Shared<P>>, ctx: ShardContext) -> GatewayGreeter<P> {
        let seed = ((ctx.shard as u64 + 1) * 0x2545_F491_4F6C_DD1D)
            ^ shared.epoch.elapsed().as_nanos() as u64;
        let cache = RefCell::new((shared.version(), shared.snapshot()));
        // Maintenance on this shard: drop wrappers of connections that moved away or closed,
        // and let the pool expire idle connections. Detached: it ends with the executor.
        glommio::spawn_local({
            let shared = Arc::clone(&shared);
            let shard = ctx.shard;
            async move {
                let mut n = 0u32;
                loop {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    shared.manager.inboxes().drain(shard);
                    n += 1;
                    match &shared.pool {
                        Some(pool) if n.is_multiple_of(10) => pool.maintain(shard).await,
                        _ => {}
                    }
                }
            }
        })
        .detach();
        GatewayGreeter {
            picker: Picker::new(shared.config.balance, seed),
            shared,
            shard: ctx.shard,
            cache,
        }
    }

    fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        let v = self.shared.version();
        let mut cache = self.cache.borrow_mut();
        if cache.0 != v {
            *cache = (v, self.shared.snapshot());
        }
        Arc::clone(&cache.1)
    }

    /// One attempt on `b`: checkout (or connect), exchange, and the stale-connection retry.
    /// `phase` tells the caller's timeout how far it got.
    async fn attempt(
        &self,
        b: &Backend,
        name: &str,
        phase: &Cell<Phase>,
    ) -> Result<String, AttemptError> {
        let c = b.counters(self.shard);
        let exchange = match &self.shared.pool {
            None => {
                bump(&c.new_conns, 1);
                phase.set(Phase::Exchange);
                let connect = self.shared.manager.connect(b.addr).await;
                let mut conn = connect.map_err(AttemptError::Io)?;
                conn.exchange(self.shard, Op::Hello, name).await
            }
            Some(pool) => {
                let mut guard = self.checkout(pool, b, false).await?;
                phase.set(Phase::Exchange);
                match guard.exchange(self.shard, Op::Hello, name).await {
                    Err(e) if guard.is_reused() && is_stale(&e) => {
                        // The backend closed this idle connection before the request reached
                        // it, so nothing was done: retry once (SayHello is idempotent). The
                        // discard frees the connection's permit first, so the retry's
                        // connection is another pooled one or is created within `max_size`.
                        guard.discard();
                        bump(&c.stale_retries, 1);
                        phase.set(Phase::Checkout);
                        let mut guard = self.checkout(pool, b, true).await?;
                        phase.set(Phase::Exchange);
                        let result = guard.exchange(self.shard, Op::Hello, name).await;
                        Self::finish(c, guard, result)
                    }
                    result => Self::finish(c, guard, result),
                }
            }
        };
        AttemptError::from_response(exchange.map_err(AttemptError::Io)?.response)
    }

    /// Checks a connection to `b` out of the pool on this shard and counts it as new or reused.
    /// With `verify`, reused connections the backend has closed (a peek, whatever their idle
    /// time) are discarded and the checkout repeated; each repeat yields first, so the attempt's
    /// timeout bounds the loop.
    async fn checkout(
        &self,
        pool: &P,
        b: &Backend,
        verify: bool,
    ) -> Result<P::Guard, AttemptError> {
        let c = b.counters(self.shard);
        loop {
            let guard = pool.get(&b.addr).await.map_err(AttemptError::from_pool)?;
            let reused = guard.is_reused();
            if verify && reused && guard.peer_gone() {
                guard.discard();
                futures_lite::future::yield_now().await;
                continue;
            }
            bump(if reused { &c.reused } else { &c.new_conns }, 1);
            return Ok(guard);
        }
    }

    /// Ends a pooled exchange: counts a steal and returns the connection, or closes it after a
    /// failure (its stream position is unknown) or a `TOO_LARGE` answer (the origin closes the
    /// connection after it).
    fn finish(
        c: &ShardCounters,
        guard: P::Guard,
        result: io::Result<Exchange>,
    ) -> io::Result<Exchange> {
        match result {
            Ok(x) => {
                if x.moved {
                    bump(&c.steals, 1);
                }
                if x.response.code == FrameCode::TooLarge {
                    guard.discard();
                } else {
                    drop(guard);
                }
                Ok(x)
            }
            Err(e) => {
                guard.discard();
                Err(e)
            }
        }
    }

    /// One attempt with the request timeout, counted and fed to passive health. `panic`: sent
    /// to an unhealthy backend because none is healthy (panic mode).
    /// `now_ms`: when the backend was picked.
    async fn call(
        &self,
        b: &Backend,
        name: &str,
        panic: bool,
        now_ms: u64,
    ) -> Result<String, AttemptError> {
        let c = b.counters(self.shard);
        bump(&c.requests, 1);
        bump(&c.in_flight, 1);
        let _in_flight = InFlight(c);
        let start = b.begin(panic, now_ms);
        let timeout = self.shared.config.request_timeout;
        let phase = Cell::new(Phase::Checkout);
        let result = futures_lite::future::or(self.attempt(b, name, &phase), async {
            glommio::timer::sleep(timeout).await;
            Err(AttemptError::timed_out(phase.get(), timeout))
        })
        .await;
        if result.is_err() {
            bump(&c.errors, 1);
        }
        feed_health(
            b,
            start,
            &result,
            || self.shared.now_ms(),
            &self.shared.config.health,
        );
        result
    }
}

/// Passive health: a call's outcome, judged against what it saw when it began. Only failures
/// that blame the backend count toward ejection (see [`Blame`] and [`Backend`]).
fn feed_health(
    b: &Backend,
    start: CallStart,
    result: &Result<String, AttemptError>,
    now_ms: impl FnOnce() -> u64,
    cfg: &HealthConfig,
) {
    match result {
        Ok(_) => b.record_success(start),
        Err(e) if e.blame() == Blame::Backend => {
            if let Some(length) = b.record_failure(start, now_ms(), cfg) {
                tracing::warn!(backend = %b.addr, ?length, error = %e, "backend ejected after {} consecutive failures", cfg.eject_after);
            }
        }
        Err(_) => {}
    }
}

impl<P: ConnectionPool<UpstreamManager>> GreetHandler for GatewayGreeter<P> {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        // Refused here, before any backend sees it: a longer name's greeting does not fit one
        // upstream frame (frame::MAX_HELLO_NAME is derived from the frame limit).
        if name.len() > frame::MAX_HELLO_NAME {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "name is {} bytes; the longest name the gateway can forward is {} bytes \
                     (its greeting must fit one {}-byte upstream frame)",
                    name.len(),
                    frame::MAX_HELLO_NAME,
                    frame::MAX_FRAME
                ),
            ));
        }
        let backends = self.backends();
        if backends.is_empty() {
            return Err(Status::new(
                Code::Unavailable,
                "no upstream backend is configured (add one with --backend, the backends file and SIGHUP, or the upstream admin endpoint)",
            ));
        }
        let mut tried = [usize::MAX; 2];
        let mut last: Option<(SocketAddr, AttemptError)> = None;
        let mut panicked = false;
        for attempt in 0..2 {
            let now = self.shared.now_ms();
            let pick = self.picker.pick(
                backends.len(),
                |i| !tried.contains(&i) && backends[i].is_healthy(now),
                |i| read(&backends[i].counters(self.shard).in_flight),
            );
            let i = match pick {
                Some(i) => i,
                // Panic mode: nothing is healthy; one try on the backend ejected longest ago.
                None if attempt == 0 => match panic_pick(&backends) {
                    Some(i) => {
                        panicked = true;
                        i
                    }
                    None => break,
                },
                None => break,
            };
            tried[attempt] = i;
            match self.call(&backends[i], &name, panicked, now).await {
                Ok(reply) => return Ok(reply),
                Err(e) if e.blame() == Blame::Request => {
                    return Err(Status::new(
                        Code::InvalidArgument,
                        format!("backend {}: {e}", backends[i].addr),
                    ));
                }
                Err(e) => last = Some((backends[i].addr, e)),
            }
            if panicked {
                break;
            }
        }
        let now = self.shared.now_ms();
        let unhealthy = || -> String {
            let why: Vec<String> = backends.iter().map(|b| b.why_unhealthy(now)).collect();
            format!("no healthy upstream backend: {}", why.join("; "))
        };
        Err(match last {
            Some((addr, e)) if panicked => Status::new(
                Code::Unavailable,
                format!(
                    "{}; panic mode tried {addr} (ejected longest ago): {e}",
                    unhealthy()
                ),
            ),
            Some((addr, e)) => Status::new(
                Code::Unavailable,
                format!("upstream request failed (last backend {addr}): {e}"),
            ),
            None => Status::new(Code::Unavailable, unhealthy()),
        })
    }
}

impl<P> Drop for GatewayGreeter<P> {
    fn drop(&mut self) {
        // The shard is stopping: drop its glommio wrappers while the executor still runs.
        drop_thread_wrappers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ShardedPool;

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

    fn gateway(max_backends: usize) -> Gateway<ShardedPool<UpstreamManager>> {
        let config = GatewayConfig {
            max_backends,
            ..GatewayConfig::default()
        };
        let manager = UpstreamManager::new(config.connector.clone(), 1);
        Gateway::new(config, None, manager, 1)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn no_backend_is_added_beyond_max_backends() {
        let g = gateway(2);
        assert_eq!(g.add_backend(addr(7001)), Ok(true));
        assert_eq!(g.add_backend(addr(7001)), Ok(false), "present already");
        assert_eq!(g.add_backend(addr(7002)), Ok(true));
        assert_eq!(g.add_backend(addr(7003)), Err(BackendsFull { max: 2 }));
        assert_eq!(g.backends(), [addr(7001), addr(7002)]);
        // Through the admin hook, the refusal is a message naming the knob.
        let why = BackendAdmin::add_backend(&g, addr(7003)).unwrap_err();
        assert!(why.contains("--max-backends"), "{why}");
        assert!(g.remove_backend(addr(7001)));
        assert_eq!(
            g.add_backend(addr(7003)),
            Ok(true),
            "room again after a removal"
        );
    }

    #[test]
    fn set_backends_swaps_the_whole_set_within_max_backends() {
        let g = gateway(2);
        assert_eq!(g.set_backends(&[addr(1), addr(2), addr(1)]), Ok((2, 0)));
        // Replacing both at once fits the limit: the set is swapped in one step.
        assert_eq!(g.set_backends(&[addr(3), addr(4)]), Ok((2, 2)));
        assert_eq!(g.backends(), [addr(3), addr(4)]);
        assert_eq!(
            g.set_backends(&[addr(3), addr(4), addr(5)]),
            Err(BackendsFull { max: 2 })
        );
        assert_eq!(
            g.backends(),
            [addr(3), addr(4)],
            "a refused set changes nothing"
        );
        assert_eq!(g.set_backends(&[]), Ok((0, 2)));
    }
}
