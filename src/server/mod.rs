//! The thread-per-core gRPC server: hyper HTTP/2 (h2c) on glommio, one SO_REUSEPORT listener
//! per shard, unary gRPC calls ([`grpc`], with the one copy of the message framing,
//! [`crate::grpc_frame`]) and prost messages generated from `proto/` ([`proto`]).
//!
//! Services on the serving port: `helloworld.Greeter/SayHello`, `grpc.health.v1.Health/Check`,
//! `shardpool.v1.Admin/PoolMetrics` and gRPC server reflection ([`reflection`]: `grpcurl list`
//! and `describe` work without `.proto` files; [`ServerConfig::reflection`] turns it off). The admin listener (`admin_listen`) serves Prometheus
//! text over HTTP/1.1 (`/metrics`) and, over h2c on the same port, `shardpool.v1.Admin`
//! including `AddBackend`, `RemoveBackend` and `ListBackends`, which the serving port answers
//! PERMISSION_DENIED; [`AdminConfig`] sets its token and limits. The backend RPCs act through a
//! [`BackendAdmin`] hook given to [`Server::backend_admin`] (the gateway's), else answer
//! FAILED_PRECONDITION.
//!
//! # Hooks for embedders and for the gateway
//!
//! The server knows the pool only through its public API. Two hooks plug behaviour in:
//!
//! 1. **The greeting** comes from a per-shard [`GreetHandler`], built on each shard by the
//!    factory given to [`Server::greeter`]. Its future runs on the shard's own executor, so it
//!    may be `!Send` and may use shard-local state (a pool checkout with
//!    `ConnectionPool::get`, which uses this thread's shard). The default, [`DirectGreeter`],
//!    answers `"Hello, <name>!"` itself (`--upstream none`). A handler's `Err(Status)` is sent to
//!    the client as is (for example `UNAVAILABLE` when no upstream is reachable).
//! 2. **Pool metrics** come from a [`StatsSource`] given to [`Server::pool_stats`]: any closure
//!    returning [`crate::pool::Stats`]; [`pool_stats_source`] makes one from any
//!    `ConnectionPool`. It feeds both `shardpool.v1.Admin/PoolMetrics` and `/metrics`. Without
//!    one, PoolMetrics answers `FAILED_PRECONDITION` and `/metrics` has server metrics only.
//!
//! Health: [`Server::health`] returns the shared [`Health`] table; a gateway can mark
//! `helloworld.Greeter` NOT_SERVING when it has no healthy backend. Shutdown marks everything
//! NOT_SERVING. After [`RunningServer::shutdown`] returns, every shard has finished, so the
//! owner closes its pool (`pool.close()`) then.
//!
//! ```no_run
//! use shardpool::runtime::{RuntimeOptions, ShardContext};
//! use shardpool::server::{GreetHandler, Server, ServerConfig, Status};
//! use shardpool::topology::{Placement, Topology};
//! use std::time::Duration;
//!
//! struct Shouting(usize);
//! impl GreetHandler for Shouting {
//!     async fn say_hello(&self, name: String) -> Result<String, Status> {
//!         Ok(format!("HELLO, {} (from shard {})", name.to_uppercase(), self.0))
//!     }
//! }
//!
//! let map = Topology::detect().place(&Placement::AllCores, None).unwrap();
//! let server = Server::new(ServerConfig::default())
//!     .greeter(|ctx: ShardContext| Shouting(ctx.shard))
//!     .start(&map, &RuntimeOptions::default())
//!     .unwrap();
//! println!("listening on {}", server.local_addr());
//! server.shutdown(Duration::from_secs(5)).unwrap();
//! ```

pub mod conn;
pub mod grpc;
pub mod io;
pub mod limits;
pub mod reflection;
pub mod watch;
/// The messages the server speaks, one copy with the load generator's ([`crate::wire`]).
pub use crate::wire as proto;

mod access;
mod admin;

pub use access::{ADMIN_MAX_HEAD, AdminConfig, AdminToken, Denied};
pub use admin::BackendAdmin;
pub use grpc::{Code, Status};

use crate::pool::Stats;
use crate::runtime::{LocalEvent, RuntimeOptions, ShardContext, ShardHandles, Shutdown};
use crate::topology::ShardMap;
use conn::Verdict;
use crossbeam_utils::CachePadded;
use grpc::{GrpcBody, http_error, ok_response, read_unary, status_response};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prost::Message;
use proto::{
    HealthCheckRequest, HealthCheckResponse, HelloReply, HelloRequest, PoolMetricsRequest,
    PoolMetricsResponse, ServingStatus, ShardPoolMetrics,
};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

/// Produces the reply of `helloworld.Greeter/SayHello` on one shard.
///
/// One handler is built per shard (see [`Server::greeter`]); its future runs on that shard's
/// executor and need not be `Send`.
///
/// ```
/// use shardpool::server::{Code, GreetHandler, Status};
///
/// struct Polite;
/// impl GreetHandler for Polite {
///     async fn say_hello(&self, name: String) -> Result<String, Status> {
///         if name.is_empty() {
///             return Err(Status::new(Code::InvalidArgument, "name is empty"));
///         }
///         Ok(format!("Good day, {name}."))
///     }
/// }
/// let reply = futures_lite::future::block_on(Polite.say_hello("Ada".into())).unwrap();
/// assert_eq!(reply, "Good day, Ada.");
/// ```
pub trait GreetHandler: 'static {
    /// The greeting for `name`, or the status to answer with.
    fn say_hello(&self, name: String) -> impl Future<Output = Result<String, Status>>;
}

/// The default greeter: `"Hello, <name>!"`, computed on the shard (no upstream).
///
/// ```
/// # use shardpool::server::{DirectGreeter, GreetHandler};
/// let reply = futures_lite::future::block_on(DirectGreeter.say_hello("Bob".into()));
/// assert_eq!(reply.unwrap(), "Hello, Bob!");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectGreeter;

impl GreetHandler for DirectGreeter {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        let mut s = String::with_capacity(name.len() + 8);
        s.push_str("Hello, ");
        s.push_str(&name);
        s.push('!');
        Ok(s)
    }
}

/// A source of pool statistics for the metrics RPC and `/metrics`.
pub type StatsSource = Arc<dyn Fn() -> Stats + Send + Sync>;

