//! Gateway-mode knobs of `shardpool serve` and the code that wires the gateway into the server.
//!
//! With no backend, `serve` starts `--embedded-origins` origins on loopback and sends every
//! SayHello through them; with backends it uses those; `--upstream none` keeps the direct
//! Greeter. Every knob is a flag, a `SHARDPOOL_*` environment variable and a key of the
//! `[upstream]` table of the `--config` file, in that order of precedence:
//!
//! ```toml
//! [upstream]
//! backends = ["127.0.0.1:7001", "127.0.0.1:7002"]   # --backend (repeatable), SHARDPOOL_BACKEND
//! lb = "p2c"
//! pool = "sharded"
//! pool_max_size = 64
//! health_interval = "500ms"
//! ```
//!
//! Keys are the flag names with `_` for `-`, except `mode` (`--upstream`) and `backends`
//! (`--backend`); each is a row of the `UpstreamKnobs` table (`super::settings`), `backends` a
//! field of its own. Backends given by flag or variable replace the file's list. SIGHUP re-reads
//! the file's `upstream.backends` (unless backends came from flags) and `--backends-file`.

use super::parse::{self, Off};
use super::settings::{ConfigFile, named, read_config};
use shardpool::runtime::{RuntimeOptions, ShardContext};
use shardpool::server::limits::{AutoCount, FdReserve};
use shardpool::server::{AdminConfig, GreetHandler, RunningServer, Server};
use shardpool::topology::{ShardMap, Topology};
use shardpool::upstream::allow::BackendAllow;
use shardpool::upstream::launch::{self, GatewayHandle, Launch, LaunchError};
use shardpool::upstream::{Balance, ConnectorConfig, GatewayConfig, HealthConfig};
use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

type BoxError = Box<dyn Error + Send + Sync>;

/// Where SayHello answers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamMode {
    /// Backends if given, else embedded origins.
    Auto,
    /// Embedded origins on loopback (`--embedded-origins`).
    Embedded,
    /// The direct Greeter: no upstream at all.
    None,
}

/// Which pool holds upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolKind {
    /// The lock-free per-core sharded pool.
    Sharded,
    /// The `Mutex<HashMap<Key, VecDeque>>` baseline.
    Mutex,
    /// No pool: a new connection per request.
    None,
}

/// The gateway's settings of `shardpool serve`: `--backend` (a list) and the table below.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct UpstreamArgs {
    /// An upstream origin `IP:PORT` (repeatable; the variable takes a comma-separated list);
    /// replaces the config file's `upstream.backends`.
    #[arg(long = "backend", env = "SHARDPOOL_BACKEND", value_delimiter = ',',
          value_parser = |s: &str| -> Result<SocketAddr, String> {
              parse::addr(s)
                  .map_err(|e| named("backend", "SHARDPOOL_BACKEND", "upstream.", "backends", &e))
          })]
    backends: Vec<SocketAddr>,
    #[command(flatten)]
    knobs: UpstreamKnobs,
}

