//! File descriptors and connection caps: the descriptor limit, the per-shard connection cap
//! derived from it, shedding the least useful connection at the cap, and accept errors.
//!
//! Every client connection costs one descriptor. So do the gateway's upstream connections, its
//! health checks, the embedded origins (both ends of each of their connections live in this
//! process), the listeners and the runtime itself (io_uring rings, eventfds). When client
//! connections may take every descriptor, the rest starve: the origins cannot accept, upstream
//! connects fail with EMFILE, and established clients get UNAVAILABLE. This module keeps them
//! apart:
//!
//! - [`raise_nofile_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one at start;
//! - [`connection_cap`] derives the per-shard cap from what is left after an [`FdReserve`], so
//!   client connections can never use the reserve;
//! - [`ConnTracker`] enforces the cap on one shard: at the cap it sheds the connection that
//!   matters least (still handshaking first, then the one whose last call ended longest ago)
//!   before refusing;
//! - [`AcceptBackoff`] and [`SpareFd`] handle accept errors (EMFILE/ENFILE) when the process
//!   runs out anyway: exponential back-off, one log line per second at most, and a spare
//!   descriptor given up to accept-and-close the pending connection, so clients in the backlog
//!   get a reset instead of a hang.

use super::conn::Activity;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The process's descriptor limit, before and after [`raise_nofile_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit now (the hard one, unless raising it failed).
    pub soft: u64,
    /// The hard limit (only root can raise it).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and reports both.
///
/// `RLIM_INFINITY` as a hard limit is capped at the kernel's `fs.nr_open` (Linux refuses a soft
/// limit above it), read from `/proc/sys/fs/nr_open`, else 1,048,576.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let (soft_before, hard) = nofile_limit()?;
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if target <= soft_before {
        return Ok(NofileLimit {
            soft_before,
            soft: soft_before,
            hard,
        });
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is retained.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileLimit {
        soft_before,
        soft: target,
        hard,
    })
}

/// The current `RLIMIT_NOFILE`: (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Descriptors the runtime needs before any connection: stdio, io_uring rings, eventfds and
/// timers of every executor, the log. Per process.
pub const BASE_MARGIN: usize = 64;
/// Descriptors each shard's executor needs beside its listener (rings, eventfds, the spare
/// descriptor of [`SpareFd`]), with room to spare.
pub const PER_SHARD_MARGIN: usize = 16;
/// The smallest per-shard cap worth serving with; below it the server refuses to start.
pub const MIN_CONNECTIONS_PER_SHARD: usize = 16;

/// Descriptors kept out of reach of client connections.
///
/// ```
/// use shardpool::server::limits::FdReserve;
/// let r = FdReserve::server(4, Some(64));
/// assert_eq!(r.total(), r.listeners + r.admin + r.margin);
/// let gw = FdReserve { upstream: 512, origins: 514, health_checks: 4, ..r };
/// assert_eq!(gw.total(), r.total() + 1030);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdReserve {
    /// The gateway's upstream connections (pool size × backends).
    pub upstream: usize,
    /// Health-check connections (one per backend at a time).
    pub health_checks: usize,
    /// Embedded origins: their listeners and the accepted end of every upstream and
    /// health-check connection (both ends are in this process).
    pub origins: usize,
    /// gRPC listeners (one per shard) and the admin listener.
    pub listeners: usize,
    /// Admin (`/metrics`) connections.
    pub admin: usize,
    /// The runtime's own descriptors and a margin ([`BASE_MARGIN`], [`PER_SHARD_MARGIN`]).
    pub margin: usize,
}

impl FdReserve {
    /// The server's own reserve with `shards` shards and, when the admin listener is on, the
    /// most connections it serves at once (`AdminConfig::max_connections`; no upstream).
    pub fn server(shards: usize, admin_connections: Option<usize>) -> FdReserve {
        FdReserve {
            listeners: shards + usize::from(admin_connections.is_some()),
            admin: admin_connections.unwrap_or(0),
            margin: BASE_MARGIN + PER_SHARD_MARGIN * shards,
            ..FdReserve::default()
        }
    }

    /// Descriptors reserved in all.
    pub fn total(&self) -> usize {
        self.upstream
            .saturating_add(self.health_checks)
            .saturating_add(self.origins)
            .saturating_add(self.listeners)
            .saturating_add(self.admin)
            .saturating_add(self.margin)
    }
}

