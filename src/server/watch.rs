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
//! None of its own: the connection's I/O adapter and service count into the connection's
//! [`Activity`] (see [`super::conn`]), and a timer task per connection ([`watch`]) samples it:
//! at the handshake deadline, every quarter of the idle timeout and every half of the
//! send-stall timeout. So a connection is closed at least the timeout after the condition began,
//! and at most a quarter of its idle timeout, or one send-stall timeout, later than that.
//! Responses waiting to be sent are counted per sampling period in a ring of three buckets; a
//! bucket that is still not empty when the ring comes back to it holds a response that waited
//! longer than the send-stall timeout.
//!
//! The task also waits for the shard's drain event. It records its verdict in the activity,
//! which wakes the connection's task ([`super::conn::Until`]).

use super::conn::{Activity, RING, Verdict};
use crate::runtime::LocalEvent;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a connection closed for idleness or a send stall may still flush its GOAWAY before
/// it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Looks in a row that saw a pending write and no byte taken before the socket counts as
/// stalled: the first of them may have come just after the write was issued, so three looks
/// half a timeout apart prove at least a whole timeout without progress.
const WRITE_STUCK_LOOKS: u32 = 3;

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
            Some(t) if !a.handshaken() => Some(self.started + t),
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
            && !a.handshaken()
            && now >= self.started + t
        {
            return Some(Verdict::Handshake);
        }
        if let (Some(t), Some(due)) = (self.limits.idle, self.next_idle)
            && now >= due
        {
            let (opened, open) = a.streams();
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
            let (written, pending) = a.writes();
            if pending && written == self.seen_written {
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

/// Watches one connection until a limit is passed or `drain` is set, then records why in the
/// activity ([`Activity::end`], which wakes the connection's task) and returns it. Spawn it as
/// the connection's timer task; dropping the task ends it.
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
    let verdict = futures_lite::future::or(checks, async {
        drain.wait().await;
        Verdict::Drain
    })
    .await;
    activity.end(verdict);
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::server::conn::Tracked;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
        assert_eq!(a.streams().1, 0);
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
