//! The server's admin listener (`--admin-listen`). It speaks HTTP/1.1 (`GET /metrics`, the
//! Prometheus text format, version 0.0.4) and h2c gRPC (`shardpool.v1.Admin`, including the
//! backend RPCs of [`BackendAdmin`], and `grpc.health.v1.Health`), told apart by the HTTP/2
//! connection preface. When an admin token is configured every request must carry it.
//!
//! Each connection is served by a task of its own, at most `admin.max_connections` at once (more
//! are closed at once); a connection must send its first bytes and every request head within
//! `admin.read_timeout`, heads are at most [`ADMIN_MAX_HEAD`](super::ADMIN_MAX_HEAD) bytes, and
//! one that sends nothing for `admin.idle_timeout` is closed.

use super::access::{ADMIN_MAX_HEAD, Denied};
use super::grpc::{GrpcBody, ok_response, status_response};
use super::proto::{
    AddBackendRequest, Backend, BackendList, ListBackendsRequest, RemoveBackendRequest,
};
use super::{Code, GreetHandler, Method, ServerCounters, Shard, Status};
use crate::pool::{ShardStats, Stats};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

/// The HTTP/2 connection preface, which tells an h2c (gRPC) client from an HTTP/1.1 one.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves the admin listener until the drain phase.
pub(super) async fn serve<H: GreetHandler>(
    shard: Rc<Shard<H>>,
    listener: glommio::net::TcpListener,
) {
    let acfg = &shard.shared.cfg.admin;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(super::io::HyperTimer::COARSE)
        .keep_alive(true)
        .header_read_timeout(acfg.read_timeout)
        .max_buf_size(ADMIN_MAX_HEAD);
    let mut h2 = hyper::server::conn::http2::Builder::new(super::io::LocalExec);
    h2.timer(super::io::HyperTimer::COARSE)
        .max_concurrent_streams(16)
        .max_header_list_size(ADMIN_MAX_HEAD as u32)
        .max_send_buf_size(64 << 10)
        .keep_alive_interval(None);
    let builders = Rc::new((http1, h2));
    let open = Rc::new(Cell::new(0usize));
    let mut backoff = super::limits::AcceptBackoff::new(shard.shared.cfg.accept_backoff_max);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => {
                backoff.succeeded();
                s
            }
            Some(Err(e)) => {
                // Rate-limited like the gRPC accept loop (see `limits::AcceptBackoff`).
                let (wait, log) = backoff.failed(std::time::Instant::now());
                if let Some(suppressed) = log {
                    tracing::warn!(error = %e, suppressed, "admin accept failed; backing off");
                }
                glommio::timer::sleep(wait).await;
                continue;
            }
        };
        if open.get() >= acfg.max_connections {
            tracing::debug!(
                limit = acfg.max_connections,
                "admin connection limit reached; closing new connection"
            );
            continue;
        }
        // A client that stops reading or sending is dropped after these (glommio returns
        // TimedOut from the read or write, which ends the connection).
        if stream.set_read_timeout(Some(acfg.idle_timeout)).is_err()
            || stream.set_write_timeout(Some(acfg.read_timeout)).is_err()
        {
            continue;
        }
        let guard = OpenGuard::new(&open);
        let (shard, builders) = (Rc::clone(&shard), Rc::clone(&builders));
        glommio::spawn_local(async move {
            let _guard = guard;
            connection(shard, stream, &builders.0, &builders.1).await;
        })
        .detach();
    }
}

/// Counts one open admin connection until dropped.
struct OpenGuard(Rc<Cell<usize>>);

