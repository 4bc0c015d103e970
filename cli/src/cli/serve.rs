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
//! Each knob is defined once, as a row of the `Knobs` table below (`super::settings` explains
//! what a row yields: the clap argument, the file key and the precedence). Gateway-mode knobs
//! live in the file's `[upstream]` table (`upstream_args`), with the same precedence.

use super::CliResult;
use super::parse::{self, Off};
use super::settings::{ConfigFile, named, read_config};
use super::upstream_args::{self, UpstreamArgs};
use shardpool::runtime::RuntimeOptions;
use shardpool::server::limits::{self, AutoCount, FdReserve};
use shardpool::server::{AdminConfig, AdminToken, RunningServer, Server, ServerConfig};
use shardpool::topology::{Placement, Topology};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `shardpool serve` (boxed: they are large next to other subcommands).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TOML file with knobs (keys are the flag names with `_` for `-`; gateway knobs in an
    /// `[upstream]` table). SIGHUP re-reads its `upstream.backends`.
    #[arg(long, env = "SHARDPOOL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    knobs: Box<Knobs>,
    #[command(flatten)]
    upstream: Box<UpstreamArgs>,
}

crate::settings! {
    /// The settings of `serve` (the top level of the `--config` file), each defined once: see
    /// `super::settings`. Unset ones take the defaults of [`ServerConfig`] and
    /// [`RuntimeOptions`].
    pub(super) struct Knobs in "" {
        /// gRPC address [default: 127.0.0.1:50051].
        listen: SocketAddr = parse::addr, "SHARDPOOL_LISTEN";
        /// Number of shards, one per CPU [default: every CPU of the placement].
        shards: usize = parse::count, "SHARDPOOL_SHARDS";
        /// Where shards run: `all`, `cpus:0-3,8` or `nodes:0,1` [default: all].
        placement: Placement =
            |s: &str| s.parse::<Placement>().map_err(|e| e.to_string()),
            "SHARDPOOL_PLACEMENT";
        /// Pin each shard's thread to its CPU; bare `--pin` means true [default: true].
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        pin: bool = parse::bool, "SHARDPOOL_PIN";
        /// Busy-poll this long before an idle shard sleeps, or `off` [default: off].
        spin_before_park: Off<Duration> = parse::opt_duration, "SHARDPOOL_SPIN_BEFORE_PARK";
        /// Admin address: HTTP/1.1 `/metrics` and h2c gRPC `shardpool.v1.Admin` (the backend
        /// RPCs are served only here). `IP:PORT`, a bare `PORT` (binds 127.0.0.1), or `off`
        /// [default: off].
        admin_listen: Off<SocketAddr> = parse::opt_addr, "SHARDPOOL_ADMIN_LISTEN";
        /// File holding the token admin clients must send as `authorization: Bearer <token>` (on
        /// both admin listeners); must not be world-readable [default: none, loopback only].
        admin_token_file: AdminToken =
            |p: &str| AdminToken::from_file(Path::new(p)),
            "SHARDPOOL_ADMIN_TOKEN_FILE";
        /// Allow an admin listener on a non-loopback address without a token; bare
        /// `--admin-allow-insecure` means true [default: false].
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        admin_allow_insecure: bool = parse::bool, "SHARDPOOL_ADMIN_ALLOW_INSECURE";
        /// Connections open at once per admin listener; more are closed [default: 64].
        admin_max_connections: usize = parse::positive_count, "SHARDPOOL_ADMIN_MAX_CONNECTIONS";
        /// Time an admin client has to send each request head (and its first bytes); also the
        /// write timeout and the limit of one admin call [default: 5s].
        admin_read_timeout: Duration = parse::positive_duration, "SHARDPOOL_ADMIN_READ_TIMEOUT";
        /// Close an admin connection that sends nothing for this long [default: 60s].
        admin_idle_timeout: Duration = parse::positive_duration, "SHARDPOOL_ADMIN_IDLE_TIMEOUT";
        /// TCP_NODELAY on accepted connections; bare `--tcp-nodelay` means true [default: true].
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        tcp_nodelay: bool = parse::bool, "SHARDPOOL_TCP_NODELAY";
        /// TCP keepalive idle time, or `off` [default: 60s].
        tcp_keepalive: Off<Duration> = parse::opt_keepalive, "SHARDPOOL_TCP_KEEPALIVE";
        /// listen(2) backlog per shard [default: 1024].
        listen_backlog: i32 = parse::count, "SHARDPOOL_LISTEN_BACKLOG";
        /// Deliberately share --listen (and --admin-listen) with another shardpool process of the
        /// same user already on it, e.g. for a zero-downtime restart; the kernel splits connections
        /// between the processes. Without it a port in use is an error. Bare `--reuse-port-shared`
        /// means true [default: false].
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        reuse_port_shared: bool = parse::bool, "SHARDPOOL_REUSE_PORT_SHARED";
        /// Deadline of calls without grpc-timeout, and cap of those with one, or `off`; `0s` is
        /// refused (every call would fail) [default: 30s].
        request_timeout: Off<Duration> = parse::opt_positive_duration, "SHARDPOOL_REQUEST_TIMEOUT";
        /// Calls served at once per connection (more wait), or `off` [default: 256].
        concurrency_limit_per_connection: Off<usize> =
            parse::opt_count,
            "SHARDPOOL_CONCURRENCY_LIMIT_PER_CONNECTION";
        /// HTTP/2 initial stream window [default: 1MiB].
        initial_stream_window: u32 = parse::window, "SHARDPOOL_INITIAL_STREAM_WINDOW";
        /// HTTP/2 initial connection window [default: 1MiB].
        initial_connection_window: u32 = parse::window, "SHARDPOOL_INITIAL_CONNECTION_WINDOW";
        /// HTTP/2 adaptive (BDP) flow control; overrides the windows. Bare `--adaptive-window`
        /// means true [default: false].
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        adaptive_window: bool = parse::bool, "SHARDPOOL_ADAPTIVE_WINDOW";
        /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection (more are refused with
        /// REFUSED_STREAM), or `auto`: equal to --concurrency-limit-per-connection, 1000 when that
        /// is off. Above the limit it must leave connection window for admitted calls (see
        /// docs/security.md) [default: auto].
        max_concurrent_streams: Off<u32> = parse::max_streams, "SHARDPOOL_MAX_CONCURRENT_STREAMS";
        /// HTTP/2 PING interval, or `off` [default: 60s].
        http2_keepalive_interval: Off<Duration> =
            parse::opt_duration,
            "SHARDPOOL_HTTP2_KEEPALIVE_INTERVAL";
        /// Close a connection whose PING is not answered within this [default: 20s].
        http2_keepalive_timeout: Duration = parse::duration, "SHARDPOOL_HTTP2_KEEPALIVE_TIMEOUT";
        /// Drop a connection whose HTTP/2 preface and first SETTINGS have not arrived within this
        /// of the accept, or `off` [default: 10s].
        handshake_timeout: Off<Duration> = parse::opt_duration, "SHARDPOOL_HANDSHAKE_TIMEOUT";
        /// Close (GOAWAY) a connection with no open and no new stream for this long; PINGs do not
        /// count. `off` disables [default: 5m].
        conn_idle_timeout: Off<Duration> = parse::opt_duration, "SHARDPOOL_CONN_IDLE_TIMEOUT";
        /// Close a connection with a response its peer opens no flow-control window for, or a
        /// write its socket takes nothing of, for this long; `off` disables [default: 30s].
        send_stall_timeout: Off<Duration> = parse::opt_duration, "SHARDPOOL_SEND_STALL_TIMEOUT";
        /// Largest request message, at least 1 byte [default: 4MiB].
        max_message_size: usize = parse::positive_size, "SHARDPOOL_MAX_MESSAGE_SIZE";
        /// gRPC server reflection on the serving port, `on` or `off` (grpcurl `list`/`describe`
        /// without .proto files; it reveals the services' schema, nothing else); bare
        /// `--reflection` means on [default: on].
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        reflection: bool = parse::bool, "SHARDPOOL_REFLECTION";
        /// Open connections per shard, or `auto`: what the descriptor limit leaves after
        /// --fd-reserve, split over the shards. At the cap the connection still handshaking, else
        /// the one idle longest, is closed to make room [default: auto].
        max_connections_per_shard: AutoCount =
            AutoCount::from_str,
            "SHARDPOOL_MAX_CONNECTIONS_PER_SHARD";
        /// Descriptors kept from client connections for upstream connections, health checks,
        /// embedded origins, listeners, admin and the runtime, or `auto` (computed from the
        /// upstream settings; see docs/deployment.md) [default: auto].
        fd_reserve: AutoCount = AutoCount::from_str, "SHARDPOOL_FD_RESERVE";
        /// Longest wait of the accept loop after accept errors such as EMFILE (doubling from 5ms)
        /// [default: 1s].
        accept_backoff_max: Duration = parse::duration, "SHARDPOOL_ACCEPT_BACKOFF_MAX";
        /// On SIGINT/SIGTERM, time given to in-flight calls before they are answered UNAVAILABLE
        /// [default: 10s].
        shutdown_grace: Duration = parse::duration, "SHARDPOOL_SHUTDOWN_GRACE";
    }
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

impl Knobs {
    /// The knobs of both admin listeners; reads (and checks) the token file.
    fn admin_config(m: &Knobs) -> AdminConfig {
        let d = AdminConfig::default();
        AdminConfig {
            token: m.admin_token_file.clone(),
            allow_insecure: m.admin_allow_insecure.unwrap_or(d.allow_insecure),
            max_connections: m.admin_max_connections.unwrap_or(d.max_connections),
            read_timeout: m.admin_read_timeout.unwrap_or(d.read_timeout),
            idle_timeout: m.admin_idle_timeout.unwrap_or(d.idle_timeout),
        }
    }

    /// Everything `serve` needs: these settings, then the file's, then the defaults.
    pub(super) fn resolve(&self, file: &ConfigFile) -> Result<Resolved, String> {
        let m = self.merge(&file.knobs, &[], file.shown_path())?;
        let d = ServerConfig::default();
        let max_connections = m.max_connections_per_shard.unwrap_or_default();
        let fd_reserve = m.fd_reserve.unwrap_or_default();
        let server = ServerConfig {
            listen: m.listen.unwrap_or(d.listen),
            admin_listen: m.admin_listen.unwrap_or(d.admin_listen),
            admin: Knobs::admin_config(&m),
            tcp_nodelay: m.tcp_nodelay.unwrap_or(d.tcp_nodelay),
            tcp_keepalive: m.tcp_keepalive.unwrap_or(d.tcp_keepalive),
            listen_backlog: m.listen_backlog.unwrap_or(d.listen_backlog),
            reuse_port_shared: m.reuse_port_shared.unwrap_or(d.reuse_port_shared),
            request_timeout: m.request_timeout.unwrap_or(d.request_timeout),
            concurrency_limit_per_connection: m
                .concurrency_limit_per_connection
                .unwrap_or(d.concurrency_limit_per_connection),
            initial_stream_window: m.initial_stream_window.unwrap_or(d.initial_stream_window),
            initial_connection_window: m
                .initial_connection_window
                .unwrap_or(d.initial_connection_window),
            adaptive_window: m.adaptive_window.unwrap_or(d.adaptive_window),
            max_concurrent_streams: m.max_concurrent_streams.unwrap_or(d.max_concurrent_streams),
            http2_keepalive_interval: m
                .http2_keepalive_interval
                .unwrap_or(d.http2_keepalive_interval),
            http2_keepalive_timeout: m
                .http2_keepalive_timeout
                .unwrap_or(d.http2_keepalive_timeout),
            handshake_timeout: m.handshake_timeout.unwrap_or(d.handshake_timeout),
            conn_idle_timeout: m.conn_idle_timeout.unwrap_or(d.conn_idle_timeout),
            send_stall_timeout: m.send_stall_timeout.unwrap_or(d.send_stall_timeout),
            max_message_size: m.max_message_size.unwrap_or(d.max_message_size),
            reflection: m.reflection.unwrap_or(d.reflection),
            max_connections_per_shard: match max_connections {
                AutoCount::Fixed(n) => n,
                AutoCount::Auto => d.max_connections_per_shard,
            },
            accept_backoff_max: m.accept_backoff_max.unwrap_or(d.accept_backoff_max),
            shutdown_grace: m.shutdown_grace.unwrap_or(d.shutdown_grace),
        };
        // The library names the field; each field is a setting of the same name (the
        // settings table's rule: flag --field, variable SHARDPOOL_FIELD, config key `field`).
        server.validate().map_err(|e| {
            named(
                e.field,
                &format!("SHARDPOOL_{}", e.field.to_uppercase()),
                "",
                e.field,
                &e.message,
            )
        })?;
        let rd = RuntimeOptions::default();
        let runtime = RuntimeOptions {
            pin: m.pin.unwrap_or(rd.pin),
            spin_before_park: m.spin_before_park.unwrap_or(rd.spin_before_park),
            ..rd
        };
        Ok(Resolved {
            server,
            max_connections,
            fd_reserve,
            shards: m.shards,
            placement: m.placement.unwrap_or_default(),
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
    let file = read_config(args.config.as_deref())?;
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
    let (server, _upstream) = upstream_args::start(&upstream, &admin, server, &map, &r.runtime)?;
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
    upstream: &upstream_args::UpstreamSettings,
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

    /// `serve ARGS` as `main` parses them (or clap's error), resolved on demand.
    struct Parsed(Result<Knobs, String>);

    impl Parsed {
        fn resolve(&self, file: &ConfigFile) -> Result<Resolved, String> {
            self.0.clone()?.resolve(file)
        }
    }

    fn knobs(args: &[&str]) -> Parsed {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            knobs: Knobs,
        }
        let args = std::iter::once("serve").chain(args.iter().copied());
        Parsed(
            Cli::try_parse_from(args)
                .map(|c| c.knobs)
                .map_err(|e| e.to_string()),
        )
    }

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
        let defaults = knobs(&[]).resolve(&ConfigFile::default()).unwrap();
        assert_eq!(defaults.server, ServerConfig::default());
        assert_eq!(defaults.placement, Placement::AllCores);

        let args = knobs(&[
            "--request-timeout",
            "250ms",
            "--http2-keepalive-interval",
            "off",
            "--concurrency-limit-per-connection",
            "off",
            "--admin-listen",
            "127.0.0.1:0",
            "--handshake-timeout",
            "off",
            "--send-stall-timeout",
            "7s",
        ]);
        let r = args.resolve(&read_config(Some(&file)).unwrap()).unwrap();
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
        let err = knobs(&["--request-timeout", "soon"])
            .resolve(&ConfigFile::default())
            .unwrap_err();
        assert!(
            err.contains("--request-timeout") && err.contains("SHARDPOOL_REQUEST_TIMEOUT"),
            "{err}"
        );
        assert!(err.contains("write it like 10s"), "{err}");
        let err = knobs(&["--initial-stream-window", "8GiB"])
            .resolve(&ConfigFile::default())
            .unwrap_err();
        assert!(err.contains("2^31-1"), "{err}");
        let err = knobs(&["--max-connections-per-shard", "0"])
            .resolve(&ConfigFile::default())
            .unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
        // Streams that could wait for a slot and fill the connection window are refused.
        let err = knobs(&["--max-concurrent-streams", "1000"])
            .resolve(&ConfigFile::default())
            .unwrap_err();
        // The library names the field (a typed error); the CLI names flag, variable and key.
        assert!(
            err.contains("deadlock")
                && err.contains(
                    "flag --max-concurrent-streams, variable \
                                 SHARDPOOL_MAX_CONCURRENT_STREAMS, config key \
                                 `max_concurrent_streams`"
                ),
            "{err}"
        );
        let err = knobs(&["--max-concurrent-streams", "lots"])
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
        let d = knobs(&[]).resolve(&ConfigFile::default()).unwrap();
        assert_eq!(
            (d.max_connections, d.fd_reserve),
            (AutoCount::Auto, AutoCount::Auto)
        );
        assert_eq!(d.server.accept_backoff_max, Duration::from_secs(1));
        let r = knobs(&[
            "--max-connections-per-shard",
            "300",
            "--fd-reserve",
            "auto",
            "--accept-backoff-max",
            "250ms",
        ])
        .resolve(&ConfigFile::default())
        .unwrap();
        assert_eq!(r.max_connections, AutoCount::Fixed(300));
        assert_eq!(r.server.max_connections_per_shard, 300);
        assert_eq!(r.server.accept_backoff_max, Duration::from_millis(250));
        let err = knobs(&["--fd-reserve", "plenty"])
            .resolve(&ConfigFile::default())
            .unwrap_err();
        assert!(
            err.contains("--fd-reserve")
                && err.contains("SHARDPOOL_FD_RESERVE")
                && err.contains("auto"),
            "{err}"
        );
        let err = knobs(&["--accept-backoff-max", "0s"])
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
        let args = knobs(&[
            "--admin-idle-timeout",
            "90s",
            "--admin-allow-insecure",
            "true",
        ]);
        let r = args.resolve(&read_config(Some(&file)).unwrap()).unwrap();
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
                knobs(&["--admin-max-connections", "0"]),
                "--admin-max-connections",
            ),
            (
                knobs(&["--admin-read-timeout", "0s"]),
                "--admin-read-timeout",
            ),
            (
                knobs(&["--admin-listen", "0.0.0.0:9100"]),
                "--admin-allow-insecure",
            ),
            (
                knobs(&["--admin-token-file", "/nonexistent/shardpool-token"]),
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

    /// Each setting's flag, variable and key agree: `--some-knob`, `SHARDPOOL_SOME_KNOB`,
    /// `some_knob` (the hand-written part of a row is its variable; the gateway's `mode` key is
    /// `--upstream`), and every key of both tables is a flag of `serve`.
    #[test]
    fn flags_variables_and_keys_agree() {
        use clap::CommandFactory;
        let cli = super::super::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let longs: Vec<&str> = serve.get_arguments().filter_map(|a| a.get_long()).collect();
        for arg in serve.get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let want = format!("SHARDPOOL_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(env.to_str(), Some(want.as_str()), "--{long}");
        }
        for key in Knobs::KEYS.iter().chain(upstream_args::UpstreamKnobs::KEYS) {
            let flag = if *key == "mode" {
                "upstream".to_string()
            } else {
                key.replace('_', "-")
            };
            assert!(
                longs.contains(&flag.as_str()),
                "key `{key}` has no flag --{flag}"
            );
        }
        assert_eq!(
            Knobs::KEYS.len() + upstream_args::UpstreamKnobs::KEYS.len(),
            32 + 20
        );
    }

    /// The default each help text states is the default `serve` uses: giving it explicitly
    /// changes nothing. (Defaults described in words, like "every CPU of the placement", are
    /// skipped.)
    #[test]
    fn help_defaults_are_the_real_defaults() {
        use clap::{CommandFactory, Parser};
        let cli = super::super::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let file = ConfigFile::default();
        let resolve = |args: &[&str]| {
            let all = ["shardpool", "serve"].iter().chain(args);
            match super::super::Cli::try_parse_from(all).map(|c| c.command) {
                Ok(super::super::Command::Serve(s)) => {
                    (s.knobs.resolve(&file), s.upstream.resolve(&file))
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) => (Err(e.to_string()), Err(e.to_string())),
            }
        };
        let defaults = resolve(&[]);
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else {
                continue;
            };
            let help = help.to_string();
            let Some(default) = help
                .split("[default: ")
                .nth(1)
                .and_then(|d| d.split(']').next())
            else {
                continue;
            };
            let flag = format!("--{long}");
            let (k, u) = resolve(&[flag.as_str(), default]);
            if k.is_err() && default.contains(' ') {
                continue; // a default in words
            }
            assert_eq!((&k, &u), (&defaults.0, &defaults.1), "{flag} {default}");
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} defaults checked");
    }
}
