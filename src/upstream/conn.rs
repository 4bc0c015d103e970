//! Upstream connections that can move between shards soundly and cheaply.
//!
//! # Moving sockets between executors (docs/gateway.md, DESIGN §4)
//!
//! glommio's `TcpStream` is `!Send` and cannot give its fd back, so the pool cannot hold it. The
//! pool holds an [`UpstreamConn`]: an owned `std::net::TcpStream` (`Send`) plus a connection id,
//! the shard it last ran on (its *home*) and a *generation*. Each shard keeps, in a thread-local
//! table keyed by connection id, a glommio wrapper around its own `dup` of the socket:
//!
//! * **Hot path** — a shard reuses a connection whose home is itself: the wrapper is found in the
//!   shard's table (a hash lookup), no `dup`, no wrap, no syscall besides the request's own
//!   send/recv.
//! * **Steal** — the connection's home is another shard: this shard `dup`s the owned socket,
//!   wraps the copy, bumps the generation, becomes the home, and posts `(id, old generation)` to
//!   the old home's inbox; the old home drops its stale wrapper the next time it looks (a checkout
//!   or its maintenance tick). Counted in [`UpstreamManager::rewraps`].
//! * **Close** — dropping an `UpstreamConn` shuts the socket down (the connection is finished for
//!   every copy: the backend sees the close at once) and posts the id to its home, which drops the
//!   wrapper. A wrapper is never `shutdown()` or `close()`d through glommio while the connection
//!   lives (that would shut the shared socket); it is only dropped, which closes its own fd.
//!
//! Validation ([`UpstreamManager`]'s `is_valid`) is a `recv(MSG_PEEK | MSG_DONTWAIT)` on the
//! owned socket, done only for connections idle longer than `validate_after` (so the hot path
//! pays no syscall for it); a connection the backend closed in that window fails its request,
//! which the gateway retries once through the pool (see `Gateway`).

use super::frame::{self, Op, ReadFrame, Response};
use crate::pool::Manage;
use crossbeam_utils::CachePadded;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream as StdStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Ids of connections, unique in the process (wrapper tables are per thread, shared by pools).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Sentinel home: no shard has a wrapper.
const NO_HOME: usize = usize::MAX;

struct Wrapper {
    generation: u64,
    stream: glommio::net::TcpStream,
}

thread_local! {
    /// This shard's wrappers, by connection id. Only the owning executor thread touches it.
    static WRAPPERS: RefCell<HashMap<u64, Wrapper>> = RefCell::new(HashMap::new());
}

/// Per-shard inboxes of `(connection id, generation)` whose wrappers the shard must drop.
#[derive(Debug)]
pub struct Inboxes {
    shards: Vec<CachePadded<Inbox>>,
    /// Wrappers made for an existing connection (steals, and re-wraps after a failed request).
    rewraps: AtomicU64,
}

#[derive(Debug, Default)]
struct Inbox {
    /// Set after pushing to `list`, cleared by the owner before taking it: lets the owner skip
    /// the lock when nothing is pending (one load per checkout).
    pending: AtomicBool,
    list: Mutex<Vec<(u64, u64)>>,
}

impl Inboxes {
    /// Inboxes for `shards` shards.
    pub fn new(shards: usize) -> Inboxes {
        Inboxes {
            shards: (0..shards.max(1)).map(|_| CachePadded::default()).collect(),
            rewraps: AtomicU64::new(0),
        }
    }

    fn post(&self, shard: usize, id: u64, generation: u64) {
        let Some(inbox) = self.shards.get(shard) else {
            return;
        };
        inbox
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, generation));
        // Ordering: Release after the push; pairs with the Acquire swap in `drain`, so an owner
        // that sees the flag also sees the entry (the mutex would order it too; the flag only
        // spares the owner the lock when nothing is pending).
        inbox.pending.store(true, Ordering::Release);
    }

    /// Drops this thread's wrappers that `shard`'s inbox names. Call it on `shard`'s thread.
    pub fn drain(&self, shard: usize) {
        let Some(inbox) = self.shards.get(shard) else {
            return;
        };
        // Ordering: Acquire, pairs with the Release store in `post`. A post racing with this
        // swap sets the flag again after its push, so it is seen by the next drain.
        if !inbox.pending.swap(false, Ordering::Acquire) {
            return;
        }
        let list = std::mem::take(&mut *inbox.list.lock().unwrap_or_else(PoisonError::into_inner));
        WRAPPERS.with(|t| {
            let mut t = t.borrow_mut();
            for (id, generation) in list {
                if t.get(&id).is_some_and(|w| w.generation == generation) {
                    t.remove(&id);
                }
            }
        });
    }
}

