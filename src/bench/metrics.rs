//! Client of the shardpool admin RPC `shardpool.v1.Admin/PoolMetrics`, and the figures derived
//! from two snapshots (reuse rate, steals).
//!
//! The messages repeat, tag for tag, the server layer's `shardpool.v1` admin messages (the bench
//! layer must not depend on the server layer, so they are declared again here). A server that does
//! not serve the RPC (any non-shardpool server) answers `UNIMPLEMENTED`, and the report says that
//! pool metrics are not available.

use super::grpc::{self, Code};
use crate::wire::{PoolMetricsRequest, PoolMetricsResponse, ShardPoolMetrics, encode_frame};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The path of the admin metrics RPC.
pub const POOL_METRICS: &str = "/shardpool.v1.Admin/PoolMetrics";

/// The pool totals at one instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolSnapshot {
    /// Totals over all pool shards.
    pub total: ShardPoolMetrics,
    /// Pool shards reported.
    pub shards: usize,
}

/// What the pool did during the measured phase (the difference of two snapshots).
///
/// # Example
///
/// ```
/// use shardpool::bench::{PoolDelta, PoolSnapshot, ShardPoolMetrics};
///
/// let stats = |checkouts, creates, steals| ShardPoolMetrics {
///     checkouts, creates, steals, ..Default::default()
/// };
/// let before = PoolSnapshot { total: stats(100, 10, 0), shards: 2 };
/// let after = PoolSnapshot { total: stats(1100, 12, 5), shards: 2 };
/// let delta = PoolDelta::between(&before, &after);
/// assert_eq!(delta.checkouts, 1000);
/// assert_eq!(delta.reuse_rate, Some(1.0 - 2.0 / 1000.0));
/// assert_eq!(delta.steals, 5);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolDelta {
    /// Checkouts during the run.
    pub checkouts: u64,
    /// Connections created during the run.
    pub creates: u64,
    /// Steals during the run.
    pub steals: u64,
    /// Local hits during the run.
    pub local_hits: u64,
    /// Checkouts that waited during the run.
    pub waits: u64,
    /// Checkout timeouts during the run.
    pub timeouts: u64,
    /// Failed creates during the run.
    pub create_errors: u64,
    /// `1 - creates / checkouts` (None without checkouts: the pool was not used).
    pub reuse_rate: Option<f64>,
    /// Live connections at the end.
    pub live_after: u64,
    /// Pool shards.
    pub shards: usize,
}

impl PoolDelta {
    /// The counters' growth from `before` to `after` (saturating, should the server restart).
    pub fn between(before: &PoolSnapshot, after: &PoolSnapshot) -> Self {
        let (b, a) = (&before.total, &after.total);
        let checkouts = a.checkouts.saturating_sub(b.checkouts);
        let creates = a.creates.saturating_sub(b.creates);
        PoolDelta {
            checkouts,
            creates,
            steals: a.steals.saturating_sub(b.steals),
            local_hits: a.hits.saturating_sub(b.hits),
            waits: a.waits.saturating_sub(b.waits),
            timeouts: a.timeouts.saturating_sub(b.timeouts),
            create_errors: a.errors.saturating_sub(b.errors),
            reuse_rate: (checkouts > 0).then(|| 1.0 - creates as f64 / checkouts as f64),
            live_after: a.live,
            shards: after.shards,
        }
    }
}

/// Reads the pool metrics of the shardpool server at `addr` over a fresh connection.
///
/// Must run inside a tokio `LocalSet` (the connection driver is spawned locally).
pub async fn fetch(
    addr: SocketAddr,
    authority: &str,
    timeout: Duration,
) -> Result<PoolSnapshot, String> {
    let send = grpc::connect(addr).await?;
    let head = grpc::request_head(authority, POOL_METRICS);
    let reply = grpc::unary_with_timeout(
        &send,
        &head,
        encode_frame(&PoolMetricsRequest {}),
        timeout,
    )
    .await
    .map_err(|f| {
        if f.code == Code::Unimplemented {
            "the target does not serve shardpool.v1.Admin/PoolMetrics (not a shardpool server?)"
                .to_string()
        } else {
            format!("PoolMetrics failed: {} {}", f.code, f.message)
        }
    })?;
    let reply: PoolMetricsResponse =
        prost::Message::decode(reply).map_err(|e| format!("malformed PoolMetrics reply: {e}"))?;
    let shards = reply.shards.len();
    let total = match reply.total {
        Some(total) => total,
        None => sum(&reply.shards),
    };
    Ok(PoolSnapshot { total, shards })
}

fn sum(shards: &[ShardPoolMetrics]) -> ShardPoolMetrics {
    shards.iter().fold(
        ShardPoolMetrics {
            shard: shards.len() as u32,
            ..Default::default()
        },
        |acc, s| ShardPoolMetrics {
            shard: acc.shard,
            live: acc.live + s.live,
            idle: acc.idle + s.idle,
            checked_out: acc.checked_out + s.checked_out,
            hits: acc.hits + s.hits,
            steals: acc.steals + s.steals,
            creates: acc.creates + s.creates,
            errors: acc.errors + s.errors,
            timeouts: acc.timeouts + s.timeouts,
            wait_p50_us: acc.wait_p50_us.max(s.wait_p50_us),
            wait_p90_us: acc.wait_p90_us.max(s.wait_p90_us),
            wait_p99_us: acc.wait_p99_us.max(s.wait_p99_us),
            wait_max_us: acc.wait_max_us.max(s.wait_max_us),
            checkouts: acc.checkouts + s.checkouts,
            handoffs: acc.handoffs + s.handoffs,
            waits: acc.waits + s.waits,
            closes: acc.closes + s.closes,
            cpu: None,
            numa_node: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_summed_when_missing() {
        let a = ShardPoolMetrics {
            checkouts: 3,
            steals: 1,
            live: 2,
            wait_max_us: 7,
            ..Default::default()
        };
        let b = ShardPoolMetrics {
            checkouts: 4,
            live: 1,
            wait_max_us: 9,
            ..Default::default()
        };
        let total = sum(&[a, b]);
        assert_eq!(total.checkouts, 7);
        assert_eq!(total.steals, 1);
        assert_eq!(total.live, 3);
        assert_eq!(total.wait_max_us, 9);
        assert_eq!(total.shard, 2);
    }

    #[test]
    fn delta_without_checkouts_has_no_reuse_rate() {
        let s = PoolSnapshot {
            total: ShardPoolMetrics::default(),
            shards: 1,
        };
        assert_eq!(PoolDelta::between(&s, &s).reuse_rate, None);
    }

    #[test]
    fn reply_round_trips_through_protobuf() {
        let reply = PoolMetricsResponse {
            shards: vec![ShardPoolMetrics {
                checkouts: 9,
                wait_p99_us: 12,
                ..Default::default()
            }],
            total: None,
        };
        let bytes = prost::Message::encode_to_vec(&reply);
        let back: PoolMetricsResponse = prost::Message::decode(&bytes[..]).unwrap();
        assert_eq!(back, reply);
    }
}
