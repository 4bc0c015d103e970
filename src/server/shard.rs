//! One shard's state, its accept loop (connection caps, shedding, accept errors) and the life
//! of one connection.

use super::{
    BackendAdmin, ConnService, GreetHandler, Health, ServerConfig, ServerCounters, ShardReport,
    StatsSource, StormHook,
};
use super::{admin, conn, io, limits, watch};
use crate::runtime::{LocalEvent, ShardContext, Shutdown};
use crate::topology::ShardMap;
use conn::Verdict;
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// State shared by all shards (thread-safe).
pub(super) struct Shared {
    pub(super) cfg: Arc<ServerConfig>,
    pub(super) stats: Option<StatsSource>,
    pub(super) backends: Option<Arc<dyn BackendAdmin>>,
    pub(super) health: Health,
    pub(super) after_storm: Option<StormHook>,
    pub(super) counters: Arc<Vec<CachePadded<ServerCounters>>>,
    pub(super) map: ShardMap,
    pub(super) shutdown: Shutdown,
}

/// One shard's state (shard-local).
pub(super) struct Shard<H> {
    pub(super) shared: Arc<Shared>,
    pub(super) ctx: ShardContext,
    pub(super) greeter: H,
    pub(super) h2: hyper::server::conn::http2::Builder<io::LocalExec>,
    /// Set when the drain phase starts / the grace period ends.
    pub(super) drain: LocalEvent,
    pub(super) abort: LocalEvent,
    /// Open connections and the event set when they reach zero while draining.
    pub(super) open: Cell<usize>,
    pub(super) all_closed: LocalEvent,
    /// The connections under `max_connections_per_shard`, for shedding.
    pub(super) conns: Rc<limits::ConnTracker>,
}

impl<H> Shard<H> {
    pub(super) fn counters(&self) -> &ServerCounters {
        &self.shared.counters[self.ctx.shard]
    }
}

pub(super) async fn run_shard<H: GreetHandler>(
    shared: Arc<Shared>,
    ctx: ShardContext,
    greeter: H,
    listener: Option<socket2::Socket>,
    admin: Option<socket2::Socket>,
) -> ShardReport {
    let cfg = Arc::clone(&shared.cfg);
    let mut h2 = hyper::server::conn::http2::Builder::new(io::LocalExec);
    // Keep-alive reads the timer's clock per frame: the coarse one, unless adaptive flow control
    // needs precise round-trip times.
    let timer = if cfg.adaptive_window {
        io::HyperTimer::PRECISE
    } else {
        io::HyperTimer::COARSE
    };
    h2.timer(timer)
        .initial_stream_window_size(cfg.initial_stream_window)
        .initial_connection_window_size(cfg.initial_connection_window)
        .adaptive_window(cfg.adaptive_window)
        .max_concurrent_streams(cfg.max_streams())
        .keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.http2_keepalive_timeout)
        // gRPC has no use for a Date header; encoding one costs on every response.
        .auto_date_header(false);
    let shard = Rc::new(Shard {
        shared: Arc::clone(&shared),
        ctx,
        greeter,
        h2,
        drain: LocalEvent::new(),
        abort: LocalEvent::new(),
        open: Cell::new(0),
        all_closed: LocalEvent::new(),
        conns: Rc::new(limits::ConnTracker::new(cfg.max_connections_per_shard)),
    });
    // Mirror the process-wide switch into cheap shard-local events.
    {
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            shard.shared.shutdown.drained().await;
            shard.shared.health.set_all_not_serving();
            shard.drain.set();
            shard.shared.shutdown.aborted().await;
            shard.abort.set();
        })
        .detach();
    }
    let opts = cfg.socket_options();
    let admin_task = admin.map(|sock| {
        let listener = io::into_glommio_listener(sock);
        glommio::spawn_local(admin::serve(Rc::clone(&shard), listener))
    });
    if let Some(sock) = listener {
        tracing::info!(
            shard = ctx.shard,
            cpu = ctx.cpu,
            numa_node = ctx.node,
            "shard {} serving gRPC on cpu {} (NUMA node {})",
            ctx.shard,
            ctx.cpu,
            ctx.node
        );
        let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
        accept_loop(&shard, io::into_glommio_listener(sock), raw, &opts).await;
    }
    if let Some(t) = admin_task {
        t.await;
    }
    // The listener is closed: wait for open connections to finish (bounded by the abort phase).
    if shard.open.get() > 0 {
        shard.all_closed.wait().await;
    }
    let c = shard.counters();
    let calls = c.calls_by_code.iter().map(ServerCounters::get).sum();
    let report = ShardReport {
        shard: ctx.shard,
        connections: ServerCounters::get(&c.connections_accepted),
        calls,
        calls_abandoned: ServerCounters::get(&c.calls_abandoned),
    };
    tracing::info!(
        shard = ctx.shard,
        connections = report.connections,
        calls = report.calls,
        abandoned = report.calls_abandoned,
        "shard {} stopped",
        ctx.shard
    );
    report
}