/// How many connections one shard may shed at once when it reaches its cap: 1/64 of the cap,
/// between 1 and 64. Shed connections still hold their descriptor until their task ends, so the
/// cap leaves this much room below the descriptor budget ([`connection_cap`]).
pub fn shed_batch(cap: usize) -> usize {
    (cap / 64).clamp(1, 64)
}

/// The per-shard connection cap that fits `nofile` descriptors with `reserve` kept for
/// everything else: the largest `cap` with `shards × (cap + shed_batch(cap)) + reserve ≤
/// nofile`. Refuses (with the fix in the message) when that is below
/// [`MIN_CONNECTIONS_PER_SHARD`].
///
/// ```
/// use shardpool::server::limits::{connection_cap, shed_batch};
/// let cap = connection_cap(65536, 4, 1200).unwrap();
/// assert!(4 * (cap + shed_batch(cap)) + 1200 <= 65536);
/// assert!(4 * (cap + 1 + shed_batch(cap + 1)) + 1200 > 65536);
/// let err = connection_cap(1024, 2, 1100).unwrap_err();
/// assert!(err.contains("ulimit -n"), "{err}");
/// ```
pub fn connection_cap(nofile: u64, shards: usize, reserve: usize) -> Result<usize, String> {
    let shards = shards.max(1);
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let per_shard = nofile.saturating_sub(reserve) / shards;
    let mut cap = per_shard.saturating_sub(shed_batch(per_shard));
    while cap > 0 && cap + shed_batch(cap) > per_shard {
        cap -= 1;
    }
    while cap + 1 + shed_batch(cap + 1) <= per_shard {
        cap += 1;
    }
    if cap < MIN_CONNECTIONS_PER_SHARD {
        let need = reserve.saturating_add(
            shards
                .saturating_mul(MIN_CONNECTIONS_PER_SHARD + shed_batch(MIN_CONNECTIONS_PER_SHARD)),
        );
        return Err(format!(
            "the descriptor limit ({nofile}) is too low to serve: {reserve} descriptors are \
             reserved for upstream connections, health checks, embedded origins, listeners and \
             the runtime, leaving {} per shard for {shards} shard(s), below the minimum of \
             {MIN_CONNECTIONS_PER_SHARD} connections; raise the limit to at least {need} (`ulimit \
             -n {need}`, or LimitNOFILE= in a systemd unit), or need fewer descriptors (fewer \
             --shards, a smaller --pool-max-size, fewer --embedded-origins, or --fd-reserve N)",
            per_shard
        ));
    }
    Ok(cap)
}

/// A count that is either derived at start (`auto`) or given.
///
/// ```
/// use shardpool::server::limits::AutoCount;
/// assert_eq!("auto".parse::<AutoCount>(), Ok(AutoCount::Auto));
/// assert_eq!("300".parse::<AutoCount>(), Ok(AutoCount::Fixed(300)));
/// assert!("lots".parse::<AutoCount>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCount {
    /// Derived at start (each knob's docs say from what: the descriptor limit, the backends).
    #[default]
    Auto,
    /// As given.
    Fixed(usize),
}

impl std::str::FromStr for AutoCount {
    type Err = String;

    fn from_str(s: &str) -> Result<AutoCount, String> {
        if s == "auto" {
            return Ok(AutoCount::Auto);
        }
        s.parse()
            .map(AutoCount::Fixed)
            .map_err(|_| "expected `auto` or a whole number".to_string())
    }
}

/// What [`ConnTracker::admit`] decided about a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; the slot leaves the tracker when dropped.
    Admitted(ConnSlot),
    /// The shard is at its cap with nothing to shed (every connection has calls in progress,
    /// or earlier shed connections are still closing): close the new one.
    Refused,
}

/// The connections of one shard and their cap. Shard-local (`!Send`); no atomics.
#[derive(Debug)]
pub struct ConnTracker {
    cap: usize,
    conns: RefCell<Vec<Option<Rc<Activity>>>>,
    free: RefCell<Vec<usize>>,
    open: Cell<usize>,
    /// Connections marked for shedding whose tasks have not ended yet.
    shedding: Cell<usize>,
    /// Most connections open since the last storm ended (see [`ConnTracker::storm_ended`]).
    peak: Cell<usize>,
    /// Connections shed over the shard's life.
    shed_total: Cell<u64>,
    /// Reused by victim selection: (class, idle since, slot).
    scratch: RefCell<Vec<(u8, u64, usize)>>,
}

/// A storm is over when the open count falls to this fraction of its peak...
const STORM_END_FRACTION: usize = 4;
/// ...and the peak was at least this many connections.
pub const STORM_MIN_PEAK: usize = 256;