/// The [`StatsSource`] of any [`ConnectionPool`](crate::pool::ConnectionPool).
///
/// ```
/// use shardpool::pool::{Config, Manage, ShardedPool};
/// use shardpool::server::pool_stats_source;
///
/// struct Sessions;
/// impl Manage for Sessions {
///     type Key = ();
///     type Conn = u64;
///     type Error = std::io::Error;
///     async fn create(&self, _key: &()) -> Result<u64, std::io::Error> { Ok(1) }
/// }
/// let pool = ShardedPool::new(Sessions, Config::default().shards(2)).unwrap();
/// let source = pool_stats_source(pool);
/// assert_eq!(source().shards.len(), 2);
/// ```
pub fn pool_stats_source<M, P>(pool: P) -> StatsSource
where
    M: crate::pool::Manage,
    P: crate::pool::ConnectionPool<M>,
{
    Arc::new(move || pool.stats())
}

/// Server knobs. Every field has a CLI flag, a `SHARDPOOL_*` environment variable and a TOML
/// key in `shardpool serve` (see docs/deployment.md); the defaults are below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// gRPC address (default `127.0.0.1:50051`). Port 0 picks a free port for all shards.
    pub listen: SocketAddr,
    /// Admin address (default `None`: off): HTTP/1.1 `/metrics` and h2c gRPC for the backend
    /// RPCs of `shardpool.v1.Admin`, which the serving port refuses.
    pub admin_listen: Option<SocketAddr>,
    /// Who may use the admin listener, and its limits (see [`AdminConfig`]).
    pub admin: AdminConfig,
    /// TCP_NODELAY on accepted connections (default true).
    pub tcp_nodelay: bool,
    /// TCP keepalive idle time (default 60 s; `None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// listen(2) backlog per shard (default 1024).
    pub listen_backlog: i32,
    /// Deliberately join `listen` (and `admin_listen`) when another shardpool process of the
    /// same user already listens there, e.g. for a zero-downtime restart; the kernel then splits
    /// connections between the processes (default false: binding a port in use fails).
    pub reuse_port_shared: bool,
    /// Deadline for calls that carry no `grpc-timeout` and cap for those that do (default 30 s;
    /// `None`: none).
    pub request_timeout: Option<Duration>,
    /// Calls served at once per connection; more wait (default 256; `None`: no limit beyond
    /// `max_concurrent_streams`). See [`ServerConfig::validate`] for how it must relate to
    /// `max_concurrent_streams` and the windows.
    pub concurrency_limit_per_connection: Option<usize>,
    /// HTTP/2 initial stream window, bytes (default 1 MiB).
    pub initial_stream_window: u32,
    /// HTTP/2 initial connection window, bytes (default 1 MiB).
    pub initial_connection_window: u32,
    /// HTTP/2 BDP-based adaptive flow control; overrides the windows (default false).
    pub adaptive_window: bool,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (default `None`: equal to
    /// `concurrency_limit_per_connection`, or [`MAX_STREAMS_WITHOUT_LIMIT`] when that is off;
    /// see [`ServerConfig::max_streams`]). Streams beyond it are refused by the protocol with
    /// REFUSED_STREAM, which clients retry.
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2 PING interval (default 60 s; `None`: no pings).
    pub http2_keepalive_interval: Option<Duration>,
    /// Close the connection when a PING is not acknowledged within this (default 20 s).
    pub http2_keepalive_timeout: Duration,
    /// The client preface and first SETTINGS must arrive within this of the accept, else the
    /// connection is dropped (default 10 s; `None`: no limit).
    pub handshake_timeout: Option<Duration>,
    /// A connection with no open stream and no new stream for this long gets a GOAWAY and is
    /// closed; keepalive PINGs do not count as activity (default 5 min; `None`: no limit).
    pub conn_idle_timeout: Option<Duration>,
    /// A connection with a response the peer opens no flow-control window for, or with a write
    /// the socket takes no byte of, for this long gets a GOAWAY and is dropped (default 30 s;
    /// `None`: no limit).
    pub send_stall_timeout: Option<Duration>,
    /// Largest request message accepted, bytes (default 4 MiB); larger → RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// Serve gRPC server reflection (`grpc.reflection.v1` and `v1alpha`) on the serving port
    /// (default true): it tells any client the schema of the services (the `.proto` files of
    /// `proto/`, public anyway) and nothing else. Off: those services answer UNIMPLEMENTED.
    /// See [`reflection`] for its bounds.
    pub reflection: bool,
    /// Open connections per shard (default 16384; `shardpool serve` derives it from the
    /// descriptor limit, see [`limits::connection_cap`]). At the cap the least useful
    /// connection is shed (still handshaking, then idle longest) before a new one is refused.
    pub max_connections_per_shard: usize,
    /// Longest back-off of the accept loop after accept errors such as EMFILE (default 1 s).
    pub accept_backoff_max: Duration,
    /// On shutdown, how long in-flight calls may take before they are answered UNAVAILABLE
    /// (default 10 s).
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: None,
            admin: AdminConfig::default(),
            tcp_nodelay: true,
            tcp_keepalive: Some(Duration::from_secs(60)),
            listen_backlog: 1024,
            reuse_port_shared: false,
            request_timeout: Some(Duration::from_secs(30)),
            concurrency_limit_per_connection: Some(256),
            initial_stream_window: 1 << 20,
            initial_connection_window: 1 << 20,
            adaptive_window: false,
            max_concurrent_streams: None,
            http2_keepalive_interval: Some(Duration::from_secs(60)),
            http2_keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Some(Duration::from_secs(10)),
            conn_idle_timeout: Some(Duration::from_secs(300)),
            send_stall_timeout: Some(Duration::from_secs(30)),
            max_message_size: 4 << 20,
            reflection: true,
            max_connections_per_shard: 16384,
            accept_backoff_max: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// SETTINGS_MAX_CONCURRENT_STREAMS when neither `max_concurrent_streams` nor
/// `concurrency_limit_per_connection` is set.
pub const MAX_STREAMS_WITHOUT_LIMIT: u32 = 1000;

impl ServerConfig {
    /// The SETTINGS_MAX_CONCURRENT_STREAMS this server advertises: `max_concurrent_streams`,
    /// else the concurrency limit, else [`MAX_STREAMS_WITHOUT_LIMIT`].
    ///
    /// ```
    /// # use shardpool::server::ServerConfig;
    /// assert_eq!(ServerConfig::default().max_streams(), 256);
    /// let c = ServerConfig { concurrency_limit_per_connection: Some(64), ..ServerConfig::default() };
    /// assert_eq!(c.max_streams(), 64);
    /// ```
    pub fn max_streams(&self) -> u32 {
        self.max_concurrent_streams.unwrap_or_else(|| {
            self.concurrency_limit_per_connection
                .map_or(MAX_STREAMS_WITHOUT_LIMIT, |n| {
                    u32::try_from(n).unwrap_or(u32::MAX)
                })
        })
    }

    /// The watchdog's limits for each connection.
    fn conn_limits(&self) -> watch::Limits {
        watch::Limits {
            handshake: self.handshake_timeout,
            idle: self.conn_idle_timeout,
            send_stall: self.send_stall_timeout,
        }
    }

    /// Checks the limits hyper/h2 and the kernel impose, and refuses combinations that can
    /// deadlock; the error names the field.
    ///
    /// # Streams, the concurrency limit and flow control
    ///
    /// A call beyond `concurrency_limit_per_connection` waits for a slot before its body is
    /// read, but the DATA the client sends for it still arrives and is buffered, and it holds
    /// connection flow-control window until it is read. Up to `max_streams() - limit` calls can
    /// wait, each holding up to `initial_stream_window` bytes. If together they can hold the
    /// whole `initial_connection_window`, the client cannot send the rest of the admitted calls'
    /// bodies, the admitted calls never finish, and no slot frees: a deadlock, ended only by the
    /// calls' deadlines. So a configuration is refused when
    ///
    /// `(max_streams() - limit) * initial_stream_window >= initial_connection_window`,
    ///
    /// and, with `adaptive_window` (which grows the stream and connection windows together, so
    /// one waiting stream can hold the whole connection window), whenever `max_streams()`
    /// exceeds the limit. Any leftover window keeps the admitted calls moving: their bodies are
    /// read, and their window released, as they arrive. With no limit, or `max_streams()` at
    /// most the limit (the default: equal), no call ever waits.
    ///
    /// ```
    /// # use shardpool::server::ServerConfig;
    /// assert!(ServerConfig::default().validate().is_ok());
    /// let bad = ServerConfig { initial_stream_window: u32::MAX, ..ServerConfig::default() };
    /// assert!(bad.validate().unwrap_err().contains("initial_stream_window"));
    /// // 1000 streams, 256 served at once, 1 MiB windows: 744 waiting calls could hold the window.
    /// let deadlock = ServerConfig { max_concurrent_streams: Some(1000), ..ServerConfig::default() };
    /// assert!(deadlock.validate().unwrap_err().contains("deadlock"));
    /// // Small stream windows leave room: 744 * 1 KiB < 1 MiB.
    /// let ok = ServerConfig { initial_stream_window: 1024, ..deadlock };
    /// assert!(ok.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        for (name, w) in [
            ("initial_stream_window", self.initial_stream_window),
            ("initial_connection_window", self.initial_connection_window),
        ] {
            if w > MAX_WINDOW {
                return Err(format!(
                    "{name} is {w} bytes; HTTP/2 allows at most {MAX_WINDOW}"
                ));
            }
        }
        if self.max_concurrent_streams == Some(0) {
            return Err("max_concurrent_streams must be at least 1".into());
        }
        if self.max_connections_per_shard == 0 {
            return Err("max_connections_per_shard must be at least 1".into());
        }
        if self.concurrency_limit_per_connection == Some(0) {
            return Err(
                "concurrency_limit_per_connection must be at least 1 (or none for no limit)".into(),
            );
        }
        if self.accept_backoff_max.is_zero() {
            return Err("accept_backoff_max must be more than 0".into());
        }
        if self.listen_backlog < 1 {
            return Err("listen_backlog must be at least 1".into());
        }
        if let Some(a) = self.admin_listen {
            self.admin.check("admin_listen", a)?;
        }
        for (name, t) in [
            ("handshake_timeout", self.handshake_timeout),
            ("conn_idle_timeout", self.conn_idle_timeout),
            ("send_stall_timeout", self.send_stall_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            (
                "http2_keepalive_timeout",
                Some(self.http2_keepalive_timeout),
            ),
        ] {
            if t == Some(Duration::ZERO) {
                return Err(format!("{name} must be longer than zero (or off)"));
            }
        }
        self.check_streams_cannot_deadlock()
    }

    /// The rule of [`ServerConfig::validate`]'s "Streams, the concurrency limit and flow
    /// control".
    fn check_streams_cannot_deadlock(&self) -> Result<(), String> {
        let Some(limit) = self.concurrency_limit_per_connection else {
            return Ok(());
        };
        let streams = u64::from(self.max_streams());
        let waiting = streams.saturating_sub(limit as u64);
        if waiting == 0 {
            return Ok(());
        }
        let fix = format!(
            "set max_concurrent_streams to at most {limit} (or leave it unset: it then equals \
             the limit), raise concurrency_limit_per_connection, or turn it off"
        );
        if self.adaptive_window {
            return Err(format!(
                "max_concurrent_streams ({streams}) above concurrency_limit_per_connection \
                 ({limit}) can deadlock with adaptive_window: one waiting call's unread body can \
                 hold the whole connection window; {fix}"
            ));
        }
        let held = waiting.saturating_mul(u64::from(self.initial_stream_window));
        if held >= u64::from(self.initial_connection_window) {
            return Err(format!(
                "max_concurrent_streams ({streams}) above concurrency_limit_per_connection \
                 ({limit}) can deadlock: {waiting} waiting calls times initial_stream_window \
                 ({} bytes) can hold all of initial_connection_window ({} bytes), so admitted \
                 calls never get their bodies; {fix}, or make {waiting} * initial_stream_window \
                 smaller than initial_connection_window",
                self.initial_stream_window, self.initial_connection_window
            ));
        }
        Ok(())
    }

    /// The options of this server's listeners and of the connections they accept.
    fn socket_options(&self) -> io::SocketOptions {
        io::SocketOptions {
            nodelay: self.tcp_nodelay,
            keepalive: self.tcp_keepalive,
            backlog: self.listen_backlog,
            reuse_port_shared: self.reuse_port_shared,
        }
    }
}

