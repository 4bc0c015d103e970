//! Gateway-mode flags of `shardpool serve` and the code that wires the gateway into the server.
//!
//! With no `--backend`, `serve` starts `--embedded-origins` origins on loopback and sends every
//! SayHello through them; with `--backend ADDR` (repeatable) it uses those; `--upstream none`
//! keeps the direct Greeter. Every flag also reads a `SHARDPOOL_*` environment variable.

use super::serve::{parse_duration, parse_opt_duration};
use shardpool::baseline::MutexPool;
use shardpool::pool::{Config, ConnectionPool, ShardedPool};
use shardpool::runtime::{RuntimeOptions, ShardContext};
use shardpool::server::{GreetHandler, RunningServer, Server};
use shardpool::topology::ShardMap;
use shardpool::upstream::admin::AdminEndpoint;
use shardpool::upstream::origin::{Origin, OriginConfig, RunningOrigin};
use shardpool::upstream::{
    Balance, ConnectorConfig, Gateway, GatewayConfig, HealthChecker, HealthConfig, UpstreamManager,
};
use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

type BoxError = Box<dyn Error + Send + Sync>;

/// A duration that may be `off`. An alias, so clap takes the whole `Option` from the parser
/// instead of treating the flag as optional.
type OffOrDuration = Option<Duration>;

/// Where SayHello answers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamMode {
    /// `--backend`s if given, else embedded origins.
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

/// Gateway flags of `shardpool serve`.
#[derive(clap::Args, Debug)]
pub struct UpstreamArgs {
    /// Where answers come from: `auto` (backends if given, else embedded origins), `embedded`,
    /// or `none` (the direct Greeter, for pure server benchmarks).
    #[arg(long, env = "SHARDPOOL_UPSTREAM", value_enum, default_value_t = UpstreamMode::Auto)]
    upstream: UpstreamMode,
    /// An upstream origin `IP:PORT` (repeatable; the variable takes a comma-separated list).
    #[arg(long = "backend", env = "SHARDPOOL_BACKEND", value_delimiter = ',')]
    backends: Vec<SocketAddr>,
    /// TOML file with `backends = ["IP:PORT", ...]`, added to --backend and re-read on SIGHUP.
    #[arg(long, env = "SHARDPOOL_BACKENDS_FILE")]
    backends_file: Option<PathBuf>,
    /// Origins started in-process when no backend is given.
    #[arg(long, env = "SHARDPOOL_EMBEDDED_ORIGINS", default_value_t = 2)]
    embedded_origins: usize,
    /// Pool implementation: `sharded`, `mutex`, or `none` (connect per request).
    #[arg(long, env = "SHARDPOOL_POOL", value_enum, default_value_t = PoolKind::Sharded)]
    pool: PoolKind,
    /// Load balancing: round-robin, least-connections, random, power-of-two (p2c).
    #[arg(long, env = "SHARDPOOL_LB", default_value = "round-robin")]
    lb: Balance,
    /// Live connections per backend (all shards).
    #[arg(long, env = "SHARDPOOL_POOL_MAX_SIZE", default_value_t = 256)]
    pool_max_size: usize,
    /// Idle connections kept per backend (all shards).
    #[arg(long, env = "SHARDPOOL_POOL_MAX_IDLE", default_value_t = 256)]
    pool_max_idle: usize,
    /// Close pooled connections idle this long, or `off`.
    #[arg(long, env = "SHARDPOOL_POOL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_opt_duration)]
    pool_idle_timeout: OffOrDuration,
    /// Longest time one upstream attempt may take (checkout, connect, exchange).
    #[arg(long, env = "SHARDPOOL_UPSTREAM_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long, env = "SHARDPOOL_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// TCP keepalive idle time of upstream connections, or `off`.
    #[arg(long, env = "SHARDPOOL_UPSTREAM_KEEPALIVE", default_value = "60s", value_parser = parse_opt_duration)]
    upstream_keepalive: OffOrDuration,
    /// Peek at pooled connections idle at least this long before reusing them (`0s`: always).
    #[arg(long, env = "SHARDPOOL_VALIDATE_AFTER", default_value = "100ms", value_parser = parse_duration)]
    validate_after: Duration,
    /// Active health-check period, or `off`.
    #[arg(long, env = "SHARDPOOL_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_opt_duration)]
    health_interval: OffOrDuration,
    /// Active health-check timeout.
    #[arg(long, env = "SHARDPOOL_HEALTH_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    health_timeout: Duration,
    /// Consecutive failed requests that eject a backend (0: never).
    #[arg(long, env = "SHARDPOOL_EJECT_AFTER", default_value_t = 3)]
    eject_after: u32,
    /// First ejection length (doubles per ejection in a row).
    #[arg(long, env = "SHARDPOOL_EJECT_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    eject_backoff: Duration,
    /// Longest ejection.
    #[arg(long, env = "SHARDPOOL_EJECT_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    eject_backoff_max: Duration,
    /// Upstream admin HTTP address (per-backend /metrics, add/remove backends), or unset: off.
    #[arg(long, env = "SHARDPOOL_UPSTREAM_ADMIN_LISTEN")]
    upstream_admin_listen: Option<SocketAddr>,
}

/// What the gateway keeps running beside the server; drop it after the server has stopped.
pub struct UpstreamHandle {
    close: Box<dyn FnOnce() + Send>,
    _admin: Option<AdminEndpoint>,
    _health: Option<HealthChecker>,
    sighup: Option<signal_hook::iterator::Handle>,
    origins: Vec<RunningOrigin>,
}