impl ConnTracker {
    /// A tracker allowing `cap` connections (at least 1).
    pub fn new(cap: usize) -> ConnTracker {
        ConnTracker {
            cap: cap.max(1),
            conns: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            open: Cell::new(0),
            shedding: Cell::new(0),
            peak: Cell::new(0),
            shed_total: Cell::new(0),
            scratch: RefCell::new(Vec::new()),
        }
    }

    /// Connections open now (shed ones included until their tasks end).
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Connections marked for shedding that have not closed yet.
    pub fn shedding(&self) -> usize {
        self.shedding.get()
    }

    /// Connections shed so far.
    pub fn shed_total(&self) -> u64 {
        self.shed_total.get()
    }

    /// Decides about a new connection: below the cap it is admitted; at the cap the least
    /// useful connections (a batch of [`shed_batch`]) are shed first, still handshaking before
    /// idle, idle longest first, never one with calls in progress; then it is admitted if the
    /// shed ones make room, within `cap + shed_batch(cap)` descriptors.
    pub fn admit(self: &Rc<Self>) -> Admission {
        let open = self.open.get();
        let batch = shed_batch(self.cap);
        if open >= self.cap {
            if self.shedding.get() < batch {
                self.shed_some(batch - self.shedding.get());
            }
            if open - self.shedding.get() >= self.cap || open >= self.cap + batch {
                return Admission::Refused;
            }
        }
        let mut conns = self.conns.borrow_mut();
        let slot = self.free.borrow_mut().pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        let activity = Activity::new();
        conns[slot] = Some(Rc::clone(&activity));
        self.open.set(open + 1);
        if open + 1 > self.peak.get() {
            self.peak.set(open + 1);
        }
        Admission::Admitted(ConnSlot {
            tracker: Rc::clone(self),
            activity,
            slot,
        })
    }

    /// The process ran out of descriptors below the cap: sheds a batch of the least useful
    /// connections, as at the cap. Returns how many connections are now on their way out
    /// (marked now or before); 0 means nothing here can be shed.
    pub fn make_room(&self) -> usize {
        let batch = shed_batch(self.cap);
        if self.shedding.get() < batch {
            self.shed_some(batch - self.shedding.get());
        }
        self.shedding.get()
    }

    /// Marks up to `n` connections to be shed; returns how many.
    fn shed_some(&self, n: usize) -> usize {
        let conns = self.conns.borrow();
        let mut cands = self.scratch.borrow_mut();
        cands.clear();
        for (slot, c) in conns.iter().enumerate() {
            let Some(c) = c else { continue };
            if c.is_shed() || c.streams().1 > 0 {
                continue;
            }
            let class = u8::from(c.handshaken());
            cands.push((class, c.idle_since(), slot));
        }
        let n = n.min(cands.len());
        if n == 0 {
            return 0;
        }
        if n < cands.len() {
            cands.select_nth_unstable(n - 1);
        }
        for &(_, _, slot) in &cands[..n] {
            if let Some(c) = &conns[slot] {
                c.mark_shed();
            }
        }
        cands.clear();
        self.shedding.set(self.shedding.get() + n);
        self.shed_total.set(self.shed_total.get() + n as u64);
        n
    }

    fn remove(&self, slot: usize, activity: &Activity) {
        self.conns.borrow_mut()[slot] = None;
        self.free.borrow_mut().push(slot);
        self.open.set(self.open.get() - 1);
        if activity.is_shed() {
            self.shedding.set(self.shedding.get() - 1);
        }
    }

    /// True once after a storm: the open count fell to a quarter of a peak of at least
    /// [`STORM_MIN_PEAK`]. The peak then restarts from the open count. The caller releases
    /// memory (allocator purge) when this says so.
    pub fn storm_ended(&self) -> bool {
        let (open, peak) = (self.open.get(), self.peak.get());
        if peak >= STORM_MIN_PEAK && open * STORM_END_FRACTION <= peak {
            self.peak.set(open);
            let mut conns = self.conns.borrow_mut();
            // Trailing free slots go, and the vectors give their memory back.
            while matches!(conns.last(), Some(None)) {
                conns.pop();
            }
            let len = conns.len();
            conns.shrink_to_fit();
            let mut free = self.free.borrow_mut();
            free.retain(|&s| s < len);
            free.shrink_to_fit();
            self.scratch.borrow_mut().shrink_to_fit();
            return true;
        }
        false
    }
}

