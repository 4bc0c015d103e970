//! Gateway mode: each `SayHello` goes to an upstream backend over a pooled connection.
//!
//! A [`Gateway`] holds the backend set, the pool (any [`ConnectionPool`] of
//! [`UpstreamManager`], or none: connect per request), the balancing policy and the health
//! state. [`Gateway::install`] plugs it into a [`Server`]: one [`GatewayGreeter`] per shard and
//! the pool's statistics. [`Gateway::start_health_checks`] runs the active checks.
//!
//! Per request: pick a healthy backend ([`Balance`]), check a connection out on this shard,
//! exchange one frame, return the connection. A request that fails on a *reused* connection
//! because the backend had closed it is retried once through the pool (the stale connection is
//! discarded first, so the retry stays within the pool's limits); a request that fails
//! otherwise counts against the backend (passive health) and fails over once to another healthy
//! backend. With no healthy backend the call is answered `UNAVAILABLE` with the reasons.

use super::balance::{Balance, Picker};
use super::conn::{ConnectorConfig, Exchange, UpstreamManager, drop_thread_wrappers};
use super::frame::{self, Code as FrameCode, Op};
use crate::pool::{ConnectionPool, Error as PoolError, PooledConn};
use crate::runtime::ShardContext;
use crate::server::{BackendAdmin, Code, GreetHandler, Health, Server, Status, proto};
use crossbeam_utils::CachePadded;
use std::cell::RefCell;
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
    /// Consecutive failed requests that eject a backend (0: never eject).
    pub eject_after: u32,
    /// First ejection length; doubled per further ejection in a row.
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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            balance: Balance::RoundRobin,
            health: HealthConfig::default(),
            request_timeout: Duration::from_secs(2),
            connector: ConnectorConfig::default(),
        }
    }
}

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

/// One backend: address, health state, per-shard counters.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    shards: Vec<CachePadded<ShardCounters>>,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since the gateway's epoch until which the backend is ejected (0: not).
    ejected_until_ms: AtomicU64,
    /// The last active check failed.
    active_down: AtomicBool,
}

impl Backend {
    fn new(addr: SocketAddr, shards: usize) -> Backend {
        Backend {
            addr,
            shards: (0..shards).map(|_| CachePadded::default()).collect(),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
        }
    }

    fn counters(&self, shard: usize) -> &ShardCounters {
        &self.shards[shard % self.shards.len()]
    }