crate::settings! {
    /// The scalar settings of the `[upstream]` table, each defined once (see `super::settings`).
    pub struct UpstreamKnobs in "upstream." {
        /// Where answers come from: `auto` (backends if given, else embedded origins), `embedded`,
        /// or `none` (the direct Greeter, for pure server benchmarks) [default: auto] [config key:
        /// upstream.mode].
        upstream as "mode": UpstreamMode = parse::enum_value, "SHARDPOOL_UPSTREAM";
        /// TOML file with `backends = ["IP:PORT", ...]`, added to the other backends and re-read
        /// on SIGHUP.
        backends_file: PathBuf =
            |s: &str| Ok::<_, String>(PathBuf::from(s)),
            "SHARDPOOL_BACKENDS_FILE";
        /// Origins started in-process when no backend is given; at most one per CPU (or 2)
        /// [default: 2].
        embedded_origins: usize = parse::count, "SHARDPOOL_EMBEDDED_ORIGINS";
        /// Pool implementation: `sharded`, `mutex`, or `none` (connect per request)
        /// [default: sharded].
        pool: PoolKind = parse::enum_value, "SHARDPOOL_POOL";
        /// Load balancing: round-robin, least-connections, random, power-of-two (p2c)
        /// [default: round-robin].
        lb: Balance = |s: &str| s.parse::<Balance>(), "SHARDPOOL_LB";
        /// Live connections per backend (all shards) [default: 256].
        pool_max_size: usize = parse::count, "SHARDPOOL_POOL_MAX_SIZE";
        /// Idle connections kept per backend (all shards) [default: 256].
        pool_max_idle: usize = parse::count, "SHARDPOOL_POOL_MAX_IDLE";
        /// Close pooled connections idle this long, or `off` [default: 60s].
        pool_idle_timeout: Off<Duration> = parse::opt_duration, "SHARDPOOL_POOL_IDLE_TIMEOUT";
        /// Longest time one upstream attempt may take (checkout, connect, exchange); more than 0
        /// [default: 2s].
        upstream_timeout: Duration = parse::positive_duration, "SHARDPOOL_UPSTREAM_TIMEOUT";
        /// Upstream connect timeout [default: 1s].
        connect_timeout: Duration = parse::positive_duration, "SHARDPOOL_CONNECT_TIMEOUT";
        /// TCP keepalive idle time of upstream connections, or `off` [default: 60s].
        upstream_keepalive: Off<Duration> = parse::opt_keepalive, "SHARDPOOL_UPSTREAM_KEEPALIVE";
        /// Peek at pooled connections idle at least this long before reusing them (`0s`: always)
        /// [default: 100ms].
        validate_after: Duration = parse::duration, "SHARDPOOL_VALIDATE_AFTER";
        /// Active health-check period, or `off` [default: 1s].
        health_interval: Off<Duration> = parse::opt_duration, "SHARDPOOL_HEALTH_INTERVAL";
        /// Active health-check timeout [default: 500ms].
        health_timeout: Duration = parse::duration, "SHARDPOOL_HEALTH_TIMEOUT";
        /// Consecutive failed requests that eject a backend (0: never) [default: 3].
        eject_after: u32 = parse::count, "SHARDPOOL_EJECT_AFTER";
        /// First ejection length (doubles per ejection in a row) [default: 1s].
        eject_backoff: Duration = parse::duration, "SHARDPOOL_EJECT_BACKOFF";
        /// Longest ejection [default: 30s].
        eject_backoff_max: Duration = parse::duration, "SHARDPOOL_EJECT_BACKOFF_MAX";
        /// Upstream admin HTTP address (per-backend /metrics, add/remove backends): `IP:PORT`, a
        /// bare `PORT` (binds 127.0.0.1), or `off`; same token and limits as --admin-listen
        /// [default: off].
        upstream_admin_listen: Off<SocketAddr> = parse::opt_addr, "SHARDPOOL_UPSTREAM_ADMIN_LISTEN";
        /// Networks every backend must be in, `CIDR[,CIDR...]` (e.g. `10.0.0.0/8,127.0.0.1/32`):
        /// checked at start, on SIGHUP and for backends added at run time [default: any address].
        backend_allow: BackendAllow =
            |s: &str| s.parse::<BackendAllow>(),
            "SHARDPOOL_BACKEND_ALLOW";
        /// The most backends at once, or `auto` (the backends at start, embedded origins included,
        /// plus 4). The admin RPCs and SIGHUP cannot add beyond it, and `--fd-reserve auto`
        /// reserves descriptors for this many backends [default: auto].
        max_backends: AutoCount = AutoCount::from_str, "SHARDPOOL_MAX_BACKENDS";
    }
}

/// `--embedded-origins` when not set.
const DEFAULT_EMBEDDED_ORIGINS: usize = 2;

