//! What to run: target, load shape, stop condition. Validated before any socket is opened.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How requests are offered to the server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Closed loop: every stream slot sends its next request as soon as the previous one completes.
    /// Measures throughput at a fixed concurrency; latency is the service time of each call.
    Closed,
    /// Open loop: requests are scheduled at a fixed total rate (requests per second) regardless of
    /// how fast the server answers; latency is measured from the *intended* start time, which
    /// corrects for coordinated omission.
    Open {
        /// Total intended requests per second over all client shards.
        rate: f64,
    },
}

/// When the measured phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stop issuing requests after this long (in-flight requests are awaited).
    Duration(Duration),
    /// Stop after this many measured requests have been issued.
    Requests(u64),
}

/// A complete, validated description of one load run.
///
/// # Example
///
/// ```
/// use shardpool::bench::{BenchConfig, Load, Stop};
/// use std::time::Duration;
///
/// let config = BenchConfig::new("127.0.0.1:50051".parse().unwrap())
///     .connections(4)
///     .streams(8)
///     .load(Load::Open { rate: 10_000.0 })
///     .stop(Stop::Duration(Duration::from_secs(5)));
/// assert!(config.validate().is_ok());
/// assert!(config.clone().connections(0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server address (HTTP/2 cleartext, prior knowledge).
    pub target: SocketAddr,
    /// The `:authority` sent with each request.
    pub authority: String,
    /// TCP connections in total, spread over the client shards.
    pub connections: usize,
    /// Concurrent streams (requests in flight) per connection.
    pub streams: usize,
    /// Closed or open loop.
    pub load: Load,
    /// When the measured phase ends.
    pub stop: Stop,
    /// Unrecorded load before the measured phase (connections warm, pools filled).
    pub warmup: Duration,
    /// Client shards (OS threads, one tokio current-thread runtime each); 0 = one per
    /// available core.
    pub threads: usize,
    /// Pin client shard `i` to the `i`-th CPU of `cpus` (or of all CPUs when empty).
    pub pin: bool,
    /// CPUs the client shards may be pinned to (empty = all).
    pub cpus: Vec<usize>,
    /// A call without a response after this long counts as failed (DEADLINE_EXCEEDED, client side).
    pub timeout: Duration,
    /// The `name` field of each `HelloRequest`.
    pub name: String,
    /// Read `shardpool.v1.Admin/PoolMetrics` before and after the measured phase.
    pub pool_metrics: bool,
}

impl BenchConfig {
    /// Defaults: 16 connections × 8 streams, closed loop, 10 s measured after 2 s warmup,
    /// one shard per core, pinned, 10 s per-call timeout.
    pub fn new(target: SocketAddr) -> Self {
        BenchConfig {
            target,
            authority: target.to_string(),
            connections: 16,
            streams: 8,
            load: Load::Closed,
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(2),
            threads: 0,
            pin: true,
            cpus: Vec::new(),
            timeout: Duration::from_secs(10),
            name: "shardpool".to_string(),
            pool_metrics: true,
        }
    }

    /// Sets [`BenchConfig::connections`].
    #[must_use]
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    /// Sets [`BenchConfig::streams`].
    #[must_use]
    pub fn streams(mut self, n: usize) -> Self {
        self.streams = n;
        self
    }

    /// Sets [`BenchConfig::load`].
    #[must_use]
    pub fn load(mut self, load: Load) -> Self {
        self.load = load;
        self
    }

    /// Sets [`BenchConfig::stop`].
    #[must_use]
    pub fn stop(mut self, stop: Stop) -> Self {
        self.stop = stop;
        self
    }

    /// Sets [`BenchConfig::warmup`].
    #[must_use]
    pub fn warmup(mut self, warmup: Duration) -> Self {
        self.warmup = warmup;
        self
    }

