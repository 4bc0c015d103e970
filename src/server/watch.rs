//! The per-connection watchdog: it closes connections that never finish their handshake, sit
//! idle, or stop taking the responses they asked for.
//!
//! One job, in three parts:
//!
//! - **Handshake timeout**: the client preface and the first frame (SETTINGS, which h2 checks)
//!   must have arrived within `handshake_timeout` of the accept, or the connection is dropped.
//!   It is an absolute deadline, so a client that sends the preface a byte at a time cannot
//!   stretch it.
//! - **Idle timeout**: a connection with no open stream and no new stream for
//!   `conn_idle_timeout` gets a GOAWAY and is closed. PINGs and SETTINGS do not count as
//!   activity (a client answering keepalive pings is still idle), as in gRPC's
//!   `MAX_CONNECTION_IDLE`.
//! - **Send-stall timeout**: a response that hyper could not hand on completely (the peer
//!   opened no flow-control window for it) within `send_stall_timeout`, or a socket that took no
//!   byte of a pending write for that long (the peer stopped reading), marks the connection
//!   stalled: it gets a GOAWAY and, after [`CLOSE_GRACE`], is dropped: the socket closes, and
//!   every stream still open ends with it and frees what it holds.
//!
//! # Cost on the request path
//!
//! The connection's I/O adapter ([`super::io::GlommioIo`]) and its service count into an
//! [`Activity`] of plain `Cell`s shared by `Rc` (everything of a connection runs on its shard's
//! one thread, so no atomics): bytes of the handshake until it is complete (then one branch per
//! read), bytes written and whether a write is pending, streams opened and open, and responses
//! waiting to be sent. No clock is read and no timer is touched per request or per frame.
//!
//! A timer task per connection ([`watch`]) samples these counters: at the handshake deadline,
//! every quarter of the idle timeout and every half of the send-stall timeout. So a connection
//! is closed at least the timeout after the condition began, and at most a quarter of its idle
//! timeout, or one send-stall timeout, later than that. Responses waiting to be sent are counted
//! per sampling period in a ring of three buckets; a bucket that is still not empty when the
//! ring comes back to it holds a response that waited longer than the send-stall timeout.
//!
//! The same task also waits for the shard's drain event, so the connection's task polls one
//! future besides hyper's, as it did before the watchdog.

use crate::runtime::LocalEvent;
use http_body::{Body, Frame, SizeHint};
use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a connection closed for idleness or a send stall may still flush its GOAWAY before
/// it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Buckets of the ring that ages waiting responses (see the module docs). With one sampling
/// period of half the send-stall timeout per bucket, a bucket is checked again when its
/// responses have waited more than `RING - 1` periods (the timeout) and at most `RING` (one
/// and a half times the timeout).
const RING: usize = 3;

/// Looks in a row that saw a pending write and no byte taken before the socket counts as
/// stalled: the first of them may have come just after the write was issued, so three looks
/// half a timeout apart prove at least a whole timeout without progress.
const WRITE_STUCK_LOOKS: u32 = 3;

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: u64 = 24;
/// Length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: u64 = 9;

/// The time limits of one connection; `None` turns a limit off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Preface and first SETTINGS must arrive within this of the accept.
    pub handshake: Option<Duration>,
    /// No open stream and no new stream for this long closes the connection.
    pub idle: Option<Duration>,
    /// A response (or a write) that cannot make progress for this long closes the connection.
    pub send_stall: Option<Duration>,
}

/// Why the watchdog ended a connection's normal service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The shard is draining (shutdown); not a timeout.
    Drain,
    /// Preface and first SETTINGS did not arrive in time.
    Handshake,
    /// No stream for the idle timeout.
    Idle,
    /// A response or a write made no progress for the send-stall timeout.
    SendStall,
}

