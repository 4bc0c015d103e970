//! Starting a gateway beside a [`Server`], reloading its backends, and stopping it: what
//! `shardpool serve` does in gateway mode, as a library call, so that embedders and tests start
//! the gateway the way the binary does.
//!
//! [`start`] builds the pool ([`PoolKind`]), the [`Gateway`], the embedded origins (when there is
//! no backend, or [`Launch::embedded_only`]), the active health checks and the upstream admin
//! endpoint, installs the gateway in the server and starts it. The returned [`GatewayHandle`]
//! re-reads the backend list on demand ([`GatewayHandle::reload`]) or on SIGHUP
//! ([`Launch::reload_on_sighup`]); dropping it (after the server has stopped) closes the
//! pool, stops the health checks, the admin endpoint and the embedded origins.
//!
//! Where the list of backends comes from is the caller's business: a closure
//! ([`BackendList`]) that `start` calls once and every reload calls again. Its errors, and
//! backends outside [`Launch::allow`], keep the current set on a reload and fail `start`.
//!
//! ```no_run
//! use shardpool::runtime::RuntimeOptions;
//! use shardpool::server::{Server, ServerConfig};
//! use shardpool::topology::{Placement, Topology};
//! use shardpool::upstream::launch::{self, Launch};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let map = Topology::detect().place(&Placement::AllCores, None).unwrap();
//! // No backend listed: two embedded origins on loopback answer.
//! let launch = Launch::new(Arc::new(|| Ok(Vec::new())));
//! let (server, gateway) = launch::start(
//!     launch,
//!     Server::new(ServerConfig::default()),
//!     &map,
//!     &RuntimeOptions::default(),
//! )
//! .unwrap();
//! println!("{} backends", gateway.backends_at_start().len());
//! server.shutdown(Duration::from_secs(5)).unwrap();
//! drop(gateway);
//! ```

use super::admin::AdminEndpoint;
use super::allow::{AllowListed, BackendAllow};
use super::origin::{Origin, OriginConfig, RunningOrigin};
use super::{BackendsFull, Gateway, GatewayConfig, HealthChecker, UpstreamManager};
use crate::baseline::MutexPool;
use crate::pool::{Config, ConfigError, ConnectionPool, ShardedPool};
use crate::runtime::{RuntimeOptions, ShardContext};
use crate::server::{AdminConfig, GreetHandler, RunningServer, ServeError, Server};
use crate::topology::ShardMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Which pool holds the gateway's upstream connections.
///
/// ```
/// use shardpool::upstream::launch::PoolKind;
/// assert_eq!(PoolKind::default(), PoolKind::Sharded);
/// assert_eq!(PoolKind::Mutex.to_string(), "mutex");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolKind {
    /// The lock-free per-core [`ShardedPool`].
    #[default]
    Sharded,
    /// The `Mutex<HashMap>` baseline, [`MutexPool`].
    Mutex,
    /// No pool: a new connection per request.
    None,
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolKind::Sharded => "sharded",
            PoolKind::Mutex => "mutex",
            PoolKind::None => "none",
        })
    }
}

/// The backend list, read at start and again by every reload: the addresses, or why they cannot
/// be read (the message is logged on a reload and returned by [`start`]).
///
/// ```
/// use shardpool::upstream::launch::BackendList;
/// use std::sync::Arc;
///
/// // Read from a file each time, as `serve --backends-file` does.
/// let path = std::env::temp_dir().join("shardpool-doc-backends.txt");
/// std::fs::write(&path, "127.0.0.1:7001\n127.0.0.1:7002\n").unwrap();
/// let list: BackendList = Arc::new(move || {
///     let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
///     text.lines().map(|l| l.parse().map_err(|e| format!("{l}: {e}"))).collect()
/// });
/// assert_eq!(list().unwrap().len(), 2);
/// ```
pub type BackendList = Arc<dyn Fn() -> Result<Vec<SocketAddr>, String> + Send + Sync>;