/// Service names this server implements (as used by the health service).
pub const SERVICES: [&str; 3] = [
    "helloworld.Greeter",
    "grpc.health.v1.Health",
    "shardpool.v1.Admin",
];

/// The health table behind `grpc.health.v1.Health/Check`, shared by all shards.
///
/// ```
/// # use shardpool::server::Health;
/// # use shardpool::server::proto::ServingStatus;
/// let h = Health::new();
/// assert_eq!(h.check("helloworld.Greeter"), Some(ServingStatus::Serving));
/// h.set_serving("helloworld.Greeter", false);
/// assert_eq!(h.check("helloworld.Greeter"), Some(ServingStatus::NotServing));
/// assert_eq!(h.check(""), Some(ServingStatus::Serving));
/// assert_eq!(h.check("no.such.Service"), None);
/// ```
#[derive(Clone, Debug)]
pub struct Health {
    table: Arc<RwLock<BTreeMap<String, ServingStatus>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Every service of [`SERVICES`], and the server as a whole (`""`), SERVING.
    pub fn new() -> Health {
        let table = std::iter::once("")
            .chain(SERVICES)
            .map(|s| (s.to_string(), ServingStatus::Serving))
            .collect();
        Health {
            table: Arc::new(RwLock::new(table)),
        }
    }

