//! What the server and the load generator both put on the wire: the protobuf messages (written by
//! hand with `prost` derives: no protoc, no build script), the Greeter's method path, and gRPC's
//! 5-byte message framing. One copy, used by `server` and `bench`.
//!
//! The messages match `tests/interop/protos/*.proto`, which other languages compile:
//! `helloworld.proto` (the gRPC example), `health.proto` (`grpc.health.v1`) and
//! `shardpool_admin.proto` (`shardpool.v1.Admin`).
//!
//! ```
//! use shardpool::wire::{HelloRequest, encode_frame};
//!
//! // Not compressed (0), 3 bytes of message, then field 1 (name) = "a".
//! let frame = encode_frame(&HelloRequest { name: "a".into() });
//! assert_eq!(&frame[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'a']);
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// A gRPC status code (`grpc-status`): the 17 codes of the gRPC spec.
///
/// A peer that sends a number outside the spec is read as [`Code::Unknown`], as gRPC's own client
/// libraries do.
///
/// ```
/// use shardpool::wire::Code;
///
/// assert_eq!(Code::from_u32(14), Some(Code::Unavailable));
/// assert_eq!(Code::from_u32(99), None);
/// assert_eq!(Code::Unavailable.as_u32(), 14);
/// assert_eq!(Code::ResourceExhausted.name(), "RESOURCE_EXHAUSTED");
/// assert_eq!(Code::from_http_status(404), Code::Unimplemented);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // the names are the protocol's own
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code with this number, if the spec has one.
    pub fn from_u32(n: u32) -> Option<Code> {
        Code::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// The number of this code.
    pub fn as_u32(self) -> u32 {
        u32::from(self as u8)
    }

    /// The spec's upper-case name, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ][self as usize]
    }

    /// The code for a response whose HTTP status is not 200, as the gRPC HTTP/2 spec maps them.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The path of the Greeter's unary method.
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// The length of gRPC's message prefix: a compressed flag byte and a big-endian `u32` length.
pub const PREFIX_LEN: usize = 5;

/// Frames one protobuf message: `0` (not compressed), its length (u32, big-endian), its bytes.
pub fn encode_frame<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    // No message we produce comes near u32::MAX (requests and replies are bounded by the
    // configured size limit); saturate rather than wrap if one ever did.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer reserved for `encoded_len` cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// Fully qualified service name; empty means the server as a whole.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    /// Not known.
    Unknown = 0,
    /// Serving requests.
    Serving = 1,
    /// Not serving (for example, draining for shutdown).
    NotServing = 2,
    /// Only used by Watch.
    ServiceUnknown = 3,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// A [`ServingStatus`] as i32.
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `shardpool.v1.PoolMetricsRequest` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PoolMetricsRequest {}

/// `shardpool.v1.ShardPoolMetrics`: one pool shard, or the total.
#[derive(Clone, PartialEq, prost::Message)]
#[cfg_attr(feature = "bench", derive(serde::Serialize))]
pub struct ShardPoolMetrics {
    /// Shard index (the total repeats the shard count here).
    #[prost(uint32, tag = "1")]
    pub shard: u32,
    /// Idle + checked out.
    #[prost(uint64, tag = "2")]
    pub live: u64,
    /// Idle connections.
    #[prost(uint64, tag = "3")]
    pub idle: u64,
    /// Connections checked out.
    #[prost(uint64, tag = "4")]
    pub checked_out: u64,
    /// Checkouts served from the shard's own idle queue.
    #[prost(uint64, tag = "5")]
    pub hits: u64,
    /// Checkouts served by stealing from another shard.
    #[prost(uint64, tag = "6")]
    pub steals: u64,
    /// Connections created.
    #[prost(uint64, tag = "7")]
    pub creates: u64,
    /// Failed connection creations.
    #[prost(uint64, tag = "8")]
    pub errors: u64,
    /// Checkouts that gave up waiting.
    #[prost(uint64, tag = "9")]
    pub timeouts: u64,
    /// Median checkout wait, µs.
    #[prost(uint64, tag = "10")]
    pub wait_p50_us: u64,
    /// 90th percentile checkout wait, µs.
    #[prost(uint64, tag = "11")]
    pub wait_p90_us: u64,
    /// 99th percentile checkout wait, µs.
    #[prost(uint64, tag = "12")]
    pub wait_p99_us: u64,
    /// Longest checkout wait, µs.
    #[prost(uint64, tag = "13")]
    pub wait_max_us: u64,
    /// Successful checkouts.
    #[prost(uint64, tag = "14")]
    pub checkouts: u64,
    /// Checkouts handed a returned connection while waiting.
    #[prost(uint64, tag = "15")]
    pub handoffs: u64,
    /// Checkouts that had to wait.
    #[prost(uint64, tag = "16")]
    pub waits: u64,
    /// Connections closed.
    #[prost(uint64, tag = "17")]
    pub closes: u64,
    /// CPU of the shard's executor (absent for the total).
    #[prost(uint32, optional, tag = "18")]
    pub cpu: Option<u32>,
    /// NUMA node of that CPU (absent for the total).
    #[prost(uint32, optional, tag = "19")]
    pub numa_node: Option<u32>,
}