impl Drop for UpstreamHandle {
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

/// Starts `server` on `map`, in gateway mode unless `--upstream none`. Keep the handle until
/// the server has stopped.
pub fn start<F, H>(
    args: &UpstreamArgs,
    server: Server<F>,
    map: &ShardMap,
    runtime: &RuntimeOptions,
) -> Result<(RunningServer, Option<UpstreamHandle>), BoxError>
where
    F: Fn(ShardContext) -> H + Send + Sync + 'static,
    H: GreetHandler,
{
    if args.upstream == UpstreamMode::None {
        return Ok((server.start(map, runtime)?, None));
    }
    let connector = ConnectorConfig {
        connect_timeout: args.connect_timeout,
        keepalive: args.upstream_keepalive,
        validate_after: args.validate_after,
    };
    let config = GatewayConfig {
        balance: args.lb,
        health: HealthConfig {
            interval: args.health_interval,
            timeout: args.health_timeout,
            eject_after: args.eject_after,
            backoff_base: args.eject_backoff,
            backoff_max: args.eject_backoff_max,
        },
        request_timeout: args.upstream_timeout,
        connector: connector.clone(),
    };
    let manager = UpstreamManager::new(connector, map.len());
    let pool_config = Config::default()
        .shards(map.len())
        .max_size(args.pool_max_size)
        .max_idle_per_key(args.pool_max_idle)
        .max_total_idle(args.pool_max_idle.saturating_mul(64))
        .idle_timeout(args.pool_idle_timeout)
        .wait_timeout(Some(args.upstream_timeout))
        .steal_order(map.steal_order());
    match args.pool {
        PoolKind::Sharded => {
            let pool = ShardedPool::new(manager.clone(), pool_config)
                .map_err(|e| format!("invalid upstream pool settings: {e}"))?;
            run(
                args,
                Gateway::new(config, Some(pool), manager, map.len()),
                server,
                map,
                runtime,
            )
        }
        PoolKind::Mutex => {
            let pool = MutexPool::new(manager.clone(), pool_config)
                .map_err(|e| format!("invalid upstream pool settings: {e}"))?;
            run(
                args,
                Gateway::new(config, Some(pool), manager, map.len()),
                server,
                map,
                runtime,
            )
        }
        PoolKind::None => {
            let gateway: Gateway<ShardedPool<UpstreamManager>> =
                Gateway::new(config, None, manager, map.len());
            run(args, gateway, server, map, runtime)
        }
    }
}

fn run<P, F, H>(
    args: &UpstreamArgs,
    gateway: Gateway<P>,
    server: Server<F>,
    map: &ShardMap,
    runtime: &RuntimeOptions,
) -> Result<(RunningServer, Option<UpstreamHandle>), BoxError>
where
    P: ConnectionPool<UpstreamManager>,
    F: Fn(ShardContext) -> H + Send + Sync + 'static,
    H: GreetHandler,
{
    let mut origins = Vec::new();
    let mut backends = args.backends.clone();
    if let Some(file) = &args.backends_file {
        backends.extend(read_backends_file(file)?);
    }
    if args.upstream == UpstreamMode::Embedded || backends.is_empty() {
        if args.embedded_origins == 0 {
            return Err("no backend: give --backend ADDR, a --backends-file, or --embedded-origins N > 0 (or --upstream none)".into());
        }
        for i in 0..args.embedded_origins {
            let origin = Origin::start(OriginConfig {
                id: format!("embedded-{i}"),
                ..OriginConfig::default()
            })
            .map_err(|e| format!("cannot start embedded origin {i}: {e}"))?;
            backends.push(origin.local_addr());
            origins.push(origin);
        }
    }
    for b in &backends {
        gateway.add_backend(*b);
    }
    let server = gateway.install(server);
    let health = gateway.start_health_checks();
    let admin = match args.upstream_admin_listen {
        Some(a) => Some(AdminEndpoint::start(a, gateway.clone())?),
        None => None,
    };
    let sighup = match &args.backends_file {
        Some(file) => Some(watch_sighup(
            file.clone(),
            args.backends.clone(),
            gateway.clone(),
        )?),
        None => None,
    };
    let running = server.start(map, runtime)?;
    println!(
        "shardpool: gateway to {} backend(s) [{}]{}, pool {:?}, lb {}",
        backends.len(),
        backends
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if origins.is_empty() {
            ""
        } else {
            " (embedded origins)"
        },
        args.pool,
        args.lb
    );
    if let Some(a) = &admin {
        println!("shardpool: upstream admin on {}", a.local_addr());
    }
    let g = gateway.clone();
    Ok((
        running,
        Some(UpstreamHandle {
            close: Box::new(move || {
                if let Some(pool) = g.pool() {
                    pool.close();
                }
            }),
            _admin: admin,
            _health: health,
            sighup,
            origins,
        }),
    ))
}

/// Reads `backends = ["IP:PORT", ...]` from a TOML file.
fn read_backends_file(path: &Path) -> Result<Vec<SocketAddr>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read backends file {}: {e}", path.display()))?;
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

/// On SIGHUP: the backend set becomes `--backend`s plus the file's list.
fn watch_sighup<P: ConnectionPool<UpstreamManager>>(
    file: PathBuf,
    fixed: Vec<SocketAddr>,
    gateway: Gateway<P>,
) -> Result<signal_hook::iterator::Handle, BoxError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("upstream-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match read_backends_file(&file) {
                    Ok(mut list) => {
                        list.extend(fixed.iter().copied());
                        let (added, removed) = gateway.set_backends(&list);
                        tracing::info!(added, removed, "SIGHUP: backends reloaded");
                    }
                    Err(e) => tracing::error!("SIGHUP: keeping the current backends: {e}"),
                }
            }
        })?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