/// The most embedded origins `serve` starts: one per CPU this process may use (at least the
/// default). Each is an executor thread with its own io_uring rings; more than the CPUs only
/// compete with the shards, and thousands exhaust memory.
fn max_embedded_origins() -> usize {
    Topology::detect()
        .cpus()
        .len()
        .max(DEFAULT_EMBEDDED_ORIGINS)
}

/// Backends `--max-backends auto` leaves room for beyond those at start.
pub const BACKEND_ROOM: usize = 4;

/// The gateway settings after merging flags, environment, the config file and defaults.
#[derive(Debug, PartialEq)]
pub struct UpstreamSettings {
    mode: UpstreamMode,
    backends: BackendSources,
    embedded_origins: usize,
    pool: PoolKind,
    pool_max_size: usize,
    pool_max_idle: usize,
    pool_idle_timeout: Option<Duration>,
    gateway: GatewayConfig,
    admin_listen: Option<SocketAddr>,
    backend_allow: Option<BackendAllow>,
    max_backends: AutoCount,
}

/// Where the backend list comes from, at start and on SIGHUP.
#[derive(Clone, Debug)]
struct BackendSources {
    /// `--backend`/`SHARDPOOL_BACKEND` (fixed for the process), or the config file's list as
    /// read at start.
    initial: Vec<SocketAddr>,
    /// The config file whose `upstream.backends` is re-read on SIGHUP (`None` when the flags
    /// gave backends, or there is no config file).
    config: Option<PathBuf>,
    /// `--backends-file`, added to the list and re-read on SIGHUP.
    file: Option<PathBuf>,
    /// The flags and variables, so that a re-read config file is checked with them on top, as
    /// at start (a file value that a flag overrides must not fail the check).
    args: Arc<UpstreamArgs>,
}

impl PartialEq for BackendSources {
    fn eq(&self, other: &Self) -> bool {
        (&self.initial, &self.config, &self.file) == (&other.initial, &other.config, &other.file)
    }
}

impl BackendSources {
    /// Re-reads the files: the current list, or why it cannot be read.
    fn reload(&self, fixed: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
        let mut list = match &self.config {
            // The whole [upstream] table must still be valid, though only the list is applied.
            Some(path) => {
                let file = read_config(Some(path))?;
                self.args.resolve(&file)?.backends.initial
            }
            None => self.initial.clone(),
        };
        if let Some(f) = &self.file {
            list.extend(read_backends_file(f)?);
        }
        list.extend(fixed.iter().copied());
        let mut seen = std::collections::HashSet::new();
        list.retain(|a| seen.insert(*a));
        Ok(list)
    }
}

/// The `upstream.backends` list of a config file (empty if absent).
fn config_backends(file: &ConfigFile) -> Result<Vec<SocketAddr>, String> {
    let Some(v) = file.upstream.get("backends") else {
        return Ok(Vec::new());
    };
    let path = file.path.as_deref().unwrap_or(Path::new("the config file"));
    let fix = "write `backends = [\"IP:PORT\", ...]` under [upstream]";
    let toml::Value::Array(list) = v else {
        return Err(format!(
            "config key `upstream.backends` in {}: {v} is not a list; {fix}",
            path.display()
        ));
    };
    list.iter()
        .map(|v| match v.as_str().map(parse::addr) {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(format!(
                "config key `upstream.backends` in {}: `{v}`: {e}",
                path.display()
            )),
            None => Err(format!(
                "config key `upstream.backends` in {}: {v} is not a string; {fix}",
                path.display()
            )),
        })
        .collect()
}