    /// Sets one service (or `""`, the whole server) SERVING or NOT_SERVING; an unknown name is
    /// added.
    pub fn set_serving(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(service.to_string(), status);
    }

    /// Marks every service NOT_SERVING (shutdown).
    pub fn set_all_not_serving(&self) {
        for status in self
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .values_mut()
        {
            *status = ServingStatus::NotServing;
        }
    }

    /// The status of a service, `None` if unknown.
    pub fn check(&self, service: &str) -> Option<ServingStatus> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .copied()
    }
}

/// Per-shard server counters, readable from any thread (for `/metrics`).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections closed at once because the shard was at `max_connections_per_shard` with
    /// nothing to shed, or accepted only to be closed because descriptors ran out.
    pub connections_rejected: AtomicU64,
    /// Connections closed to make room at `max_connections_per_shard` (still handshaking, or
    /// idle longest).
    pub connections_shed: AtomicU64,
    /// Failed accepts (EMFILE, ENFILE, ...).
    pub accept_errors: AtomicU64,
    /// Connections closed because preface and SETTINGS did not arrive within
    /// `handshake_timeout`.
    pub closed_handshake_timeout: AtomicU64,
    /// Connections closed after `conn_idle_timeout` without a stream.
    pub closed_idle: AtomicU64,
    /// Connections closed because a response or a write made no progress for
    /// `send_stall_timeout`.
    pub closed_send_stall: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Calls answered, by gRPC status code.
    pub calls_by_code: [AtomicU64; 17],
    /// Calls answered UNAVAILABLE because the shutdown grace ran out.
    pub calls_abandoned: AtomicU64,
}

impl ServerCounters {
    fn bump(counter: &AtomicU64) {
        // Ordering: Relaxed, a statistic; readers want eventual values, nothing is published.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_one(counter: &AtomicU64) {
        // Ordering: Relaxed, as in `bump`.
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        // Ordering: Relaxed, as in `bump`.
        counter.load(Ordering::Relaxed)
    }
}

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

type DirectFactory = fn(ShardContext) -> DirectGreeter;

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
    /// The configuration is invalid (the message says which field and why).
    Config(String),
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

impl std::error::Error for ServeError {}

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

fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
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

/// State shared by all shards (thread-safe).
struct Shared {
    cfg: Arc<ServerConfig>,
    stats: Option<StatsSource>,
    backends: Option<Arc<dyn BackendAdmin>>,
    health: Health,
    after_storm: Option<StormHook>,
    counters: Arc<Vec<CachePadded<ServerCounters>>>,
    map: ShardMap,
    shutdown: Shutdown,
}

/// One shard's state (shard-local).
struct Shard<H> {
    shared: Arc<Shared>,
    ctx: ShardContext,
    greeter: H,
    h2: hyper::server::conn::http2::Builder<io::LocalExec>,
    /// Set when the drain phase starts / the grace period ends.
    drain: LocalEvent,
    abort: LocalEvent,
    /// Open connections and the event set when they reach zero while draining.
    open: Cell<usize>,
    all_closed: LocalEvent,
    /// The connections under `max_connections_per_shard`, for shedding.
    conns: Rc<limits::ConnTracker>,
}

impl<H> Shard<H> {
    fn counters(&self) -> &ServerCounters {
        &self.shared.counters[self.ctx.shard]
    }
}

async fn run_shard<H: GreetHandler>(
    shared: Arc<Shared>,
    ctx: ShardContext,
    greeter: H,
    listener: Option<socket2::Socket>,
    admin: Option<socket2::Socket>,
) -> ShardReport {
    let cfg = Arc::clone(&shared.cfg);
    let mut h2 = hyper::server::conn::http2::Builder::new(io::LocalExec);
    // Keep-alive reads the timer's clock per frame: the coarse one, unless adaptive flow control
    // needs precise round-trip times.
    let timer = if cfg.adaptive_window {
        io::HyperTimer::PRECISE
    } else {
        io::HyperTimer::COARSE
    };
    h2.timer(timer)
        .initial_stream_window_size(cfg.initial_stream_window)
        .initial_connection_window_size(cfg.initial_connection_window)
        .adaptive_window(cfg.adaptive_window)
        .max_concurrent_streams(cfg.max_streams())
        .keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.http2_keepalive_timeout)
        // gRPC has no use for a Date header; encoding one costs on every response.
        .auto_date_header(false);
    let shard = Rc::new(Shard {
        shared: Arc::clone(&shared),
        ctx,
        greeter,
        h2,
        drain: LocalEvent::new(),
        abort: LocalEvent::new(),
        open: Cell::new(0),
        all_closed: LocalEvent::new(),
        conns: Rc::new(limits::ConnTracker::new(cfg.max_connections_per_shard)),
    });
    // Mirror the process-wide switch into cheap shard-local events.
    {
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            shard.shared.shutdown.drained().await;
            shard.shared.health.set_all_not_serving();
            shard.drain.set();
            shard.shared.shutdown.aborted().await;
            shard.abort.set();
        })
        .detach();
    }
    let opts = cfg.socket_options();
    let admin_task = admin.map(|sock| {
        let listener = io::into_glommio_listener(sock);
        glommio::spawn_local(admin::serve(Rc::clone(&shard), listener))
    });
    if let Some(sock) = listener {
        tracing::info!(
            shard = ctx.shard,
            cpu = ctx.cpu,
            numa_node = ctx.node,
            "shard {} serving gRPC on cpu {} (NUMA node {})",
            ctx.shard,
            ctx.cpu,
            ctx.node
        );
        let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
        accept_loop(&shard, io::into_glommio_listener(sock), raw, &opts).await;
    }
    if let Some(t) = admin_task {
        t.await;
    }
    // The listener is closed: wait for open connections to finish (bounded by the abort phase).
    if shard.open.get() > 0 {
        shard.all_closed.wait().await;
    }
    let c = shard.counters();
    let calls = c.calls_by_code.iter().map(ServerCounters::get).sum();
    let report = ShardReport {
        shard: ctx.shard,
        connections: ServerCounters::get(&c.connections_accepted),
        calls,
        calls_abandoned: ServerCounters::get(&c.calls_abandoned),
    };
    tracing::info!(
        shard = ctx.shard,
        connections = report.connections,
        calls = report.calls,
        abandoned = report.calls_abandoned,
        "shard {} stopped",
        ctx.shard
    );
    report
}