/// A pooled upstream connection: the owned socket plus where its glommio wrapper lives.
///
/// `Send`: it holds no glommio state, only the std socket and plain numbers.
#[derive(Debug)]
pub struct UpstreamConn {
    sock: StdStream,
    id: u64,
    home: usize,
    generation: u64,
    returned_at: Instant,
    /// An exchange started and did not finish: the stream position is unknown.
    busy: bool,
    inboxes: Arc<Inboxes>,
}

/// What one exchange on a connection did.
#[derive(Debug)]
pub struct Exchange {
    /// The backend's answer.
    pub response: Response,
    /// The connection had to be re-wrapped on this shard (it was stolen from another shard).
    pub moved: bool,
}

impl UpstreamConn {
    /// Sends one request and reads its response on the current shard's wrapper, re-wrapping the
    /// socket first if it last ran on another shard. `shard` must be the calling thread's shard.
    ///
    /// On error the wrapper is dropped; the caller should discard the connection (its stream
    /// position is unknown).
    pub async fn exchange(&mut self, shard: usize, op: Op, name: &str) -> io::Result<Exchange> {
        // Cleared only when the answer is in: a connection whose exchange failed or was cancelled
        // (a timeout drops this future) is refused by `recycle` and closed, never reused mid-frame.
        self.busy = true;
        let (mut wrapper, moved) = self.wrapper_for(shard)?;
        let mut buf = Vec::with_capacity(5 + name.len().max(32));
        frame::encode_request(op, name, &mut buf);
        futures_lite::AsyncWriteExt::write_all(&mut wrapper.stream, &buf).await?;
        let response = match frame::read_frame(&mut wrapper.stream, &mut buf).await? {
            ReadFrame::Frame => frame::decode_response(&buf)?,
            ReadFrame::Eof => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the backend closed the connection before answering",
                ));
            }
            ReadFrame::BadLength(len) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the backend sent a frame of length {len}"),
                ));
            }
        };
        WRAPPERS.with(|t| t.borrow_mut().insert(self.id, wrapper));
        self.busy = false;
        Ok(Exchange { response, moved })
    }

    /// This shard's wrapper: the cached one on the hot path, a fresh `dup` + wrap otherwise.
    fn wrapper_for(&mut self, shard: usize) -> io::Result<(Wrapper, bool)> {
        self.inboxes.drain(shard);
        let cached = WRAPPERS.with(|t| t.borrow_mut().remove(&self.id));
        // A stale wrapper from an earlier stay on this shard is dropped here.
        if let Some(w) = cached
            && self.home == shard
            && w.generation == self.generation
        {
            return Ok((w, false));
        }
        let moved = self.home != NO_HOME && self.home != shard;
        if moved {
            self.inboxes.post(self.home, self.id, self.generation);
        }
        let fd = self.sock.as_fd().try_clone_to_owned()?;
        // Ordering: Relaxed statistic; nothing is published through it.
        self.inboxes.rewraps.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `fd` is a fresh dup of a connected TCP socket, owned by nobody else once
        // `into_raw_fd` releases it; the glommio stream becomes its only owner and closes it on
        // drop. The stream is never shut down through glommio (that would affect the shared
        // socket); see the module docs.
        let stream = unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
        self.generation += 1;
        self.home = shard;
        Ok((
            Wrapper {
                generation: self.generation,
                stream,
            },
            moved,
        ))
    }

    /// True if the backend closed the connection or sent bytes nobody asked for (one
    /// non-blocking `recv(MSG_PEEK)` on the owned socket; no wrapper needed, any thread).
    pub fn peer_gone(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: the fd is owned by `self.sock` and open; the buffer is one valid byte;
        // MSG_PEEK|MSG_DONTWAIT neither consumes data nor blocks.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return err.kind() != io::ErrorKind::WouldBlock
                && err.kind() != io::ErrorKind::Interrupted;
        }
        true
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        // The connection is finished for every copy: tell the backend now rather than when the
        // last stale wrapper goes. ENOTCONN (already reset) is fine.
        let _ = self.sock.shutdown(Shutdown::Both);
        if self.home == NO_HOME {
            return;
        }
        // Ids are unique in the process, so finding the current wrapper in this thread's table
        // means this thread is the home: drop it now. Otherwise tell the home shard. (`try_with`:
        // a connection may be dropped while this thread's locals are being destroyed.)
        let dropped_here = WRAPPERS
            .try_with(|t| {
                let mut t = t.borrow_mut();
                let current = t
                    .get(&self.id)
                    .is_some_and(|w| w.generation == self.generation);
                current && t.remove(&self.id).is_some()
            })
            .unwrap_or(false);
        if !dropped_here {
            self.inboxes.post(self.home, self.id, self.generation);
        }
    }
}

