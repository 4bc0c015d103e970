//! `shardpool serve`: the thread-per-core gRPC Greeter.
//!
//! Every knob can be set three ways, highest precedence first: a command-line flag
//! (`--request-timeout 5s`), an environment variable (`SHARDPOOL_REQUEST_TIMEOUT=5s`), or a key
//! of the TOML file given with `--config` (`request_timeout = "5s"`). Unset knobs take the
//! defaults of [`ServerConfig`] (listed in `shardpool serve --help` and docs/deployment.md).
//!
//! Values are read by the parsers of `super::parse`, shared with every other subcommand:
//! durations like `500ms`, `30s`, `10m`, `1h` (or `off` where a knob can be disabled); sizes like
//! `65536`, `64KiB`, `1MiB`; addresses `IP:PORT` or a bare `PORT`; booleans `true`/`false` (a
//! bare boolean flag, e.g. `--pin`, means `true`).
//!
//! Gateway-mode knobs live in the file's `[upstream]` table (see `upstream_args`), with the
//! same precedence.

use super::CliResult;
use super::parse;
use shardpool::runtime::RuntimeOptions;
use shardpool::server::limits::{self, AutoCount, FdReserve};
use shardpool::server::{AdminConfig, AdminToken, RunningServer, Server, ServerConfig};
use shardpool::topology::{Placement, Topology};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `shardpool serve` (boxed: they are large next to other subcommands).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    knobs: Box<Knobs>,
    #[command(flatten)]
    upstream: Box<super::upstream_args::UpstreamArgs>,
}

