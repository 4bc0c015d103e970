//! `shardpool serve`: the thread-per-core gRPC Greeter.
//!
//! Every knob can be set three ways, highest precedence first: a command-line flag
//! (`--request-timeout 5s`), an environment variable (`SHARDPOOL_REQUEST_TIMEOUT=5s`), or a key
//! of the TOML file given with `--config` (`request_timeout = "5s"`). Unset knobs take the
//! defaults of [`ServerConfig`] (listed in `shardpool serve --help` and docs/deployment.md).
//!
//! Values: durations like `500ms`, `30s`, `10m`, `1h` (or `off` where a knob can be disabled);
//! sizes like `65536`, `64KiB`, `1MiB`; booleans `true`/`false` (a bare boolean flag, e.g. `--pin`, means `true`).
//!
//! Gateway-mode knobs live in the file's `[upstream]` table (see `upstream_args`), with the
//! same precedence.

use super::CliResult;
use shardpool::runtime::RuntimeOptions;
use shardpool::server::{RunningServer, Server, ServerConfig};
use shardpool::topology::{Placement, Topology};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
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
struct Knobs {
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
    /// Admin HTTP/1.1 address serving Prometheus `/metrics`, or `off` [default: off].
    #[arg(long, env = "SHARDPOOL_ADMIN_LISTEN")]
    admin_listen: Option<String>,
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
    /// Deadline of calls without grpc-timeout, and cap of those with one, or `off` [default: 30s].
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
    /// HTTP/2 max concurrent streams per connection [default: 1000].
    #[arg(long, env = "SHARDPOOL_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<String>,
    /// HTTP/2 PING interval, or `off` [default: off].
    #[arg(long, env = "SHARDPOOL_HTTP2_KEEPALIVE_INTERVAL")]
    http2_keepalive_interval: Option<String>,
    /// Close a connection whose PING is not answered within this [default: 20s].
    #[arg(long, env = "SHARDPOOL_HTTP2_KEEPALIVE_TIMEOUT")]
    http2_keepalive_timeout: Option<String>,
    /// Largest request message [default: 4MiB].
    #[arg(long, env = "SHARDPOOL_MAX_MESSAGE_SIZE")]
    max_message_size: Option<String>,
    /// Open connections per shard; more are closed at once [default: 16384].
    #[arg(long, env = "SHARDPOOL_MAX_CONNECTIONS_PER_SHARD")]
    max_connections_per_shard: Option<String>,
    /// On SIGINT/SIGTERM, time given to in-flight calls before they are answered UNAVAILABLE
    /// [default: 10s].
    #[arg(long, env = "SHARDPOOL_SHUTDOWN_GRACE")]
    shutdown_grace: Option<String>,
}

/// Everything `serve` needs, resolved from flags, environment, file and defaults.
#[derive(Debug, PartialEq)]
struct Resolved {
    server: ServerConfig,
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

const KEYS: [&str; 22] = [
    "listen",
    "shards",
    "placement",
    "pin",
    "spin_before_park",
    "admin_listen",
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
    "max_message_size",
    "max_connections_per_shard",
    "shutdown_grace",
    "config",
];

/// The `--config` file: the server's knobs (as strings) and the `[upstream]` table.
#[derive(Debug, Default)]
pub(super) struct ConfigFile {
    /// Where it was read from (`None`: no file).
    pub(super) path: Option<PathBuf>,
    knobs: BTreeMap<String, String>,
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

/// `30s`, `500ms`, `2m`, `1h`, `250us`, or a bare number of seconds.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration like 500ms, 30s, 10m or 1h".to_string())?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}`; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn is_off(s: &str) -> bool {
    matches!(s, "off" | "none" | "0")
}

pub(super) fn parse_opt_duration(s: &str) -> Result<Option<Duration>, String> {
    if is_off(s) {
        Ok(None)
    } else {
        parse_duration(s).map(Some)
    }
}

/// `65536`, `64KiB`, `1MiB`, `1GiB` (also `k`/`KB`, `m`/`MB` meaning the binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size like 65536, 64KiB or 1MiB".to_string())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

fn parse_u32_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|&w| w <= shardpool::server::MAX_WINDOW)
        .ok_or_else(|| format!("{n} is larger than HTTP/2's largest window, 2^31-1 bytes"))
}

fn parse_num<T: FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| "expected a whole number".to_string())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("{e}; expected IP:PORT like 127.0.0.1:50051"))
}

fn parse_opt_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if matches!(s, "off" | "none") {
        Ok(None)
    } else {
        parse_addr(s).map(Some)
    }
}

fn parse_opt_count(s: &str) -> Result<Option<usize>, String> {
    if matches!(s, "off" | "none") {
        Ok(None)
    } else {
        parse_num(s).map(Some)
    }
}

