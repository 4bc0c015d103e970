//! The origin: a small thread-per-core backend speaking the [`super::frame`] protocol.
//!
//! Each shard is a glommio executor (started by [`crate::runtime::spawn_shards`]) with its own
//! SO_REUSEPORT listener; every accepted connection is a task on that shard that answers frames
//! one after the other. Glommio (not a thread per connection) keeps the origin cheap enough that
//! the connect-per-request baseline of the benchmarks is not slowed by the origin itself.
//!
//! ```no_run
//! use shardpool::upstream::origin::{Origin, OriginConfig};
//! let origin = Origin::start(OriginConfig::default()).unwrap();
//! println!("origin on {}", origin.local_addr());
//! origin.stop();
//! ```

use super::frame::{self, Code, Op, ReadFrame, Response};
use crate::runtime::{RuntimeOptions, Shutdown, spawn_shards};
use crate::server::io::{SocketOptions, into_glommio_listener, reuseport_listeners};
use crate::topology::{Placement, Topology};
use futures_lite::AsyncWriteExt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How to run an origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Name reported in logs and metrics.
    pub id: String,
    /// Delay before every answer (simulates a slow or stalled backend).
    pub delay: Duration,
    /// Number of shards (executor threads).
    pub shards: usize,
    /// Pin each shard to a CPU (off for origins embedded next to a pinned server).
    pub pin: bool,
    /// Close a connection that brings no complete request for this long, like a server's
    /// keep-alive timeout (`None`: keep connections open until the client closes them).
    pub idle_timeout: Option<Duration>,
    /// Deliberately join `listen` when another origin (or shardpool process) of the same user
    /// already listens there; the kernel then splits connections between them (`false`: binding
    /// a port in use fails).
    pub reuse_port_shared: bool,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            id: "origin".into(),
            delay: Duration::ZERO,
            shards: 1,
            pin: false,
            idle_timeout: None,
            reuse_port_shared: false,
        }
    }
}

/// Counters shared by an origin's shards.
#[derive(Debug, Default)]
struct OriginShared {
    /// HELLO requests answered OK.
    served: AtomicU64,
    /// Connections accepted.
    accepted: AtomicU64,
    /// Connections closed.
    closed: AtomicU64,
    /// The most connections open at once (sampled at each accept).
    peak_open: AtomicU64,
    /// Current answer delay, nanoseconds.
    delay_ns: AtomicU64,
}

/// The origin entry point.
pub struct Origin;

impl Origin {
    /// Binds the listeners and starts the shards.
    pub fn start(config: OriginConfig) -> io::Result<RunningOrigin> {
        let map = Topology::detect()
            .place(&Placement::AllCores, Some(config.shards.max(1)))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let opts = SocketOptions {
            nodelay: true,
            keepalive: None,
            backlog: 1024,
            reuse_port_shared: config.reuse_port_shared,
        };
        let (listeners, addr) = reuseport_listeners(config.listen, map.len(), &opts)?;
        let slots: Arc<Vec<Mutex<Option<socket2::Socket>>>> =
            Arc::new(listeners.into_iter().map(|s| Mutex::new(Some(s))).collect());
        let shared = Arc::new(OriginShared::default());
        // Ordering: Relaxed; the shards read it with Relaxed per request, a new value may be seen
        // a request late, nothing else is published with it.
        shared
            .delay_ns
            .store(delay_ns(config.delay), Ordering::Relaxed);
        let shutdown = Shutdown::new();
        let options = RuntimeOptions {
            name: format!("origin-{}", config.id),
            spin_before_park: None,
            pin: config.pin,
        };
        let (sh, stop) = (Arc::clone(&shared), shutdown.clone());
        let handles = spawn_shards(&map, &options, move |ctx| {
            let listener = slots[ctx.shard]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            serve_shard(listener, Arc::clone(&sh), stop.clone(), config.idle_timeout)
        })
        .map_err(io::Error::other)?;
        Ok(RunningOrigin {
            addr,
            shared,
            paused_delay: Mutex::new(0),
            shutdown,
            handles: Some(handles),
        })
    }
}