/// The knobs of `serve`. Every knob is a string here; it is parsed after merging the flag, the
/// environment and the TOML file, so all three accept the same syntax.
#[derive(clap::Args, Debug, Default)]
pub(super) struct Knobs {
    /// TOML file with knobs (keys are the flag names with `_` for `-`; gateway knobs in an
    /// `[upstream]` table). SIGHUP re-reads its `upstream.backends`.
    #[arg(long, env = "SHARDPOOL_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC address [default: 127.0.0.1:50051].
    #[arg(long, env = "SHARDPOOL_LISTEN")]
    listen: Option<String>,
    /// Number of shards, one per CPU [default: every CPU of the placement].
    #[arg(long, env = "SHARDPOOL_SHARDS")]
    shards: Option<String>,
    /// Where shards run: `all`, `cpus:0-3,8` or `nodes:0,1` [default: all].
    #[arg(long, env = "SHARDPOOL_PLACEMENT")]
    placement: Option<String>,
    /// Pin each shard's thread to its CPU; bare `--pin` means true [default: true].
    #[arg(long, env = "SHARDPOOL_PIN", num_args = 0..=1, default_missing_value = "true")]
    pin: Option<String>,
    /// Busy-poll this long before an idle shard sleeps, or `off` [default: off].
    #[arg(long, env = "SHARDPOOL_SPIN_BEFORE_PARK")]
    spin_before_park: Option<String>,
    /// Admin address: HTTP/1.1 `/metrics` and h2c gRPC `shardpool.v1.Admin` (the backend
    /// RPCs are served only here). `IP:PORT`, a bare `PORT` (binds 127.0.0.1), or `off`
    /// [default: off].
    #[arg(long, env = "SHARDPOOL_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// File holding the token admin clients must send as `authorization: Bearer <token>` (on
    /// both admin listeners); must not be world-readable [default: none, loopback only].
    #[arg(long, env = "SHARDPOOL_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// Allow an admin listener on a non-loopback address without a token; bare
    /// `--admin-allow-insecure` means true [default: false].
    #[arg(long, env = "SHARDPOOL_ADMIN_ALLOW_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    admin_allow_insecure: Option<String>,
    /// Connections open at once per admin listener; more are closed [default: 64].
    #[arg(long, env = "SHARDPOOL_ADMIN_MAX_CONNECTIONS")]
    admin_max_connections: Option<String>,
    /// Time an admin client has to send each request head (and its first bytes); also the
    /// write timeout and the limit of one admin call [default: 5s].
    #[arg(long, env = "SHARDPOOL_ADMIN_READ_TIMEOUT")]
    admin_read_timeout: Option<String>,
    /// Close an admin connection that sends nothing for this long [default: 60s].
    #[arg(long, env = "SHARDPOOL_ADMIN_IDLE_TIMEOUT")]
    admin_idle_timeout: Option<String>,
    /// TCP_NODELAY on accepted connections; bare `--tcp-nodelay` means true [default: true].
    #[arg(long, env = "SHARDPOOL_TCP_NODELAY", num_args = 0..=1, default_missing_value = "true")]
    tcp_nodelay: Option<String>,
    /// TCP keepalive idle time, or `off` [default: 60s].
    #[arg(long, env = "SHARDPOOL_TCP_KEEPALIVE")]
    tcp_keepalive: Option<String>,
    /// listen(2) backlog per shard [default: 1024].
    #[arg(long, env = "SHARDPOOL_LISTEN_BACKLOG")]
    listen_backlog: Option<String>,
    /// Deliberately share --listen (and --admin-listen) with another shardpool process of the
    /// same user already on it, e.g. for a zero-downtime restart; the kernel splits connections
    /// between the processes. Without it a port in use is an error. Bare `--reuse-port-shared`
    /// means true [default: false].
    #[arg(long, env = "SHARDPOOL_REUSE_PORT_SHARED", num_args = 0..=1, default_missing_value = "true")]
    reuse_port_shared: Option<String>,
    /// Deadline of calls without grpc-timeout, and cap of those with one, or `off`; `0s` is
    /// refused (every call would fail) [default: 30s].
    #[arg(long, env = "SHARDPOOL_REQUEST_TIMEOUT")]
    request_timeout: Option<String>,
    /// Calls served at once per connection (more wait), or `off` [default: 256].
    #[arg(long, env = "SHARDPOOL_CONCURRENCY_LIMIT_PER_CONNECTION")]
    concurrency_limit_per_connection: Option<String>,
    /// HTTP/2 initial stream window [default: 1MiB].
    #[arg(long, env = "SHARDPOOL_INITIAL_STREAM_WINDOW")]
    initial_stream_window: Option<String>,
    /// HTTP/2 initial connection window [default: 1MiB].
    #[arg(long, env = "SHARDPOOL_INITIAL_CONNECTION_WINDOW")]
    initial_connection_window: Option<String>,
    /// HTTP/2 adaptive (BDP) flow control; overrides the windows. Bare `--adaptive-window`
    /// means true [default: false].
    #[arg(long, env = "SHARDPOOL_ADAPTIVE_WINDOW", num_args = 0..=1, default_missing_value = "true")]
    adaptive_window: Option<String>,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection (more are refused with
    /// REFUSED_STREAM), or `auto`: equal to --concurrency-limit-per-connection, 1000 when that
    /// is off. Above the limit it must leave connection window for admitted calls (see
    /// docs/security.md) [default: auto].
    #[arg(long, env = "SHARDPOOL_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<String>,
    /// HTTP/2 PING interval, or `off` [default: 60s].
    #[arg(long, env = "SHARDPOOL_HTTP2_KEEPALIVE_INTERVAL")]
    http2_keepalive_interval: Option<String>,
    /// Close a connection whose PING is not answered within this [default: 20s].
    #[arg(long, env = "SHARDPOOL_HTTP2_KEEPALIVE_TIMEOUT")]
    http2_keepalive_timeout: Option<String>,
    /// Drop a connection whose HTTP/2 preface and first SETTINGS have not arrived within this
    /// of the accept, or `off` [default: 10s].
    #[arg(long, env = "SHARDPOOL_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<String>,
    /// Close (GOAWAY) a connection with no open and no new stream for this long; PINGs do not
    /// count. `off` disables [default: 5m].
    #[arg(long, env = "SHARDPOOL_CONN_IDLE_TIMEOUT")]
    conn_idle_timeout: Option<String>,
    /// Close a connection with a response its peer opens no flow-control window for, or a
    /// write its socket takes nothing of, for this long; `off` disables [default: 30s].
    #[arg(long, env = "SHARDPOOL_SEND_STALL_TIMEOUT")]
    send_stall_timeout: Option<String>,
    /// Largest request message, at least 1 byte [default: 4MiB].
    #[arg(long, env = "SHARDPOOL_MAX_MESSAGE_SIZE")]
    max_message_size: Option<String>,
    /// gRPC server reflection on the serving port, `on` or `off` (grpcurl `list`/`describe`
    /// without .proto files; it reveals the services' schema, nothing else); bare
    /// `--reflection` means on [default: on].
    #[arg(long, env = "SHARDPOOL_REFLECTION", num_args = 0..=1, default_missing_value = "true")]
    reflection: Option<String>,
    /// Open connections per shard, or `auto`: what the descriptor limit leaves after
    /// --fd-reserve, split over the shards. At the cap the connection still handshaking, else
    /// the one idle longest, is closed to make room [default: auto].
    #[arg(long, env = "SHARDPOOL_MAX_CONNECTIONS_PER_SHARD")]
    max_connections_per_shard: Option<String>,
    /// Descriptors kept from client connections for upstream connections, health checks,
    /// embedded origins, listeners, admin and the runtime, or `auto` (computed from the
    /// upstream settings; see docs/deployment.md) [default: auto].
    #[arg(long, env = "SHARDPOOL_FD_RESERVE")]
    fd_reserve: Option<String>,
    /// Longest wait of the accept loop after accept errors such as EMFILE (doubling from 5ms)
    /// [default: 1s].
    #[arg(long, env = "SHARDPOOL_ACCEPT_BACKOFF_MAX")]
    accept_backoff_max: Option<String>,
    /// On SIGINT/SIGTERM, time given to in-flight calls before they are answered UNAVAILABLE
    /// [default: 10s].
    #[arg(long, env = "SHARDPOOL_SHUTDOWN_GRACE")]
    shutdown_grace: Option<String>,
}

/// Everything `serve` needs, resolved from flags, environment, file and defaults.
#[derive(Debug, PartialEq)]
pub(super) struct Resolved {
    server: ServerConfig,
    /// `--max-connections-per-shard`; `auto` is settled in [`run`], once the shards and the
    /// descriptor limit are known.
    max_connections: AutoCount,
    /// `--fd-reserve`.
    fd_reserve: AutoCount,
    shards: Option<usize>,
    placement: Placement,
    runtime: RuntimeOptions,
}

/// Looks knobs up: flag/env value first (clap merged those), then the TOML file.
pub(super) struct Lookup<'a> {
    /// The file's values of this table, as strings.
    pub(super) file: &'a BTreeMap<String, String>,
    /// How the table's keys are written in messages: `""` or `"upstream."`.
    pub(super) table: &'static str,
}

