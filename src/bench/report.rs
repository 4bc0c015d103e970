//! The result of a run as a serializable report, a readable table and JSON.

use super::config::{BenchConfig, Load, Stop};
use super::histogram::{LatencySummary, PercentilePoint};
use super::metrics::PoolDelta;
use super::run_info::RunInfo;
use super::runner::RunResult;
use serde::Serialize;
use std::fmt::Write as _;

/// One kind of failed call in a [`Report`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureRow {
    /// gRPC status name, e.g. `"UNAVAILABLE"`.
    pub status: String,
    /// gRPC status number.
    pub code: u32,
    /// `"server"` (the server sent this status) or `"client"` (connection error, reset,
    /// timeout, malformed response).
    pub side: String,
    /// Calls that failed this way.
    pub count: u64,
    /// The first message seen.
    pub example: String,
}

/// Every figure of one run, ready for a table, JSON or a plot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// `host:port` of the server.
    pub target: String,
    /// `"closed"` or `"open"`.
    pub mode: &'static str,
    /// Open loop: intended requests per second.
    pub rate: Option<f64>,
    /// TCP connections.
    pub connections: usize,
    /// Streams per connection.
    pub streams: usize,
    /// Client shards (threads).
    pub threads: usize,
    /// CPU of each client shard (`null`: not pinned).
    pub pinned_cpus: Vec<Option<usize>>,
    /// Warmup, seconds.
    pub warmup_s: f64,
    /// `--duration` in seconds, if the run was time-bound.
    pub duration_s: Option<f64>,
    /// `--requests`, if the run was count-bound.
    pub requests_limit: Option<u64>,
    /// Measured time: from the start of the measured phase to the last completion.
    pub elapsed_s: f64,
    /// Measured calls that completed (ok + failed).
    pub requests: u64,
    /// Calls that ended with `OK`.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Failed calls by status.
    pub failures: Vec<FailureRow>,
    /// Open loop: requests due that were never sent (the client fell behind the schedule).
    pub unsent: u64,
    /// Completed calls per second (ok + failed).
    pub qps: f64,
    /// Successful calls per second.
    pub ok_qps: f64,
    /// Latency of successful calls: in the open loop from the intended start when the request
    /// had to wait for a busy stream slot (corrected for coordinated omission), otherwise from
    /// the send.
    pub latency: LatencySummary,
    /// Service time of successful calls (from the actual send). Equal to `latency` in the
    /// closed loop.
    pub service_time: LatencySummary,
    /// `latency` at percentiles spaced on a "nines" axis (for plots).
    pub percentiles: Vec<PercentilePoint>,
    /// Pool activity during the measured phase (shardpool targets only).
    pub pool: Option<PoolDelta>,
    /// Why `pool` is missing, when pool metrics were asked for.
    pub pool_error: Option<String>,
    /// The build, date, machine and command line (set by the caller, which knows its build).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
}

