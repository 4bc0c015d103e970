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

mod backend;
mod config;
mod greeter;
mod health;

pub use backend::{Backend, BackendStats};
pub use config::{BackendsFull, DEFAULT_MAX_BACKENDS, GatewayConfig, HealthConfig};
pub use greeter::GatewayGreeter;
pub use health::HealthChecker;

use backend::{CallStart, ShardCounters, bump, panic_pick, read};

use super::conn::UpstreamManager;
use crate::pool::ConnectionPool;
use crate::runtime::ShardContext;
use crate::server::{BackendAdmin, GreetHandler, Health, Server, proto};
use std::fmt::Write as _;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ShardedPool;

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