impl Lookup<'_> {
    /// Parses `cli` or the file's `key` with `parse`; `None` when neither is set. Errors name
    /// the flag, the variable and the key, and show the expected syntax.
    pub(super) fn get<T>(
        &self,
        key: &str,
        cli: &Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        self.get_as(key, key, cli, parse)
    }

    /// Like `get` for a key whose flag is named differently (`flag` with `_` for `-`; the
    /// variable is `SHARDPOOL_` and the flag in capitals).
    pub(super) fn get_as<T>(
        &self,
        key: &str,
        flag: &str,
        cli: &Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        let (raw, from) = match (cli, self.file.get(key)) {
            (Some(v), _) => (v.as_str(), "flag/environment"),
            (None, Some(v)) => (v.as_str(), "config file"),
            (None, None) => return Ok(None),
        };
        parse(raw.trim()).map(Some).map_err(|e| {
            format!(
                "invalid value `{raw}` for --{} (SHARDPOOL_{}, config key `{}{key}`, from the {from}): {e}",
                flag.replace('_', "-"),
                flag.to_uppercase(),
                self.table
            )
        })
    }
}

const KEYS: [&str; 33] = [
    "listen",
    "shards",
    "placement",
    "pin",
    "spin_before_park",
    "admin_listen",
    "admin_token_file",
    "admin_allow_insecure",
    "admin_max_connections",
    "admin_read_timeout",
    "admin_idle_timeout",
    "tcp_nodelay",
    "tcp_keepalive",
    "listen_backlog",
    "reuse_port_shared",
    "request_timeout",
    "concurrency_limit_per_connection",
    "initial_stream_window",
    "initial_connection_window",
    "adaptive_window",
    "max_concurrent_streams",
    "http2_keepalive_interval",
    "http2_keepalive_timeout",
    "handshake_timeout",
    "conn_idle_timeout",
    "send_stall_timeout",
    "max_message_size",
    "reflection",
    "max_connections_per_shard",
    "fd_reserve",
    "accept_backoff_max",
    "shutdown_grace",
    "config",
];

