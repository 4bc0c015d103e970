//! What the server and the load generator both put on the wire: the protobuf messages under
//! their short names, the Greeter's method path, gRPC status codes and gRPC's 5-byte message
//! framing. One copy, used by `server` and `bench`.
//!
//! The messages are generated from the `.proto` files of `proto/` (see [`crate::proto`]), which
//! other languages compile too: `helloworld.proto` (the gRPC example), `health.proto`
//! (`grpc.health.v1`) and `shardpool_admin.proto` (`shardpool.v1.Admin`).
//!
//! ```
//! use shardpool::wire::{HelloRequest, encode_frame};
//!
//! // Not compressed (0), 3 bytes of message, then field 1 (name) = "a".
//! let frame = encode_frame(&HelloRequest { name: "a".into() });
//! assert_eq!(&frame[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'a']);
//! ```

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

/// gRPC's message framing, re-exported from its one copy, [`crate::grpc_frame`].
pub use crate::grpc_frame::{PREFIX_LEN, encode as encode_frame};

// The messages, generated from proto/ (see [`crate::proto`]), under their short names.
pub use crate::proto::grpc::health::v1::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};
pub use crate::proto::helloworld::{HelloReply, HelloRequest};
pub use crate::proto::shardpool::v1::{
    AddBackendRequest, Backend, BackendList, ListBackendsRequest, PoolMetricsRequest,
    PoolMetricsResponse, RemoveBackendRequest, ShardPoolMetrics,
};

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