impl UpstreamArgs {
    /// Merges flags/environment with the config file's `[upstream]` table and the defaults.
    /// Errors name the flag, the variable and the key, and say what is expected.
    pub fn resolve(&self, file: &ConfigFile) -> Result<UpstreamSettings, String> {
        // `backends` is a list, read by `config_backends`; the other keys are settings.
        let m = self
            .knobs
            .merge(&file.upstream, &["backends"], file.shown_path())?;
        let dg = GatewayConfig::default();
        let (dh, dc) = (&dg.health, &dg.connector);
        let health = HealthConfig {
            interval: m.health_interval.unwrap_or(dh.interval),
            timeout: m.health_timeout.unwrap_or(dh.timeout),
            eject_after: m.eject_after.unwrap_or(dh.eject_after),
            backoff_base: m.eject_backoff.unwrap_or(dh.backoff_base),
            backoff_max: m.eject_backoff_max.unwrap_or(dh.backoff_max),
        };
        if health.backoff_max < health.backoff_base {
            return Err(format!(
                "--eject-backoff-max ({:?}) is shorter than --eject-backoff ({:?}); raise \
                 eject_backoff_max or lower eject_backoff (SHARDPOOL_EJECT_BACKOFF[_MAX], config \
                 keys upstream.eject_backoff[_max])",
                health.backoff_max, health.backoff_base
            ));
        }
        let connector = ConnectorConfig {
            connect_timeout: m.connect_timeout.unwrap_or(dc.connect_timeout),
            keepalive: m.upstream_keepalive.unwrap_or(dc.keepalive),
            validate_after: m.validate_after.unwrap_or(dc.validate_after),
        };
        let gateway = GatewayConfig {
            balance: m.lb.unwrap_or(dg.balance),
            health,
            request_timeout: m.upstream_timeout.unwrap_or(dg.request_timeout),
            connector,
            // Resolved at start against the backends then (`UpstreamSettings::max_backends`).
            max_backends: dg.max_backends,
        };
        let flag_backends = self.backends.clone();
        let args = Arc::new(self.clone());
        let backends = if flag_backends.is_empty() {
            BackendSources {
                initial: config_backends(file)?,
                config: file.path.clone(),
                file: None,
                args,
            }
        } else {
            BackendSources {
                initial: flag_backends,
                config: None,
                file: None,
                args,
            }
        };
        let backends = BackendSources {
            file: m.backends_file,
            ..backends
        };
        let mode = m.upstream.unwrap_or(UpstreamMode::Auto);
        if mode == UpstreamMode::None && (!backends.initial.is_empty() || backends.file.is_some()) {
            return Err(
                "--upstream none (SHARDPOOL_UPSTREAM, config key `upstream.mode`) serves \
                        the direct Greeter and would ignore the backends given (--backend, \
                        SHARDPOOL_BACKEND, upstream.backends in the config file, or \
                        --backends-file): drop them, or drop --upstream none to send calls \
                        through them"
                    .into(),
            );
        }
        let embedded_origins = m.embedded_origins.unwrap_or(DEFAULT_EMBEDDED_ORIGINS);
        let most = max_embedded_origins();
        // Only origins that will start count: with backends given (and not `--upstream
        // embedded`), or with `--upstream none`, none does.
        let origins_start = mode == UpstreamMode::Embedded
            || (mode == UpstreamMode::Auto
                && backends.initial.is_empty()
                && backends.file.is_none());
        if origins_start && embedded_origins > most {
            return Err(format!(
                "--embedded-origins {embedded_origins} (SHARDPOOL_EMBEDDED_ORIGINS, config key \
                 `upstream.embedded_origins`) is more than this machine can run: each embedded \
                 origin is an executor thread with its own io_uring rings (about 14 MiB each, \
                 measured with 200), one per CPU this process may use at most; give at most \
                 {most}, or run `shardpool origin` processes and pass them with --backend"
            ));
        }
        Ok(UpstreamSettings {
            mode,
            backends,
            embedded_origins,
            pool: m.pool.unwrap_or(PoolKind::Sharded),
            pool_max_size: m.pool_max_size.unwrap_or(256),
            pool_max_idle: m.pool_max_idle.unwrap_or(256),
            pool_idle_timeout: m.pool_idle_timeout.unwrap_or(Some(Duration::from_secs(60))),
            gateway,
            admin_listen: m.upstream_admin_listen.flatten(),
            backend_allow: m.backend_allow,
            max_backends: m.max_backends.unwrap_or_default(),
        })
    }
}

