//! Glue between the pool and an async runtime, a few lines for the user each.
//!
//! The pool core ([`crate::pool`]) knows no runtime: a thread is bound to a shard by
//! [`bind_thread_to_shard`](crate::pool::bind_thread_to_shard), a checkout waits through
//! [`Manage::sleep`](crate::Manage::sleep) (by default on a timer thread the pool starts the first
//! time a checkout waits), and expiry and `min_idle` need someone to call
//! [`ConnectionPool::maintain`](crate::ConnectionPool::maintain). These modules do the three on a
//! runtime's own threads and timer:
//!
//! | | `integrations::tokio` (feature `tokio`) | `integrations::glommio` (feature `runtime`) |
//! |---|---|---|
//! | threads to shards | worker `i` → shard `i`, blocking-pool threads left alone (`BindShards`) | executor `i` → shard `i` (`runtime::spawn_shards`), the pool sized to match (`pool_config`) |
//! | waits | `TokioTimer`: `tokio::time::sleep` | `GlommioTimer`: the executor's timer |
//! | maintenance | `spawn_maintenance`: one task, every shard | `spawn_maintenance`: a local task per executor, its own shard |
//!
//! Both maintenance tasks hold only a [`WeakPool`](crate::WeakPool): they end by themselves once
//! the pool is closed or its last handle dropped, and never keep it alive.

use std::fmt;

#[cfg(feature = "tokio")]
pub mod tokio;

#[cfg(feature = "runtime")]
pub mod glommio;

/// Why a maintenance task could not be started.
///
/// ```
/// use shardpool::integrations::MaintenanceError;
/// let err = MaintenanceError::ZeroInterval;
/// assert!(err.to_string().contains("interval is zero"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaintenanceError {
    /// The interval was zero: passes would run back to back and starve the runtime.
    ZeroInterval,
    /// Not called on the runtime the task would run on: outside a tokio runtime context, or (for
    /// glommio) off a shard executor started by `runtime::spawn_shards`.
    NoRuntime {
        /// Which runtime was looked for: `"tokio"` or `"glommio"`.
        runtime: &'static str,
    },
    /// The pool's shard count differs from the number of executors, so some shards would be
    /// maintained twice and others never (build the pool with `integrations::glommio::pool_config`).
    ShardCountMismatch {
        /// The pool's shards.
        pool: usize,
        /// The executors (shards of the [`ShardMap`](crate::topology::ShardMap)).
        executors: usize,
    },
}

impl fmt::Display for MaintenanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaintenanceError::ZeroInterval => {
                write!(
                    f,
                    "the maintenance interval is zero; use a positive interval (1 s is a good start)"
                )
            }
            MaintenanceError::NoRuntime { runtime: "tokio" } => write!(
                f,
                "no tokio runtime here: start maintenance from inside the runtime (a task, \
                 `block_on`, or after `Runtime::enter`)"
            ),
            MaintenanceError::NoRuntime { runtime } => write!(
                f,
                "not on a {runtime} shard executor: start maintenance from the future that \
                 `spawn_shards` runs"
            ),
            MaintenanceError::ShardCountMismatch { pool, executors } => write!(
                f,
                "the pool has {pool} shards but there are {executors} executors; build its \
                 config with `integrations::glommio::pool_config`"
            ),
        }
    }
}

impl std::error::Error for MaintenanceError {}