pub(super) async fn accept_loop<H: GreetHandler>(
    shard: &Rc<Shard<H>>,
    listener: glommio::net::TcpListener,
    raw_listener: std::os::fd::RawFd,
    opts: &io::SocketOptions,
) {
    let mut backoff = limits::AcceptBackoff::new(shard.shared.cfg.accept_backoff_max);
    let mut spare = limits::SpareFd::new();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain.wait().await;
            None
        })
        .await;
        let counters = shard.counters();
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => {
                backoff.succeeded();
                s
            }
            Some(Err(e)) => {
                ServerCounters::bump(&counters.accept_errors);
                let e = std::io::Error::from(e);
                // Out of descriptors: shed idle connections to make room, as at the cap; with
                // none to shed, give up the spare descriptor to reset the clients waiting in
                // the backlog rather than leave them hanging.
                let (mut shedding, mut closed) = (0, 0);
                if limits::out_of_descriptors(&e) {
                    let shed_before = shard.conns.shed_total();
                    shedding = shard.conns.make_room();
                    for _ in shed_before..shard.conns.shed_total() {
                        ServerCounters::bump(&counters.connections_shed);
                    }
                    if shedding == 0 {
                        closed = spare.drain_backlog(raw_listener);
                    }
                }
                for _ in 0..closed {
                    ServerCounters::bump(&counters.connections_rejected);
                }
                let (wait, log) = backoff.failed(std::time::Instant::now());
                if let Some(suppressed) = log {
                    tracing::warn!(
                        shard = shard.ctx.shard,
                        error = %e,
                        suppressed,
                        shedding,
                        reset = closed,
                        "accept failed; backing off up to {:?} (errors not logged since the last line: {suppressed})",
                        shard.shared.cfg.accept_backoff_max
                    );
                }
                futures_lite::future::or(glommio::timer::sleep(wait), async {
                    shard.drain.wait().await;
                })
                .await;
                continue;
            }
        };
        let shed_before = shard.conns.shed_total();
        let mut admission = shard.conns.admit();
        // Shed connections free their place when their tasks run; an accept loop fed by a full
        // backlog never yields by itself, so give them the executor (a bounded number of times).
        for _ in 0..SHED_YIELDS {
            if !matches!(admission, limits::Admission::Refused) || shard.conns.shedding() == 0 {
                break;
            }
            futures_lite::future::yield_now().await;
            admission = shard.conns.admit();
        }
        let slot = match admission {
            limits::Admission::Admitted(slot) => slot,
            limits::Admission::Refused => {
                ServerCounters::bump(&counters.connections_rejected);
                tracing::debug!(
                    shard = shard.ctx.shard,
                    "connection limit reached with nothing to shed; closing new connection"
                );
                continue;
            }
        };
        for _ in shed_before..shard.conns.shed_total() {
            ServerCounters::bump(&counters.connections_shed);
        }
        if let Err(e) = io::tune_accepted(&stream, opts) {
            tracing::debug!(error = %e, "setting socket options failed; closing connection");
            continue;
        }
        ServerCounters::bump(&counters.connections_accepted);
        ServerCounters::bump(&counters.connections_open);
        shard.open.set(shard.open.get() + 1);
        glommio::spawn_local(serve_connection(Rc::clone(shard), stream, slot)).detach();
        // A backlog of pending connections keeps accept ready: let the connections run.
        glommio::yield_if_needed().await;
    }
    drop(listener);
    tracing::debug!(shard = shard.ctx.shard, "listener closed");
}

