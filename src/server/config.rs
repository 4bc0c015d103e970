//! [`ServerConfig`]: every knob of the server, its default and its validation.

use super::AdminConfig;
use super::{io, watch};
use std::net::SocketAddr;
use std::time::Duration;

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
    /// See [`reflection`](super::reflection) for its bounds.
    pub reflection: bool,
    /// Open connections per shard (default 16384; `shardpool serve` derives it from the
    /// descriptor limit, see [`limits::connection_cap`](super::limits::connection_cap)). At the cap the least useful
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
    pub(super) fn conn_limits(&self) -> watch::Limits {
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
    /// assert_eq!(bad.validate().unwrap_err().field, "initial_stream_window");
    /// // 1000 streams, 256 served at once, 1 MiB windows: 744 waiting calls could hold the window.
    /// let deadlock = ServerConfig { max_concurrent_streams: Some(1000), ..ServerConfig::default() };
    /// assert!(deadlock.validate().unwrap_err().message.contains("deadlock"));
    /// // Small stream windows leave room: 744 * 1 KiB < 1 MiB.
    /// let ok = ServerConfig { initial_stream_window: 1024, ..deadlock };
    /// assert!(ok.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, w) in [
            ("initial_stream_window", self.initial_stream_window),
            ("initial_connection_window", self.initial_connection_window),
        ] {
            if w > MAX_WINDOW {
                return Err(ConfigError::new(
                    name,
                    format!("{name} is {w} bytes; HTTP/2 allows at most {MAX_WINDOW}"),
                ));
            }
        }
        let at_least_1 = |field| {
            Err(ConfigError::new(
                field,
                format!("{field} must be at least 1"),
            ))
        };
        if self.max_concurrent_streams == Some(0) {
            return at_least_1("max_concurrent_streams");
        }
        if self.max_connections_per_shard == 0 {
            return at_least_1("max_connections_per_shard");
        }
        if self.concurrency_limit_per_connection == Some(0) {
            return Err(ConfigError::new(
                "concurrency_limit_per_connection",
                "concurrency_limit_per_connection must be at least 1 (or none for no limit)",
            ));
        }
        if self.accept_backoff_max.is_zero() {
            return Err(ConfigError::new(
                "accept_backoff_max",
                "accept_backoff_max must be more than 0",
            ));
        }
        if self.listen_backlog < 1 {
            return at_least_1("listen_backlog");
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
                return Err(ConfigError::new(
                    name,
                    format!("{name} must be longer than zero (or off)"),
                ));
            }
        }
        self.check_streams_cannot_deadlock()
    }

    /// The rule of [`ServerConfig::validate`]'s "Streams, the concurrency limit and flow
    /// control".
    pub(super) fn check_streams_cannot_deadlock(&self) -> Result<(), ConfigError> {
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
            return Err(ConfigError::new(
                "max_concurrent_streams",
                format!(
                    "max_concurrent_streams ({streams}) above concurrency_limit_per_connection \
                 ({limit}) can deadlock with adaptive_window: one waiting call's unread body can \
                 hold the whole connection window; {fix}"
                ),
            ));
        }
        let held = waiting.saturating_mul(u64::from(self.initial_stream_window));
        if held >= u64::from(self.initial_connection_window) {
            return Err(ConfigError::new(
                "max_concurrent_streams",
                format!(
                    "max_concurrent_streams ({streams}) above concurrency_limit_per_connection \
                 ({limit}) can deadlock: {waiting} waiting calls times initial_stream_window \
                 ({} bytes) can hold all of initial_connection_window ({} bytes), so admitted \
                 calls never get their bodies; {fix}, or make {waiting} * initial_stream_window \
                 smaller than initial_connection_window",
                    self.initial_stream_window, self.initial_connection_window
                ),
            ));
        }
        Ok(())
    }

    /// The options of this server's listeners and of the connections they accept.
    pub(super) fn socket_options(&self) -> io::SocketOptions {
        io::SocketOptions {
            nodelay: self.tcp_nodelay,
            keepalive: self.tcp_keepalive,
            backlog: self.listen_backlog,
            reuse_port_shared: self.reuse_port_shared,
        }
    }
}

/// Why a [`ServerConfig`] (or its [`AdminConfig`]) was refused: the field at fault, by the name
/// it has as a `shardpool serve` config key, and a message that names it and says how to fix it.
///
/// ```
/// # use shardpool::server::ServerConfig;
/// let bad = ServerConfig { listen_backlog: 0, ..ServerConfig::default() };
/// let e = bad.validate().unwrap_err();
/// assert_eq!(e.field, "listen_backlog");
/// assert_eq!(e.to_string(), "listen_backlog must be at least 1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field at fault (for a rule between fields, the one to change first).
    pub field: &'static str,
    /// What is wrong and how to fix it; it names the field.
    pub message: String,
}

impl ConfigError {
    pub(super) fn new(field: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