impl OpenGuard {
    fn new(open: &Rc<Cell<usize>>) -> OpenGuard {
        open.set(open.get() + 1);
        OpenGuard(Rc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Whether the client starts with the HTTP/2 preface (`Some(true)`), with anything else
/// (`Some(false)`), or sends nothing useful before the read timeout (`None`).
async fn peek_preface(stream: &glommio::net::TcpStream, limit: Duration) -> Option<bool> {
    let peek = async {
        let mut buf = [0u8; 24];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // Part of the preface so far: wait a little for the rest (bounded by `limit`).
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    };
    futures_lite::future::or(peek, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

async fn connection<H: GreetHandler>(
    shard: Rc<Shard<H>>,
    stream: glommio::net::TcpStream,
    http1: &hyper::server::conn::http1::Builder,
    h2: &hyper::server::conn::http2::Builder<super::io::LocalExec>,
) {
    let Some(is_h2) = peek_preface(&stream, shard.shared.cfg.admin.read_timeout).await else {
        return;
    };
    let io = super::io::GlommioIo::new(stream);
    let result = if is_h2 {
        let svc = AdminGrpc {
            shard: Rc::clone(&shard),
        };
        h2.serve_connection(io, svc).await
    } else {
        let shard = Rc::clone(&shard);
        http1
            .serve_connection(
                io,
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = respond(&shard, &req);
                    async move { Ok::<_, Infallible>(resp) }
                }),
            )
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// The `authorization` header of a request.
fn authorization<B>(req: &Request<B>) -> Option<&[u8]> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
}

fn respond<H>(shard: &Shard<H>, req: &Request<Incoming>) -> Response<GrpcBody> {
    if let Err(denied) = shard.shared.cfg.admin.authorize(authorization(req)) {
        let mut r = Response::new(GrpcBody::bytes(format!("{}\n", denied.message())));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if req.uri().path() != "/metrics" || req.method() != http::Method::GET {
        let mut r = Response::new(GrpcBody::bytes(
            "not found; try GET /metrics (gRPC: shardpool.v1.Admin over h2c)\n",
        ));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let stats = shard.shared.stats.as_ref().map(|s| s());
    let text = render(stats.as_ref(), &shard.shared.counters);
    let mut r = Response::new(GrpcBody::bytes(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The gRPC service of the admin listener.
struct AdminGrpc<H> {
    shard: Rc<Shard<H>>,
}

impl<H: GreetHandler> hyper::service::Service<Request<Incoming>> for AdminGrpc<H> {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let acfg = &self.shard.shared.cfg.admin;
        if let Err(denied) = acfg.authorize(authorization(&req)) {
            let code = match denied {
                Denied::Missing => Code::Unauthenticated,
                Denied::Wrong => Code::PermissionDenied,
            };
            let resp = status_response(&Status::new(code, denied.message()));
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let (method, _deadline) = match super::check_head(&self.shard.shared.cfg, &req) {
            Ok(m) => m,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refusal.into_response().1))),
        };
        let shard = Rc::clone(&self.shard);
        let limit = acfg.read_timeout;
        let body = req.into_body();
        Box::pin(async move {
            let call = admin_call(&shard, method, body);
            let timeout = async {
                glommio::timer::sleep(limit).await;
                Err(Status::new(
                    Code::DeadlineExceeded,
                    format!("admin call took longer than admin_read_timeout ({limit:?})"),
                ))
            };
            Ok(match futures_lite::future::or(call, timeout).await {
                Ok(resp) => resp,
                Err(status) => status_response(&status),
            })
        })
    }
}

/// One call on the admin listener: the admin and health services; SayHello is the serving
/// port's.
async fn admin_call<H: GreetHandler>(
    shard: &Shard<H>,
    method: Method,
    body: Incoming,
) -> Result<Response<GrpcBody>, Status> {
    match method {
        Method::Backends(rpc) => {
            let msg = super::grpc::read_unary(body, shard.shared.cfg.max_message_size).await?;
            Ok(ok_response(&backend_rpc(
                shard.shared.backends.as_deref(),
                rpc,
                msg,
            )?))
        }
        Method::SayHello => Err(Status::new(
            Code::Unimplemented,
            "helloworld.Greeter is served on the serving port (--listen), not on the admin listener",
        )),
        Method::Reflection => Err(Status::new(
            Code::Unimplemented,
            "server reflection is served on the serving port (--listen), not on the admin listener",
        )),
        Method::HealthCheck | Method::PoolMetrics => super::call(shard, method, body).await,
    }
}

/// The status the serving port answers the backend RPCs with.
pub(super) fn refused_on_serving_port(rpc: BackendRpc) -> Status {
    let name = match rpc {
        BackendRpc::Add => "AddBackend",
        BackendRpc::Remove => "RemoveBackend",
        BackendRpc::List => "ListBackends",
    };
    Status::new(
        Code::PermissionDenied,
        format!(
            "shardpool.v1.Admin/{name} is served only on the admin listener (--admin-listen), \
             not on the serving port; nothing was changed"
        ),
    )
}

/// One pool metric: name, help, kind, and how to read it from a shard's stats.
type PoolMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> Sample,
);

/// A sample value as written in the exposition: a count as an integer, a duration (kept in
/// whole microseconds by the pool) in seconds, the Prometheus base unit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sample {
    /// A count or a gauge of things.
    Count(u64),
    /// A duration in microseconds, written in seconds.
    Micros(u64),
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Sample::Count(n) => write!(f, "{n}"),
            // Exact: a whole number of microseconds has at most six decimals.
            Sample::Micros(us) => write!(f, "{}.{:06}", us / 1_000_000, us % 1_000_000),
        }
    }
}

const POOL_METRICS: [PoolMetric; 16] = [
    (
        "pool_checkouts_total",
        "Successful checkouts.",
        "counter",
        |s| Sample::Count(s.checkouts),
    ),
    (
        "pool_local_hits_total",
        "Checkouts served from the shard's own idle queue.",
        "counter",
        |s| Sample::Count(s.local_hits),
    ),
    (
        "pool_steals_total",
        "Checkouts served by stealing from another shard.",
        "counter",
        |s| Sample::Count(s.steals),
    ),
    (
        "pool_creates_total",
        "Connections created.",
        "counter",
        |s| Sample::Count(s.creates),
    ),
    (
        "pool_handoffs_total",
        "Waiting checkouts handed a returned connection.",
        "counter",
        |s| Sample::Count(s.handoffs),
    ),
    (
        "pool_create_errors_total",
        "Failed connection creations.",
        "counter",
        |s| Sample::Count(s.create_errors),
    ),
    (
        "pool_timeouts_total",
        "Checkouts that gave up waiting.",
        "counter",
        |s| Sample::Count(s.timeouts),
    ),
    (
        "pool_waits_total",
        "Checkouts that had to wait.",
        "counter",
        |s| Sample::Count(s.waits),
    ),
    ("pool_closes_total", "Connections closed.", "counter", |s| {
        Sample::Count(s.closes)
    }),
    (
        "pool_live",
        "Live connections (idle + checked out).",
        "gauge",
        |s| Sample::Count(s.live),
    ),
    ("pool_idle", "Idle connections.", "gauge", |s| {
        Sample::Count(s.idle)
    }),
    (
        "pool_checked_out",
        "Connections checked out.",
        "gauge",
        |s| Sample::Count(s.checked_out),
    ),
    (
        "pool_wait_p50_seconds",
        "Median checkout wait.",
        "gauge",
        |s| Sample::Micros(s.wait_p50_us),
    ),
    (
        "pool_wait_p90_seconds",
        "90th percentile checkout wait.",
        "gauge",
        |s| Sample::Micros(s.wait_p90_us),
    ),
    (
        "pool_wait_p99_seconds",
        "99th percentile checkout wait.",
        "gauge",
        |s| Sample::Micros(s.wait_p99_us),
    ),
    (
        "pool_wait_max_seconds",
        "Longest checkout wait.",
        "gauge",
        |s| Sample::Micros(s.wait_max_us),
    ),
];

/// One server metric: name, help, kind, and how to read it from a shard's counters.
type ServerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServerCounters) -> u64,
);