/// Everything [`start`] needs besides the server. [`Launch::new`] gives the defaults of
/// `shardpool serve`.
///
/// ```
/// use shardpool::upstream::launch::{Launch, PoolKind};
/// use std::sync::Arc;
///
/// let launch = Launch::new(Arc::new(|| Ok(vec!["127.0.0.1:7001".parse().unwrap()])));
/// assert_eq!(launch.pool, PoolKind::Sharded);
/// assert_eq!(launch.embedded_origins, 2);
/// ```
#[derive(Clone)]
pub struct Launch {
    /// The gateway's knobs (balancing, health, connector, request timeout, `max_backends`).
    pub gateway: GatewayConfig,
    /// The pool of upstream connections (default [`PoolKind::Sharded`]).
    pub pool: PoolKind,
    /// Connections per backend (the pool's `max_size`; default 256).
    pub pool_max_size: usize,
    /// Idle connections kept per backend and shard (the pool's `max_idle_per_key`; default 256).
    pub pool_max_idle: usize,
    /// Close pooled connections idle this long (default 60 s; `None`: never).
    pub pool_idle_timeout: Option<Duration>,
    /// Origins started in this process when the list is empty or `embedded_only` (default 2).
    pub embedded_origins: usize,
    /// Start the embedded origins even when the list names backends (default false).
    pub embedded_only: bool,
    /// Where the backends come from.
    pub backends: BackendList,
    /// Backends (listed, added by the admin RPCs, or reloaded) must be inside these networks.
    pub allow: Option<BackendAllow>,
    /// Serve the upstream admin endpoint here (default none).
    pub admin_listen: Option<SocketAddr>,
    /// Token and limits of the admin endpoint.
    pub admin: AdminConfig,
    /// Reload on every SIGHUP (a thread; each result is logged), from before the server starts
    /// until the handle is dropped (default false). This installs a process-wide signal handler:
    /// set it in a binary, not in a library that does not own the process's signals.
    pub reload_on_sighup: bool,
}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("gateway", &self.gateway)
            .field("pool", &self.pool)
            .field("pool_max_size", &self.pool_max_size)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("embedded_origins", &self.embedded_origins)
            .field("embedded_only", &self.embedded_only)
            .field("allow", &self.allow)
            .field("admin_listen", &self.admin_listen)
            .field("reload_on_sighup", &self.reload_on_sighup)
            .finish_non_exhaustive()
    }
}

impl Launch {
    /// The defaults of `shardpool serve` with `backends` as the list.
    pub fn new(backends: BackendList) -> Launch {
        Launch {
            gateway: GatewayConfig::default(),
            pool: PoolKind::Sharded,
            pool_max_size: 256,
            pool_max_idle: 256,
            pool_idle_timeout: Some(Duration::from_secs(60)),
            embedded_origins: 2,
            embedded_only: false,
            backends,
            allow: None,
            admin_listen: None,
            admin: AdminConfig::default(),
            reload_on_sighup: false,
        }
    }

    /// The pool configuration `start` uses: `max_size` and `max_idle_per_key` as set, a total
    /// idle budget of 64 backends' worth, the request timeout as the wait timeout, and the shard
    /// map's steal order.
    fn pool_config(&self, map: &ShardMap) -> Config {
        Config::default()
            .shards(map.len())
            .max_size(self.pool_max_size)
            .max_idle_per_key(self.pool_max_idle)
            .max_total_idle(self.pool_max_idle.saturating_mul(64))
            .idle_timeout(self.pool_idle_timeout)
            .wait_timeout(Some(self.gateway.request_timeout))
            .steal_order(map.steal_order())
    }
}