    fn is_healthy(&self, now_ms: u64) -> bool {
        // Ordering: Relaxed; health flags are advisory and independent, a stale read only picks
        // or skips a backend one request late.
        !self.active_down.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn record_success(&self) {
        // Ordering: Relaxed (advisory health state, as in `is_healthy`); loads first so the
        // common case writes nothing shared.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    fn record_failure(&self, now_ms: u64, cfg: &HealthConfig) {
        if cfg.eject_after == 0 {
            return;
        }
        // Ordering: Relaxed (advisory health state). Racing failures may eject twice in a row;
        // the later ejection simply extends the first.
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.eject_after {
            return;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = cfg
            .backoff_base
            .saturating_mul(1u32 << times)
            .min(cfg.backoff_max);
        self.ejected_until_ms
            .store(now_ms + backoff.as_millis() as u64 + 1, Ordering::Relaxed);
        tracing::warn!(backend = %self.addr, ?backoff, "backend ejected after {n} consecutive failures");
    }

    fn why_unhealthy(&self, now_ms: u64) -> String {
        // Ordering: Relaxed, as in `is_healthy`.
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
    fn add_backend(&self, addr: SocketAddr) -> bool {
        Gateway::add_backend(self, addr)
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
type Metric = (&'static str, &'static str, fn(&BackendStats) -> f64);

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
/// gateway.add_backend("127.0.0.1:7001".parse().unwrap());
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

    /// Adds a backend; `false` if it was already there.
    pub fn add_backend(&self, addr: SocketAddr) -> bool {
        let shards = self.shared.shards;
        self.replace(|list| {
            if list.iter().any(|b| b.addr == addr) {
                return false;
            }
            list.push(Arc::new(Backend::new(addr, shards)));
            true
        })
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

    /// Makes the backend set exactly `addrs` (adds and removes the difference; kept backends
    /// keep their counters and health). Returns (added, removed).
    pub fn set_backends(&self, addrs: &[SocketAddr]) -> (usize, usize) {
        let current: Vec<SocketAddr> = self.backends();
        let removed: Vec<SocketAddr> = current
            .iter()
            .copied()
            .filter(|a| !addrs.contains(a))
            .collect();
        let added = addrs.iter().filter(|a| self.add_backend(**a)).count();
        for a in &removed {
            self.remove_backend(*a);
        }
        (added, removed.len())
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
                }
            })
            .collect()
    }

    /// Per-backend metrics in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let stats = self.backend_stats();
        let mut out = String::new();
        let metrics: [Metric; 9] = [
            ("requests_total", "counter", |s| s.requests as f64),
            ("errors_total", "counter", |s| s.errors as f64),
            ("healthy", "gauge", |s| f64::from(u8::from(s.healthy))),
            ("connections_new_total", "counter", |s| {
                s.connections_new as f64
            }),
            ("connections_reused_total", "counter", |s| {
                s.connections_reused as f64
            }),
            ("steals_total", "counter", |s| s.steals as f64),
            ("stale_retries_total", "counter", |s| s.stale_retries as f64),
            ("in_flight", "gauge", |s| s.in_flight as f64),
            ("reuse_rate", "gauge", BackendStats::reuse_rate),
        ];
        for (name, kind, get) in metrics {
            let _ = writeln!(out, "# TYPE shardpool_upstream_{name} {kind}");
            for s in &stats {
                let _ = writeln!(
                    out,
                    "shardpool_upstream_{name}{{backend=\"{}\"}} {}",
                    s.addr,
                    get(s)
                );
            }
        }
        let _ = writeln!(out, "# TYPE shardpool_upstream_rewraps_total counter");
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
                        let ok = ping(b.addr, shared.config.health.timeout).is_ok();
                        // Ordering: Relaxed, advisory (see `Backend::is_healthy`).
                        let was_down = b.active_down.swap(!ok, Ordering::Relaxed);
                        if was_down == ok {
                            tracing::info!(backend = %b.addr, healthy = ok, "active health check changed");
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

/// Why one attempt on one backend failed.
enum AttemptError {
    Io(io::Error),
    Pool(String),
    Backend(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Io(e) => write!(f, "{e}"),
            AttemptError::Pool(e) => f.write_str(e),
            AttemptError::Backend(e) => write!(f, "the backend refused the request: {e}"),
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
    async fn attempt(&self, b: &Backend, name: &str) -> Result<String, AttemptError> {
        let c = b.counters(self.shard);
        let exchange = match &self.shared.pool {
            None => {
                bump(&c.new_conns, 1);
                let connect = self.shared.manager.connect(b.addr).await;
                let mut conn = connect.map_err(AttemptError::Io)?;
                conn.exchange(self.shard, Op::Hello, name).await
            }
            Some(pool) => {
                let mut guard = self.checkout(pool, b, false).await?;
                match guard.exchange(self.shard, Op::Hello, name).await {
                    Err(e) if guard.is_reused() && is_stale(&e) => {
                        // The backend closed this idle connection before the request reached
                        // it, so nothing was done: retry once (SayHello is idempotent). The
                        // discard frees the connection's permit first, so the retry's
                        // connection is another pooled one or is created within `max_size`.
                        guard.discard();
                        bump(&c.stale_retries, 1);
                        let mut guard = self.checkout(pool, b, true).await?;
                        let result = guard.exchange(self.shard, Op::Hello, name).await;
                        Self::finish(c, guard, result)
                    }
                    result => Self::finish(c, guard, result),
                }
            }
        };
        let response = exchange.map_err(AttemptError::Io)?.response;
        match response.code {
            FrameCode::Ok => Ok(response.message),
            _ => Err(AttemptError::Backend(response.message)),
        }
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
            let guard = pool.get(&b.addr).await.map_err(|e| match e {
                PoolError::Create(e) => AttemptError::Io(e),
                other => AttemptError::Pool(other.to_string()),
            })?;
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
    /// failure (its stream position is unknown).
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
                drop(guard);
                Ok(x)
            }
            Err(e) => {
                guard.discard();
                Err(e)
            }
        }
    }

    /// One attempt with the request timeout, counted and fed to passive health.
    async fn call(&self, b: &Backend, name: &str) -> Result<String, AttemptError> {
        let c = b.counters(self.shard);
        bump(&c.requests, 1);
        bump(&c.in_flight, 1);
        let _in_flight = InFlight(c);
        let timeout = self.shared.config.request_timeout;
        let result = futures_lite::future::or(self.attempt(b, name), async {
            glommio::timer::sleep(timeout).await;
            Err(AttemptError::Pool(format!("no answer within {timeout:?}")))
        })
        .await;
        match &result {
            Ok(_) => b.record_success(),
            // The backend answered; the request itself was bad. Not a health signal.
            Err(AttemptError::Backend(_)) => bump(&c.errors, 1),
            Err(_) => {
                bump(&c.errors, 1);
                b.record_failure(self.shared.now_ms(), &self.shared.config.health);
            }
        }
        result
    }
}

impl<P: ConnectionPool<UpstreamManager>> GreetHandler for GatewayGreeter<P> {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        if name.len() >= frame::MAX_FRAME {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "name is {} bytes; the upstream limit is {}",
                    name.len(),
                    frame::MAX_FRAME - 1
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
        for attempt in 0..2 {
            let now = self.shared.now_ms();
            let pick = self.picker.pick(
                backends.len(),
                |i| !tried.contains(&i) && backends[i].is_healthy(now),
                |i| read(&backends[i].counters(self.shard).in_flight),
            );
            let Some(i) = pick else { break };
            tried[attempt] = i;
            match self.call(&backends[i], &name).await {
                Ok(reply) => return Ok(reply),
                Err(AttemptError::Backend(m)) => {
                    return Err(Status::new(
                        Code::Internal,
                        format!("backend {}: {m}", backends[i].addr),
                    ));
                }
                Err(e) => last = Some((backends[i].addr, e)),
            }
        }
        Err(match last {
            Some((addr, e)) => Status::new(
                Code::Unavailable,
                format!("upstream request failed (last backend {addr}): {e}"),
            ),
            None => {
                let now = self.shared.now_ms();
                let why: Vec<String> = backends.iter().map(|b| b.why_unhealthy(now)).collect();
                Status::new(
                    Code::Unavailable,
                    format!("no healthy upstream backend: {}", why.join("; ")),
                )
            }
        })
    }
}

impl<P> Drop for GatewayGreeter<P> {
    fn drop(&mut self) {
        // The shard is stopping: drop its glommio wrappers while the executor still runs.
        drop_thread_wrappers();
    }
}