const SERVER_METRICS: [ServerMetric; 9] = [
    (
        "server_connections_accepted_total",
        "Connections accepted.",
        "counter",
        |c| ServerCounters::get(&c.connections_accepted),
    ),
    (
        "server_connections_rejected_total",
        "Connections closed at the per-shard limit.",
        "counter",
        |c| ServerCounters::get(&c.connections_rejected),
    ),
    (
        "server_connections_shed_total",
        "Connections closed to make room at the per-shard limit (handshaking or idle longest).",
        "counter",
        |c| ServerCounters::get(&c.connections_shed),
    ),
    (
        "server_accept_errors_total",
        "Failed accepts (EMFILE, ENFILE, ...).",
        "counter",
        |c| ServerCounters::get(&c.accept_errors),
    ),
    (
        "server_connections_handshake_timeouts_total",
        "Connections closed because the HTTP/2 preface and SETTINGS did not arrive within the handshake timeout.",
        "counter",
        |c| ServerCounters::get(&c.closed_handshake_timeout),
    ),
    (
        "server_connections_idle_closed_total",
        "Connections closed after the idle timeout without a stream.",
        "counter",
        |c| ServerCounters::get(&c.closed_idle),
    ),
    (
        "server_connections_send_stalled_total",
        "Connections closed because a response or a write made no progress for the send-stall timeout.",
        "counter",
        |c| ServerCounters::get(&c.closed_send_stall),
    ),
    (
        "server_connections_open",
        "Connections open now.",
        "gauge",
        |c| ServerCounters::get(&c.connections_open),
    ),
    (
        "server_calls_abandoned_total",
        "Calls answered UNAVAILABLE at the shutdown deadline.",
        "counter",
        |c| ServerCounters::get(&c.calls_abandoned),
    ),
];