impl Report {
    /// Builds the report of `result`, a run of `config`.
    pub fn new(config: &BenchConfig, result: &RunResult) -> Self {
        let failed = result.failed();
        let requests = result.ok + failed;
        let secs = result.elapsed.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Report {
            target: config.target.to_string(),
            mode: match config.load {
                Load::Closed => "closed",
                Load::Open { .. } => "open",
            },
            rate: match config.load {
                Load::Closed => None,
                Load::Open { rate } => Some(rate),
            },
            connections: config.connections,
            streams: config.streams,
            threads: result.shards,
            pinned_cpus: result.pinned.clone(),
            warmup_s: config.warmup.as_secs_f64(),
            duration_s: match config.stop {
                Stop::Duration(d) => Some(d.as_secs_f64()),
                Stop::Requests(_) => None,
            },
            requests_limit: match config.stop {
                Stop::Duration(_) => None,
                Stop::Requests(n) => Some(n),
            },
            elapsed_s: secs,
            requests,
            ok: result.ok,
            failed,
            failures: result
                .failures
                .iter()
                .map(|((code, side), f)| FailureRow {
                    status: code.to_string(),
                    code: code.as_u32(),
                    side: side.as_str().to_string(),
                    count: f.count,
                    example: f.example.clone(),
                })
                .collect(),
            unsent: result.unsent,
            qps: per_sec(requests),
            ok_qps: per_sec(result.ok),
            latency: result.latency.summary(),
            service_time: result.service.summary(),
            percentiles: result.latency.percentile_curve(20),
            pool: result
                .pool
                .as_ref()
                .map(|(before, after)| PoolDelta::between(before, after)),
            pool_error: result.pool_error.clone(),
            run: None,
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Report has only JSON-representable fields")
    }

    /// The report as a readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let load = match self.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        let pins: Vec<String> = self
            .pinned_cpus
            .iter()
            .map(|c| c.map_or("-".to_string(), |c| c.to_string()))
            .collect();
        let _ = writeln!(
            out,
            "target     {}  ({load}, {} connections x {} streams, {} client threads on cpus [{}])",
            self.target,
            self.connections,
            self.streams,
            self.threads,
            pins.join(",")
        );
        let _ = writeln!(
            out,
            "measured   {:.2} s after {:.2} s warmup",
            self.elapsed_s, self.warmup_s
        );
        let _ = writeln!(
            out,
            "requests   {}  ok {}  failed {}{}",
            self.requests,
            self.ok,
            self.failed,
            if self.unsent > 0 {
                format!("  unsent {} (client fell behind the schedule)", self.unsent)
            } else {
                String::new()
            }
        );
        for f in &self.failures {
            let _ = writeln!(
                out,
                "  {:<20} {:>10}  ({} side) {}",
                f.status, f.count, f.side, f.example
            );
        }
        let _ = writeln!(
            out,
            "throughput {:.1} req/s ({:.1} ok/s)",
            self.qps, self.ok_qps
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ok calls)", "min", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let mut row = |name: &str, s: &LatencySummary| {
            let _ = writeln!(
                out,
                "{name:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                format_us(s.min_us),
                format_us(s.p50_us),
                format_us(s.p90_us),
                format_us(s.p99_us),
                format_us(s.p999_us),
                format_us(s.max_us),
                format_us(s.mean_us)
            );
        };
        if self.rate.is_some() {
            row("from intended start", &self.latency);
            row("service time", &self.service_time);
        } else {
            row("send to response", &self.latency);
        }
        match (&self.pool, &self.pool_error) {
            (Some(p), _) => {
                let reuse = p.reuse_rate.map_or("n/a (no checkouts)".to_string(), |r| {
                    format!("{:.3} %", r * 100.0)
                });
                let _ = writeln!(out);
                let _ = writeln!(
                    out,
                    "pool       reuse {reuse}  checkouts {}  creates {}  steals {}  waits {}  timeouts {}  live {} ({} shards)",
                    p.checkouts, p.creates, p.steals, p.waits, p.timeouts, p.live_after, p.shards
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(out);
                let _ = writeln!(out, "pool       metrics not available: {e}");
            }
            (None, None) => {}
        }
        out
    }
}

