//! The admin HTTP/1.1 endpoint: `GET /metrics` in the Prometheus text format (version 0.0.4);
//! and the backend RPCs of `shardpool.v1.Admin` ([`BackendAdmin`]).

use super::grpc::GrpcBody;
use super::proto::{
    AddBackendRequest, Backend, BackendList, ListBackendsRequest, RemoveBackendRequest,
};
use super::{Code, GreetHandler, ServerCounters, Shard, Status};
use crate::pool::{ShardStats, Stats};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

/// Serves the admin endpoint on `listener` until the drain phase.
pub(super) async fn serve<H: GreetHandler>(
    shard: Rc<Shard<H>>,
    listener: glommio::net::TcpListener,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(super::io::HyperTimer).keep_alive(true);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "admin accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let shard = Rc::clone(&shard);
        let conn = http1.serve_connection(
            super::io::GlommioIo::new(stream),
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&shard, &req);
                async move { Ok::<_, Infallible>(resp) }
            }),
        );
        glommio::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        })
        .detach();
    }
}

fn respond<H>(shard: &Shard<H>, req: &Request<hyper::body::Incoming>) -> Response<GrpcBody> {
    if req.uri().path() != "/metrics" || req.method() != http::Method::GET {
        let mut r = Response::new(GrpcBody::bytes("not found; try GET /metrics\n"));
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

/// One pool metric: name, help, kind, and how to read it from a shard's stats.
type PoolMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> u64,
);

const POOL_METRICS: [PoolMetric; 16] = [
    (
        "pool_checkouts_total",
        "Successful checkouts.",
        "counter",
        |s| s.checkouts,
    ),
    (
        "pool_local_hits_total",
        "Checkouts served from the shard's own idle queue.",
        "counter",
        |s| s.local_hits,
    ),
    (
        "pool_steals_total",
        "Checkouts served by stealing from another shard.",
        "counter",
        |s| s.steals,
    ),
    (
        "pool_creates_total",
        "Connections created.",
        "counter",
        |s| s.creates,
    ),
    (
        "pool_handoffs_total",
        "Waiting checkouts handed a returned connection.",
        "counter",
        |s| s.handoffs,
    ),
    (
        "pool_create_errors_total",
        "Failed connection creations.",
        "counter",
        |s| s.create_errors,
    ),
    (
        "pool_timeouts_total",
        "Checkouts that gave up waiting.",
        "counter",
        |s| s.timeouts,
    ),
    (
        "pool_waits_total",
        "Checkouts that had to wait.",
        "counter",
        |s| s.waits,
    ),
    ("pool_closes_total", "Connections closed.", "counter", |s| {
        s.closes
    }),
    (
        "pool_live",
        "Live connections (idle + checked out).",
        "gauge",
        |s| s.live,
    ),
    ("pool_idle", "Idle connections.", "gauge", |s| s.idle),
    (
        "pool_checked_out",
        "Connections checked out.",
        "gauge",
        |s| s.checked_out,
    ),
    (
        "pool_wait_p50_microseconds",
        "Median checkout wait.",
        "gauge",
        |s| s.wait_p50_us,
    ),
    (
        "pool_wait_p90_microseconds",
        "90th percentile checkout wait.",
        "gauge",
        |s| s.wait_p90_us,
    ),
    (
        "pool_wait_p99_microseconds",
        "99th percentile checkout wait.",
        "gauge",
        |s| s.wait_p99_us,
    ),
    (
        "pool_wait_max_microseconds",
        "Longest checkout wait.",
        "gauge",
        |s| s.wait_max_us,
    ),
];

/// One server metric: name, help, kind, and how to read it from a shard's counters.
type ServerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServerCounters) -> u64,
);

const SERVER_METRICS: [ServerMetric; 4] = [
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

/// Renders the Prometheus text: pool metrics per shard (`shard` label; the pool total has
/// `shard="total"`) when a pool is attached, and server metrics per shard.
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
            let _ = writeln!(
                out,
                "shardpool_{name}{{shard=\"total\"}} {}",
                get(&stats.total)
            );
        }
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
///     fn add_backend(&self, addr: SocketAddr) -> bool {
///         let mut list = self.0.lock().unwrap();
///         !list.contains(&addr) && { list.push(addr); true }
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
/// assert!(admin.add_backend("127.0.0.1:7001".parse().unwrap()));
/// assert!(!admin.add_backend("127.0.0.1:7001".parse().unwrap()));
/// assert_eq!(admin.list_backends().len(), 1);
/// ```
pub trait BackendAdmin: Send + Sync + 'static {
    /// Adds `addr`; `false` if it is a backend already.
    fn add_backend(&self, addr: SocketAddr) -> bool;
    /// Removes `addr` (calls using it finish); `false` if it is not a backend.
    fn remove_backend(&self, addr: SocketAddr) -> bool;
    /// The backends now, with their counters.
    fn list_backends(&self) -> Vec<Backend>;
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
            if !hook.add_backend(addr) {
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
                    ..ShardStats::default()
                },
                ShardStats::default(),
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
        assert!(text.contains("shardpool_pool_live{shard=\"total\"} 7\n"));
        assert!(text.contains("shardpool_server_connections_accepted_total{shard=\"1\"} 1\n"));
        assert!(
            text.contains(
                "shardpool_server_calls_total{shard=\"1\",code=\"DEADLINE_EXCEEDED\"} 1\n"
            )
        );
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
        let without_pool = render(None, &counters);
        assert!(!without_pool.contains("shardpool_pool_"));
    }
}