async fn serve_shard(
    listener: Option<socket2::Socket>,
    shared: Arc<OriginShared>,
    stop: Shutdown,
    idle_timeout: Option<Duration>,
) {
    let Some(listener) = listener else { return };
    let listener = into_glommio_listener(listener);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.drained().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                // Nodelay failing on a just-accepted socket only costs latency; serve anyway.
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(serve_conn(stream, Arc::clone(&shared), idle_timeout))
                    .detach();
            }
            // EMFILE and friends: back off a little instead of spinning.
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
    // Returning ends the executor; its detached connection tasks are dropped, closing their
    // sockets (a stopped origin looks killed to its clients).
}

/// The receive buffer of each origin connection: many requests' worth.
const RECV_BUFFER: usize = 4096;

/// `delay_ns` while the origin is paused ([`RunningOrigin::pause`]).
const PAUSED: u64 = u64::MAX;

/// How often a paused connection task looks whether the origin was resumed.
const PAUSE_POLL: Duration = Duration::from_millis(5);

/// `delay` as stored in `delay_ns` (saturated below [`PAUSED`]).
fn delay_ns(delay: Duration) -> u64 {
    delay.as_nanos().min(u128::from(PAUSED - 1)) as u64
}

/// Waits before answering: the configured delay, or until the origin is resumed.
async fn wait_out(shared: &OriginShared, delay_ns: u64) {
    if delay_ns != PAUSED {
        glommio::timer::sleep(Duration::from_nanos(delay_ns)).await;
        return;
    }
    // Ordering: Relaxed, see `OriginShared::delay_ns`.
    while shared.delay_ns.load(Ordering::Relaxed) == PAUSED {
        glommio::timer::sleep(PAUSE_POLL).await;
    }
}