/// `shardpool.v1.PoolMetricsResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PoolMetricsResponse {
    /// One entry per pool shard.
    #[prost(message, repeated, tag = "1")]
    pub shards: Vec<ShardPoolMetrics>,
    /// Sum over shards (wait percentiles merged).
    #[prost(message, optional, tag = "2")]
    pub total: Option<ShardPoolMetrics>,
}

impl ShardPoolMetrics {
    /// Converts a pool snapshot entry.
    pub fn from_stats(shard: u32, s: &crate::pool::ShardStats) -> ShardPoolMetrics {
        ShardPoolMetrics {
            shard,
            live: s.live,
            idle: s.idle,
            checked_out: s.checked_out,
            hits: s.local_hits,
            steals: s.steals,
            creates: s.creates,
            errors: s.create_errors,
            timeouts: s.timeouts,
            wait_p50_us: s.wait_p50_us,
            wait_p90_us: s.wait_p90_us,
            wait_p99_us: s.wait_p99_us,
            wait_max_us: s.wait_max_us,
            checkouts: s.checkouts,
            handoffs: s.handoffs,
            waits: s.waits,
            closes: s.closes,
            cpu: None,
            numa_node: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_format_matches_protobuf() {
        // Field 1, wire type 2, length 3, "Bob".
        let bytes = HelloRequest { name: "Bob".into() }.encode_to_vec();
        assert_eq!(bytes, b"\x0a\x03Bob");
        let back = HelloReply::decode(&b"\x0a\x02Hi"[..]).unwrap();
        assert_eq!(back.message, "Hi");
        let health = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        assert_eq!(health.encode_to_vec(), [0x08, 0x02]);
        assert!(HelloRequest::decode(&b"\x0a\x05ab"[..]).is_err());
    }
}

/// `shardpool.v1.AddBackendRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddBackendRequest {
    /// The backend, `IP:PORT`.
    #[prost(string, tag = "1")]
    pub address: String,
}

/// `shardpool.v1.RemoveBackendRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveBackendRequest {
    /// The backend, `IP:PORT`.
    #[prost(string, tag = "1")]
    pub address: String,
}

/// `shardpool.v1.ListBackendsRequest` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListBackendsRequest {}

/// `shardpool.v1.Backend`: one upstream backend of a gateway and its counters (all shards).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Backend {
    /// `IP:PORT`.
    #[prost(string, tag = "1")]
    pub address: String,
    /// Not ejected and passing active health checks.
    #[prost(bool, tag = "2")]
    pub healthy: bool,
    /// Attempts sent, including failed ones.
    #[prost(uint64, tag = "3")]
    pub requests: u64,
    /// Attempts that failed.
    #[prost(uint64, tag = "4")]
    pub errors: u64,
    /// Attempts in flight now.
    #[prost(uint64, tag = "5")]
    pub in_flight: u64,
    /// Connections created.
    #[prost(uint64, tag = "6")]
    pub connections_new: u64,
    /// Checkouts that reused a pooled connection.
    #[prost(uint64, tag = "7")]
    pub connections_reused: u64,
    /// Reused connections that moved from another shard.
    #[prost(uint64, tag = "8")]
    pub steals: u64,
    /// Requests retried after a stale pooled connection.
    #[prost(uint64, tag = "9")]
    pub stale_retries: u64,
}

/// `shardpool.v1.BackendList`: the answer of every backend RPC (the set after the call).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackendList {
    /// Every backend, in the order they were added.
    #[prost(message, repeated, tag = "1")]
    pub backends: Vec<Backend>,
}