impl UpstreamSettings {
    /// The backends at start, as (external, embedded origins).
    fn backends_at_start(&self) -> Result<(usize, usize), String> {
        let external = self.backends.reload(&[])?.len();
        let embedded = if self.mode == UpstreamMode::Embedded || external == 0 {
            self.embedded_origins
        } else {
            0
        };
        Ok((external, embedded))
    }

    /// `--max-backends` resolved against the backends at start: `auto` is those plus
    /// [`BACKEND_ROOM`]; a number below them is an error naming both.
    fn max_backends(&self) -> Result<usize, String> {
        let (external, embedded) = self.backends_at_start()?;
        let at_start = external.saturating_add(embedded);
        match self.max_backends {
            AutoCount::Auto => Ok(at_start.saturating_add(BACKEND_ROOM)),
            AutoCount::Fixed(n) if n >= at_start.max(1) => Ok(n),
            AutoCount::Fixed(n) => Err(format!(
                "--max-backends {n} (SHARDPOOL_MAX_BACKENDS, config key upstream.max_backends) \
                 is less than the {at_start} backends at start ({external} given, {embedded} \
                 embedded origins); raise it to at least {} or use `auto`",
                at_start.max(1)
            )),
        }
    }

    /// Adds what the gateway needs to `reserve` (nothing with `--upstream none`): per backend
    /// it may have (`--max-backends`), `pool_max_size` upstream connections and one health
    /// check at a time; per embedded origin, also the accepted end of each of those (both ends
    /// are in this process), its listener and its executor's own descriptors.
    pub fn fd_reserve(&self, reserve: &mut FdReserve, admin: &AdminConfig) -> Result<(), String> {
        if self.mode == UpstreamMode::None {
            return Ok(());
        }
        let (_, embedded) = self.backends_at_start()?;
        let backends = self.max_backends()?;
        reserve.upstream = backends.saturating_mul(self.pool_max_size);
        reserve.health_checks = backends.saturating_add(embedded);
        reserve.origins = embedded.saturating_mul(
            self.pool_max_size
                .saturating_add(1 + shardpool::server::limits::PER_SHARD_MARGIN),
        );
        if self.admin_listen.is_some() {
            reserve.listeners = reserve.listeners.saturating_add(1);
            reserve.admin = reserve.admin.saturating_add(admin.max_connections);
        }
        Ok(())
    }
}

