//! The load generator behind `shardpool bench` and `shardpool compare`: a gRPC Greeter client
//! for any server (shardpool, tonic, others).
//!
//! * **Client shards**: one OS thread per shard, pinned with `core_affinity`, each running a
//!   tokio current-thread runtime that drives its share of the connections with the `h2` client
//!   directly (hand-written gRPC unary framing, prost messages). Each shard records into its own
//!   histograms; they are merged when the run ends.
//! * **Closed loop** (default): `connections × streams` requests always in flight.
//! * **Open loop** (`Load::Open { rate }`): requests on a fixed schedule, latency measured from
//!   the intended start (coordinated-omission correction); see [`histogram`] for what is done in
//!   each mode and why.
//! * Failed calls are counted by gRPC status and by who decided (server status vs client-side
//!   error), never hidden; a target that is down at the start is an error naming the fix.
//! * Reports: a table, JSON with every figure, and an SVG latency-percentile plot. Against a
//!   shardpool server the pool metrics RPC is read before and after the measured phase (reuse
//!   rate, steals).
//!
//! # Example
//!
//! ```no_run
//! use shardpool::bench::{BenchConfig, Load, Report, Stop, run};
//! use std::time::Duration;
//!
//! let config = BenchConfig::new("127.0.0.1:50051".parse().unwrap())
//!     .connections(8)
//!     .streams(16)
//!     .load(Load::Open { rate: 20_000.0 })
//!     .stop(Stop::Duration(Duration::from_secs(5)));
//! let result = run(&config, &mut |_progress| {})?;
//! print!("{}", Report::new(&config, &result).to_table());
//! # Ok::<(), shardpool::bench::BenchError>(())
//! ```

pub mod compare;
mod config;
mod grpc;
pub mod histogram;
mod metrics;
mod report;
mod run_info;
mod runner;
mod svg;

pub use config::{
    BenchConfig, ConfigError, Load, Stop, available_cpus, parse_duration, resolve_target,
};
// The messages and framing are shared with the server (one copy: `crate::wire`).
pub use crate::wire::{
    HelloReply, HelloRequest, PoolMetricsRequest, PoolMetricsResponse, SAY_HELLO, ShardPoolMetrics,
    encode_frame,
};
pub use grpc::{
    Code, Failure, Side, connect, decode_frame, decode_message, probe, request_head, unary,
    unary_with_timeout,
};
pub use histogram::{LatencyHistogram, LatencySummary, PercentilePoint, Schedule};
pub use metrics::{POOL_METRICS, PoolDelta, PoolSnapshot, fetch as fetch_pool_metrics};
pub use report::{FailureRow, Report, format_us};
pub use run_info::RunInfo;
pub use runner::{BenchError, FailureCount, Phase, Progress, RunResult, run};
pub use svg::{Series, latency_plot};
