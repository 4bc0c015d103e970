//! Per-shard server counters, read from any thread for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-shard server counters, readable from any thread (for `/metrics`).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections closed at once because the shard was at `max_connections_per_shard` with
    /// nothing to shed, or accepted only to be closed because descriptors ran out.
    pub connections_rejected: AtomicU64,
    /// Connections closed to make room at `max_connections_per_shard` (still handshaking, or
    /// idle longest).
    pub connections_shed: AtomicU64,
    /// Failed accepts (EMFILE, ENFILE, ...).
    pub accept_errors: AtomicU64,
    /// Connections closed because preface and SETTINGS did not arrive within
    /// `handshake_timeout`.
    pub closed_handshake_timeout: AtomicU64,
    /// Connections closed after `conn_idle_timeout` without a stream.
    pub closed_idle: AtomicU64,
    /// Connections closed because a response or a write made no progress for
    /// `send_stall_timeout`.
    pub closed_send_stall: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Calls answered, by gRPC status code.
    pub calls_by_code: [AtomicU64; 17],
    /// Calls answered UNAVAILABLE because the shutdown grace ran out.
    pub calls_abandoned: AtomicU64,
}

impl ServerCounters {
    pub(super) fn bump(counter: &AtomicU64) {
        // Ordering: Relaxed, a statistic; readers want eventual values, nothing is published.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn drop_one(counter: &AtomicU64) {
        // Ordering: Relaxed, as in `bump`.
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn get(counter: &AtomicU64) -> u64 {
        // Ordering: Relaxed, as in `bump`.
        counter.load(Ordering::Relaxed)
    }
}