async fn accept_loop<H: GreetHandler>(
    shard: &Rc<Shard<H>>,
    listener: glommio::net::TcpListener,
    raw_listener: std::os::fd::RawFd,
    opts: &io::SocketOptions,
) {
    let mut backoff = limits::AcceptBackoff::new(shard.shared.cfg.accept_backoff_max);
    let mut spare = limits::SpareFd::new();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain.wait().await;
            None
        })
        .await;
        let counters = shard.counters();
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => {
                backoff.succeeded();
                s
            }
            Some(Err(e)) => {
                ServerCounters::bump(&counters.accept_errors);
                let e = std::io::Error::from(e);
                // Out of descriptors: shed idle connections to make room, as at the cap; with
                // none to shed, give up the spare descriptor to reset the clients waiting in
                // the backlog rather than leave them hanging.
                let (mut shedding, mut closed) = (0, 0);
                if limits::out_of_descriptors(&e) {
                    let shed_before = shard.conns.shed_total();
                    shedding = shard.conns.make_room();
                    for _ in shed_before..shard.conns.shed_total() {
                        ServerCounters::bump(&counters.connections_shed);
                    }
                    if shedding == 0 {
                        closed = spare.drain_backlog(raw_listener);
                    }
                }
                for _ in 0..closed {
                    ServerCounters::bump(&counters.connections_rejected);
                }
                let (wait, log) = backoff.failed(std::time::Instant::now());
                if let Some(suppressed) = log {
                    tracing::warn!(
                        shard = shard.ctx.shard,
                        error = %e,
                        suppressed,
                        shedding,
                        reset = closed,
                        "accept failed; backing off up to {:?} (errors not logged since the last line: {suppressed})",
                        shard.shared.cfg.accept_backoff_max
                    );
                }
                futures_lite::future::or(glommio::timer::sleep(wait), async {
                    shard.drain.wait().await;
                })
                .await;
                continue;
            }
        };
        let shed_before = shard.conns.shed_total();
        let mut admission = shard.conns.admit();
        // Shed connections free their place when their tasks run; an accept loop fed by a full
        // backlog never yields by itself, so give them the executor (a bounded number of times).
        for _ in 0..SHED_YIELDS {
            if !matches!(admission, limits::Admission::Refused) || shard.conns.shedding() == 0 {
                break;
            }
            futures_lite::future::yield_now().await;
            admission = shard.conns.admit();
        }
        let slot = match admission {
            limits::Admission::Admitted(slot) => slot,
            limits::Admission::Refused => {
                ServerCounters::bump(&counters.connections_rejected);
                tracing::debug!(
                    shard = shard.ctx.shard,
                    "connection limit reached with nothing to shed; closing new connection"
                );
                continue;
            }
        };
        for _ in shed_before..shard.conns.shed_total() {
            ServerCounters::bump(&counters.connections_shed);
        }
        if let Err(e) = io::tune_accepted(&stream, opts) {
            tracing::debug!(error = %e, "setting socket options failed; closing connection");
            continue;
        }
        ServerCounters::bump(&counters.connections_accepted);
        ServerCounters::bump(&counters.connections_open);
        shard.open.set(shard.open.get() + 1);
        glommio::spawn_local(serve_connection(Rc::clone(shard), stream, slot)).detach();
        // A backlog of pending connections keeps accept ready: let the connections run.
        glommio::yield_if_needed().await;
    }
    drop(listener);
    tracing::debug!(shard = shard.ctx.shard, "listener closed");
}

/// How many times the accept loop yields to let shed connections close before it refuses a
/// new one.
const SHED_YIELDS: usize = 16;

/// How long a shed connection that finished its handshake may take to close after GOAWAY.
const SHED_GRACE: Duration = Duration::from_secs(1);

/// How long connections may still flush after the grace period before they are dropped.
const FLUSH_AFTER_ABORT: Duration = Duration::from_secs(1);