/// What a connection did, counted by its I/O adapter and its service (one shard, so `Cell`s).
#[derive(Debug, Default)]
pub struct Activity {
    /// Bytes read so far while the handshake is not complete.
    hs_read: Cell<u64>,
    /// Length of the first frame's payload, from its header (valid once 27 bytes are in).
    hs_frame_len: Cell<u64>,
    /// The preface and the whole first frame have arrived.
    handshaken: Cell<bool>,
    /// Bytes the socket took.
    written: Cell<u64>,
    /// The last write returned `Pending` (the socket, or the ring, has not taken it yet).
    write_pending: Cell<bool>,
    /// Streams handed to the service so far, and those not finished yet.
    opened: Cell<u64>,
    open: Cell<u32>,
    /// Responses ready but not fully handed to hyper's send side, by the sampling period they
    /// became ready in; `bucket` is the current period's index.
    waiting: [Cell<u32>; RING],
    bucket: Cell<u8>,
}

impl Activity {
    /// A fresh connection's counters.
    pub fn new() -> Rc<Activity> {
        Rc::new(Activity::default())
    }

    /// Counts bytes read from the socket; cheap once the handshake is complete.
    #[inline]
    pub fn on_read(&self, bytes: &[u8]) {
        if !self.handshaken.get() {
            self.handshake_bytes(bytes);
        }
    }

    #[cold]
    fn handshake_bytes(&self, bytes: &[u8]) {
        let start = self.hs_read.get();
        // Bytes 24..27 are the first frame's 24-bit payload length.
        for (i, b) in bytes.iter().enumerate() {
            let at = start + i as u64;
            if at >= PREFACE_LEN + 3 {
                break;
            }
            if at >= PREFACE_LEN {
                self.hs_frame_len
                    .set((self.hs_frame_len.get() << 8) | u64::from(*b));
            }
        }
        let read = start + bytes.len() as u64;
        self.hs_read.set(read);
        if read >= PREFACE_LEN + 3
            && read >= PREFACE_LEN + FRAME_HEADER_LEN + self.hs_frame_len.get()
        {
            self.handshaken.set(true);
        }
    }

    /// True once the preface and the first frame have arrived.
    pub fn handshaken(&self) -> bool {
        self.handshaken.get()
    }

    /// Counts a write the socket took (`Some(bytes)`) or one still pending (`None`).
    #[inline]
    pub fn on_write(&self, took: Option<usize>) {
        match took {
            Some(n) => {
                self.written.set(self.written.get() + n as u64);
                self.write_pending.set(false);
            }
            None => self.write_pending.set(true),
        }
    }

    /// Bytes the socket has taken, and whether the last write is still pending.
    pub fn writes(&self) -> (u64, bool) {
        (self.written.get(), self.write_pending.get())
    }

    /// A stream reached the service; it stays open until the returned guard is dropped.
    pub fn stream_opened(self: &Rc<Self>) -> StreamGuard {
        self.opened.set(self.opened.get() + 1);
        self.open.set(self.open.get() + 1);
        StreamGuard {
            activity: Rc::clone(self),
            waiting_in: None,
        }
    }
}

/// Keeps a stream counted as open; once its response is ready it also counts that response as
/// waiting to be sent (see [`Tracked`]).
#[derive(Debug)]
pub struct StreamGuard {
    activity: Rc<Activity>,
    waiting_in: Option<u8>,
}

impl StreamGuard {
    fn response_ready(&mut self) {
        if self.waiting_in.is_none() {
            let a = &self.activity;
            let b = a.bucket.get();
            let slot = &a.waiting[usize::from(b)];
            slot.set(slot.get() + 1);
            self.waiting_in = Some(b);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.open.set(a.open.get() - 1);
        if let Some(b) = self.waiting_in {
            let slot = &a.waiting[usize::from(b)];
            slot.set(slot.get() - 1);
        }
    }
}

/// A response body that keeps its stream counted as open, and its response as waiting, until
/// hyper has taken all of it (or dropped it: the stream was reset or the connection closed).
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _guard: StreamGuard,
}

