#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod pool;
pub mod topology;

#[cfg(not(shardpool_loom))]
/// The `Mutex<HashMap<Key, VecDeque<Idle>>>` baseline pool, for comparison.
pub mod baseline;

#[cfg(all(feature = "runtime", not(shardpool_loom)))]
pub mod runtime;

#[cfg(all(any(feature = "server", feature = "bench"), not(shardpool_loom)))]
pub mod proto;

#[cfg(all(any(feature = "server", feature = "bench"), not(shardpool_loom)))]
pub mod grpc_frame;

#[cfg(all(any(feature = "server", feature = "bench"), not(shardpool_loom)))]
pub mod wire;

#[cfg(all(feature = "server", not(shardpool_loom)))]
pub mod server;

#[cfg(all(feature = "upstream", not(shardpool_loom)))]
pub mod upstream;

#[cfg(all(feature = "bench", not(shardpool_loom)))]
pub mod bench;

#[cfg(all(any(feature = "postgres", feature = "redis"), not(shardpool_loom)))]
pub mod adapters;

#[cfg(all(any(feature = "tokio", feature = "runtime"), not(shardpool_loom)))]
pub mod integrations;

/// Fuzz target bodies and the corpus replay (`fuzz/`, docs/security.md "Fuzzing"); not a
/// stable API.
#[cfg(all(feature = "upstream", not(shardpool_loom)))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(not(shardpool_loom))]
pub use pool::WeakPool;
pub use pool::{
    Clock, Config, ConfigError, ConnectionPool, Error, KeyName, MAX_SIZE, Manage, ManualClock,
    Pooled, PooledConn, SendConnectionPool, SendManage, ShardStats, ShardedPool, Stats,
};