async fn serve_connection<H: GreetHandler>(
    shard: Rc<Shard<H>>,
    stream: glommio::net::TcpStream,
    slot: limits::ConnSlot,
) {
    let activity = Rc::clone(slot.activity());
    let svc = ConnService {
        shard: Rc::clone(&shard),
        limit: shard
            .shared
            .cfg
            .concurrency_limit_per_connection
            .map(|n| Rc::new(glommio::sync::Semaphore::new(n as u64))),
        activity: Rc::clone(&activity),
    };
    let io = io::GlommioIo::watched(stream, Rc::clone(&activity));
    // Boxed (once per connection) so it can be dropped, freeing its buffers, before the
    // storm check below may purge the allocator.
    let mut conn = Box::pin(shard.h2.serve_connection(io, svc));
    // The watchdog records its verdict in the activity, as the tracker does when it sheds the
    // connection; `Until` looks at it before each poll of hyper's connection. Dropping the task
    // (when this function returns) cancels it.
    let _watchdog = glommio::spawn_local(watch::watch(
        Rc::clone(&activity),
        shard.shared.cfg.conn_limits(),
        shard.drain.clone(),
    ));
    let result = match conn::Until::new(&activity, conn.as_mut()).await {
        Ok(r) => r,
        Err(verdict) => {
            let counters = shard.counters();
            match verdict {
                Verdict::Handshake => ServerCounters::bump(&counters.closed_handshake_timeout),
                Verdict::Idle => ServerCounters::bump(&counters.closed_idle),
                Verdict::SendStall => ServerCounters::bump(&counters.closed_send_stall),
                Verdict::Shed | Verdict::Drain => {}
            }
            match verdict {
                // Still handshaking when a time limit passed or the tracker shed it: just drop
                // it.
                Verdict::Handshake => Ok(()),
                Verdict::Shed if !activity.handshaken() => Ok(()),
                // Idle or stalled past its limit, or shed at the cap: GOAWAY, then a moment to
                // write it (a stalled peer will not read it). Returning drops the connection: the
                // socket closes and every stream left goes with it.
                Verdict::Idle | Verdict::SendStall | Verdict::Shed => {
                    let grace = if verdict == Verdict::Shed {
                        SHED_GRACE
                    } else {
                        tracing::debug!(
                            shard = shard.ctx.shard,
                            ?verdict,
                            "closing connection: time limit passed"
                        );
                        watch::CLOSE_GRACE
                    };
                    conn.as_mut().graceful_shutdown();
                    futures_lite::future::or(conn.as_mut(), async {
                        glommio::timer::sleep(grace).await;
                        Ok(())
                    })
                    .await
                }
                Verdict::Drain => {
                    // Drain: GOAWAY, then let accepted streams finish. After the grace period
                    // the calls answer UNAVAILABLE (see `ConnService`), which needs a moment to
                    // be written.
                    conn.as_mut().graceful_shutdown();
                    futures_lite::future::or(conn.as_mut(), async {
                        shard.abort.wait().await;
                        glommio::timer::sleep(FLUSH_AFTER_ABORT).await;
                        Ok(())
                    })
                    .await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(shard = shard.ctx.shard, error = ?e, "connection ended with an error");
    }
    ServerCounters::drop_one(&shard.counters().connections_open);
    drop(conn);
    drop(slot);
    if let Some(hook) = &shard.shared.after_storm
        && shard.conns.storm_ended()
    {
        tracing::debug!(
            shard = shard.ctx.shard,
            "connection storm over; releasing memory"
        );
        hook();
    }
    let open = shard.open.get() - 1;
    shard.open.set(open);
    if open == 0 && shard.drain.is_set() {
        shard.all_closed.set();
    }
}

/// The hyper service of one connection.
struct ConnService<H> {
    shard: Rc<Shard<H>>,
    /// Per-connection concurrency limit.
    limit: Option<Rc<glommio::sync::Semaphore>>,
    /// Open streams and waiting responses, for the connection's watchdog and its shard's
    /// tracker (a connection with streams open is never shed).
    activity: Rc<conn::Activity>,
}

/// A response body that keeps its stream counted as open in the connection's activity.
type ConnBody = conn::Tracked<GrpcBody>;

impl<H: GreetHandler> hyper::service::Service<Request<Incoming>> for ConnService<H> {
    type Response = Response<ConnBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ConnBody>, Infallible>>>>;

    /// The head is checked here, before anything is boxed, so the boxed future holds only the
    /// body and the call: it stays under 1 KiB, mimalloc's small-object limit, above which every
    /// allocation takes its slower generic path (callgrind: this allocation cost 390
    /// instructions when the box held the whole request, 144 now).
    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let stream = self.activity.stream_opened();
        match check_head(&self.shard.shared.cfg, &req) {
            Err(refusal) => {
                let (code, resp) = refusal.into_response();
                ServerCounters::bump(&self.shard.counters().calls_by_code[code as usize]);
                Box::pin(std::future::ready(Ok(
                    resp.map(|b| conn::Tracked::new(b, stream))
                )))
            }
            Ok((method, deadline)) => {
                let shard = Rc::clone(&self.shard);
                let limit = self.limit.clone();
                let body = req.into_body();
                Box::pin(async move {
                    let resp = handle(&shard, limit, method, deadline, body).await;
                    Ok(resp.map(|b| conn::Tracked::new(b, stream)))
                })
            }
        }
    }
}

/// The methods this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    SayHello,
    HealthCheck,
    PoolMetrics,
    Backends(admin::BackendRpc),
    /// `ServerReflectionInfo` of either reflection service.
    Reflection,
}

/// The methods of each service in [`SERVICES`], then of the reflection services. The Greeter
/// comes first: [`route`] tries them in order.
const METHODS: [(&str, &[(&str, Method)]); SERVICES.len() + reflection::SERVICES.len()] = [
    (SERVICES[0], &[("SayHello", Method::SayHello)]),
    (SERVICES[1], &[("Check", Method::HealthCheck)]),
    (
        SERVICES[2],
        &[
            ("PoolMetrics", Method::PoolMetrics),
            ("AddBackend", Method::Backends(admin::BackendRpc::Add)),
            ("RemoveBackend", Method::Backends(admin::BackendRpc::Remove)),
            ("ListBackends", Method::Backends(admin::BackendRpc::List)),
        ],
    ),
    (
        reflection::SERVICES[0],
        &[("ServerReflectionInfo", Method::Reflection)],
    ),
    (
        reflection::SERVICES[1],
        &[("ServerReflectionInfo", Method::Reflection)],
    ),
];

/// Maps `/service/method` to a [`Method`], or the UNIMPLEMENTED status naming what is unknown.
///
/// This runs on every call, so a known path is matched with prefix comparisons only; the
/// search for the `/` that splits an unknown path happens on the error path.
fn route(path: &str) -> Result<Method, Status> {
    let malformed = || Status::new(Code::Unimplemented, format!("malformed gRPC path `{path}`"));
    let rest = path.strip_prefix('/').ok_or_else(malformed)?;
    for (service, methods) in METHODS {
        if let Some(method) = rest.strip_prefix(service).and_then(|m| m.strip_prefix('/')) {
            return methods
                .iter()
                .find(|(n, _)| *n == method)
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    Status::new(
                        Code::Unimplemented,
                        format!("unknown method {method} for service {service}"),
                    )
                });
        }
    }
    match rest.split_once('/') {
        Some((service, _)) => Err(Status::new(
            Code::Unimplemented,
            format!("unknown service {service}"),
        )),
        None => Err(malformed()),
    }
}