impl<B> Tracked<B> {
    /// Wraps the body of a response that is ready now.
    pub fn new(body: B, mut guard: StreamGuard) -> Tracked<B> {
        guard.response_ready();
        Tracked {
            body,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A `1/parts` of `timeout`, at least a millisecond (a tiny timeout must not make the watchdog
/// spin).
fn period(timeout: Duration, parts: u32) -> Duration {
    (timeout / parts).max(Duration::from_millis(1))
}

/// The sampler's memory between two looks at an [`Activity`].
struct Sampler {
    limits: Limits,
    started: Instant,
    /// Idle: streams opened at the last look, and since when none was open and none opened.
    seen_opened: u64,
    idle_since: Option<Instant>,
    next_idle: Option<Instant>,
    /// Send stall: bytes written at the last look and how many looks in a row saw a pending
    /// write with no byte taken.
    seen_written: u64,
    write_stuck_looks: u32,
    next_stall: Option<Instant>,
}

impl Sampler {
    fn new(limits: Limits, now: Instant) -> Sampler {
        Sampler {
            limits,
            started: now,
            seen_opened: 0,
            idle_since: Some(now),
            next_idle: limits.idle.map(|t| now + period(t, 4)),
            seen_written: 0,
            write_stuck_looks: 0,
            next_stall: limits.send_stall.map(|t| now + period(t, 2)),
        }
    }

    /// The next instant something must be looked at (`None`: nothing to watch).
    fn next_wake(&self, a: &Activity) -> Option<Instant> {
        let handshake = match self.limits.handshake {
            Some(t) if !a.handshaken.get() => Some(self.started + t),
            _ => None,
        };
        [handshake, self.next_idle, self.next_stall]
            .into_iter()
            .flatten()
            .min()
    }

    /// Looks at the counters at `now`; a verdict if a limit was passed.
    fn look(&mut self, a: &Activity, now: Instant) -> Option<Verdict> {
        if let Some(t) = self.limits.handshake
            && !a.handshaken.get()
            && now >= self.started + t
        {
            return Some(Verdict::Handshake);
        }
        if let (Some(t), Some(due)) = (self.limits.idle, self.next_idle)
            && now >= due
        {
            let (opened, open) = (a.opened.get(), a.open.get());
            if open == 0 && opened == self.seen_opened {
                match self.idle_since {
                    Some(since) if now.duration_since(since) >= t => return Some(Verdict::Idle),
                    Some(_) => {}
                    None => self.idle_since = Some(now),
                }
            } else {
                self.idle_since = (open == 0).then_some(now);
            }
            self.seen_opened = opened;
            self.next_idle = Some(now + period(t, 4));
        }
        if let (Some(t), Some(due)) = (self.limits.send_stall, self.next_stall)
            && now >= due
        {
            // Responses that became ready RING - 1 whole periods ago or earlier, still waiting.
            let next = (usize::from(a.bucket.get()) + 1) % RING;
            if a.waiting[next].get() > 0 {
                return Some(Verdict::SendStall);
            }
            a.bucket.set(next as u8);
            let written = a.written.get();
            if a.write_pending.get() && written == self.seen_written {
                self.write_stuck_looks += 1;
                if self.write_stuck_looks >= WRITE_STUCK_LOOKS {
                    return Some(Verdict::SendStall);
                }
            } else {
                self.write_stuck_looks = 0;
            }
            self.seen_written = written;
            self.next_stall = Some(now + period(t, 2));
        }
        None
    }
}

/// Watches one connection until a limit is passed or `drain` is set; returns why it stopped.
/// Spawn it as the connection's timer task; dropping the task ends it.
pub async fn watch(activity: Rc<Activity>, limits: Limits, drain: LocalEvent) -> Verdict {
    let mut sampler = Sampler::new(limits, Instant::now());
    let checks = async {
        loop {
            match sampler.next_wake(&activity) {
                Some(at) => {
                    glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await
                }
                None => std::future::pending().await,
            }
            if let Some(v) = sampler.look(&activity, Instant::now()) {
                return v;
            }
        }
    };
    futures_lite::future::or(checks, async {
        drain.wait().await;
        Verdict::Drain
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn the_handshake_completes_with_the_first_whole_frame_whatever_the_chunks() {
        let mut bytes = PREFACE.to_vec();
        // SETTINGS with one setting (6 bytes of payload).
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        for chunk in [1, 2, 5, 26, 32, bytes.len()] {
            let a = Activity::default();
            let mut fed = 0;
            for c in bytes.chunks(chunk) {
                assert!(
                    !a.handshaken(),
                    "complete after {fed} of {} bytes",
                    bytes.len()
                );
                a.on_read(c);
                fed += c.len();
            }
            assert!(a.handshaken(), "chunks of {chunk}");
        }
        let a = Activity::default();
        a.on_read(&bytes[..bytes.len() - 1]);
        assert!(!a.handshaken(), "one payload byte missing");
        let a = Activity::default();
        a.on_read(PREFACE);
        assert!(!a.handshaken(), "the preface alone is not a handshake");
    }

    fn limits() -> Limits {
        Limits {
            handshake: Some(Duration::from_secs(10)),
            idle: Some(Duration::from_secs(40)),
            send_stall: Some(Duration::from_secs(20)),
        }
    }

    #[test]
    fn handshake_deadline_is_absolute() {
        let t0 = Instant::now();
        let a = Activity::new();
        let mut s = Sampler::new(limits(), t0);
        assert_eq!(s.next_wake(&a), Some(t0 + Duration::from_secs(10)));
        a.on_read(&PREFACE[..10]);
        assert_eq!(
            s.look(&a, t0 + Duration::from_secs(10)),
            Some(Verdict::Handshake)
        );
    }

    #[test]
    fn idle_needs_the_whole_timeout_without_streams() {
        let t0 = Instant::now();
        let a = Activity::new();
        a.on_read(PREFACE);
        a.on_read(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let mut s = Sampler::new(
            Limits {
                send_stall: None,
                ..limits()
            },
            t0,
        );
        let at = |secs| t0 + Duration::from_secs(secs);
        // A stream at 5 s that finishes at 15 s: idle from then on.
        let g = a.stream_opened();
        assert_eq!(s.look(&a, at(10)), None);
        drop(g);
        for t in [20, 30, 40, 50] {
            assert_eq!(s.look(&a, at(t)), None, "at {t} s");
        }
        // Idle seen since the look at 20 s; 40 s later it is closed.
        assert_eq!(s.look(&a, at(60)), Some(Verdict::Idle));
    }

    #[test]
    fn a_response_waiting_longer_than_the_stall_timeout_is_a_stall() {
        let t0 = Instant::now();
        let a = Activity::new();
        let mut s = Sampler::new(
            Limits {
                idle: None,
                handshake: None,
                ..limits()
            },
            t0,
        );
        let at = |secs| t0 + Duration::from_secs(secs);
        // A response that is sent within a period never counts.
        let quick = Tracked::new((), a.stream_opened());
        drop(quick);
        let stuck = Tracked::new((), a.stream_opened());
        for t in [10, 20] {
            assert_eq!(s.look(&a, at(t)), None, "at {t} s");
        }
        assert_eq!(s.look(&a, at(30)), Some(Verdict::SendStall));
        drop(stuck);
        assert_eq!(a.open.get(), 0);
        assert!(a.waiting.iter().all(|w| w.get() == 0));
    }

    #[test]
    fn a_write_the_socket_never_takes_is_a_stall_and_progress_is_not() {
        let t0 = Instant::now();
        let a = Activity::new();
        let mut s = Sampler::new(
            Limits {
                idle: None,
                handshake: None,
                ..limits()
            },
            t0,
        );
        let at = |secs| t0 + Duration::from_secs(secs);
        a.on_write(None);
        assert_eq!(s.look(&a, at(10)), None);
        // Slow but moving: never a stall.
        for t in [20, 30, 40, 50] {
            a.on_write(Some(1));
            a.on_write(None);
            assert_eq!(s.look(&a, at(t)), None, "at {t} s");
        }
        for t in [60, 70] {
            assert_eq!(s.look(&a, at(t)), None, "at {t} s");
        }
        assert_eq!(s.look(&a, at(80)), Some(Verdict::SendStall));
    }
}