/// The response to one request payload. Never a frame longer than [`frame::MAX_FRAME`]: a name
/// whose greeting would not fit is refused as `BAD_REQUEST` (the request's fault), and any other
/// reply that would not fit is the origin's own failure, `SERVER_ERROR`.
fn answer(shared: &OriginShared, payload: &[u8]) -> Response {
    let (response, hello) = match frame::decode_request(payload) {
        Ok((Op::Hello, name)) if name.len() > frame::MAX_HELLO_NAME => {
            let why = format!(
                "name is {} bytes; the longest name whose greeting fits one frame is {} bytes",
                name.len(),
                frame::MAX_HELLO_NAME
            );
            return Response::error(Code::BadRequest, why);
        }
        Ok((Op::Hello, name)) => (Response::ok(frame::hello_reply(name)), true),
        Ok((Op::Ping, _)) => (Response::ok("pong"), false),
        Err(why) => return Response::error(Code::BadRequest, why),
    };
    if !frame::response_fits(&response.message) {
        let why = format!(
            "the origin's reply of {} bytes does not fit one frame",
            response.message.len()
        );
        return Response::error(Code::ServerError, why);
    }
    if hello {
        // Ordering: Relaxed statistic.
        shared.served.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn serve_conn(
    stream: glommio::net::TcpStream,
    shared: Arc<OriginShared>,
    idle_timeout: Option<Duration>,
) {
    // Frames are read through a receive buffer: one `recv` takes a whole request (length and
    // payload) instead of one for each.
    let mut stream = stream.buffered_with(glommio::net::Preallocated::new(RECV_BUFFER));
    // Ordering: Relaxed counters (statistics; nothing is published through them). `closed` is
    // read after the increment, so a close racing on another shard can only make the sampled
    // peak larger, never smaller; on a one-shard origin accepts and closes are sequential.
    let accepted = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
    let open = accepted.saturating_sub(shared.closed.load(Ordering::Relaxed));
    shared.peak_open.fetch_max(open, Ordering::Relaxed);
    let mut buf = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(256);
    loop {
        out.clear();
        let read = async { Some(frame::read_frame(&mut stream, &mut buf).await) };
        let next = match idle_timeout {
            None => read.await,
            Some(idle) => {
                futures_lite::future::or(read, async {
                    glommio::timer::sleep(idle).await;
                    None
                })
                .await
            }
        };
        // `None`: idle too long; close like a keep-alive timeout (a pooled client finds out
        // when it next uses the connection).
        let Some(next) = next else { break };
        let keep_open = match next {
            Ok(ReadFrame::Frame) => {
                // Ordering: Relaxed, see `OriginShared::delay_ns`.
                let delay = shared.delay_ns.load(Ordering::Relaxed);
                if delay != 0 {
                    wait_out(&shared, delay).await;
                }
                let response = answer(&shared, &buf);
                frame::encode_response(&response, &mut out);
                true
            }
            Ok(ReadFrame::BadLength(len)) => {
                let why = format!(
                    "frame length {len} is outside 1..={}; closing the connection",
                    frame::MAX_FRAME
                );
                frame::encode_response(&Response::error(Code::TooLarge, why), &mut out);
                false
            }
            Ok(ReadFrame::Eof) | Err(_) => break,
        };
        if stream.write_all(&out).await.is_err() || !keep_open {
            break;
        }
    }
    // Ordering: Relaxed statistic.
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

/// A started origin. Dropping it stops it (like [`RunningOrigin::stop`]).
pub struct RunningOrigin {
    addr: SocketAddr,
    shared: Arc<OriginShared>,
    /// The delay to restore on [`RunningOrigin::resume`].
    paused_delay: Mutex<u64>,
    shutdown: Shutdown,
    handles: Option<crate::runtime::ShardHandles<()>>,
}

impl RunningOrigin {
    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// HELLO requests answered OK so far.
    pub fn served(&self) -> u64 {
        // Ordering: Relaxed statistic.
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Connections open now (accepted and not yet closed).
    pub fn open_connections(&self) -> u64 {
        // Ordering: Relaxed statistics; `closed` is read first so the difference never underflows
        // for a connection that closes between the two loads.
        let closed = self.shared.closed.load(Ordering::Relaxed);
        self.shared
            .accepted
            .load(Ordering::Relaxed)
            .saturating_sub(closed)
    }

    /// The most connections that were open at once (sampled when a connection is accepted;
    /// exact for a one-shard origin, an upper bound with several shards).
    pub fn peak_open_connections(&self) -> u64 {
        // Ordering: Relaxed statistic.
        self.shared.peak_open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        // Ordering: Relaxed statistic.
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Stops answering, like a SIGSTOPped process: connections are still accepted (the kernel's
    /// backlog would take them) and requests are read, but no request (HELLO or PING) is
    /// answered until [`RunningOrigin::resume`]; then the held requests are answered in order.
    pub fn pause(&self) {
        // Ordering: Relaxed, see `OriginShared::delay_ns`; the lock orders pause and resume.
        let mut before = self
            .paused_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.shared.delay_ns.swap(PAUSED, Ordering::Relaxed);
        if old != PAUSED {
            *before = old;
        }
    }

    /// Answers again after [`RunningOrigin::pause`], with the delay it had before the pause
    /// (requests already held are answered within 5 ms).
    pub fn resume(&self) {
        let before = self
            .paused_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Ordering: Relaxed, see `OriginShared::delay_ns`. Only a paused origin is changed.
        let _ = self.shared.delay_ns.compare_exchange(
            PAUSED,
            *before,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Changes the delay before every answer (takes effect on the next request; also ends a
    /// pause).
    pub fn set_delay(&self, delay: Duration) {
        // Ordering: Relaxed, see `OriginShared::delay_ns`.
        self.shared
            .delay_ns
            .store(delay_ns(delay), Ordering::Relaxed);
    }

    /// The shutdown switch (for signal handlers): `drain()` stops the origin.
    pub fn shutdown_switch(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits until the origin stops (after someone triggered its shutdown switch).
    pub fn wait(mut self) {
        self.join();
    }

    /// Stops accepting, closes every connection at once (clients see the origin die) and waits
    /// for the shards to end.
    pub fn stop(mut self) {
        self.shutdown.abort();
        self.join();
    }

    fn join(&mut self) {
        if let Some(h) = self.handles.take() {
            // A shard that panicked has already stopped; nothing more to clean up.
            let _ = h.join();
        }
    }
}

impl Drop for RunningOrigin {
    fn drop(&mut self) {
        self.shutdown.abort();
        self.join();
    }
}