/// Renders the Prometheus text: pool metrics per shard (`shard` label) when a pool is attached,
/// with the pool-wide live count (`shardpool_pool_connections`), and server metrics per shard.
/// Each family has one HELP and one TYPE line, and its per-shard
/// series are its only series: the process total is their sum (no `shard="total"` series, which
/// a `sum()` would count twice).
pub(super) fn render(
    stats: Option<&Stats>,
    counters: &[crossbeam_utils::CachePadded<ServerCounters>],
) -> String {
    let mut out = String::with_capacity(8192);
    if let Some(stats) = stats {
        for (name, help, kind, get) in POOL_METRICS {
            let _ = writeln!(
                out,
                "# HELP shardpool_{name} {help}\n# TYPE shardpool_{name} {kind}"
            );
            for (i, s) in stats.shards.iter().enumerate() {
                let _ = writeln!(out, "shardpool_{name}{{shard=\"{i}\"}} {}", get(s));
            }
        }
        // The pool's exact live count, a family of its own (no shard label, so a sum over the
        // per-shard families never includes it).
        let _ = writeln!(
            out,
            "# HELP shardpool_pool_connections Live connections of the whole pool, counted \
             pool-wide (the per-shard shardpool_pool_live series come from each shard's own \
             counters).\n# TYPE shardpool_pool_connections gauge\nshardpool_pool_connections {}",
            stats.total.live
        );
    }
    for (name, help, kind, get) in SERVER_METRICS {
        let _ = writeln!(
            out,
            "# HELP shardpool_{name} {help}\n# TYPE shardpool_{name} {kind}"
        );
        for (i, c) in counters.iter().enumerate() {
            let _ = writeln!(out, "shardpool_{name}{{shard=\"{i}\"}} {}", get(c));
        }
    }
    let name = "server_calls_total";
    let _ = writeln!(
        out,
        "# HELP shardpool_{name} gRPC calls answered, by status code.\n# TYPE shardpool_{name} counter"
    );
    for (i, c) in counters.iter().enumerate() {
        for code in Code::ALL {
            let n = ServerCounters::get(&c.calls_by_code[code as usize]);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "shardpool_{name}{{shard=\"{i}\",code=\"{}\"}} {n}",
                    code.name()
                );
            }
        }
    }
    out
}