/// Formats microseconds with a readable unit: `87.3us`, `1.24ms`, `2.50s`.
///
/// # Example
///
/// ```
/// use shardpool::bench::format_us;
///
/// assert_eq!(format_us(87.3), "87.3us");
/// assert_eq!(format_us(1240.0), "1.24ms");
/// assert_eq!(format_us(2_500_000.0), "2.50s");
/// ```
pub fn format_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::grpc::{Code, Side};
    use crate::bench::histogram::LatencyHistogram;
    use crate::bench::metrics::PoolSnapshot;
    use crate::bench::runner::FailureCount;
    use crate::wire::ShardPoolMetrics;
    use std::time::Duration;

    fn result() -> RunResult {
        let mut latency = LatencyHistogram::new();
        for us in 1..=1000 {
            latency.record(Duration::from_micros(us));
        }
        let mut failures = std::collections::BTreeMap::new();
        failures.insert(
            (Code::Unavailable, Side::Server),
            FailureCount {
                count: 7,
                example: "backend down".into(),
            },
        );
        failures.insert(
            (Code::DeadlineExceeded, Side::Client),
            FailureCount {
                count: 3,
                example: "no response".into(),
            },
        );
        let snapshot = |checkouts, creates| PoolSnapshot {
            total: ShardPoolMetrics {
                checkouts,
                creates,
                ..Default::default()
            },
            shards: 2,
        };
        RunResult {
            service: latency.clone(),
            latency,
            ok: 1000,
            failures,
            elapsed: Duration::from_secs(2),
            unsent: 0,
            shards: 2,
            pinned: vec![Some(0), None],
            pool: Some((snapshot(10, 4), snapshot(1010, 5))),
            pool_error: None,
        }
    }

    fn config() -> BenchConfig {
        BenchConfig::new("127.0.0.1:9".parse().unwrap())
            .connections(4)
            .streams(2)
            .stop(Stop::Duration(Duration::from_secs(2)))
    }

    #[test]
    fn report_counts_and_rates() {
        let r = Report::new(&config(), &result());
        assert_eq!(r.requests, 1010);
        assert_eq!(r.failed, 10);
        assert!((r.qps - 505.0).abs() < 1e-9);
        assert!((r.ok_qps - 500.0).abs() < 1e-9);
        assert_eq!(r.mode, "closed");
        let pool = r.pool.as_ref().unwrap();
        assert_eq!(pool.checkouts, 1000);
        assert_eq!(pool.reuse_rate, Some(0.999));
        // Failures sorted by status code: DEADLINE_EXCEEDED (4) before UNAVAILABLE (14).
        assert_eq!(r.failures[0].status, "DEADLINE_EXCEEDED");
        assert_eq!(r.failures[1].code, 14);
        assert_eq!(r.failures[1].side, "server");
    }

    #[test]
    fn table_shows_every_figure() {
        let table = Report::new(&config(), &result()).to_table();
        for needle in [
            "127.0.0.1:9",
            "closed loop",
            "4 connections x 2 streams",
            "requests   1010  ok 1000  failed 10",
            "UNAVAILABLE",
            "backend down",
            "DEADLINE_EXCEEDED",
            "505.0 req/s",
            "p99.9",
            "500.2us",
            "1.00ms",
            "reuse 99.900 %",
            "cpus [0,-]",
        ] {
            assert!(table.contains(needle), "missing {needle:?} in\n{table}");
        }
    }

    #[test]
    fn json_has_every_figure() {
        let json: serde_json::Value =
            serde_json::from_str(&Report::new(&config(), &result()).to_json()).unwrap();
        assert_eq!(json["requests"], 1010);
        assert_eq!(json["ok"], 1000);
        assert_eq!(json["failures"][1]["status"], "UNAVAILABLE");
        assert_eq!(json["failures"][1]["count"], 7);
        let p50 = json["latency"]["p50_us"].as_f64().unwrap();
        assert!((p50 - 500.0).abs() < 1.0, "{p50}");
        assert_eq!(json["pool"]["steals"], 0);
        assert_eq!(json["pool"]["reuse_rate"], 0.999);
        assert_eq!(json["duration_s"], 2.0);
        assert!(json["rate"].is_null());
        assert!(json["percentiles"].as_array().unwrap().len() > 10);
    }

    #[test]
    fn missing_pool_metrics_are_explained() {
        let mut result = result();
        result.pool = None;
        result.pool_error = Some("not a shardpool server".into());
        let table = Report::new(&config(), &result).to_table();
        assert!(table.contains("pool       metrics not available: not a shardpool server"));
    }
}
