//! Glue between hyper and glommio: socket I/O, a `!Send` executor, a timer, and listeners built
//! with socket2 (SO_REUSEPORT, nodelay, keepalive, backlog).

use super::conn::Activity;
use crate::runtime::{SendSleep, coarse_now};
use futures_lite::{AsyncRead, AsyncWrite};
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A glommio TCP stream seen through hyper's I/O traits.
pub struct GlommioIo {
    stream: glommio::net::TcpStream,
    /// What the connection's watchdog samples (handshake bytes, write progress), if watched.
    activity: Option<Rc<Activity>>,
}

/// The most one read takes from the socket: the size of the thread's [`SCRATCH`] buffer.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// The read buffer of every connection served on this thread (one shard), zeroed once when
    /// the thread first reads. hyper offers reads an uninitialised buffer, which glommio's
    /// `&mut [u8]` reads cannot take without zeroing it first, on every read (also one that
    /// finds the socket empty); the socket fills this buffer instead and only the bytes it
    /// returned are copied into hyper's. Reads on a thread never overlap: a read returns
    /// before the next one starts.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

impl GlommioIo {
    /// Wraps a stream.
    pub fn new(stream: glommio::net::TcpStream) -> GlommioIo {
        GlommioIo {
            stream,
            activity: None,
        }
    }

    /// Wraps a stream and counts its reads and writes into the connection's `activity`
    /// ([`super::conn`]).
    pub fn watched(stream: glommio::net::TcpStream, activity: Rc<Activity>) -> GlommioIo {
        GlommioIo {
            activity: Some(activity),
            ..GlommioIo::new(stream)
        }
    }

    fn count_write(&self, r: &Poll<io::Result<usize>>) {
        if let Some(a) = &self.activity {
            match r {
                Poll::Ready(Ok(n)) => a.on_write(Some(*n)),
                Poll::Pending => a.on_write(None),
                Poll::Ready(Err(_)) => {}
            }
        }
    }
}

impl hyper::rt::Read for GlommioIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(SCRATCH_LEN);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let into = &mut scratch[..want];
            match Pin::new(&mut self.stream).poll_read(cx, into) {
                Poll::Ready(Ok(n)) => {
                    let got = &into[..n];
                    if let Some(a) = &self.activity {
                        a.on_read(got);
                    }
                    buf.put_slice(got);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

impl hyper::rt::Write for GlommioIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.count_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.count_write(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_close(cx) {
            // The peer already left: the connection is closed, which is what we wanted.
            Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// hyper's executor on a glommio shard: `spawn_local`, so futures need not be `Send`.
///
/// glommio runs a spawned task at once, inside the spawner. For hyper's HTTP/2 server that means
/// each stream's response is produced while the connection task is still reading the batch of
/// requests, and the connection writes (and flushes) after every single response: one `send`
/// per call. Spawned tasks therefore yield once before their first real poll, so that a whole
/// batch of requests is answered first and then written with one `send`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(YieldFirst {
            yielded: false,
            fut,
        })
        .detach();
    }
}

pin_project_lite::pin_project! {
    /// Returns `Pending` (after waking itself) on its first poll, then polls `fut`.
    struct YieldFirst<F> {
        yielded: bool,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for YieldFirst<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !*this.yielded {
            *this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.fut.poll(cx)
    }
}

/// hyper's timer on a glommio shard, backed by [`SendSleep`].
///
/// hyper reads the timer's clock ([`hyper::rt::Timer::now`]) with keep-alive on for every frame
/// received and every poll of a connection. [`HyperTimer::COARSE`] answers with
/// [`coarse_now`], a fraction of the cost and within a kernel tick, enough for keep-alive and
/// read timeouts; [`HyperTimer::PRECISE`] with [`Instant::now`], which adaptive flow control
/// (BDP) needs because it measures round trips with it.
///
/// ```
/// use hyper::rt::Timer;
/// use shardpool::server::io::HyperTimer;
/// use std::time::{Duration, Instant};
/// let t = Instant::now();
/// assert!(HyperTimer::COARSE.now().max(t) - HyperTimer::COARSE.now().min(t) < Duration::from_millis(50));
/// assert!(HyperTimer::PRECISE.now() >= t);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperTimer {
    precise: bool,
}