/// Run-time control of a gateway's upstream backends, behind `shardpool.v1.Admin`'s
/// `AddBackend`, `RemoveBackend` and `ListBackends` RPCs. Attach one with
/// [`Server::backend_admin`](super::Server::backend_admin); without one those RPCs answer
/// `FAILED_PRECONDITION`.
///
/// The server only parses addresses and builds messages: what a backend is, how it is pooled and
/// health checked stays behind this trait. The methods run on shard executor threads, so they
/// must be quick and must not block.
///
/// ```
/// use shardpool::server::BackendAdmin;
/// use shardpool::server::proto::Backend;
/// use std::net::SocketAddr;
/// use std::sync::Mutex;
///
/// #[derive(Default)]
/// struct Fixed(Mutex<Vec<SocketAddr>>);
/// impl BackendAdmin for Fixed {
///     fn add_backend(&self, addr: SocketAddr) -> Result<bool, String> {
///         let mut list = self.0.lock().unwrap();
///         if list.len() >= 2 && !list.contains(&addr) {
///             return Err("two backends at most".into());
///         }
///         Ok(!list.contains(&addr) && { list.push(addr); true })
///     }
///     fn remove_backend(&self, addr: SocketAddr) -> bool {
///         let mut list = self.0.lock().unwrap();
///         let before = list.len();
///         list.retain(|a| *a != addr);
///         list.len() != before
///     }
///     fn list_backends(&self) -> Vec<Backend> {
///         let list = self.0.lock().unwrap();
///         list.iter().map(|a| Backend { address: a.to_string(), ..Backend::default() }).collect()
///     }
/// }
/// let admin = Fixed::default();
/// assert_eq!(admin.add_backend("127.0.0.1:7001".parse().unwrap()), Ok(true));
/// assert_eq!(admin.add_backend("127.0.0.1:7001".parse().unwrap()), Ok(false));
/// assert_eq!(admin.add_backend("127.0.0.1:7002".parse().unwrap()), Ok(true));
/// assert!(admin.add_backend("127.0.0.1:7003".parse().unwrap()).is_err());
/// assert_eq!(admin.list_backends().len(), 2);
/// ```
pub trait BackendAdmin: Send + Sync + 'static {
    /// Adds `addr`; `Ok(false)` if it is a backend already; `Err` (and no change) when no more
    /// backends may be added, saying which limit (the RPC answers RESOURCE_EXHAUSTED with it).
    fn add_backend(&self, addr: SocketAddr) -> Result<bool, String>;
    /// Removes `addr` (calls using it finish); `false` if it is not a backend.
    fn remove_backend(&self, addr: SocketAddr) -> bool;
    /// The backends now, with their counters.
    fn list_backends(&self) -> Vec<Backend>;
    /// Whether `addr` may become a backend (checked before [`add_backend`](Self::add_backend));
    /// `Err` says why not and the RPC answers PERMISSION_DENIED with it. By default every
    /// address may (the gateway's allow-list, `--backend-allow`, overrides this).
    fn admit(&self, addr: SocketAddr) -> Result<(), String> {
        let _ = addr;
        Ok(())
    }
}

/// Parses the `address` field of a backend RPC, or INVALID_ARGUMENT saying what is expected.
fn backend_address(address: &str) -> Result<SocketAddr, Status> {
    address.trim().parse().map_err(|e| {
        Status::new(
            Code::InvalidArgument,
            format!("address `{address}` is not IP:PORT ({e}); for example 127.0.0.1:7001"),
        )
    })
}

/// The backend RPCs of `shardpool.v1.Admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BackendRpc {
    Add,
    Remove,
    List,
}