/// Why [`start`] failed. Nothing it started is left running.
///
/// ```
/// use shardpool::runtime::RuntimeOptions;
/// use shardpool::server::{Server, ServerConfig};
/// use shardpool::topology::{Placement, Topology};
/// use shardpool::upstream::launch::{self, Launch, LaunchError};
/// use std::sync::Arc;
///
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// // No backend and no embedded origin: nothing would answer, so nothing starts.
/// let launch = Launch { embedded_origins: 0, ..Launch::new(Arc::new(|| Ok(Vec::new()))) };
/// let server = Server::new(ServerConfig::default());
/// match launch::start(launch, server, &map, &RuntimeOptions::default()) {
///     Err(LaunchError::NoBackend) => {}
///     Err(e) => panic!("{e}"),
///     Ok(_) => panic!("started without a backend"),
/// }
/// ```
#[derive(Debug)]
pub enum LaunchError {
    /// The list is empty and `embedded_origins` is 0: nothing would answer.
    NoBackend,
    /// The backend list could not be read.
    Backends(String),
    /// A listed backend is outside [`Launch::allow`].
    NotAllowed(String),
    /// More backends than `GatewayConfig::max_backends`.
    Full(BackendsFull),
    /// The pool settings are invalid.
    Pool(ConfigError),
    /// Embedded origin `index` could not start.
    Origin {
        /// Which origin (0-based).
        index: usize,
        /// Why.
        error: io::Error,
    },
    /// The upstream admin endpoint could not start.
    Admin(io::Error),
    /// The SIGHUP handler could not be installed.
    Signal(io::Error),
    /// The server could not start.
    Server(ServeError),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::NoBackend => {
                write!(f, "no backend listed and no embedded origin to start")
            }
            LaunchError::Backends(e) | LaunchError::NotAllowed(e) => f.write_str(e),
            LaunchError::Full(e) => write!(f, "{e}"),
            LaunchError::Pool(e) => write!(f, "invalid upstream pool settings: {e}"),
            LaunchError::Origin { index, error } => {
                write!(f, "cannot start embedded origin {index}: {error}")
            }
            LaunchError::Admin(e) => write!(f, "{e}"),
            LaunchError::Signal(e) => write!(f, "cannot install the SIGHUP handler: {e}"),
            LaunchError::Server(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LaunchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LaunchError::Full(e) => Some(e),
            LaunchError::Pool(e) => Some(e),
            LaunchError::Origin { error: e, .. } | LaunchError::Admin(e) => Some(e),
            LaunchError::Signal(e) => Some(e),
            LaunchError::Server(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds the pool `launch.pool` names and starts the gateway with it (see the module example).
pub fn start<F, H>(
    launch: Launch,
    server: Server<F>,
    map: &ShardMap,
    runtime: &RuntimeOptions,
) -> Result<(RunningServer, GatewayHandle), LaunchError>
where
    F: Fn(ShardContext) -> H + Send + Sync + 'static,
    H: GreetHandler,
{
    let manager = UpstreamManager::new(launch.gateway.connector.clone(), map.len());
    let config = launch.pool_config(map);
    match launch.pool {
        PoolKind::Sharded => {
            let pool = ShardedPool::new(manager.clone(), config).map_err(LaunchError::Pool)?;
            run(launch, Some(pool), manager, server, map, runtime)
        }
        PoolKind::Mutex => {
            let pool = MutexPool::new(manager.clone(), config).map_err(LaunchError::Pool)?;
            run(launch, Some(pool), manager, server, map, runtime)
        }
        PoolKind::None => {
            run::<ShardedPool<UpstreamManager>, _, _>(launch, None, manager, server, map, runtime)
        }
    }
}

fn run<P, F, H>(
    launch: Launch,
    pool: Option<P>,
    manager: UpstreamManager,
    server: Server<F>,
    map: &ShardMap,
    runtime: &RuntimeOptions,
) -> Result<(RunningServer, GatewayHandle), LaunchError>
where
    P: ConnectionPool<UpstreamManager>,
    F: Fn(ShardContext) -> H + Send + Sync + 'static,
    H: GreetHandler,
{
    let gateway = Gateway::new(launch.gateway.clone(), pool, manager, map.len());
    // From here on, everything started is owned by `handle`, whose drop stops it, so an error
    // below leaves nothing running.
    let mut handle = GatewayHandle {
        reload: Arc::new(|| Ok((0, 0))),
        current: Arc::new({
            let g = gateway.clone();
            move || g.backends()
        }),
        close: Box::new({
            let g = gateway.clone();
            move || {
                if let Some(pool) = g.pool() {
                    pool.close();
                }
            }
        }),
        started_with: Vec::new(),
        embedded: Vec::new(),
        admin: None,
        health: None,
        sighup: None,
        origins: Vec::new(),
    };
    let mut backends = (launch.backends)().map_err(LaunchError::Backends)?;
    // Only the operator's backends are checked: embedded origins are started here, on loopback.
    check_allowed(launch.allow.as_ref(), &backends).map_err(LaunchError::NotAllowed)?;
    if launch.embedded_only || backends.is_empty() {
        if launch.embedded_origins == 0 {
            return Err(LaunchError::NoBackend);
        }
        for index in 0..launch.embedded_origins {
            let origin = Origin::start(OriginConfig {
                id: format!("embedded-{index}"),
                ..OriginConfig::default()
            })
            .map_err(|error| LaunchError::Origin { index, error })?;
            handle.embedded.push(origin.local_addr());
            handle.origins.push(origin);
        }
        backends.extend(handle.embedded.iter().copied());
    }
    for b in &backends {
        gateway.add_backend(*b).map_err(LaunchError::Full)?;
    }
    handle.started_with = backends;
    handle.reload = reloader(&launch, handle.embedded.clone(), gateway.clone());
    let server = gateway.install(server);
    // With an allow-list, the backend RPCs go through it (this replaces the hook `install` set).
    let server = match &launch.allow {
        Some(allow) => {
            server.backend_admin(Arc::new(AllowListed::new(gateway.clone(), allow.clone())))
        }
        None => server,
    };
    handle.health = gateway.start_health_checks();
    if let Some(addr) = launch.admin_listen {
        handle.admin = Some(
            AdminEndpoint::start_with(
                addr,
                gateway.clone(),
                launch.admin.clone(),
                launch.allow.clone(),
            )
            .map_err(LaunchError::Admin)?,
        );
    }
    if launch.reload_on_sighup {
        handle.watch_sighup()?;
    }
    let running = server.start(map, runtime).map_err(LaunchError::Server)?;
    Ok((running, handle))
}

/// The reload of a gateway: the list now, checked against the allow-list, plus the embedded
/// origins, becomes the backend set.
fn reloader<P: ConnectionPool<UpstreamManager>>(
    launch: &Launch,
    embedded: Vec<SocketAddr>,
    gateway: Gateway<P>,
) -> Reload {
    let (list, allow) = (Arc::clone(&launch.backends), launch.allow.clone());
    Arc::new(move || {
        let mut now = list()?;
        check_allowed(allow.as_ref(), &now)?;
        for e in &embedded {
            if !now.contains(e) {
                now.push(*e);
            }
        }
        gateway
            .set_backends(&now)
            .map_err(|full| format!("{} backends listed: {full}", now.len()))
    })
}

type Reload = Arc<dyn Fn() -> Result<(usize, usize), String> + Send + Sync>;

/// Every backend of `list` inside `allow` (when set), else an error naming the first outside.
fn check_allowed(allow: Option<&BackendAllow>, list: &[SocketAddr]) -> Result<(), String> {
    match allow {
        Some(allow) => list.iter().try_for_each(|a| allow.check(*a)),
        None => Ok(()),
    }
}

/// What a gateway keeps running beside its server. Drop it after the server has stopped: that
/// closes the pool, stops the SIGHUP watcher, the health checks, the admin endpoint and the
/// embedded origins.
///
/// ```
/// use shardpool::runtime::RuntimeOptions;
/// use shardpool::server::{Server, ServerConfig};
/// use shardpool::topology::{Placement, Topology};
/// use shardpool::upstream::launch::{self, Launch};
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// let runtime = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
/// // The list starts empty (one embedded origin answers), then names a backend.
/// let listed = Arc::new(Mutex::new(Vec::new()));
/// let read = Arc::clone(&listed);
/// let launch = Launch {
///     embedded_origins: 1,
///     ..Launch::new(Arc::new(move || Ok(read.lock().unwrap().clone())))
/// };
/// let (server, gateway) = launch::start(launch, Server::new(config), &map, &runtime).unwrap();
/// let origin = gateway.embedded_origins()[0];
/// listed.lock().unwrap().push("127.0.0.1:7001".parse().unwrap());
/// assert_eq!(gateway.reload(), Ok((1, 0)), "added the listed one, kept the origin");
/// assert_eq!(gateway.backends().len(), 2);
/// assert!(gateway.backends().contains(&origin));
/// server.shutdown(Duration::from_secs(5)).unwrap();
/// drop(gateway); // closes the pool and stops the origin
/// ```
pub struct GatewayHandle {
    reload: Reload,
    current: Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>,
    close: Box<dyn FnOnce() + Send>,
    started_with: Vec<SocketAddr>,
    embedded: Vec<SocketAddr>,
    admin: Option<AdminEndpoint>,
    health: Option<HealthChecker>,
    sighup: Option<signal_hook::iterator::Handle>,
    origins: Vec<RunningOrigin>,
}

impl fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("started_with", &self.started_with)
            .field("embedded", &self.embedded)
            .field("admin", &self.admin_addr())
            .field("watching_sighup", &self.sighup.is_some())
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// The backends the gateway started with (the list, then the embedded origins).
    pub fn backends_at_start(&self) -> &[SocketAddr] {
        &self.started_with
    }

    /// The backend set now.
    pub fn backends(&self) -> Vec<SocketAddr> {
        (self.current)()
    }

    /// The embedded origins' addresses (empty when backends were listed).
    pub fn embedded_origins(&self) -> &[SocketAddr] {
        &self.embedded
    }

    /// Where the upstream admin endpoint listens, if it was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminEndpoint::local_addr)
    }

    /// Reads the backend list again and makes it (plus the embedded origins) the backend set:
    /// `(added, removed)`. A list that cannot be read, names a backend outside the allow-list or
    /// is longer than `max_backends` changes nothing and says why.
    pub fn reload(&self) -> Result<(usize, usize), String> {
        (self.reload)()
    }

    /// Reloads on every SIGHUP from now on, until the handle is dropped.
    fn watch_sighup(&mut self) -> Result<(), LaunchError> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .map_err(LaunchError::Signal)?;
        let handle = signals.handle();
        let reload = Arc::clone(&self.reload);
        std::thread::Builder::new()
            .name("upstream-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    match reload() {
                        Ok((added, removed)) => {
                            tracing::info!(added, removed, "SIGHUP: backends reloaded")
                        }
                        Err(e) => tracing::error!("SIGHUP: keeping the current backends: {e}"),
                    }
                }
            })
            .map_err(LaunchError::Signal)?;
        self.sighup = Some(handle);
        Ok(())
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(h) = self.sighup.take() {
            h.close();
        }
        std::mem::replace(&mut self.close, Box::new(|| ()))();
        for o in self.origins.drain(..) {
            o.stop();
        }
    }
}