/// A request refused from its head alone: a plain HTTP error or a gRPC status.
enum Refusal {
    Http(StatusCode, Status),
    Grpc(Status),
}

impl Refusal {
    fn into_response(self) -> (Code, Response<GrpcBody>) {
        match self {
            Refusal::Http(code, status) => (status.code(), http_error(code, &status)),
            Refusal::Grpc(status) => (status.code(), status_response(&status)),
        }
    }
}

/// Checks the request head; returns the method and the call's deadline, or why it is refused.
fn check_head(
    cfg: &ServerConfig,
    req: &Request<Incoming>,
) -> Result<(Method, Option<Duration>), Refusal> {
    if req.method() != http::Method::POST {
        return Err(Refusal::Http(
            StatusCode::METHOD_NOT_ALLOWED,
            Status::new(
                Code::Internal,
                format!("gRPC needs POST, got {}", req.method()),
            ),
        ));
    }
    // One pass over the few request headers instead of three hashed look-ups (this runs on
    // every call); the first value of a repeated header counts, as with `HeaderMap::get`.
    let (mut ct, mut enc, mut timeout) = (None, None, None);
    for (name, value) in req.headers() {
        let slot = if *name == http::header::CONTENT_TYPE {
            &mut ct
        } else if *name == grpc::GRPC_ENCODING {
            &mut enc
        } else if *name == grpc::GRPC_TIMEOUT {
            &mut timeout
        } else {
            continue;
        };
        slot.get_or_insert(value.as_bytes());
    }
    let is_grpc = ct.is_some_and(|ct| {
        ct.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    });
    if !is_grpc {
        let got = ct.map_or("none".into(), |c| String::from_utf8_lossy(c).into_owned());
        return Err(Refusal::Http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::new(
                Code::Internal,
                format!("content-type must be application/grpc, got {got}"),
            ),
        ));
    }
    let method = route(req.uri().path()).map_err(Refusal::Grpc)?;
    if let Some(enc) = enc
        && enc != b"identity"
    {
        return Err(Refusal::Grpc(Status::new(
            Code::Unimplemented,
            format!(
                "grpc-encoding {} is not supported; this server accepts identity only",
                String::from_utf8_lossy(enc)
            ),
        )));
    }
    let timeout = match timeout {
        Some(v) => Some(grpc::parse_timeout(v).map_err(Refusal::Grpc)?),
        None => None,
    };
    let deadline = match (timeout, cfg.request_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((method, deadline))
}

/// Runs an accepted call under its deadline and the shard's abort, and counts its outcome.
async fn handle<H: GreetHandler>(
    shard: &Shard<H>,
    limit: Option<Rc<glommio::sync::Semaphore>>,
    method: Method,
    deadline: Option<Duration>,
    body: Incoming,
) -> Response<GrpcBody> {
    if matches!(method, Method::Reflection) {
        let (code, resp) = match open_reflection(&shard.shared.cfg, deadline, body) {
            Ok(resp) => (Code::Ok, resp),
            Err(status) => (status.code(), status_response(&status)),
        };
        ServerCounters::bump(&shard.counters().calls_by_code[code as usize]);
        return resp;
    }
    let work = async {
        // A closed semaphore cannot happen (nobody closes it); map it anyway.
        let _permit = match &limit {
            Some(sem) => Some(sem.acquire_permit(1).await.map_err(|e| {
                Status::new(Code::Unavailable, format!("connection is closing: {e}"))
            })?),
            None => None,
        };
        call(shard, method, body).await
    };
    let deadline = async {
        match deadline {
            Some(d) => glommio::timer::sleep(d).await,
            None => std::future::pending().await,
        }
        Err(Status::new(
            Code::DeadlineExceeded,
            "deadline exceeded before the call finished",
        ))
    };
    let abort = async {
        shard.abort.wait().await;
        ServerCounters::bump(&shard.counters().calls_abandoned);
        Err(Status::new(
            Code::Unavailable,
            "server is shutting down and the grace period ended before this call finished",
        ))
    };
    // Pinned in place (no moves of the large call future) and polled in order: a call that
    // completes at once never creates a timer or registers for the abort event.
    let (mut work, mut deadline, mut abort) = (pin!(work), pin!(deadline), pin!(abort));
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = work.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Poll::Ready(r) = deadline.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        abort.as_mut().poll(cx)
    });
    let (code, resp) = match first.await {
        Ok(resp) => (Code::Ok, resp),
        Err(status) => (status.code(), status_response(&status)),
    };
    ServerCounters::bump(&shard.counters().calls_by_code[code as usize]);
    resp
}

/// Opens a reflection stream (counted as one call, OK when it opens): its answers are sent as
/// its requests arrive (see [`reflection`]), for at most the call's deadline or
/// [`reflection::STREAM_LIMIT`].
fn open_reflection(
    cfg: &ServerConfig,
    deadline: Option<Duration>,
    body: Incoming,
) -> Result<Response<GrpcBody>, Status> {
    if !cfg.reflection {
        return Err(Status::new(
            Code::Unimplemented,
            "server reflection is turned off on this server (serve --reflection off)",
        ));
    }
    let limit = deadline.map_or(reflection::STREAM_LIMIT, |d| {
        d.min(reflection::STREAM_LIMIT)
    });
    let stream = reflection::ReflectionStream::new(
        body,
        cfg.max_message_size,
        Box::pin(glommio::timer::sleep(limit)),
    );
    Ok(grpc::streaming_response(stream))
}

fn decode<M: Message + Default>(bytes: bytes::Bytes, what: &str) -> Result<M, Status> {
    M::decode(bytes)
        .map_err(|e| Status::new(Code::InvalidArgument, format!("cannot decode {what}: {e}")))
}