/// How many times the accept loop yields to let shed connections close before it refuses a
/// new one.
pub(super) const SHED_YIELDS: usize = 16;

/// How long a shed connection that finished its handshake may take to close after GOAWAY.
pub(super) const SHED_GRACE: Duration = Duration::from_secs(1);

/// How long connections may still flush after the grace period before they are dropped.
pub(super) const FLUSH_AFTER_ABORT: Duration = Duration::from_secs(1);

pub(super) async fn serve_connection<H: GreetHandler>(
    shard: Rc<Shard<H>>,
    stream: glommio::net::TcpStream,
    slot: limits::ConnSlot,
) {
    let activity = Rc::clone(slot.activity());
    let svc = ConnService {
        shard: Rc::clone(&shard),
        limit: shard
            .shared
            .cfg
            .concurrency_limit_per_connection
            .map(|n| Rc::new(glommio::sync::Semaphore::new(n as u64))),
        activity: Rc::clone(&activity),
    };
    let io = io::GlommioIo::watched(stream, Rc::clone(&activity));
    // Boxed (once per connection) so it can be dropped, freeing its buffers, before the
    // storm check below may purge the allocator.
    let mut conn = Box::pin(shard.h2.serve_connection(io, svc));
    // The watchdog records its verdict in the activity, as the tracker does when it sheds the
    // connection; `Until` looks at it before each poll of hyper's connection. Dropping the task
    // (when this function returns) cancels it.
    let _watchdog = glommio::spawn_local(watch::watch(
        Rc::clone(&activity),
        shard.shared.cfg.conn_limits(),
        shard.drain.clone(),
    ));
    let result = match conn::Until::new(&activity, conn.as_mut()).await {
        Ok(r) => r,
        Err(verdict) => {
            let counters = shard.counters();
            match verdict {
                Verdict::Handshake => ServerCounters::bump(&counters.closed_handshake_timeout),
                Verdict::Idle => ServerCounters::bump(&counters.closed_idle),
                Verdict::SendStall => ServerCounters::bump(&counters.closed_send_stall),
                Verdict::Shed | Verdict::Drain => {}
            }
            match verdict {
                // Still handshaking when a time limit passed or the tracker shed it: just drop
                // it.
                Verdict::Handshake => Ok(()),
                Verdict::Shed if !activity.handshaken() => Ok(()),
                // Idle or stalled past its limit, or shed at the cap: GOAWAY, then a moment to
                // write it (a stalled peer will not read it). Returning drops the connection: the
                // socket closes and every stream left goes with it.
                Verdict::Idle | Verdict::SendStall | Verdict::Shed => {
                    let grace = if verdict == Verdict::Shed {
                        SHED_GRACE
                    } else {
                        tracing::debug!(
                            shard = shard.ctx.shard,
                            ?verdict,
                            "closing connection: time limit passed"
                        );
                        watch::CLOSE_GRACE
                    };
                    conn.as_mut().graceful_shutdown();
                    futures_lite::future::or(conn.as_mut(), async {
                        glommio::timer::sleep(grace).await;
                        Ok(())
                    })
                    .await
                }
                Verdict::Drain => {
                    // Drain: GOAWAY, then let accepted streams finish. After the grace period
                    // the calls answer UNAVAILABLE (see `ConnService`), which needs a moment to
                    // be written.
                    conn.as_mut().graceful_shutdown();
                    futures_lite::future::or(conn.as_mut(), async {
                        shard.abort.wait().await;
                        glommio::timer::sleep(FLUSH_AFTER_ABORT).await;
                        Ok(())
                    })
                    .await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(shard = shard.ctx.shard, error = ?e, "connection ended with an error");
    }
    ServerCounters::drop_one(&shard.counters().connections_open);
    drop(conn);
    drop(slot);
    if let Some(hook) = &shard.shared.after_storm
        && shard.conns.storm_ended()
    {
        tracing::debug!(
            shard = shard.ctx.shard,
            "connection storm over; releasing memory"
        );
        hook();
    }
    let open = shard.open.get() - 1;
    shard.open.set(open);
    if open == 0 && shard.drain.is_set() {
        shard.all_closed.set();
    }
}