impl Knobs {
    fn resolve(&self, file: &ConfigFile) -> Result<Resolved, String> {
        let l = Lookup {
            file: &file.knobs,
            table: "",
        };
        let d = ServerConfig::default();
        let a = self;
        let server = ServerConfig {
            listen: l.get("listen", &a.listen, parse_addr)?.unwrap_or(d.listen),
            admin_listen: l
                .get("admin_listen", &a.admin_listen, parse_opt_addr)?
                .unwrap_or(d.admin_listen),
            tcp_nodelay: l
                .get("tcp_nodelay", &a.tcp_nodelay, parse_bool)?
                .unwrap_or(d.tcp_nodelay),
            tcp_keepalive: l
                .get("tcp_keepalive", &a.tcp_keepalive, parse_opt_duration)?
                .unwrap_or(d.tcp_keepalive),
            listen_backlog: l
                .get("listen_backlog", &a.listen_backlog, parse_num)?
                .unwrap_or(d.listen_backlog),
            reuse_port_shared: l
                .get("reuse_port_shared", &a.reuse_port_shared, parse_bool)?
                .unwrap_or(d.reuse_port_shared),
            request_timeout: l
                .get("request_timeout", &a.request_timeout, parse_opt_duration)?
                .unwrap_or(d.request_timeout),
            concurrency_limit_per_connection: l
                .get(
                    "concurrency_limit_per_connection",
                    &a.concurrency_limit_per_connection,
                    parse_opt_count,
                )?
                .unwrap_or(d.concurrency_limit_per_connection),
            initial_stream_window: l
                .get(
                    "initial_stream_window",
                    &a.initial_stream_window,
                    parse_u32_size,
                )?
                .unwrap_or(d.initial_stream_window),
            initial_connection_window: l
                .get(
                    "initial_connection_window",
                    &a.initial_connection_window,
                    parse_u32_size,
                )?
                .unwrap_or(d.initial_connection_window),
            adaptive_window: l
                .get("adaptive_window", &a.adaptive_window, parse_bool)?
                .unwrap_or(d.adaptive_window),
            max_concurrent_streams: l
                .get(
                    "max_concurrent_streams",
                    &a.max_concurrent_streams,
                    parse_num,
                )?
                .unwrap_or(d.max_concurrent_streams),
            http2_keepalive_interval: l
                .get(
                    "http2_keepalive_interval",
                    &a.http2_keepalive_interval,
                    parse_opt_duration,
                )?
                .unwrap_or(d.http2_keepalive_interval),
            http2_keepalive_timeout: l
                .get(
                    "http2_keepalive_timeout",
                    &a.http2_keepalive_timeout,
                    parse_duration,
                )?
                .unwrap_or(d.http2_keepalive_timeout),
            max_message_size: l
                .get("max_message_size", &a.max_message_size, |s| {
                    parse_size(s).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
                })?
                .unwrap_or(d.max_message_size),
            max_connections_per_shard: l
                .get(
                    "max_connections_per_shard",
                    &a.max_connections_per_shard,
                    parse_num,
                )?
                .unwrap_or(d.max_connections_per_shard),
            shutdown_grace: l
                .get("shutdown_grace", &a.shutdown_grace, parse_duration)?
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
            pin: l.get("pin", &a.pin, parse_bool)?.unwrap_or(rd.pin),
            spin_before_park: l
                .get("spin_before_park", &a.spin_before_park, parse_opt_duration)?
                .unwrap_or(rd.spin_before_park),
            ..rd
        };
        Ok(Resolved {
            server,
            shards: l.get("shards", &a.shards, parse_num)?,
            placement: l
                .get("placement", &a.placement, |s| {
                    s.parse::<Placement>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            runtime,
        })
    }
}

/// Runs `shardpool serve` until SIGINT/SIGTERM (a second signal skips the grace period).
pub fn run(args: ServeArgs) -> CliResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let file = read_config(args.knobs.config.as_deref())?;
    let r = args.knobs.resolve(&file)?;
    let upstream = args.upstream.resolve(&file)?;
    let topology = Topology::detect();
    let map = topology.place(&r.placement, r.shards)?;
    let grace = r.server.shutdown_grace;
    let (server, _upstream) =
        super::upstream_args::start(&upstream, Server::new(r.server), &map, &r.runtime)?;
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
    fn defaults_then_file_then_flags() {
        let dir = std::env::temp_dir().join(format!("shardpool-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(
            &file,
            "request_timeout = \"5s\"\nmax_concurrent_streams = 77\ntcp_nodelay = false\n\
             initial_stream_window = \"64KiB\"\nplacement = \"cpus:0\"\nreuse_port_shared = true\n",
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
        assert_eq!(r.server.max_concurrent_streams, 77, "file beats default");
        assert!(!r.server.tcp_nodelay);
        assert_eq!(r.server.initial_stream_window, 65536);
        assert_eq!(r.server.concurrency_limit_per_connection, None);
        assert_eq!(r.server.admin_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(r.placement, Placement::Cpus(vec![0]));
        assert!(r.server.reuse_port_shared, "file beats default");
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
        assert!(err.contains("30s"), "{err}");
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
    fn unit_parsers() {
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_opt_duration("off").unwrap(), None);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert!(parse_size("12 furlongs").is_err());
        assert!(parse_bool("maybe").is_err());
    }
}