async fn call<H: GreetHandler>(
    shard: &Shard<H>,
    method: Method,
    body: Incoming,
) -> Result<Response<GrpcBody>, Status> {
    let msg = read_unary(body, shard.shared.cfg.max_message_size).await?;
    match method {
        Method::SayHello => {
            let req: HelloRequest = decode(msg, "helloworld.HelloRequest")?;
            let message = shard.greeter.say_hello(req.name).await?;
            Ok(ok_response(&HelloReply { message }))
        }
        Method::HealthCheck => {
            let req: HealthCheckRequest = decode(msg, "grpc.health.v1.HealthCheckRequest")?;
            match shard.shared.health.check(&req.service) {
                Some(status) => Ok(ok_response(&HealthCheckResponse {
                    status: status as i32,
                })),
                None => Err(Status::new(
                    Code::NotFound,
                    format!("unknown service `{}`", req.service),
                )),
            }
        }
        Method::PoolMetrics => {
            let _req: PoolMetricsRequest = decode(msg, "shardpool.v1.PoolMetricsRequest")?;
            let Some(source) = &shard.shared.stats else {
                return Err(Status::new(
                    Code::FailedPrecondition,
                    "no connection pool is attached to this server (serve --upstream none)",
                ));
            };
            Ok(ok_response(&pool_metrics(&source(), &shard.shared.map)))
        }
        // The serving port never changes or reveals the backends: those RPCs are served on the
        // admin listener only (admin::serve).
        Method::Backends(rpc) => Err(admin::refused_on_serving_port(rpc)),
        // A stream, opened by `handle` (or refused by the admin listener) before any request
        // is read; never a unary call.
        Method::Reflection => Err(Status::new(
            Code::Internal,
            "ServerReflectionInfo reached the unary path",
        )),
    }
}

/// Builds the PoolMetrics reply: every pool shard (with its CPU and node when the pool has one
/// shard per server shard) and the total.
fn pool_metrics(stats: &Stats, map: &ShardMap) -> PoolMetricsResponse {
    let shards = stats
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut m = ShardPoolMetrics::from_stats(i as u32, s);
            if let Some(p) = map.places().get(i) {
                m.cpu = Some(p.cpu as u32);
                m.numa_node = Some(p.node as u32);
            }
            m
        })
        .collect();
    PoolMetricsResponse {
        shards,
        total: Some(ShardPoolMetrics::from_stats(
            stats.shards.len() as u32,
            &stats.total,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_known_methods_and_names_unknown_ones() {
        assert_eq!(route("/helloworld.Greeter/SayHello"), Ok(Method::SayHello));
        assert_eq!(
            route("/grpc.health.v1.Health/Check"),
            Ok(Method::HealthCheck)
        );
        assert_eq!(
            route("/shardpool.v1.Admin/PoolMetrics"),
            Ok(Method::PoolMetrics)
        );
        let e = route("/helloworld.Greeter/SayGoodbye").unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("SayGoodbye"), "{e}");
        let e = route("/grpc.health.v1.Health/Watch").unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        let e = route("/nope.Svc/X").unwrap_err();
        assert!(e.message().contains("unknown service nope.Svc"), "{e}");
        assert_eq!(route("nothing").unwrap_err().code(), Code::Unimplemented);
        // Prefix matching: a service name that only starts like a known one is unknown, and a
        // path that names no method is malformed.
        let e = route("/helloworld.GreeterX/SayHello").unwrap_err();
        assert!(
            e.message().contains("unknown service helloworld.GreeterX"),
            "{e}"
        );
        let e = route("/helloworld.Greeter").unwrap_err();
        assert!(e.message().contains("malformed gRPC path"), "{e}");
        let e = route("/helloworld.Greeter/SayHello/x").unwrap_err();
        assert!(e.message().contains("unknown method SayHello/x"), "{e}");
        for (service, methods) in METHODS {
            for (name, method) in methods {
                assert_eq!(route(&format!("/{service}/{name}")), Ok(*method));
            }
        }
    }

    /// What reflection lists (the services of proto/) is what the server routes, method by
    /// method: a .proto file and the server cannot drift apart.
    #[test]
    fn reflection_lists_exactly_the_routed_services_and_methods() {
        let listed: Vec<&str> = crate::proto::FILES
            .iter()
            .flat_map(|f| f.services.iter().copied())
            .collect();
        let routed: Vec<&str> = METHODS.iter().map(|(s, _)| *s).collect();
        let mut a = listed.clone();
        let mut b = routed.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        for (service, methods) in METHODS {
            for (name, _) in methods {
                let symbol = format!("{service}.{name}");
                assert!(
                    crate::proto::FILES.iter().any(|f| f.defines(&symbol)),
                    "{symbol} is routed but not in proto/"
                );
            }
        }
    }

    #[test]
    fn pool_metrics_maps_every_field_and_placement() {
        use crate::pool::ShardStats;
        use crate::topology::{Placement, Topology};
        let s = |k: u64| ShardStats {
            live: k,
            idle: k + 1,
            checked_out: k + 2,
            local_hits: k + 3,
            steals: k + 4,
            creates: k + 5,
            create_errors: k + 6,
            timeouts: k + 7,
            wait_p50_us: k + 8,
            wait_p90_us: k + 9,
            wait_p99_us: k + 10,
            wait_max_us: k + 11,
            checkouts: k + 12,
            handoffs: k + 13,
            waits: k + 14,
            closes: k + 15,
            ..ShardStats::default()
        };
        let stats = Stats {
            shards: vec![s(100), s(200)],
            total: s(1000),
        };
        let map = Topology::from_nodes(vec![(0, vec![4]), (1, vec![9])])
            .unwrap()
            .place(&Placement::AllCores, None)
            .unwrap();
        let m = pool_metrics(&stats, &map);
        assert_eq!(m.shards.len(), 2);
        let one = &m.shards[1];
        assert_eq!(
            (
                one.shard,
                one.cpu,
                one.numa_node,
                one.live,
                one.idle,
                one.checked_out,
                one.hits
            ),
            (1, Some(9), Some(1), 200, 201, 202, 203)
        );
        assert_eq!(
            (
                one.steals,
                one.creates,
                one.errors,
                one.timeouts,
                one.wait_p50_us,
                one.wait_p90_us
            ),
            (204, 205, 206, 207, 208, 209)
        );
        assert_eq!(
            (
                one.wait_p99_us,
                one.wait_max_us,
                one.checkouts,
                one.handoffs,
                one.waits,
                one.closes
            ),
            (210, 211, 212, 213, 214, 215)
        );
        let total = m.total.unwrap();
        assert_eq!((total.shard, total.live, total.cpu), (2, 1000, None));
    }
}