/// Starts `server` on `map`, in gateway mode unless `--upstream none` (through
/// [`shardpool::upstream::launch`], as an embedder would). Keep the handle until the server has
/// stopped.
pub fn start<F, H>(
    args: &UpstreamSettings,
    admin: &AdminConfig,
    server: Server<F>,
    map: &ShardMap,
    runtime: &RuntimeOptions,
) -> Result<(RunningServer, Option<GatewayHandle>), BoxError>
where
    F: Fn(ShardContext) -> H + Send + Sync + 'static,
    H: GreetHandler,
{
    if args.mode == UpstreamMode::None {
        return Ok((server.start(map, runtime)?, None));
    }
    let sources = args.backends.clone();
    let launch = Launch {
        gateway: GatewayConfig {
            max_backends: args.max_backends()?,
            ..args.gateway.clone()
        },
        pool: match args.pool {
            PoolKind::Sharded => launch::PoolKind::Sharded,
            PoolKind::Mutex => launch::PoolKind::Mutex,
            PoolKind::None => launch::PoolKind::None,
        },
        pool_max_size: args.pool_max_size,
        pool_max_idle: args.pool_max_idle,
        pool_idle_timeout: args.pool_idle_timeout,
        embedded_origins: args.embedded_origins,
        embedded_only: args.mode == UpstreamMode::Embedded,
        backends: Arc::new(move || sources.reload(&[])),
        allow: args.backend_allow.clone(),
        admin_listen: args.admin_listen,
        admin: admin.clone(),
        reload_on_sighup: args.backends.config.is_some() || args.backends.file.is_some(),
    };
    let (running, handle) =
        launch::start(launch, server, map, runtime).map_err(|e| -> BoxError {
            match e {
                LaunchError::NoBackend => "no backend: give --backend ADDR, upstream.backends in \
                                           the --config file, a --backends-file, or \
                                           --embedded-origins N > 0 (or --upstream none)"
                    .into(),
                LaunchError::Pool(e) => format!(
                    "invalid upstream pool settings: {e} (flags --pool-max-size/--pool-max-idle, \
                     config keys upstream.pool_max_size/upstream.pool_max_idle)"
                )
                .into(),
                e => e.into(),
            }
        })?;
    let backends = handle.backends_at_start();
    println!(
        "shardpool: gateway to {} backend(s) [{}]{}, pool {:?}, lb {}",
        backends.len(),
        backends
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if handle.embedded_origins().is_empty() {
            ""
        } else {
            " (embedded origins)"
        },
        args.pool,
        args.gateway.balance
    );
    if let Some(a) = handle.admin_addr() {
        println!("shardpool: upstream admin on {a}");
    }
    Ok((running, Some(handle)))
}

/// Reads `backends = ["IP:PORT", ...]` from a TOML file.
fn read_backends_file(path: &Path) -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read backends file {}: {e}", path.display()))?;
    parse_backends(&text, path)
}