impl HyperTimer {
    /// `now()` from the coarse clock ([`coarse_now`]).
    pub const COARSE: HyperTimer = HyperTimer { precise: false };
    /// `now()` from [`Instant::now`].
    pub const PRECISE: HyperTimer = HyperTimer { precise: true };
}

impl hyper::rt::Sleep for SendSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn now(&self) -> Instant {
        if self.precise {
            Instant::now()
        } else {
            coarse_now()
        }
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(SendSleep::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(SendSleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<SendSleep>() {
            Some(s) => s.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// Socket options of a listener and of the connections it accepts.
///
/// ```
/// use shardpool::server::io::{SocketOptions, reuseport_listeners};
/// let opts = SocketOptions {
///     nodelay: true,
///     keepalive: None,
///     backlog: 128,
///     reuse_port_shared: false,
/// };
/// let (socks, addr) = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 2, &opts).unwrap();
/// assert_eq!(socks.len(), 2);
/// // The port now belongs to this group: a second one is refused.
/// assert!(reuseport_listeners(addr, 1, &opts).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP_NODELAY on accepted connections.
    pub nodelay: bool,
    /// TCP keepalive idle time (`None`: off).
    pub keepalive: Option<Duration>,
    /// listen(2) backlog.
    pub backlog: i32,
    /// Join a port that other listeners (of the same user, with SO_REUSEPORT) already listen on,
    /// so the kernel splits connections between them and us. `false`: the port must be free.
    pub reuse_port_shared: bool,
}

/// Builds `count` listening sockets on `addr` with SO_REUSEPORT, so the kernel spreads incoming
/// connections over them. When `addr` has port 0, the first socket picks the port and the others
/// join it. Returns the sockets and the address actually bound.
///
/// Unless `opts.reuse_port_shared` is set, the port must be free: the first socket binds without
/// SO_REUSEPORT, which fails with [`io::ErrorKind::AddrInUse`] if any socket listens on the
/// address (with SO_REUSEPORT or not), and only then turns SO_REUSEPORT on so the group's other
/// sockets can join. The error message names `--reuse-port-shared`.
///
/// What this does not prevent: once the group listens, another process of the same user that
/// sets SO_REUSEPORT without this check (an older shardpool, another program) can still join it;
/// the kernel offers no way to refuse. And between the first socket's bind and its listen (two
/// syscalls) Linux lets a second SO_REUSEADDR socket bind the same address while neither
/// listens, so two processes started at the very same instant could both pass; a separate probe
/// socket has the same kind of window, a wider one. SO_REUSEADDR stays on so a restart is not
/// refused by the previous run's TIME_WAIT connections.
pub fn reuseport_listeners(
    addr: SocketAddr,
    count: usize,
    opts: &SocketOptions,
) -> io::Result<(Vec<Socket>, SocketAddr)> {
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let sock = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        let exclusive = i == 0 && !opts.reuse_port_shared;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(!exclusive)?;
        // Accepted sockets inherit these on Linux; they are set again on accept for certainty.
        sock.set_tcp_nodelay(opts.nodelay)?;
        set_keepalive(&sock, opts.keepalive)?;
        sock.set_nonblocking(true)?;
        sock.bind(&SockAddr::from(bound))
            .map_err(|e| bind_error(bound, e, opts.reuse_port_shared))?;
        if exclusive {
            // The port is ours now; let the rest of the group join before listening.
            sock.set_reuse_port(true)?;
        }
        sock.listen(opts.backlog)
            .map_err(|e| bind_error(bound, e, opts.reuse_port_shared))?;
        if let Some(a) = sock.local_addr()?.as_socket() {
            bound = a;
        }
        out.push(sock);
    }
    Ok((out, bound))
}

/// The error of a failed bind or listen on `addr`, saying what to do about it.
fn bind_error(addr: SocketAddr, e: io::Error, shared: bool) -> io::Error {
    let msg = match (e.kind(), shared) {
        (io::ErrorKind::AddrInUse, false) => format!(
            "cannot bind {addr}: address already in use by another process; stop it, pick \
             another port, or pass --reuse-port-shared to deliberately share the port with \
             another shardpool process"
        ),
        (io::ErrorKind::AddrInUse, true) => format!(
            "cannot bind {addr}: address already in use by a listener that cannot be shared \
             (one without SO_REUSEPORT, or another user's); --reuse-port-shared only joins \
             shardpool processes of the same user: stop it or pick another port"
        ),
        _ => format!("cannot bind {addr}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

fn set_keepalive(sock: &Socket, keepalive: Option<Duration>) -> io::Result<()> {
    match keepalive {
        Some(idle) => sock.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10).min(idle.max(Duration::from_secs(1)))),
        ),
        None => sock.set_keepalive(false),
    }
}

/// Turns a listening socket into a glommio listener on the current executor.
///
/// glommio depends on an older socket2; the socket crosses over as a raw fd.
pub fn into_glommio_listener(sock: Socket) -> glommio::net::TcpListener {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket whose ownership we just released with
    // `into_raw_fd`; the glommio listener becomes its only owner and closes it on drop.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}

/// Applies per-connection options to an accepted stream (nodelay; keepalive is inherited).
pub fn tune_accepted(stream: &glommio::net::TcpStream, opts: &SocketOptions) -> io::Result<()> {
    Ok(stream.set_nodelay(opts.nodelay)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(shared: bool) -> SocketOptions {
        SocketOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(42)),
            backlog: 128,
            reuse_port_shared: shared,
        }
    }

    /// Connects `n` times to `addr`, then counts the connections each listener accepted.
    fn spread(socks: &[Socket], addr: SocketAddr, n: usize) -> Vec<usize> {
        let conns: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut counts = vec![0; socks.len()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while counts.iter().sum::<usize>() < n && Instant::now() < deadline {
            for (s, c) in socks.iter().zip(&mut counts) {
                while s.accept().is_ok() {
                    *c += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(conns);
        counts
    }

    /// Reads `total` bytes, all queued at the socket before the first read, through
    /// `GlommioIo` into a spare buffer of `spare` bytes; returns the bytes and the size of each
    /// read.
    fn read_burst(total: usize, spare: usize) -> (Vec<u8>, Vec<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(&sent).unwrap();
            })
        };
        let (conn, _) = listener.accept().unwrap();
        let mut queued = vec![0; total];
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.peek(&mut queued).unwrap() < total {
            assert!(
                Instant::now() < deadline,
                "the {total} bytes never all arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.join().unwrap();
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        let (got, reads) = ex.run(async move {
            // SAFETY: `conn` is an open TCP socket whose ownership `into_raw_fd` released; the
            // glommio stream becomes its only owner.
            let stream = unsafe { glommio::net::TcpStream::from_raw_fd(conn.into_raw_fd()) };
            let mut io = GlommioIo::new(stream);
            let mut got = Vec::new();
            let mut reads = Vec::new();
            let mut storage = vec![std::mem::MaybeUninit::<u8>::uninit(); spare];
            while got.len() < total {
                let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
                std::future::poll_fn(|cx| {
                    hyper::rt::Read::poll_read(Pin::new(&mut io), cx, buf.unfilled())
                })
                .await
                .unwrap();
                let n = buf.filled().len();
                assert!(n > 0, "end of stream after {} of {total} bytes", got.len());
                got.extend_from_slice(buf.filled());
                reads.push(n);
            }
            (got, reads)
        });
        assert_eq!(got, sent, "bytes lost or changed on the way");
        (got, reads)
    }

    #[test]
    fn a_watched_stream_counts_the_handshake_and_a_write_the_peer_does_not_take() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::net::TcpStream::connect(addr).unwrap();
        // The peer sends the preface and an empty SETTINGS frame, then never reads.
        std::io::Write::write_all(
            &mut &peer,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        )
        .unwrap();
        let (conn, _) = listener.accept().unwrap();
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        let (handshaken, written, pending) = ex.run(async move {
            // SAFETY: `conn` is an open TCP socket whose ownership `into_raw_fd` released; the
            // glommio stream becomes its only owner.
            let stream = unsafe { glommio::net::TcpStream::from_raw_fd(conn.into_raw_fd()) };
            let activity = Activity::new();
            let mut io = GlommioIo::watched(stream, Rc::clone(&activity));
            let mut storage = vec![std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut got = 0;
            while got < 33 {
                let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
                std::future::poll_fn(|cx| {
                    hyper::rt::Read::poll_read(Pin::new(&mut io), cx, buf.unfilled())
                })
                .await
                .unwrap();
                assert!(!buf.filled().is_empty(), "end of stream after {got} bytes");
                got += buf.filled().len();
            }
            let handshaken = activity.handshaken();
            // Write until the socket takes nothing for 200 ms (the peer's buffers are full).
            let chunk = vec![7u8; 64 << 10];
            let mut idle_since = Instant::now();
            let mut last = 0;
            while idle_since.elapsed() < Duration::from_millis(200) {
                let r = std::future::poll_fn(|cx| {
                    Poll::Ready(hyper::rt::Write::poll_write(Pin::new(&mut io), cx, &chunk))
                })
                .await;
                assert!(!matches!(r, Poll::Ready(Err(_))), "{r:?}");
                let (written, _) = activity.writes();
                if written != last {
                    last = written;
                    idle_since = Instant::now();
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
                assert!(written < 256 << 20, "the socket took {written} bytes");
            }
            let (written, pending) = activity.writes();
            (handshaken, written, pending)
        });
        drop(peer);
        assert!(handshaken, "preface and SETTINGS read, handshake not seen");
        assert!(
            written > 0 && pending,
            "written {written}, pending {pending}"
        );
    }

    #[test]
    fn a_read_takes_what_is_queued_up_to_the_spare_buffer() {
        let (_, reads) = read_burst(32 << 10, 64 << 10);
        assert_eq!(reads, [32 << 10]);
        let (_, reads) = read_burst(32 << 10, 8 << 10);
        assert_eq!(reads, [8 << 10; 4]);
        let (_, reads) = read_burst(100, 64 << 10);
        assert_eq!(reads, [100]);
    }

    #[test]
    fn a_group_on_port_0_shares_its_port_and_carries_the_options() {
        let (socks, addr) =
            reuseport_listeners("127.0.0.1:0".parse().unwrap(), 3, &opts(false)).unwrap();
        assert_ne!(addr.port(), 0);
        for s in &socks {
            assert_eq!(s.local_addr().unwrap().as_socket(), Some(addr));
            assert!(s.reuse_port().unwrap());
            assert!(s.tcp_nodelay().unwrap());
            assert!(s.keepalive().unwrap());
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        }
        // The first socket (bound before SO_REUSEPORT was on) is in the kernel's group too: 64
        // connections miss one of three listeners with probability ~3 * (2/3)^64.
        let counts = spread(&socks, addr, 64);
        assert_eq!(counts.iter().sum::<usize>(), 64, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        let off = SocketOptions {
            nodelay: false,
            keepalive: None,
            ..opts(false)
        };
        let (socks, _) = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 1, &off).unwrap();
        assert!(!socks[0].tcp_nodelay().unwrap());
        assert!(!socks[0].keepalive().unwrap());
    }

    #[test]
    fn a_second_group_on_a_bound_port_is_refused_naming_the_flag() {
        let (_first, addr) =
            reuseport_listeners("127.0.0.1:0".parse().unwrap(), 2, &opts(false)).unwrap();
        let err = reuseport_listeners(addr, 2, &opts(false)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let msg = err.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("--reuse-port-shared"),
            "{msg}"
        );
        // A listener without SO_REUSEPORT cannot join the port either.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }

    #[test]
    fn sharing_on_request_joins_the_group() {
        let (first, addr) =
            reuseport_listeners("127.0.0.1:0".parse().unwrap(), 1, &opts(false)).unwrap();
        let (second, joined) = reuseport_listeners(addr, 2, &opts(true)).unwrap();
        assert_eq!(joined, addr);
        let all: Vec<Socket> = first.into_iter().chain(second).collect();
        let counts = spread(&all, addr, 64);
        assert_eq!(counts.iter().sum::<usize>(), 64, "{counts:?}");
        assert!(counts[0] > 0 && counts[1] + counts[2] > 0, "{counts:?}");
    }

    #[test]
    fn a_plain_listener_on_the_port_is_detected() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let err = reuseport_listeners(addr, 1, &opts(false)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("--reuse-port-shared"), "{err}");
        // Sharing cannot join a listener that did not ask for it; the message says so.
        let err = reuseport_listeners(addr, 1, &opts(true)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("cannot be shared"), "{err}");
    }
}