/// Answers one backend RPC (`msg` is its request message) with the backend set after it.
pub(super) fn backend_rpc(
    hook: Option<&dyn BackendAdmin>,
    rpc: BackendRpc,
    msg: Bytes,
) -> Result<BackendList, Status> {
    let Some(hook) = hook else {
        return Err(Status::new(
            Code::FailedPrecondition,
            "this server is not in gateway mode, so it has no upstream backends \
             (start it without --upstream none)",
        ));
    };
    match rpc {
        BackendRpc::Add => {
            let req: AddBackendRequest = super::decode(msg, "shardpool.v1.AddBackendRequest")?;
            let addr = backend_address(&req.address)?;
            hook.admit(addr)
                .map_err(|why| Status::new(Code::PermissionDenied, why))?;
            let added = hook
                .add_backend(addr)
                .map_err(|why| Status::new(Code::ResourceExhausted, why))?;
            if !added {
                return Err(Status::new(
                    Code::AlreadyExists,
                    format!("{addr} is a backend already"),
                ));
            }
        }
        BackendRpc::Remove => {
            let req: RemoveBackendRequest =
                super::decode(msg, "shardpool.v1.RemoveBackendRequest")?;
            let addr = backend_address(&req.address)?;
            if !hook.remove_backend(addr) {
                return Err(Status::new(
                    Code::NotFound,
                    format!("{addr} is not a backend (ListBackends lists them)"),
                ));
            }
        }
        BackendRpc::List => {
            let _: ListBackendsRequest = super::decode(msg, "shardpool.v1.ListBackendsRequest")?;
        }
    }
    Ok(BackendList {
        backends: hook.list_backends(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_pool_and_server_metrics() {
        let counters: Vec<_> = (0..2)
            .map(|_| crossbeam_utils::CachePadded::new(ServerCounters::default()))
            .collect();
        ServerCounters::bump(&counters[1].connections_accepted);
        ServerCounters::bump(&counters[1].calls_by_code[Code::DeadlineExceeded as usize]);
        let stats = Stats {
            shards: vec![
                ShardStats {
                    steals: 3,
                    wait_p99_us: 1_500_042,
                    ..ShardStats::default()
                },
                ShardStats {
                    wait_p50_us: 7,
                    ..ShardStats::default()
                },
            ],
            total: ShardStats {
                steals: 3,
                live: 7,
                ..ShardStats::default()
            },
        };
        let text = render(Some(&stats), &counters);
        assert!(
            text.contains("# TYPE shardpool_pool_steals_total counter\n"),
            "{text}"
        );
        assert!(text.contains("shardpool_pool_steals_total{shard=\"0\"} 3\n"));
        assert!(text.contains("shardpool_pool_live{shard=\"1\"} 0\n"));
        // The shards' series only: a sum over them is the total.
        assert!(!text.contains("total\""), "{text}");
        // Durations in seconds, exactly.
        assert!(text.contains("shardpool_pool_wait_p99_seconds{shard=\"0\"} 1.500042\n"));
        assert!(text.contains("shardpool_pool_wait_p50_seconds{shard=\"1\"} 0.000007\n"));
        assert!(!text.contains("microseconds"));
        assert!(text.contains("shardpool_server_connections_accepted_total{shard=\"1\"} 1\n"));
        assert!(
            text.contains(
                "shardpool_server_calls_total{shard=\"1\",code=\"DEADLINE_EXCEEDED\"} 1\n"
            )
        );
        // Every sample line is `name{labels} value`, and every family has one HELP and one TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
        assert!(text.contains("\nshardpool_pool_connections 7\n"), "{text}");
        let families = POOL_METRICS.len() + SERVER_METRICS.len() + 2;
        assert_eq!(text.matches("# HELP ").count(), families, "{text}");
        assert_eq!(text.matches("# TYPE ").count(), families, "{text}");
        let without_pool = render(None, &counters);
        assert!(!without_pool.contains("shardpool_pool_"));
    }
}
