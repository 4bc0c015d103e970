//! [`Server`]: building the server, starting its shards, and the running handle that drains and
//! stops them.

use super::{
    BackendAdmin, DirectGreeter, GreetHandler, Health, ServerConfig, ServerCounters, Shared,
    StatsSource, run_shard,
};
use super::{io, limits};
use crate::runtime::{RuntimeOptions, ShardContext, ShardHandles, Shutdown};
use crate::topology::ShardMap;
use crossbeam_utils::CachePadded;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

/// A hook run on a shard's thread after a connection storm ended there (see
/// [`Server::after_storm`]).
pub type StormHook = Arc<dyn Fn() + Send + Sync>;

/// A server ready to start: config, greeter factory, optional pool stats.
pub struct Server<F> {
    config: ServerConfig,
    greeter: F,
    stats: Option<StatsSource>,
    backends: Option<Arc<dyn BackendAdmin>>,
    health: Health,
    after_storm: Option<StormHook>,
}

pub(super) type DirectFactory = fn(ShardContext) -> DirectGreeter;

impl Server<DirectFactory> {
    /// A server with the [`DirectGreeter`] and no pool stats.
    pub fn new(config: ServerConfig) -> Server<DirectFactory> {
        Server {
            config,
            greeter: |_| DirectGreeter,
            stats: None,
            backends: None,
            health: Health::new(),
            after_storm: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServeError {
    /// The configuration is invalid (which field and why).
    Config(super::ConfigError),
    /// Binding a listener failed.
    Bind(std::io::Error),
    /// Starting shard executors failed.
    Runtime(crate::runtime::RuntimeError),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(e) => write!(f, "invalid server configuration: {e}"),
            ServeError::Bind(e) => write!(f, "{e}"),
            ServeError::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Config(e) => Some(e),
            ServeError::Bind(e) => Some(e),
            ServeError::Runtime(e) => Some(e),
        }
    }
}

impl<F, H> Server<F>
where
    F: Fn(ShardContext) -> H + Send + Sync + 'static,
    H: GreetHandler,
{
    /// Uses `factory` to build each shard's [`GreetHandler`].
    pub fn greeter<F2, H2>(self, factory: F2) -> Server<F2>
    where
        F2: Fn(ShardContext) -> H2 + Send + Sync + 'static,
        H2: GreetHandler,
    {
        Server {
            config: self.config,
            greeter: factory,
            stats: self.stats,
            backends: self.backends,
            health: self.health,
            after_storm: self.after_storm,
        }
    }

    /// Attaches a pool statistics source (PoolMetrics RPC and `/metrics`).
    #[must_use]
    pub fn pool_stats(mut self, source: StatsSource) -> Self {
        self.stats = Some(source);
        self
    }

    /// Attaches the hook behind the backend RPCs of `shardpool.v1.Admin`.
    #[must_use]
    pub fn backend_admin(mut self, hook: Arc<dyn BackendAdmin>) -> Self {
        self.backends = Some(hook);
        self
    }

    /// Runs `hook` on a shard's own thread when a connection storm has ended there: its open
    /// connections fell to a quarter of a peak of at least [`limits::STORM_MIN_PEAK`]. The
    /// binary gives its allocator's purge (`mi_collect`), so the memory of the storm's
    /// connections goes back to the system; the library knows no allocator.
    #[must_use]
    pub fn after_storm(mut self, hook: StormHook) -> Self {
        self.after_storm = Some(hook);
        self
    }

    /// The health table (clone it to flip services on and off while serving).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Binds one listener per shard and starts serving on the shards of `map`.
    pub fn start(
        self,
        map: &ShardMap,
        runtime: &RuntimeOptions,
    ) -> Result<RunningServer, ServeError> {
        self.config.validate().map_err(ServeError::Config)?;
        if let Ok((soft, _)) = limits::nofile_limit() {
            let wanted = self
                .config
                .max_connections_per_shard
                .saturating_mul(map.len());
            if wanted as u64 >= soft {
                tracing::warn!(
                    "max_connections_per_shard ({}) × {} shards is at or above the descriptor \
                     limit ({soft}): connections may use every descriptor and starve upstream \
                     sockets; derive the cap with limits::connection_cap (as `shardpool serve` \
                     does) or raise the limit",
                    self.config.max_connections_per_shard,
                    map.len()
                );
            }
        }
        let cfg = Arc::new(self.config);
        let sock_opts = cfg.socket_options();
        let (listeners, addr) =
            io::reuseport_listeners(cfg.listen, map.len(), &sock_opts).map_err(ServeError::Bind)?;
        let admin = match cfg.admin_listen {
            Some(a) => {
                let (mut socks, bound) =
                    io::reuseport_listeners(a, 1, &sock_opts).map_err(|e| {
                        ServeError::Bind(std::io::Error::new(
                            e.kind(),
                            format!("admin listener: {e}"),
                        ))
                    })?;
                Some((socks.remove(0), bound))
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(_, a)| *a);
        let counters: Arc<Vec<CachePadded<ServerCounters>>> = Arc::new(
            (0..map.len())
                .map(|_| CachePadded::new(ServerCounters::default()))
                .collect(),
        );
        let shutdown = Shutdown::new();
        // Each shard takes its listener (and shard 0 the admin listener) out of these slots.
        let slots: Arc<Vec<std::sync::Mutex<Option<socket2::Socket>>>> = Arc::new(
            listeners
                .into_iter()
                .map(|s| std::sync::Mutex::new(Some(s)))
                .collect(),
        );
        let admin_slot = Arc::new(std::sync::Mutex::new(admin.map(|(s, _)| s)));
        let shared = Arc::new(Shared {
            cfg,
            stats: self.stats,
            backends: self.backends,
            health: self.health.clone(),
            after_storm: self.after_storm,
            counters,
            map: map.clone(),
            shutdown: shutdown.clone(),
        });
        let greeter = self.greeter;
        let handles = crate::runtime::spawn_shards(map, runtime, move |ctx| {
            let listener = take(&slots[ctx.shard]);
            let admin = if ctx.shard == 0 {
                take(&admin_slot)
            } else {
                None
            };
            run_shard(Arc::clone(&shared), ctx, greeter(ctx), listener, admin)
        })
        .map_err(ServeError::Runtime)?;
        Ok(RunningServer {
            addr,
            admin_addr,
            shutdown,
            handles,
            health: self.health,
        })
    }
}

pub(super) fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// What one shard did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardReport {
    /// Shard index.
    pub shard: usize,
    /// Connections accepted over the shard's life.
    pub connections: u64,
    /// Calls answered.
    pub calls: u64,
    /// Calls answered UNAVAILABLE because the shutdown grace ran out.
    pub calls_abandoned: u64,
}

/// A started server.
#[must_use = "a server stops only through shutdown(); dropping this detaches its shards"]
pub struct RunningServer {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: Shutdown,
    handles: ShardHandles<ShardReport>,
    health: Health,
}

impl RunningServer {
    /// The gRPC address actually bound (the port is resolved if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin (`/metrics`) address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shutdown switch (for signal handlers): `drain()` starts a graceful stop, `abort()`
    /// ends the grace period at once.
    pub fn shutdown_switch(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The health table.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Graceful stop: stop accepting, send GOAWAY, let in-flight calls finish for up to `grace`,
    /// then answer the rest UNAVAILABLE and close. Returns when every shard has stopped.
    pub fn shutdown(
        self,
        grace: Duration,
    ) -> Result<Vec<ShardReport>, crate::runtime::RuntimeError> {
        self.shutdown.drain();
        let switch = self.shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            switch.abort();
        });
        self.handles.join()
    }

    /// Waits for the shards to stop (after someone triggered the [`Shutdown`] switch).
    pub fn wait(self) -> Result<Vec<ShardReport>, crate::runtime::RuntimeError> {
        self.handles.join()
    }
}
