//! The record of one client connection: what it did and whether it must end.
//!
//! One [`Activity`] per connection, shared by `Rc` between the four parties that need it (all on
//! the connection's shard thread, so plain `Cell`s and no atomics):
//!
//! - the connection's I/O adapter ([`super::io::GlommioIo`]) counts the handshake bytes (then
//!   one branch per read) and write progress;
//! - its service opens a [`StreamGuard`] per stream, which a [`Tracked`] response body keeps
//!   until hyper has taken the whole response;
//! - its watchdog ([`super::watch`]) samples the counters on a timer;
//! - its shard's [`super::limits::ConnTracker`] picks connections to shed from them.
//!
//! Whoever decides that the connection must end (the watchdog, the tracker, the drain) records
//! a [`Verdict`] with [`Activity::end`], which wakes the connection's task; the task serves
//! hyper's connection inside [`Until`], which returns the verdict. So the task polls one future
//! per wake-up, hyper's, plus one `Cell` read.
//!
//! # Cost on the request path
//!
//! No clock is read and no timer is touched per request or per frame. Per stream: one `Rc`
//! clone, a few `Cell` updates, and, when the last open stream ends, a shard-local sequence
//! number that orders idle connections for shedding.

use http_body::{Body, Frame, SizeHint};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Buckets of the ring that ages waiting responses (see [`super::watch`]). With one sampling
/// period of half the send-stall timeout per bucket, a bucket is checked again when its
/// responses have waited more than `RING - 1` periods (the timeout) and at most `RING` (one
/// and a half times the timeout).
pub(super) const RING: usize = 3;

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: u64 = 24;
/// Length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: u64 = 9;

/// Why a connection's normal service ended.
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
    /// The shard's tracker shed it to make room for a new connection.
    Shed,
}

thread_local! {
    /// Orders the moments connections of this thread (one shard) became idle.
    static IDLE_SEQ: Cell<u64> = const { Cell::new(0) };
}

/// The next idle stamp of this thread: larger means more recently idle.
fn idle_stamp() -> u64 {
    IDLE_SEQ.with(|s| {
        let v = s.get() + 1;
        s.set(v);
        v
    })
}

/// What a connection did, and its verdict once one is reached (see the module docs).
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
    /// The [`idle_stamp`] of the moment the last open stream ended (or of the accept).
    idle_since: Cell<u64>,
    /// Responses ready but not fully handed to hyper's send side, by the sampling period they
    /// became ready in; `bucket` is the current period's index.
    pub(super) waiting: [Cell<u32>; RING],
    pub(super) bucket: Cell<u8>,
    /// Chosen by the shard's tracker to be shed (counted there until the connection ends).
    shed: Cell<bool>,
    /// The first verdict reached, and the task to wake with it.
    verdict: Cell<Option<Verdict>>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("handshaken", &self.handshaken.get())
            .field("writes", &self.writes())
            .field("streams", &self.streams())
            .field("idle_since", &self.idle_since.get())
            .field("shed", &self.shed.get())
            .field("verdict", &self.verdict.get())
            .finish_non_exhaustive()
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            hs_read: Cell::new(0),
            hs_frame_len: Cell::new(0),
            handshaken: Cell::new(false),
            written: Cell::new(0),
            write_pending: Cell::new(false),
            opened: Cell::new(0),
            open: Cell::new(0),
            idle_since: Cell::new(idle_stamp()),
            waiting: Default::default(),
            bucket: Cell::new(0),
            shed: Cell::new(false),
            verdict: Cell::new(None),
            waker: Cell::new(None),
        }
    }
}

impl Activity {
    /// A fresh connection's record.
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

    /// Streams opened so far, and streams open now.
    pub fn streams(&self) -> (u64, u32) {
        (self.opened.get(), self.open.get())
    }

    /// When the connection last became idle (no open stream), as a shard-local order: a smaller
    /// value became idle earlier. Meaningless while streams are open.
    pub fn idle_since(&self) -> u64 {
        self.idle_since.get()
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

    /// Records that the connection must end (the first verdict wins) and wakes its task.
    pub fn end(&self, verdict: Verdict) {
        if self.verdict.get().is_none() {
            self.verdict.set(Some(verdict));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// The verdict reached so far.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.get()
    }

    /// True once the shard's tracker chose this connection to be shed.
    pub fn is_shed(&self) -> bool {
        self.shed.get()
    }

    /// The tracker chose this connection to be shed: it ends with [`Verdict::Shed`] unless it
    /// already had a verdict.
    pub(super) fn mark_shed(&self) {
        self.shed.set(true);
        self.end(Verdict::Shed);
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
        let open = a.open.get() - 1;
        a.open.set(open);
        if open == 0 {
            a.idle_since.set(idle_stamp());
        }
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

/// Runs `fut` (the connection) until it completes (`Ok`) or a verdict is recorded in the
/// activity (`Err`); the verdict is looked at before each poll.
///
/// ```
/// use shardpool::server::conn::{Activity, Until, Verdict};
/// let a = Activity::new();
/// a.end(Verdict::Idle);
/// let mut never = std::pin::pin!(std::future::pending::<()>());
/// let got = futures_lite::future::block_on(Until::new(&a, never.as_mut()));
/// assert_eq!(got, Err(Verdict::Idle));
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Until<'a, F> {
    activity: &'a Activity,
    fut: Pin<&'a mut F>,
}

impl<'a, F> Until<'a, F> {
    /// Serves `fut` under `activity`'s verdict.
    pub fn new(activity: &'a Activity, fut: Pin<&'a mut F>) -> Until<'a, F> {
        Until { activity, fut }
    }
}

impl<F: Future> Future for Until<'_, F> {
    type Output = Result<F::Output, Verdict>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let a = self.activity;
        if let Some(v) = a.verdict.get() {
            return Poll::Ready(Err(v));
        }
        // The task's waker rarely changes: keep the stored one when it would wake the same task.
        let waker = match a.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        a.waker.set(Some(waker));
        self.fut.as_mut().poll(cx).map(Ok)
    }
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

    #[test]
    fn idle_order_follows_the_end_of_the_last_stream() {
        let (a, b) = (Activity::new(), Activity::new());
        assert!(a.idle_since() < b.idle_since(), "accepted earlier");
        let g1 = a.stream_opened();
        let g2 = a.stream_opened();
        drop(g1);
        assert!(a.idle_since() < b.idle_since(), "a stream is still open");
        drop(g2);
        assert!(a.idle_since() > b.idle_since(), "a became idle after b");
        assert_eq!(a.streams(), (2, 0));
    }

    #[test]
    fn the_first_verdict_wins_and_wakes_the_connection() {
        let a = Activity::new();
        let mut pending = std::pin::pin!(std::future::pending::<()>());
        let mut until = std::pin::pin!(Until::new(&a, pending.as_mut()));
        let woken = std::sync::Arc::new(Count(0.into()));
        let waker = Waker::from(std::sync::Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(until.as_mut().poll(&mut cx).is_pending());
        a.mark_shed();
        a.end(Verdict::Idle);
        // Ordering: Relaxed, see `Count`.
        let wakes = woken.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(wakes, 1, "woken once, by the first verdict");
        assert_eq!(
            until.as_mut().poll(&mut cx),
            Poll::Ready(Err(Verdict::Shed))
        );
        assert!(a.is_shed());
    }

    /// Counts its wakes.
    struct Count(std::sync::atomic::AtomicU32);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            // Ordering: Relaxed, a test counter read on the same thread.
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