/// A connection's place in its [`ConnTracker`]; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct ConnSlot {
    tracker: Rc<ConnTracker>,
    activity: Rc<Activity>,
    slot: usize,
}

impl ConnSlot {
    /// The connection's record (streams, handshake, verdict), shared with its I/O adapter,
    /// service and watchdog.
    pub fn activity(&self) -> &Rc<Activity> {
        &self.activity
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.tracker.remove(self.slot, &self.activity);
    }
}

/// The first back-off after an accept error.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// At most one log line about accept errors per this period.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Exponential back-off of a failing accept loop, with a rate-limited log line.
///
/// ```
/// use shardpool::server::limits::AcceptBackoff;
/// use std::time::{Duration, Instant};
/// let mut b = AcceptBackoff::new(Duration::from_millis(40));
/// let t = Instant::now();
/// let (d1, log1) = b.failed(t);
/// let (d2, log2) = b.failed(t);
/// assert!(d2 > d1 && log1 == Some(0) && log2.is_none());
/// for _ in 0..10 { b.failed(t); }
/// assert_eq!(b.failed(t).0, Duration::from_millis(40));
/// assert_eq!(b.failed(t + Duration::from_secs(1)).1, Some(12), "12 errors were not logged");
/// b.succeeded();
/// assert_eq!(b.failed(t + Duration::from_secs(1)).0, d1);
/// ```
#[derive(Debug)]
pub struct AcceptBackoff {
    max: Duration,
    next: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    /// Back-off doubling from 5 ms up to `max`.
    pub fn new(max: Duration) -> AcceptBackoff {
        AcceptBackoff {
            max,
            next: BACKOFF_START.min(max),
            last_log: None,
            suppressed: 0,
        }
    }

    /// An accept failed at `now`: how long to wait, and `Some(errors not logged since the last
    /// line)` when this error should be logged (at most once per second).
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        let log = match self.last_log {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_log = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        };
        (wait, log)
    }

    /// An accept succeeded: the next error starts from the shortest back-off again.
    pub fn succeeded(&mut self) {
        self.next = BACKOFF_START.min(self.max);
    }
}

/// True for the errors of a process or system out of descriptors.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor held in reserve (on `/dev/null`) so a shard out of descriptors can still
/// accept and close the connection at the head of its backlog: its client gets a reset at once
/// instead of waiting in a backlog nobody drains.
#[derive(Debug)]
pub struct SpareFd {
    file: Option<std::fs::File>,
}

/// Connections closed per [`SpareFd::drain_backlog`] call at most.
const DRAIN_MAX: usize = 64;

impl SpareFd {
    /// Opens the spare descriptor (if that fails, draining does nothing until it succeeds).
    pub fn new() -> SpareFd {
        SpareFd {
            file: std::fs::File::open("/dev/null").ok(),
        }
    }

    /// Gives up the spare descriptor, accepts and closes up to 64 pending connections on the
    /// listening socket `listener` (without blocking), then takes the descriptor back. Returns
    /// how many connections were closed.
    pub fn drain_backlog(&mut self, listener: RawFd) -> usize {
        self.file = None;
        let mut closed = 0;
        while closed < DRAIN_MAX {
            let mut pfd = libc::pollfd {
                fd: listener,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes the one pollfd we own; timeout 0 never blocks.
            let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
            if ready != 1 || pfd.revents & libc::POLLIN == 0 {
                break;
            }
            // SAFETY: accept4 on a listening socket the caller keeps open; null address
            // pointers are allowed. The flags make the new descriptor non-blocking.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                break;
            }
            // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
            unsafe { libc::close(fd) };
            closed += 1;
        }
        self.file = std::fs::File::open("/dev/null").ok();
        closed
    }

    /// The spare descriptor, if held.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.file.as_ref().map(AsRawFd::as_raw_fd)
    }
}

