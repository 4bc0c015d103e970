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

mod builder;
mod config;
mod counters;
mod dispatch;
mod health;
mod service;
mod shard;

pub use builder::{RunningServer, ServeError, Server, ShardReport, StormHook};
pub use config::{ConfigError, MAX_STREAMS_WITHOUT_LIMIT, MAX_WINDOW, ServerConfig};
pub use counters::ServerCounters;
pub use health::{Health, SERVICES};
pub use service::{DirectGreeter, GreetHandler, StatsSource, pool_stats_source};

use dispatch::{ConnService, Method, call, check_head, decode};
use shard::{Shard, Shared, run_shard};