/// Drops every wrapper of the calling thread. A shard calls it when it stops, so the glommio
/// streams go while their executor still runs (thread-local destructors would run after it).
pub fn drop_thread_wrappers() {
    let all = WRAPPERS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    drop(all);
}

/// How upstream connections are made and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// TCP keepalive idle time (`None`: off).
    pub keepalive: Option<Duration>,
    /// Peek at connections idle at least this long before reusing them (`Duration::ZERO`: every
    /// reuse).
    pub validate_after: Duration,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            connect_timeout: Duration::from_secs(1),
            keepalive: Some(Duration::from_secs(60)),
            validate_after: Duration::from_millis(100),
        }
    }
}

/// The pool manager for upstream connections (keyed by backend address). Connections must be
/// created and used on shard executors started by [`crate::runtime::spawn_shards`].
#[derive(Clone, Debug)]
pub struct UpstreamManager {
    config: ConnectorConfig,
    inboxes: Arc<Inboxes>,
}

impl UpstreamManager {
    /// A manager for a pool of `shards` shards.
    pub fn new(config: ConnectorConfig, shards: usize) -> UpstreamManager {
        UpstreamManager {
            config,
            inboxes: Arc::new(Inboxes::new(shards)),
        }
    }

    /// How many times a connection of this manager had to be `dup`ed and re-wrapped (a steal by
    /// another shard, or a wrapper lost with a failed request). Creating a connection is not
    /// counted. The hot path (a shard reusing its own connection) never moves it.
    pub fn rewraps(&self) -> u64 {
        // Ordering: Relaxed statistic.
        self.inboxes.rewraps.load(Ordering::Relaxed)
    }

    /// The wrapper inboxes; each shard should [`Inboxes::drain`] its own now and then.
    pub fn inboxes(&self) -> &Arc<Inboxes> {
        &self.inboxes
    }

    /// Connects to `addr` from the current shard: glommio's io_uring connect with the connect
    /// timeout, then TCP_NODELAY and keepalive through socket2. The new connection's wrapper is
    /// the connecting stream itself; the pool gets a `dup`.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UpstreamConn> {
        let shard = crate::pool::current_shard().ok_or_else(|| {
            io::Error::other("upstream connections are made on shard executors only")
        })?;
        self.inboxes.drain(shard);
        let stream = glommio::net::TcpStream::connect_timeout(addr, self.config.connect_timeout)
            .await
            .map_err(|e| {
                let e = io::Error::from(e);
                io::Error::new(e.kind(), format!("cannot connect to backend {addr}: {e}"))
            })?;
        // SAFETY: the fd belongs to `stream`, which outlives this borrow (used only in this block).
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let sref = socket2::SockRef::from(&fd);
        sref.set_tcp_nodelay(true)?;
        match self.config.keepalive {
            Some(idle) => sref.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?,
            None => sref.set_keepalive(false)?,
        }
        let sock = StdStream::from(fd.try_clone_to_owned()?);
        // Ordering: Relaxed; ids only need to be unique.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        WRAPPERS.with(|t| {
            t.borrow_mut().insert(
                id,
                Wrapper {
                    generation: 1,
                    stream,
                },
            )
        });
        Ok(UpstreamConn {
            sock,
            id,
            home: shard,
            generation: 1,
            returned_at: Instant::now(),
            busy: false,
            inboxes: Arc::clone(&self.inboxes),
        })
    }
}

impl Manage for UpstreamManager {
    type Key = SocketAddr;
    type Conn = UpstreamConn;
    type Error = io::Error;

    fn create(&self, key: &SocketAddr) -> impl Future<Output = io::Result<UpstreamConn>> {
        self.connect(*key)
    }

    fn is_valid(&self, conn: &mut UpstreamConn) -> bool {
        conn.returned_at.elapsed() < self.config.validate_after || !conn.peer_gone()
    }

    fn recycle(&self, conn: &mut UpstreamConn) -> bool {
        conn.returned_at = Instant::now();
        !conn.busy
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        glommio::timer::sleep(duration)
    }
}
