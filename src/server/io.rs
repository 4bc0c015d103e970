//! Glue between hyper and glommio: socket I/O, a `!Send` executor, a timer, and listeners built
//! with socket2 (SO_REUSEPORT, nodelay, keepalive, backlog).

use crate::runtime::SendSleep;
use futures_lite::{AsyncRead, AsyncWrite};
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A glommio TCP stream seen through hyper's I/O traits.
pub struct GlommioIo {
    stream: glommio::net::TcpStream,
}

impl GlommioIo {
    /// Wraps a stream.
    pub fn new(stream: glommio::net::TcpStream) -> GlommioIo {
        GlommioIo { stream }
    }
}

impl hyper::rt::Read for GlommioIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: we only write into the slice (zeroing it, then letting the socket fill a
        // prefix) and report via `advance` just the bytes the read returned, which are
        // initialised.
        let uninit = unsafe { buf.as_mut() };
        for b in uninit.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte of `uninit` was initialised just above; MaybeUninit<u8> and u8 have
        // the same layout.
        let init: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(uninit.as_mut_ptr().cast(), uninit.len()) };
        match Pin::new(&mut self.stream).poll_read(cx, init) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: the read initialised (and filled) the first `n` bytes.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for GlommioIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
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
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperTimer;

impl hyper::rt::Sleep for SendSleep {}

impl hyper::rt::Timer for HyperTimer {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP_NODELAY on accepted connections.
    pub nodelay: bool,
    /// TCP keepalive idle time (`None`: off).
    pub keepalive: Option<Duration>,
    /// listen(2) backlog.
    pub backlog: i32,
}

/// Builds `count` listening sockets on `addr` with SO_REUSEPORT, so the kernel spreads incoming
/// connections over them. When `addr` has port 0, the first socket picks the port and the others
/// join it. Returns the sockets and the address actually bound.
pub fn reuseport_listeners(
    addr: SocketAddr,
    count: usize,
    opts: &SocketOptions,
) -> io::Result<(Vec<Socket>, SocketAddr)> {
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let sock = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        // Accepted sockets inherit these on Linux; they are set again on accept for certainty.
        sock.set_tcp_nodelay(opts.nodelay)?;
        set_keepalive(&sock, opts.keepalive)?;
        sock.set_nonblocking(true)?;
        sock.bind(&SockAddr::from(bound)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind {bound}: {e} (is another server on it?)"),
            )
        })?;
        sock.listen(opts.backlog)?;
        if let Some(a) = sock.local_addr()?.as_socket() {
            bound = a;
        }
        out.push(sock);
    }
    Ok((out, bound))
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

    #[test]
    fn listeners_share_a_port_and_carry_the_options() {
        let opts = SocketOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(42)),
            backlog: 16,
        };
        let (socks, addr) = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 3, &opts).unwrap();
        assert_ne!(addr.port(), 0);
        for s in &socks {
            assert_eq!(s.local_addr().unwrap().as_socket(), Some(addr));
            assert!(s.reuse_port().unwrap());
            assert!(s.tcp_nodelay().unwrap());
            assert!(s.keepalive().unwrap());
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        }
        let off = SocketOptions {
            nodelay: false,
            keepalive: None,
            backlog: 16,
        };
        let (socks, _) = reuseport_listeners("127.0.0.1:0".parse().unwrap(), 1, &off).unwrap();
        assert!(!socks[0].tcp_nodelay().unwrap());
        assert!(!socks[0].keepalive().unwrap());
        // A listener without SO_REUSEPORT cannot join the port.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }
}