    /// Sets [`BenchConfig::threads`] (0 = one per available core).
    #[must_use]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Sets [`BenchConfig::pin`].
    #[must_use]
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Sets [`BenchConfig::timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`BenchConfig::pool_metrics`].
    #[must_use]
    pub fn pool_metrics(mut self, on: bool) -> Self {
        self.pool_metrics = on;
        self
    }

    /// Checks every field; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connections == 0 {
            return Err(ConfigError("--connections must be at least 1".into()));
        }
        if self.streams == 0 {
            return Err(ConfigError("--streams must be at least 1".into()));
        }
        if let Load::Open { rate } = self.load
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError(format!(
                "--rate must be a positive number of requests per second (got {rate}); \
                 omit --rate for a closed loop"
            )));
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => {
                return Err(ConfigError(
                    "--duration must be longer than 0s, e.g. 10s".into(),
                ));
            }
            Stop::Requests(0) => {
                return Err(ConfigError("--requests must be at least 1".into()));
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return Err(ConfigError(
                "--timeout must be longer than 0s, e.g. 10s".into(),
            ));
        }
        let available = available_cpus();
        if let Some(bad) = self.cpus.iter().find(|&&c| !available.contains(&c)) {
            return Err(ConfigError(format!(
                "--cpus lists CPU {bad}, which this process may not run on (available: {available:?})"
            )));
        }
        Ok(())
    }

    /// The number of client shards this config runs: `threads`, or one per usable CPU, never
    /// more than there are connections.
    pub fn shard_count(&self) -> usize {
        let wanted = if self.threads > 0 {
            self.threads
        } else if !self.cpus.is_empty() {
            self.cpus.len()
        } else {
            available_cpus().len().max(1)
        };
        wanted.min(self.connections).max(1)
    }
}

/// CPUs this process may be pinned to, as reported by `core_affinity` (empty if unknown).
pub fn available_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// An invalid [`BenchConfig`]; the message names the flag and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1.5s`, `250us` (a bare number means seconds).
/// Units: `ns`, `us`/`µs`, `ms`, `s`/`sec`/`secs`, `m`/`min`/`mins`, `h`. The binary's every
/// subcommand (`bench`, `compare`, `serve`, `origin`) parses durations with this function.
///
/// # Example
///
/// ```
/// use shardpool::bench::parse_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert!(parse_duration("ten seconds").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let hint = "write it like 10s, 500ms, 2m or 1.5s";
    if text.starts_with('-') {
        return Err(format!("duration `{text}` is negative: {hint}"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("cannot read `{text}` as a duration: {hint}"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`: {hint}"
            ));
        }
    };
    let d = Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("duration `{text}` is out of range: {hint}"))?;
    // Far beyond any timeout or run anyone means, and small enough that adding it to an
    // `Instant` cannot overflow (which panics).
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{text}` is longer than 10 years: give a shorter one (or `off` where a \
             knob can be turned off)"
        ));
    }
    Ok(d)
}

/// The longest duration [`parse_duration`] accepts: 10 years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Resolves `host:port` (a bare port means 127.0.0.1) to one socket address.
///
/// # Example
///
/// ```
/// use shardpool::bench::resolve_target;
///
/// assert_eq!(resolve_target("50051").unwrap().to_string(), "127.0.0.1:50051");
/// assert_eq!(resolve_target("127.0.0.1:8080").unwrap().port(), 8080);
/// assert!(resolve_target("no-port-here").is_err());
/// ```
pub fn resolve_target(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let text = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        format!("cannot resolve target `{text}` ({e}): give it as HOST:PORT, e.g. 127.0.0.1:50051")
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("target `{text}` resolved to no address: give it as HOST:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BenchConfig {
        BenchConfig::new("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn rejects_bad_load_with_the_flag_name() {
        let err = base()
            .load(Load::Open { rate: 0.0 })
            .validate()
            .unwrap_err();
        assert!(err.0.contains("--rate"), "{err}");
        let err = base()
            .load(Load::Open { rate: f64::NAN })
            .validate()
            .unwrap_err();
        assert!(err.0.contains("--rate"), "{err}");
        let err = base().streams(0).validate().unwrap_err();
        assert!(err.0.contains("--streams"), "{err}");
        let err = base().stop(Stop::Requests(0)).validate().unwrap_err();
        assert!(err.0.contains("--requests"), "{err}");
        let err = base()
            .stop(Stop::Duration(Duration::ZERO))
            .validate()
            .unwrap_err();
        assert!(err.0.contains("--duration"), "{err}");
    }

    #[test]
    fn shard_count_never_exceeds_connections() {
        assert_eq!(base().connections(1).threads(8).shard_count(), 1);
        assert_eq!(base().connections(16).threads(3).shard_count(), 3);
        assert!(base().connections(16).threads(0).shard_count() >= 1);
    }

    #[test]
    fn durations_parse_or_explain() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        let err = parse_duration("5 fortnights").unwrap_err();
        assert!(err.contains("unknown duration unit"), "{err}");
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
    }
}