/// Parses the text of a backends file read from `path` (named in errors).
pub(super) fn parse_backends(text: &str, path: &Path) -> Result<Vec<SocketAddr>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("backends file {} is not valid TOML: {e}", path.display()))?;
    let list = match table.get("backends") {
        Some(toml::Value::Array(a)) => a,
        _ => {
            return Err(format!(
                "backends file {} needs `backends = [\"IP:PORT\", ...]`",
                path.display()
            ));
        }
    };
    list.iter()
        .map(|v| {
            v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                format!(
                    "backends file {}: `{v}` is not an IP:PORT string",
                    path.display()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve ARGS` (the gateway's part) as clap parses them, or clap's error.
    struct Parsed(Result<UpstreamArgs, String>);

    impl Parsed {
        fn resolve(&self, file: &ConfigFile) -> Result<UpstreamSettings, String> {
            self.0.clone()?.resolve(file)
        }
    }

    fn upstream(args: &[&str]) -> Parsed {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            upstream: UpstreamArgs,
        }
        let args = std::iter::once("serve").chain(args.iter().copied());
        Parsed(
            Cli::try_parse_from(args)
                .map(|c| c.upstream)
                .map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn backends_file_parses_and_bad_files_say_why() {
        let dir = std::env::temp_dir().join(format!("shardpool-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("backends.toml");
        std::fs::write(&f, "backends = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\n").unwrap();
        assert_eq!(read_backends_file(&f).unwrap().len(), 2);
        std::fs::write(&f, "backends = [\"nowhere\"]\n").unwrap();
        assert!(read_backends_file(&f).unwrap_err().contains("IP:PORT"));
        std::fs::write(&f, "other = 1\n").unwrap();
        assert!(read_backends_file(&f).unwrap_err().contains("backends = ["));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn config_file(name: &str, text: &str) -> (PathBuf, ConfigFile) {
        let dir = std::env::temp_dir().join(format!(
            "shardpool-upstream-cfg-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("serve.toml");
        std::fs::write(&f, text).unwrap();
        let file = read_config(Some(&f)).unwrap();
        (dir, file)
    }

    /// A file value that a flag overrides fails no check, neither when the settings are
    /// resolved nor when the backends are read again at start (for the descriptor reserve) or
    /// on SIGHUP: the checks see the flags on top of the file, as the settings do.
    #[test]
    fn flags_override_file_values_in_every_check() {
        let (dir, file) = config_file(
            "override",
            "[upstream]\nbackends = [\"127.0.0.1:7001\"]\nmode = \"none\"\n\
             embedded_origins = 64\neject_backoff = \"60s\"\n",
        );
        let args = upstream(&[
            "--upstream",
            "auto",
            "--embedded-origins",
            "1",
            "--eject-backoff-max",
            "120s",
        ]);
        let r = args.resolve(&file).unwrap();
        assert_eq!((r.mode, r.embedded_origins), (UpstreamMode::Auto, 1));
        assert_eq!(
            r.backends.reload(&[]),
            Ok(vec!["127.0.0.1:7001".parse().unwrap()])
        );
        let mut reserve = FdReserve::server(1, None);
        r.fd_reserve(&mut reserve, &AdminConfig::default()).unwrap();
        // Embedded origins beyond the CPUs are refused only when they would start.
        let many = upstream(&["--embedded-origins", "64"]);
        let (dir2, listed) = config_file("listed", "[upstream]\nbackends = [\"127.0.0.1:7001\"]\n");
        assert!(many.resolve(&listed).is_ok());
        let err = many.resolve(&ConfigFile::default()).unwrap_err();
        assert!(err.contains("--embedded-origins 64"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }

    #[test]
    fn defaults_then_config_table_then_flags() {
        let d = UpstreamArgs::default()
            .resolve(&ConfigFile::default())
            .unwrap();
        assert_eq!(d.gateway, GatewayConfig::default());
        assert_eq!(
            (d.mode, d.pool, d.embedded_origins),
            (UpstreamMode::Auto, PoolKind::Sharded, 2)
        );
        assert_eq!((d.pool_max_size, d.pool_max_idle), (256, 256));
        assert_eq!(d.pool_idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!((d.admin_listen, d.backends.config.as_ref()), (None, None));

        let (dir, file) = config_file(
            "layers",
            "request_timeout = \"5s\"\n[upstream]\nbackends = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\n\
             lb = \"random\"\npool = \"mutex\"\npool_max_size = 9\nhealth_interval = \"off\"\n\
             eject_after = 5\nconnect_timeout = \"250ms\"\nmode = \"auto\"\n\
             upstream_admin_listen = \"127.0.0.1:0\"\n",
        );
        let r = UpstreamArgs::default().resolve(&file).unwrap();
        assert_eq!(r.gateway.balance, Balance::Random, "file beats default");
        assert_eq!((r.pool, r.pool_max_size), (PoolKind::Mutex, 9));
        assert_eq!(r.gateway.health.interval, None);
        assert_eq!(r.gateway.health.eject_after, 5);
        assert_eq!(
            r.gateway.connector.connect_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(r.admin_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(r.backends.initial.len(), 2);
        assert_eq!(
            r.backends.config, file.path,
            "SIGHUP re-reads the file's list"
        );

        let flags = upstream(&[
            "--lb",
            "p2c",
            "--backend",
            "127.0.0.1:7009",
            "--pool-max-size",
            "3",
        ]);
        let r = flags.resolve(&file).unwrap();
        assert_eq!(r.gateway.balance, Balance::PowerOfTwo, "flag beats file");
        assert_eq!(r.pool_max_size, 3);
        assert_eq!(r.pool, PoolKind::Mutex, "unset flags keep the file's value");
        assert_eq!(r.backends.initial, vec!["127.0.0.1:7009".parse().unwrap()]);
        assert_eq!(
            r.backends.config, None,
            "flag backends replace the file's list"
        );
        assert_eq!(
            r.backends
                .reload(&["127.0.0.1:7009".parse().unwrap()])
                .unwrap()
                .len(),
            1,
            "no duplicates"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_upstream_values_name_the_key_and_the_fix() {
        let bad = |name: &str, text: &str| -> String {
            let (dir, file) = config_file(name, text);
            let e = UpstreamArgs::default().resolve(&file).unwrap_err();
            std::fs::remove_dir_all(&dir).unwrap();
            e
        };
        let e = bad("size", "[upstream]\npool_max_size = \"lots\"\n");
        assert!(
            e.contains("upstream.pool_max_size")
                && e.contains("--pool-max-size")
                && e.contains("SHARDPOOL_POOL_MAX_SIZE")
                && e.contains("whole number"),
            "{e}"
        );
        let e = bad("lb", "[upstream]\nlb = \"fastest\"\n");
        assert!(
            e.contains("upstream.lb") && e.contains("round-robin"),
            "{e}"
        );
        let e = bad("pool", "[upstream]\npool = \"bucket\"\n");
        assert!(e.contains("sharded, mutex, none"), "{e}");
        let e = bad("mode", "[upstream]\nmode = \"proxy\"\n");
        assert!(
            e.contains("--upstream") && e.contains("upstream.mode"),
            "{e}"
        );
        let e = bad("key", "[upstream]\npool_size = 3\n");
        assert!(
            e.contains("upstream.pool_size") && e.contains("pool_max_size"),
            "{e}"
        );
        let e = bad("list", "[upstream]\nbackends = \"127.0.0.1:7001\"\n");
        assert!(
            e.contains("not a list") && e.contains("backends = ["),
            "{e}"
        );
        let e = bad("addr", "[upstream]\nbackends = [\"db:7001\"]\n");
        assert!(e.contains("`\"db:7001\"`") && e.contains("IP:PORT"), "{e}");
        let e = bad(
            "backoff",
            "[upstream]\neject_backoff = \"10s\"\neject_backoff_max = \"1s\"\n",
        );
        assert!(e.contains("eject_backoff_max"), "{e}");
        let e = upstream(&["--backend", "nowhere"])
            .resolve(&ConfigFile::default())
            .unwrap_err();
        assert!(e.contains("--backend") && e.contains("IP:PORT"), "{e}");
        let dir =
            std::env::temp_dir().join(format!("shardpool-upstream-nt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("serve.toml");
        std::fs::write(&f, "upstream = 3\n").unwrap();
        let e = read_config(Some(&f)).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("[upstream]"), "{e}");
    }

    #[test]
    fn max_backends_bounds_run_time_additions_and_the_reserve_counts_it() {
        let args = |max: Option<&str>| {
            let mut a = vec![
                "--backend",
                "127.0.0.1:7001,127.0.0.1:7002",
                "--pool-max-size",
                "10",
            ];
            a.extend(max.map(|m| ["--max-backends", m]).into_iter().flatten());
            upstream(&a)
        };
        let resolve = |max| args(max).resolve(&ConfigFile::default()).unwrap();
        assert_eq!(resolve(None).max_backends(), Ok(2 + BACKEND_ROOM), "auto");
        assert_eq!(resolve(Some("8")).max_backends(), Ok(8));
        let e = resolve(Some("1")).max_backends().unwrap_err();
        assert!(
            e.contains("--max-backends 1")
                && e.contains("SHARDPOOL_MAX_BACKENDS")
                && e.contains("2"),
            "{e}"
        );
        let e = args(Some("many"))
            .resolve(&ConfigFile::default())
            .unwrap_err();
        assert!(e.contains("max_backends") && e.contains("auto"), "{e}");
        // The reserve holds pool_max_size connections and a health check per backend allowed.
        let mut r = FdReserve::default();
        resolve(Some("8"))
            .fd_reserve(&mut r, &AdminConfig::default())
            .unwrap();
        assert_eq!((r.upstream, r.health_checks), (80, 8));
    }
}