/// The `--config` file: the server's knobs (as strings) and the `[upstream]` table.
#[derive(Debug, Default)]
pub(super) struct ConfigFile {
    /// Where it was read from (`None`: no file).
    pub(super) path: Option<PathBuf>,
    pub(super) knobs: BTreeMap<String, String>,
    /// The `[upstream]` table, checked by `upstream_args`.
    pub(super) upstream: toml::Table,
}

/// A scalar TOML value as the string a flag would carry (numbers and booleans as written).
pub(super) fn scalar(key: &str, v: toml::Value, path: &Path) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "key `{key}` in {}: unsupported value {other}",
            path.display()
        )),
    }
}

/// Reads a TOML knob file (no path: an empty one).
pub(super) fn read_config(path: Option<&Path>) -> Result<ConfigFile, String> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_config(&text, path)
}

/// Parses the text of a TOML knob file read from `path` (named in errors).
pub(super) fn parse_config(text: &str, path: &Path) -> Result<ConfigFile, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {} is not valid TOML: {e}", path.display()))?;
    let mut out = ConfigFile {
        path: Some(path.to_path_buf()),
        ..ConfigFile::default()
    };
    for (k, v) in table {
        if k == "upstream" {
            let toml::Value::Table(t) = v else {
                return Err(format!(
                    "`upstream` in {} must be a table: write `[upstream]` above its keys",
                    path.display()
                ));
            };
            out.upstream = t;
            continue;
        }
        if !KEYS.contains(&k.as_str()) || k == "config" {
            return Err(format!(
                "unknown key `{k}` in {}; known keys: {}, and the [upstream] table",
                path.display(),
                KEYS[..KEYS.len() - 1].join(", ")
            ));
        }
        let v = scalar(&k, v, path)?;
        out.knobs.insert(k, v);
    }
    Ok(out)
}

impl Knobs {
    /// The knobs of both admin listeners; reads (and checks) the token file.
    fn admin_config(&self, l: &Lookup<'_>) -> Result<AdminConfig, String> {
        let d = AdminConfig::default();
        let a = self;
        Ok(AdminConfig {
            token: l.get("admin_token_file", &a.admin_token_file, |p| {
                AdminToken::from_file(Path::new(p))
            })?,
            allow_insecure: l
                .get("admin_allow_insecure", &a.admin_allow_insecure, parse::bool)?
                .unwrap_or(d.allow_insecure),
            max_connections: l
                .get(
                    "admin_max_connections",
                    &a.admin_max_connections,
                    parse::positive_count,
                )?
                .unwrap_or(d.max_connections),
            read_timeout: l
                .get(
                    "admin_read_timeout",
                    &a.admin_read_timeout,
                    parse::positive_duration,
                )?
                .unwrap_or(d.read_timeout),
            idle_timeout: l
                .get(
                    "admin_idle_timeout",
                    &a.admin_idle_timeout,
                    parse::positive_duration,
                )?
                .unwrap_or(d.idle_timeout),
        })
    }