impl Default for SpareFd {
    fn default() -> SpareFd {
        SpareFd::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::conn::Verdict;

    fn admitted(t: &Rc<ConnTracker>) -> ConnSlot {
        match t.admit() {
            Admission::Admitted(s) => s,
            Admission::Refused => panic!("refused with {} open", t.open()),
        }
    }

    #[test]
    fn the_cap_leaves_the_reserve_and_the_shed_slack() {
        for (nofile, shards, reserve) in [(1024, 1, 200), (20000, 2, 1200), (1 << 20, 64, 9000)] {
            let cap = connection_cap(nofile, shards, reserve).unwrap();
            let used = shards * (cap + shed_batch(cap)) + reserve;
            assert!(used as u64 <= nofile, "{nofile} {shards} {reserve}: {cap}");
            let more = shards * (cap + 1 + shed_batch(cap + 1)) + reserve;
            assert!(more as u64 > nofile, "{nofile} {shards} {reserve}: {cap}");
        }
        // 20,000 descriptors, 2 shards: well under the old 16,384 per shard.
        assert!(connection_cap(20000, 2, 1200).unwrap() < 9400);
        let err = connection_cap(1024, 2, 1030 + 96).unwrap_err();
        assert!(
            err.contains("ulimit -n") && err.contains("--fd-reserve"),
            "{err}"
        );
    }

    /// The client preface and an empty SETTINGS frame: the handshake, complete.
    const HANDSHAKE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    #[test]
    fn at_the_cap_handshaking_goes_first_then_the_longest_idle_never_a_busy_one() {
        let t = Rc::new(ConnTracker::new(4));
        // Accepted first, but its stream ends last: idle for the shortest time.
        let new_idle = admitted(&t);
        new_idle.activity().on_read(HANDSHAKE);
        let old_idle = admitted(&t);
        old_idle.activity().on_read(HANDSHAKE);
        let busy = admitted(&t);
        busy.activity().on_read(HANDSHAKE);
        let _call = busy.activity().stream_opened();
        drop(new_idle.activity().stream_opened());
        let handshaking = admitted(&t);
        // At the cap: the handshaking one is shed, and the new connection may open meanwhile.
        let fifth = admitted(&t);
        assert!(handshaking.activity().is_shed());
        assert_eq!(handshaking.activity().verdict(), Some(Verdict::Shed));
        assert!(!old_idle.activity().is_shed() && !busy.activity().is_shed());
        // Until the shed one has closed, nothing more fits.
        assert!(matches!(t.admit(), Admission::Refused));
        drop(handshaking);
        fifth.activity().on_read(HANDSHAKE);
        let _sixth = admitted(&t);
        assert!(old_idle.activity().is_shed(), "the idle-longest is next");
        assert!(!new_idle.activity().is_shed() && !busy.activity().is_shed());
        assert_eq!(busy.activity().verdict(), None);
        assert_eq!(t.shed_total(), 2);
    }

    #[test]
    fn busy_connections_are_never_shed() {
        let t = Rc::new(ConnTracker::new(2));
        let a = admitted(&t);
        let b = admitted(&t);
        let _ca = a.activity().stream_opened();
        let _cb = b.activity().stream_opened();
        assert!(matches!(t.admit(), Admission::Refused));
        assert_eq!(t.shed_total(), 0);
        assert_eq!(t.make_room(), 0);
    }

    #[test]
    fn out_of_descriptors_below_the_cap_sheds_a_batch() {
        let t = Rc::new(ConnTracker::new(640));
        let slots: Vec<_> = (0..20).map(|_| admitted(&t)).collect();
        let _call = slots[0].activity().stream_opened();
        assert_eq!(t.make_room(), shed_batch(640));
        assert!(!slots[0].activity().is_shed(), "busy");
        assert!(slots[1..=10].iter().all(|s| s.activity().is_shed()));
        assert_eq!(t.make_room(), 10, "no more while those close");
        drop(slots);
        assert_eq!((t.open(), t.shedding()), (0, 0));
    }

    #[test]
    fn a_storm_ends_once_when_most_connections_are_gone() {
        let t = Rc::new(ConnTracker::new(5000));
        let mut slots: Vec<_> = (0..2000).map(|_| admitted(&t)).collect();
        assert!(!t.storm_ended());
        slots.truncate(600);
        assert!(!t.storm_ended());
        slots.truncate(400);
        assert!(t.storm_ended());
        assert!(!t.storm_ended(), "once per storm");
        drop(slots);
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn the_spare_descriptor_resets_pending_clients() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut spare = SpareFd::new();
        assert!(spare.raw_fd().is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut closed = 0;
        while closed < 3 && Instant::now() < deadline {
            closed += spare.drain_backlog(listener.as_raw_fd());
        }
        assert_eq!(closed, 3);
        assert!(spare.raw_fd().is_some(), "the spare is taken back");
        for mut c in clients {
            use std::io::Read;
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            assert!(
                matches!(c.read(&mut b), Ok(0) | Err(_)),
                "closed, not hanging"
            );
        }
        // Nothing pending: returns at once.
        assert_eq!(spare.drain_backlog(listener.as_raw_fd()), 0);
    }
}