    pub(super) fn resolve(&self, file: &ConfigFile) -> Result<Resolved, String> {
        let l = Lookup {
            file: &file.knobs,
            table: "",
        };
        let d = ServerConfig::default();
        let a = self;
        let max_connections = l
            .get(
                "max_connections_per_shard",
                &a.max_connections_per_shard,
                AutoCount::from_str,
            )?
            .unwrap_or_default();
        let fd_reserve = l
            .get("fd_reserve", &a.fd_reserve, AutoCount::from_str)?
            .unwrap_or_default();
        let server = ServerConfig {
            listen: l.get("listen", &a.listen, parse::addr)?.unwrap_or(d.listen),
            admin_listen: l
                .get("admin_listen", &a.admin_listen, parse::opt_addr)?
                .unwrap_or(d.admin_listen),
            admin: self.admin_config(&l)?,
            tcp_nodelay: l
                .get("tcp_nodelay", &a.tcp_nodelay, parse::bool)?
                .unwrap_or(d.tcp_nodelay),
            tcp_keepalive: l
                .get("tcp_keepalive", &a.tcp_keepalive, parse::opt_duration)?
                .unwrap_or(d.tcp_keepalive),
            listen_backlog: l
                .get("listen_backlog", &a.listen_backlog, parse::count)?
                .unwrap_or(d.listen_backlog),
            reuse_port_shared: l
                .get("reuse_port_shared", &a.reuse_port_shared, parse::bool)?
                .unwrap_or(d.reuse_port_shared),
            request_timeout: l
                .get(
                    "request_timeout",
                    &a.request_timeout,
                    parse::opt_positive_duration,
                )?
                .unwrap_or(d.request_timeout),
            concurrency_limit_per_connection: l
                .get(
                    "concurrency_limit_per_connection",
                    &a.concurrency_limit_per_connection,
                    parse::opt_count,
                )?
                .unwrap_or(d.concurrency_limit_per_connection),
            initial_stream_window: l
                .get(
                    "initial_stream_window",
                    &a.initial_stream_window,
                    parse::window,
                )?
                .unwrap_or(d.initial_stream_window),
            initial_connection_window: l
                .get(
                    "initial_connection_window",
                    &a.initial_connection_window,
                    parse::window,
                )?
                .unwrap_or(d.initial_connection_window),
            adaptive_window: l
                .get("adaptive_window", &a.adaptive_window, parse::bool)?
                .unwrap_or(d.adaptive_window),
            max_concurrent_streams: l
                .get(
                    "max_concurrent_streams",
                    &a.max_concurrent_streams,
                    parse::max_streams,
                )?
                .unwrap_or(d.max_concurrent_streams),
            http2_keepalive_interval: l
                .get(
                    "http2_keepalive_interval",
                    &a.http2_keepalive_interval,
                    parse::opt_duration,
                )?
                .unwrap_or(d.http2_keepalive_interval),
            http2_keepalive_timeout: l
                .get(
                    "http2_keepalive_timeout",
                    &a.http2_keepalive_timeout,
                    parse::duration,
                )?
                .unwrap_or(d.http2_keepalive_timeout),
            handshake_timeout: l
                .get(
                    "handshake_timeout",
                    &a.handshake_timeout,
                    parse::opt_duration,
                )?
                .unwrap_or(d.handshake_timeout),
            conn_idle_timeout: l
                .get(
                    "conn_idle_timeout",
                    &a.conn_idle_timeout,
                    parse::opt_duration,
                )?
                .unwrap_or(d.conn_idle_timeout),
            send_stall_timeout: l
                .get(
                    "send_stall_timeout",
                    &a.send_stall_timeout,
                    parse::opt_duration,
                )?
                .unwrap_or(d.send_stall_timeout),
            max_message_size: l
                .get(
                    "max_message_size",
                    &a.max_message_size,
                    parse::positive_size,
                )?
                .unwrap_or(d.max_message_size),
            reflection: l
                .get("reflection", &a.reflection, parse::bool)?
                .unwrap_or(d.reflection),
            max_connections_per_shard: match max_connections {
                AutoCount::Fixed(n) => n,
                AutoCount::Auto => d.max_connections_per_shard,
            },
            accept_backoff_max: l
                .get("accept_backoff_max", &a.accept_backoff_max, parse::duration)?
                .unwrap_or(d.accept_backoff_max),
            shutdown_grace: l
                .get("shutdown_grace", &a.shutdown_grace, parse::duration)?
                .unwrap_or(d.shutdown_grace),
        };
        server.validate().map_err(|e| {
            format!(
                "{e} (flag --{}, see `shardpool serve --help`)",
                e.split_whitespace().next().unwrap_or("").replace('_', "-")
            )
        })?;
        let rd = RuntimeOptions::default();
        let runtime = RuntimeOptions {
            pin: l.get("pin", &a.pin, parse::bool)?.unwrap_or(rd.pin),
            spin_before_park: l
                .get("spin_before_park", &a.spin_before_park, parse::opt_duration)?
                .unwrap_or(rd.spin_before_park),
            ..rd
        };
        Ok(Resolved {
            server,
            max_connections,
            fd_reserve,
            shards: l.get("shards", &a.shards, parse::count)?,
            placement: l
                .get("placement", &a.placement, |s| {
                    s.parse::<Placement>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            runtime,
        })
    }
}

/// Whether the log on stderr gets ANSI colours: only on a terminal, and not when `NO_COLOR` is
/// set to a non-empty value (<https://no-color.org>). A pipe or a file (journald, a log
/// collector, `2> log`) gets plain text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Runs `shardpool serve` until SIGINT/SIGTERM (a second signal skips the grace period).
pub fn run(args: ServeArgs) -> CliResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colours(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .try_init();
    let file = read_config(args.knobs.config.as_deref())?;
    let r = args.knobs.resolve(&file)?;
    let upstream = args.upstream.resolve(&file)?;
    let topology = Topology::detect();
    let map = topology.place(&r.placement, r.shards)?;
    let grace = r.server.shutdown_grace;
    let admin = r.server.admin.clone();
    let mut config = r.server;
    config.max_connections_per_shard = settle_connection_cap(
        r.max_connections,
        r.fd_reserve,
        map.len(),
        config.admin_listen.is_some(),
        &admin,
        &upstream,
    )?;
    let server = Server::new(config).after_storm(Arc::new(crate::release_free_memory));
    let (server, _upstream) =
        super::upstream_args::start(&upstream, &admin, server, &map, &r.runtime)?;
    for (i, p) in map.places().iter().enumerate() {
        println!(
            "shardpool: shard {i} on cpu {} (NUMA node {})",
            p.cpu, p.node
        );
    }
    match server.admin_addr() {
        Some(a) => println!(
            "shardpool: serving gRPC on {} (admin /metrics on {a})",
            server.local_addr()
        ),
        None => println!("shardpool: serving gRPC on {}", server.local_addr()),
    }
    watch_signals(&server, grace)?;
    let reports = server.wait()?;
    let calls: u64 = reports.iter().map(|r| r.calls).sum();
    let abandoned: u64 = reports.iter().map(|r| r.calls_abandoned).sum();
    tracing::info!(calls, abandoned, "all shards stopped");
    Ok(())
}

/// Raises the soft descriptor limit to the hard one, then settles the per-shard connection cap:
/// `auto` takes what the limit leaves after the reserve ([`limits::connection_cap`]); a given
/// cap above that is kept with a warning. Refuses to start when the limit is too low to serve.
fn settle_connection_cap(
    max_connections: AutoCount,
    fd_reserve: AutoCount,
    shards: usize,
    admin_on: bool,
    admin: &AdminConfig,
    upstream: &super::upstream_args::UpstreamSettings,
) -> Result<usize, String> {
    let nofile = match limits::raise_nofile_limit() {
        Ok(l) => {
            tracing::info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "descriptor limit: soft {} (was {}), hard {}",
                l.soft,
                l.soft_before,
                l.hard
            );
            l.soft
        }
        Err(e) => {
            let (soft, hard) = limits::nofile_limit()
                .map_err(|e| format!("cannot read the descriptor limit: {e}"))?;
            tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
            soft
        }
    };
    let reserve = match fd_reserve {
        AutoCount::Fixed(n) => n,
        AutoCount::Auto => {
            let mut r = FdReserve::server(shards, admin_on.then_some(admin.max_connections));
            upstream.fd_reserve(&mut r, admin)?;
            tracing::info!(reserve = ?r, "descriptors reserved: {}", r.total());
            r.total()
        }
    };
    let derived = limits::connection_cap(nofile, shards, reserve)?;
    let cap = match max_connections {
        AutoCount::Auto => derived,
        AutoCount::Fixed(n) => {
            if n > derived {
                tracing::warn!(
                    "--max-connections-per-shard {n} is more than the {derived} that fit the \
                     descriptor limit ({nofile}) after the reserve ({reserve}): past that, \
                     accepts fail with EMFILE and upstream connections may too; raise the \
                     limit (`ulimit -n`) or use `auto`"
                );
            }
            n
        }
    };
    tracing::info!(
        cap,
        shards,
        nofile,
        reserve,
        "at most {cap} connections per shard"
    );
    Ok(cap)
}

/// On the first SIGINT/SIGTERM: drain and start the grace timer; on the second: abort.
fn watch_signals(server: &RunningServer, grace: Duration) -> CliResult {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let switch = server.shutdown_switch();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, sig) in signals.forever().enumerate() {
                if n == 0 {
                    tracing::info!(
                        signal = sig,
                        ?grace,
                        "draining: no new connections, finishing in-flight calls"
                    );
                    switch.drain();
                    let switch = switch.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(grace);
                        if !switch.is_aborted() {
                            tracing::warn!(
                                "grace period over: answering remaining calls UNAVAILABLE"
                            );
                        }
                        switch.abort();
                    });
                } else {
                    tracing::warn!(signal = sig, "second signal: ending the grace period now");
                    switch.abort();
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(true, Some(OsStr::new("false"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new(""))));
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let dir = std::env::temp_dir().join(format!("shardpool-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(
            &file,
            "request_timeout = \"5s\"\nmax_concurrent_streams = 77\ntcp_nodelay = false\n\
             conn_idle_timeout = \"90s\"\nsend_stall_timeout = \"1m\"\n\
             initial_stream_window = \"64KiB\"\nplacement = \"cpus:0\"\nreuse_port_shared = true\n\
             reflection = \"off\"\n",
        )
        .unwrap();
        let defaults = Knobs::default().resolve(&ConfigFile::default()).unwrap();
        assert_eq!(defaults.server, ServerConfig::default());
        assert_eq!(defaults.placement, Placement::AllCores);

        let args = Knobs {
            config: Some(file.clone()),
            request_timeout: Some("250ms".into()),
            http2_keepalive_interval: Some("off".into()),
            concurrency_limit_per_connection: Some("off".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            handshake_timeout: Some("off".into()),
            send_stall_timeout: Some("7s".into()),
            ..Knobs::default()
        };
        let r = args
            .resolve(&read_config(args.config.as_deref()).unwrap())
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            r.server.request_timeout,
            Some(Duration::from_millis(250)),
            "flag beats file"
        );
        assert_eq!(
            r.server.max_concurrent_streams,
            Some(77),
            "file beats default"
        );
        assert_eq!(
            r.server.http2_keepalive_interval, None,
            "off turns pings off"
        );
        assert_eq!(r.server.conn_idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(r.server.handshake_timeout, None);
        assert_eq!(r.server.send_stall_timeout, Some(Duration::from_secs(7)));
        assert!(!r.server.tcp_nodelay);
        assert_eq!(r.server.initial_stream_window, 65536);
        assert_eq!(r.server.concurrency_limit_per_connection, None);
        assert_eq!(r.server.admin_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(r.placement, Placement::Cpus(vec![0]));
        assert!(r.server.reuse_port_shared, "file beats default");
        assert!(defaults.server.reflection, "reflection is on by default");
        assert!(
            !r.server.reflection,
            "`reflection = \"off\"` in the file turns it off"
        );
        assert_eq!(
            r.server.max_message_size,
            ServerConfig::default().max_message_size
        );
    }

    #[test]
    fn bad_values_name_the_knob_and_the_fix() {
        let err = Knobs {
            request_timeout: Some("soon".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(
            err.contains("--request-timeout") && err.contains("SHARDPOOL_REQUEST_TIMEOUT"),
            "{err}"
        );
        assert!(err.contains("write it like 10s"), "{err}");
        let err = Knobs {
            initial_stream_window: Some("8GiB".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(err.contains("2^31-1"), "{err}");
        let err = Knobs {
            max_connections_per_shard: Some("0".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
        // Streams that could wait for a slot and fill the connection window are refused.
        let err = Knobs {
            max_concurrent_streams: Some("1000".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(
            err.contains("deadlock") && err.contains("--max-concurrent-streams"),
            "{err}"
        );
        let err = Knobs {
            max_concurrent_streams: Some("lots".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(err.contains("auto"), "{err}");
    }

    #[test]
    fn a_bare_boolean_flag_means_true() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            knobs: Knobs,
        }
        let parse = |args: &[&str]| {
            let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
            cli.knobs.resolve(&ConfigFile::default()).unwrap()
        };
        let defaults = parse(&["serve"]);
        assert!(!defaults.server.reuse_port_shared);
        assert!(!defaults.server.adaptive_window);
        let s = parse(&["serve", "--reuse-port-shared", "--listen", "127.0.0.1:1"]);
        assert!(s.server.reuse_port_shared);
        assert_eq!(s.server.listen, "127.0.0.1:1".parse().unwrap());
        assert!(
            !parse(&["serve", "--reuse-port-shared", "false"])
                .server
                .reuse_port_shared
        );
        assert!(
            parse(&["serve", "--adaptive-window"])
                .server
                .adaptive_window
        );
        let off = parse(&["serve", "--tcp-nodelay", "false", "--pin", "false"]);
        assert!(!off.server.tcp_nodelay && !off.runtime.pin);
        let on = parse(&["serve", "--tcp-nodelay", "--pin"]);
        assert!(on.server.tcp_nodelay && on.runtime.pin);
    }

    #[test]
    fn descriptor_knobs_default_to_auto_and_take_numbers() {
        let d = Knobs::default().resolve(&ConfigFile::default()).unwrap();
        assert_eq!(
            (d.max_connections, d.fd_reserve),
            (AutoCount::Auto, AutoCount::Auto)
        );
        assert_eq!(d.server.accept_backoff_max, Duration::from_secs(1));
        let r = Knobs {
            max_connections_per_shard: Some("300".into()),
            fd_reserve: Some("auto".into()),
            accept_backoff_max: Some("250ms".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap();
        assert_eq!(r.max_connections, AutoCount::Fixed(300));
        assert_eq!(r.server.max_connections_per_shard, 300);
        assert_eq!(r.server.accept_backoff_max, Duration::from_millis(250));
        let err = Knobs {
            fd_reserve: Some("plenty".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(
            err.contains("--fd-reserve")
                && err.contains("SHARDPOOL_FD_RESERVE")
                && err.contains("auto"),
            "{err}"
        );
        let err = Knobs {
            accept_backoff_max: Some("0s".into()),
            ..Knobs::default()
        }
        .resolve(&ConfigFile::default())
        .unwrap_err();
        assert!(err.contains("accept-backoff-max"), "{err}");
    }

    #[test]
    fn admin_knobs_bare_port_and_bounds() {
        let dir =
            std::env::temp_dir().join(format!("shardpool-serve-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(
            &file,
            "admin_listen = \"9100\"\nadmin_read_timeout = \"2s\"\nadmin_max_connections = 8\n",
        )
        .unwrap();
        let args = Knobs {
            config: Some(file.clone()),
            admin_idle_timeout: Some("90s".into()),
            admin_allow_insecure: Some("true".into()),
            ..Knobs::default()
        };
        let r = args
            .resolve(&read_config(args.config.as_deref()).unwrap())
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            r.server.admin_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let a = &r.server.admin;
        assert_eq!(
            (
                a.read_timeout,
                a.idle_timeout,
                a.max_connections,
                a.allow_insecure
            ),
            (Duration::from_secs(2), Duration::from_secs(90), 8, true)
        );
        assert_eq!(a.token, None);
        for (knobs, want) in [
            (
                Knobs {
                    admin_max_connections: Some("0".into()),
                    ..Knobs::default()
                },
                "--admin-max-connections",
            ),
            (
                Knobs {
                    admin_read_timeout: Some("0s".into()),
                    ..Knobs::default()
                },
                "--admin-read-timeout",
            ),
            (
                Knobs {
                    admin_listen: Some("0.0.0.0:9100".into()),
                    ..Knobs::default()
                },
                "--admin-allow-insecure",
            ),
            (
                Knobs {
                    admin_token_file: Some("/nonexistent/shardpool-token".into()),
                    ..Knobs::default()
                },
                "SHARDPOOL_ADMIN_TOKEN_FILE",
            ),
        ] {
            let e = knobs.resolve(&ConfigFile::default()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    /// `bench` and `serve` read a duration with the same parser: both accept `10secs`, both
    /// refuse `10 fortnights` with the same reason.
    #[test]
    fn bench_and_serve_read_durations_alike() {
        use super::super::{Cli, Command};
        use clap::{CommandFactory, Parser};
        // As `main` parses: negative values are handed to their parser.
        let cli = |args: &[&str]| {
            let args = args.iter().map(std::ffi::OsString::from).collect();
            Cli::try_parse_from(parse::negative_values_as_values(&Cli::command(), args))
                .map(|c| c.command)
        };
        let bench = |text: &str| match cli(&["shardpool", "bench", "-d", text]) {
            Ok(Command::Bench(b)) => Ok(b.duration.unwrap()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let serve = |text: &str| match cli(&["shardpool", "serve", "--request-timeout", text]) {
            Ok(Command::Serve(s)) => s
                .knobs
                .resolve(&ConfigFile::default())
                .map(|r| r.server.request_timeout.unwrap()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        for ok in ["10secs", "10s", "10", "1.5s", "250ms", "2mins", "1h"] {
            assert_eq!(bench(ok), serve(ok), "{ok}");
            assert!(bench(ok).is_ok(), "{ok}: {:?}", bench(ok));
        }
        for bad in ["10 fortnights", "soon", "-5s"] {
            let reason = parse::duration(bad).unwrap_err();
            let (b, s) = (bench(bad).unwrap_err(), serve(bad).unwrap_err());
            assert!(
                b.contains(&reason) && s.contains(&reason),
                "{bad}: {b} / {s}"
            );
        }
    }
}
