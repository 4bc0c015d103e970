//! The gRPC server in-process, driven by a tonic client and raw HTTP/2 (h2): answers, status
//! codes for bad input, concurrency, deadlines and graceful shutdown.
//!
//! Every server here binds 127.0.0.1:0 with one unpinned shard (so tests do not fight over
//! CPUs), and every test is bounded by a timeout.

use bytes::Bytes;
use prost::Message;
use shardpool::pool::{ShardStats, Stats};
use shardpool::runtime::ShardContext;
use shardpool::server::proto::{
    HelloReply, HelloRequest, PoolMetricsRequest, PoolMetricsResponse, ServingStatus,
};
use shardpool::server::{GreetHandler, RunningServer, Server, ServerConfig, Status};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

#[path = "common/grpc.rs"]
mod grpc;
#[path = "common/inproc.rs"]
mod inproc;
#[path = "common/raw.rs"]
mod raw;

use grpc::{channel, health, say_hello, unary};
use inproc::{eventually, local_config, run, shards};
use raw::{GOAWAY, PING, grpc_frame, h2_connect, read_frame_types};

/// A greeter for tests: `sleep:<ms>:<name>` waits before answering; it records the highest
/// number of calls in flight at once on its shard.
struct TestGreeter {
    in_flight: Rc<Cell<usize>>,
    max_in_flight: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

impl GreetHandler for TestGreeter {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        // Ordering: Relaxed, tests poll this counter and need no other data from it.
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.set(self.in_flight.get() + 1);
        // Ordering: Relaxed, a statistic read after the calls finished.
        self.max_in_flight
            .fetch_max(self.in_flight.get(), Ordering::Relaxed);
        let name = match name.strip_prefix("sleep:").and_then(|r| r.split_once(':')) {
            Some((ms, rest)) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    Status::new(shardpool::server::Code::InvalidArgument, "bad sleep")
                })?;
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                rest.to_string()
            }
            None => name,
        };
        self.in_flight.set(self.in_flight.get() - 1);
        Ok(format!("Hello, {name}!"))
    }
}

struct TestServer {
    server: Option<RunningServer>,
    max_in_flight: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    stats_calls: Arc<AtomicU64>,
}

impl TestServer {
    fn start(config: ServerConfig) -> TestServer {
        let (map, opts) = shards(1);
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let stats_calls = Arc::new(AtomicU64::new(0));
        let (m, calls) = (Arc::clone(&max_in_flight), Arc::clone(&stats_calls));
        let st = Arc::clone(&started);
        let server = Server::new(config)
            .greeter(move |_ctx: ShardContext| TestGreeter {
                in_flight: Rc::new(Cell::new(0)),
                max_in_flight: Arc::clone(&m),
                started: Arc::clone(&st),
            })
            // A stats source whose numbers move: `checkouts` counts the snapshots taken.
            .pool_stats(Arc::new(move || {
                // Ordering: Relaxed, a plain counter.
                let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                let shard = ShardStats {
                    checkouts: n,
                    local_hits: n,
                    live: 3,
                    idle: 2,
                    checked_out: 1,
                    ..ShardStats::default()
                };
                Stats {
                    shards: vec![shard],
                    total: shard,
                }
            }))
            .start(&map, &opts)
            .unwrap();
        TestServer {
            server: Some(server),
            max_in_flight,
            started,
            stats_calls,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    /// The address, the server itself (the test shuts it down) and the started-calls counter.
    fn into_parts(mut self) -> (SocketAddr, RunningServer, Arc<AtomicUsize>) {
        let addr = self.addr();
        (addr, self.server.take().unwrap(), Arc::clone(&self.started))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.shutdown(Duration::from_millis(100));
        }
    }
}

/// What a raw HTTP/2 request got back.
#[derive(Debug)]
struct Raw {
    http_status: u16,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
}

/// Sends one SayHello request with the h2 crate, bypassing tonic's checks.
async fn raw_call(
    addr: SocketAddr,
    content_type: &str,
    extra: &[(&str, &str)],
    body: Bytes,
) -> Raw {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{addr}/helloworld.Greeter/SayHello"))
        .header("content-type", content_type)
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    send.send_data(body, true).unwrap();
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let header = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
    let mut out = Raw {
        http_status: parts.status.as_u16(),
        grpc_status: header(&parts.headers, "grpc-status"),
        grpc_message: header(&parts.headers, "grpc-message"),
    };
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if out.grpc_status.is_none()
        && let Ok(Some(t)) = body.trailers().await
    {
        out.grpc_status = header(&t, "grpc-status");
        out.grpc_message = header(&t, "grpc-message");
    }
    out
}

/// `shardpool.v1.Admin/PoolMetrics` (panics on an error status).
async fn pool_metrics(ch: Channel) -> PoolMetricsResponse {
    let req = tonic::Request::new(PoolMetricsRequest {});
    unary(ch, "/shardpool.v1.Admin/PoolMetrics", req)
        .await
        .unwrap()
}

type Call = tokio::task::JoinHandle<Result<String, tonic::Status>>;

/// Starts one SayHello call on `ch` per name, all at once.
fn spawn_calls(ch: &Channel, names: impl IntoIterator<Item = String>) -> Vec<Call> {
    names
        .into_iter()
        .map(|name| tokio::spawn(say_hello(ch.clone(), name)))
        .collect()
}

/// Names that make the greeter sleep `ms` before it answers `Hello, {i}!` to call `i`.
fn sleepers(n: usize, ms: u64) -> impl Iterator<Item = String> {
    (0..n).map(move |i| format!("sleep:{ms}:{i}"))
}

/// Opens a connection to `addr`, starts `n` [`sleepers`] on it and waits (bounded) until the
/// greeter has started all `n` of them.
async fn calls_in_flight(
    addr: SocketAddr,
    started: &AtomicUsize,
    n: usize,
    ms: u64,
) -> (Channel, Vec<Call>) {
    let ch = channel(addr).await;
    let calls = spawn_calls(&ch, sleepers(n, ms));
    eventually(&format!("the greeter started {n} calls"), || {
        // Ordering: Relaxed, see TestGreeter.
        started.load(Ordering::Relaxed) >= n
    })
    .await;
    (ch, calls)
}

#[test]
fn greeter_health_and_metrics_answer() {
    let server = TestServer::start(local_config());
    let addr = server.addr();
    run(async move {
        let ch = channel(addr).await;
        assert_eq!(
            say_hello(ch.clone(), "tonic").await.unwrap(),
            "Hello, tonic!"
        );
        assert_eq!(say_hello(ch.clone(), "").await.unwrap(), "Hello, !");
        assert_eq!(
            say_hello(ch.clone(), "héllo ✓").await.unwrap(),
            "Hello, héllo ✓!"
        );
        for svc in [
            "",
            "helloworld.Greeter",
            "grpc.health.v1.Health",
            "shardpool.v1.Admin",
        ] {
            assert_eq!(
                health(ch.clone(), svc).await.unwrap(),
                ServingStatus::Serving as i32
            );
        }
        let err = health(ch.clone(), "no.such.Service").await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");

        let first = pool_metrics(ch.clone()).await;
        let second = pool_metrics(ch.clone()).await;
        assert_eq!(first.shards.len(), 1);
        let (a, b) = (&first.shards[0], &second.shards[0]);
        assert_eq!(
            (a.live, a.idle, a.checked_out, a.cpu, a.numa_node),
            (3, 2, 1, Some(0), Some(0))
        );
        assert_eq!(
            b.checkouts,
            a.checkouts + 1,
            "metrics must come from the live source"
        );
        assert_eq!(first.total.unwrap().hits, a.hits);
    });
    // Ordering: Relaxed, the server's calls are over (run returned).
    assert!(server.stats_calls.load(Ordering::Relaxed) >= 2);
}

#[test]
fn many_concurrent_calls_on_one_and_many_connections() {
    let server = TestServer::start(local_config());
    let addr = server.addr();
    run(async move {
        // One connection (a tonic Channel is one HTTP/2 connection), 500 calls at once.
        let ch = channel(addr).await;
        let calls = spawn_calls(&ch, (0..500).map(|i| format!("one-{i}")));
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), format!("Hello, one-{i}!"));
        }
        // 32 connections, 20 calls each, all at once.
        let mut tasks = Vec::new();
        for c in 0..32 {
            let ch = channel(addr).await;
            for i in 0..20 {
                let name = format!("conn{c}-{i}");
                tasks.push((name.clone(), tokio::spawn(say_hello(ch.clone(), name))));
            }
        }
        for (name, t) in tasks {
            assert_eq!(t.await.unwrap().unwrap(), format!("Hello, {name}!"));
        }
    });
}

#[test]
fn bad_input_gets_the_right_status() {
    let server = TestServer::start(ServerConfig {
        max_message_size: 1024,
        ..local_config()
    });
    let addr = server.addr();
    run(async move {
        let ch = channel(addr).await;
        // Unknown service and method.
        let unknown = |path| {
            let req = tonic::Request::new(HelloRequest::default());
            unary::<_, HelloReply>(ch.clone(), path, req)
        };
        let e = unknown("/helloworld.Greeter/SayGoodbye").await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("SayGoodbye"), "{e:?}");
        let e = unknown("/nope.Nope/X").await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);

        // Larger than the configured maximum.
        let e = say_hello(ch.clone(), "x".repeat(2000)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("1024"), "{e:?}");
        // Just under the limit is fine.
        assert!(say_hello(ch.clone(), "x".repeat(1000)).await.is_ok());

        let good = grpc_frame(b"\x0a\x03Bob", false);
        let ok = raw_call(addr, "application/grpc", &[], good.clone()).await;
        assert_eq!(
            (ok.http_status, ok.grpc_status.as_deref()),
            (200, Some("0"))
        );

        // Wrong content-type → HTTP 415.
        let r = raw_call(addr, "application/json", &[], good.clone()).await;
        assert_eq!(r.http_status, 415, "{r:?}");

        // Bad requests, each with the gRPC status (and a word of its message, "" for any) it gets.
        let no_headers: &[(&str, &str)] = &[];
        let cases = [
            // A compressed message with no supported encoding → UNIMPLEMENTED.
            (no_headers, grpc_frame(b"\x0a\x03Bob", true), "12", ""),
            (&[("grpc-encoding", "gzip")], good.clone(), "12", "gzip"),
            // Undecodable protobuf → INVALID_ARGUMENT with a message.
            (
                no_headers,
                grpc_frame(b"\x0a\x09ab", false),
                "3",
                "HelloRequest",
            ),
            // A body cut inside the message → INTERNAL.
            (no_headers, good.slice(..6), "13", ""),
            // A malformed grpc-timeout → INVALID_ARGUMENT.
            (&[("grpc-timeout", "soon")], good.clone(), "3", ""),
        ];
        for (extra, body, status, says) in cases {
            let r = raw_call(addr, "application/grpc", extra, body).await;
            assert_eq!(r.grpc_status.as_deref(), Some(status), "{r:?}");
            let message = r.grpc_message.as_deref().unwrap_or_default();
            assert!(message.contains(says), "{r:?}");
        }

        // The server is still fine after all that.
        assert_eq!(say_hello(ch, "after").await.unwrap(), "Hello, after!");
    });
}

#[test]
fn grpc_timeout_and_request_timeout_give_deadline_exceeded() {
    let server = TestServer::start(ServerConfig {
        request_timeout: Some(Duration::from_millis(300)),
        ..local_config()
    });
    let addr = server.addr();
    run(async move {
        // grpc-timeout sent raw: tonic would also time the call out on the client side, which
        // would hide what the server answers.
        let late = grpc_frame(
            &HelloRequest {
                name: "sleep:5000:late".into(),
            }
            .encode_to_vec(),
            false,
        );
        let r = raw_call(addr, "application/grpc", &[("grpc-timeout", "50m")], late).await;
        assert_eq!(r.grpc_status.as_deref(), Some("4"), "{r:?}");
        assert!(r.grpc_message.unwrap().contains("deadline"));
        let ch = channel(addr).await;
        // Without grpc-timeout, the server's request timeout applies.
        let e = say_hello(ch.clone(), "sleep:5000:late").await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        // A call within its deadline succeeds.
        let mut req = tonic::Request::new(HelloRequest {
            name: "sleep:1:soon".into(),
        });
        req.set_timeout(Duration::from_secs(5));
        let r: HelloReply = unary(ch, "/helloworld.Greeter/SayHello", req)
            .await
            .unwrap();
        assert_eq!(r.message, "Hello, soon!");
    });
}

#[test]
fn concurrency_limit_per_connection_is_enforced() {
    // More streams than the limit, so calls really wait for a slot (by default the protocol
    // would refuse them); stream windows small enough that the waiting calls' bodies cannot
    // hold the connection window (ServerConfig::validate).
    let server = TestServer::start(ServerConfig {
        concurrency_limit_per_connection: Some(2),
        max_concurrent_streams: Some(100),
        initial_stream_window: 8 << 10,
        ..local_config()
    });
    let addr = server.addr();
    run(async move {
        let ch = channel(addr).await;
        let calls = spawn_calls(&ch, sleepers(6, 200));
        for c in calls {
            c.await.unwrap().unwrap();
        }
    });
    // Ordering: Relaxed, the calls are over.
    assert_eq!(server.max_in_flight.load(Ordering::Relaxed), 2);
}

#[test]
fn graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones() {
    let (addr, running, started) = TestServer::start(local_config()).into_parts();
    run(async move {
        let (_ch, calls) = calls_in_flight(addr, &started, 20, 300).await;
        let stop = tokio::task::spawn_blocking(move || running.shutdown(Duration::from_secs(10)));
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), format!("Hello, {i}!"));
        }
        let reports = stop.await.unwrap().unwrap();
        assert_eq!(reports[0].calls_abandoned, 0);
        assert!(reports[0].calls >= 20);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "a stopped server must refuse connections"
        );
    });
}

#[test]
fn calls_past_the_grace_period_are_answered_unavailable() {
    let (addr, running, started) = TestServer::start(local_config()).into_parts();
    run(async move {
        let (ch, calls) = calls_in_flight(addr, &started, 5, 20000).await;
        let health_during = {
            let ch = ch.clone();
            let switch = running.shutdown_switch();
            switch.drain();
            tokio::time::sleep(Duration::from_millis(50)).await;
            health(ch, "").await
        };
        let stop =
            tokio::task::spawn_blocking(move || running.shutdown(Duration::from_millis(200)));
        for c in calls {
            let e = c.await.unwrap().unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.message().contains("shutting down"), "{e:?}");
        }
        let reports = stop.await.unwrap().unwrap();
        assert_eq!(reports[0].calls_abandoned, 5);
        // During the drain, a new call on an existing connection is either served (and then
        // reports NOT_SERVING) or, sent after the GOAWAY, never accepted: tonic reports that as
        // CANCELLED/UNAVAILABLE ("connection closed"), so the caller knows to retry elsewhere.
        match health_during {
            Ok(s) => assert_eq!(s, ServingStatus::NotServing as i32),
            Err(e) => assert!(
                matches!(e.code(), Code::Unavailable | Code::Cancelled),
                "{e:?}"
            ),
        }
    });
}

/// A toy pooled resource: a "session" with a use counter.
struct Sessions {
    created: AtomicU64,
}

impl shardpool::pool::Manage for Sessions {
    type Key = &'static str;
    type Conn = u64;
    type Error = std::io::Error;

    async fn create(&self, _key: &&'static str) -> Result<u64, std::io::Error> {
        // Ordering: Relaxed, an id generator.
        Ok(self.created.fetch_add(1, Ordering::Relaxed))
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        shardpool::runtime::sleep(d)
    }
}

/// A greeter with the pool in its request path: every call checks a session out.
struct PooledGreeter {
    pool: shardpool::pool::ShardedPool<Sessions>,
}

impl GreetHandler for PooledGreeter {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        use shardpool::pool::ConnectionPool;
        let session = self
            .pool
            .get(&"backend")
            .await
            .map_err(|e| Status::new(shardpool::server::Code::Unavailable, e.to_string()))?;
        // Hold the session across a yield so concurrent calls need more than one.
        glommio::executor().yield_now().await;
        Ok(format!("Hello, {name}! (session {})", *session))
    }
}

#[test]
fn pool_in_the_request_path_shows_in_pool_metrics() {
    let (map, opts) = shards(1);
    let pool = shardpool::pool::ShardedPool::new(
        Sessions {
            created: AtomicU64::new(0),
        },
        shardpool::pool::Config::default()
            .shards(map.len())
            .max_size(8)
            .steal_order(map.steal_order()),
    )
    .unwrap();
    let p = pool.clone();
    let server = Server::new(local_config())
        .greeter(move |_ctx: ShardContext| PooledGreeter { pool: p.clone() })
        .pool_stats(shardpool::server::pool_stats_source(pool.clone()))
        .start(&map, &opts)
        .unwrap();
    let addr = server.local_addr();
    run(async move {
        let ch = channel(addr).await;
        let calls = spawn_calls(&ch, (0..100).map(|i| format!("p{i}")));
        for (i, c) in calls.into_iter().enumerate() {
            let reply = c.await.unwrap().unwrap();
            assert!(
                reply.starts_with(&format!("Hello, p{i}! (session ")),
                "{reply}"
            );
        }
        let m = pool_metrics(ch).await;
        let total = m.total.unwrap();
        assert_eq!(total.checkouts, 100, "{total:?}");
        assert_eq!(
            total.hits + total.creates + total.steals + total.handoffs,
            100,
            "{total:?}"
        );
        assert!(total.creates >= 1 && total.creates <= 8, "{total:?}");
        assert_eq!(total.checked_out, 0, "{total:?}");
        assert_eq!(total.live, total.idle, "{total:?}");
    });
    server.shutdown(Duration::from_secs(1)).unwrap();
    shardpool::pool::ConnectionPool::close(&pool);
}

#[test]
fn http2_keepalive_pings_idle_connections() {
    // The PING timer runs on the hyper ↔ glommio timer bridge (SendSleep).
    let server = TestServer::start(ServerConfig {
        http2_keepalive_interval: Some(Duration::from_millis(100)),
        ..local_config()
    });
    let mut s = h2_connect(server.addr());
    let types = read_frame_types(&mut s, Duration::from_secs(5), |t| t.contains(&PING));
    assert!(
        types.contains(&PING),
        "no PING within 600 ms: frame types {types:?}"
    );

    let quiet = TestServer::start(ServerConfig {
        http2_keepalive_interval: None,
        ..local_config()
    });
    let mut s = h2_connect(quiet.addr());
    let types = read_frame_types(&mut s, Duration::from_millis(300), |_| false);
    assert!(
        !types.contains(&PING),
        "PING without keepalive configured: {types:?}"
    );
}

#[test]
fn at_the_per_shard_limit_the_connection_idle_longest_makes_room() {
    let server = TestServer::start(ServerConfig {
        max_connections_per_shard: 2,
        ..local_config()
    });
    let addr = server.addr();
    // Both are served: the server answers with its SETTINGS and, once it has read ours, the
    // SETTINGS ack (both type 4): the handshake is over.
    let handshaken = |t: &[u8]| t.iter().filter(|&&f| f == 4).count() >= 2;
    let mut first = h2_connect(addr);
    let types = read_frame_types(&mut first, Duration::from_secs(5), handshaken);
    assert!(handshaken(&types), "{types:?}");
    std::thread::sleep(Duration::from_millis(50));
    let mut second = h2_connect(addr);
    let types = read_frame_types(&mut second, Duration::from_secs(5), handshaken);
    assert!(handshaken(&types), "{types:?}");
    // The third is served too: the first, idle longest, gets GOAWAY (type 7) to make room.
    let mut third = h2_connect(addr);
    let types = read_frame_types(&mut third, Duration::from_secs(5), |t| !t.is_empty());
    assert_eq!(types.first(), Some(&4), "{types:?}");
    let types = read_frame_types(&mut first, Duration::from_secs(5), |t| t.contains(&7));
    assert!(
        types.contains(&7),
        "no GOAWAY on the idle-longest: {types:?}"
    );
    let types = read_frame_types(&mut second, Duration::from_millis(200), |t| t.contains(&7));
    assert!(
        !types.contains(&7),
        "the newer idle connection was shed: {types:?}"
    );
    drop(first);
    // A slot is free again once the first connection is gone.
    run(async move {
        let mut ok = false;
        for _ in 0..50 {
            let ch = channel(addr).await;
            if say_hello(ch, "again").await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "no connection accepted after one closed");
    });
}

/// Reads (and drops) whatever `s` receives until the server closes it; how long after `since`
/// that happened, or `None` if it is still open after `limit`.
fn closed_after(
    s: &mut std::net::TcpStream,
    since: std::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut chunk = [0u8; 4096];
    while since.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

#[test]
fn silent_partial_and_slow_handshakes_are_dropped_after_the_handshake_timeout() {
    use std::io::Write;
    let server = TestServer::start(ServerConfig {
        handshake_timeout: Some(Duration::from_millis(300)),
        ..local_config()
    });
    let addr = server.addr();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let start = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let mut preface_only = std::net::TcpStream::connect(addr).unwrap();
    preface_only.write_all(preface).unwrap();
    // A complete handshake is not cut off.
    let mut good = h2_connect(addr);
    // The preface one byte every 50 ms: it would take 1.2 s, far past the timeout.
    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let t = std::time::Instant::now();
        for b in preface {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        closed_after(&mut s, t, Duration::from_secs(5))
    });
    for (what, s) in [("silent", &mut silent), ("preface only", &mut preface_only)] {
        let after = closed_after(s, start, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{what}: still open after 5 s"));
        assert!(
            after >= Duration::from_millis(250),
            "{what}: closed too early, after {after:?}"
        );
    }
    let after = slow
        .join()
        .unwrap()
        .expect("slow preface: still open after 5 s");
    assert!(
        after < Duration::from_millis(1000),
        "slow preface closed after {after:?}"
    );
    assert_eq!(
        closed_after(
            &mut good,
            std::time::Instant::now(),
            Duration::from_millis(700)
        ),
        None,
        "a connection that completed its handshake must stay open"
    );
}

/// Opens an HTTP/2 connection with the h2 crate (the connection task runs in the background
/// and answers PINGs); returns the request handle and the connection task, which ends when the
/// server closes the connection. `window` is the client's initial stream window.
async fn h2_client(
    addr: SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .unwrap();
    (client, tokio::spawn(conn))
}

/// A SayHello request head for the h2 crate.
fn say_hello_head(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Sends one SayHello with `body` on `client`; the grpc-status it ends with, or the h2 error.
async fn h2_say_hello(
    client: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    body: Bytes,
) -> Result<String, h2::Error> {
    let mut client = client.clone().ready().await?;
    let (resp, mut send) = client.send_request(say_hello_head(addr), false)?;
    send.send_data(body, true)?;
    grpc_status_of(resp).await
}

/// Reads a response to its end (releasing flow-control window as it goes); its grpc-status.
async fn grpc_status_of(resp: h2::client::ResponseFuture) -> Result<String, h2::Error> {
    let resp = resp.await?;
    // A trailers-only response (an error status) carries grpc-status in its headers.
    if let Some(v) = resp.headers().get("grpc-status") {
        return Ok(v.to_str().unwrap().to_string());
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(trailers
        .get("grpc-status")
        .map_or("none".into(), |v| v.to_str().unwrap().to_string()))
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout_and_pings_do_not_count() {
    let server = TestServer::start(ServerConfig {
        conn_idle_timeout: Some(Duration::from_millis(400)),
        // Pings (answered by the client) come and go while the connection idles.
        http2_keepalive_interval: Some(Duration::from_millis(100)),
        ..local_config()
    });
    let addr = server.addr();
    // A raw connection that never opens a stream: GOAWAY, then closed.
    let start = std::time::Instant::now();
    let mut raw = h2_connect(addr);
    let types = read_frame_types(&mut raw, Duration::from_secs(5), |t| t.contains(&GOAWAY));
    assert!(types.contains(&GOAWAY), "no GOAWAY within 5 s: {types:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
    assert!(closed_after(&mut raw, start, Duration::from_secs(5)).is_some());
    run(async move {
        // A connection in use stays open well past the idle timeout...
        let (client, conn) = h2_client(addr, 65535).await;
        let body = grpc_frame(
            &HelloRequest {
                name: "busy".into(),
            }
            .encode_to_vec(),
            false,
        );
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                h2_say_hello(&client, addr, body.clone()).await.unwrap(),
                "0"
            );
        }
        assert!(!conn.is_finished(), "closed while calls were being made");
        // ...and is closed once it idles, although it answers every PING.
        let idle = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an idle connection was not closed within 5 s")
            .unwrap()
            .ok();
        assert!(
            idle.elapsed() >= Duration::from_millis(350),
            "{:?}",
            idle.elapsed()
        );
    });
}

#[test]
fn a_reader_that_opens_no_window_is_cut_off_after_the_send_stall_timeout() {
    let server = TestServer::start(ServerConfig {
        send_stall_timeout: Some(Duration::from_millis(400)),
        ..local_config()
    });
    let addr = server.addr();
    run(async move {
        // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may send headers but no DATA.
        let (client, conn) = h2_client(addr, 0).await;
        let mut client = client.ready().await.unwrap();
        let (resp, mut send) = client.send_request(say_hello_head(addr), false).unwrap();
        let body = grpc_frame(
            &HelloRequest {
                name: "stuck".into(),
            }
            .encode_to_vec(),
            false,
        );
        send.send_data(body, true).unwrap();
        let start = std::time::Instant::now();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // No DATA can come; the stream ends with an error when the server gives up on it.
        let data = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("the stalled response was still held after 5 s");
        assert!(
            !matches!(data, Some(Ok(_))),
            "DATA arrived through a zero window: {data:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the stalled connection was not closed")
            .unwrap()
            .ok();
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{:?}",
            start.elapsed()
        );
        // Others are still served.
        let ch = channel(addr).await;
        assert_eq!(say_hello(ch, "next").await.unwrap(), "Hello, next!");
    });
}

/// A HelloRequest of about `size` bytes: a short name, and the bulk in an unknown field
/// (number 15), which the server skips, so that the replies stay small.
fn bulky_hello(name: &str, size: usize) -> Bytes {
    let mut msg = HelloRequest { name: name.into() }.encode_to_vec();
    prost::encoding::bytes::encode(15, &vec![b'x'; size], &mut msg);
    grpc_frame(&msg, false)
}

/// One HTTP/2 frame: header (length, type, flags, stream id) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn streams_beyond_the_concurrency_limit_are_refused_at_once() {
    use std::io::Write;
    // A greedy client that opens more streams than it was allowed, before reading the server's
    // SETTINGS: the server's limit (the concurrency limit, 256 by default) holds, the rest are
    // refused with RST_STREAM(REFUSED_STREAM), retryable, at once rather than queued.
    let server = TestServer::start(local_config());
    let addr = server.addr();
    // SayHello request headers, HPACK literals without indexing (no table state needed).
    let mut block = Vec::new();
    for (k, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/helloworld.Greeter/SayHello"),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(k.len() as u8);
        block.extend_from_slice(k.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    let n = 300u32;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    for i in 0..n {
        // HEADERS with END_HEADERS; the bodies never come.
        out.extend(h2_frame(1, 0x4, 2 * i + 1, &block));
    }
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&out).unwrap();
    // Count RST_STREAM(REFUSED_STREAM) frames for up to 2 s.
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = Vec::new();
    let mut refused = std::collections::BTreeSet::new();
    while start.elapsed() < Duration::from_secs(2) && refused.len() < (n - 256) as usize {
        let mut chunk = [0u8; 4096];
        match std::io::Read::read(&mut s, &mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
        let mut pos = 0;
        while pos + 9 <= buf.len() {
            let len = u32::from_be_bytes([0, buf[pos], buf[pos + 1], buf[pos + 2]]) as usize;
            if pos + 9 + len > buf.len() {
                break;
            }
            let id = u32::from_be_bytes(buf[pos + 5..pos + 9].try_into().unwrap()) & 0x7fff_ffff;
            if buf[pos + 3] == 3 && buf[pos + 9..pos + 13] == [0, 0, 0, 7] {
                refused.insert(id);
            }
            pos += 9 + len;
        }
        buf.drain(..pos);
    }
    assert_eq!(
        refused.len(),
        (n - 256) as usize,
        "REFUSED_STREAM for {} of the {} streams beyond the limit within {:?}",
        refused.len(),
        n - 256,
        start.elapsed()
    );
    // The refused ones are the last opened.
    assert_eq!(refused.first(), Some(&(2 * 256 + 1)));
}

#[test]
fn many_calls_with_large_bodies_on_one_connection_never_deadlock() {
    // Default concurrency limit (256 per connection) and windows (1 MiB): before the fix, 300
    // calls of 60 KB deadlocked until their deadline. The deadline here is short so that a
    // deadlock shows as DEADLINE_EXCEEDED within the test's time.
    let server = TestServer::start(ServerConfig {
        request_timeout: Some(Duration::from_secs(8)),
        ..local_config()
    });
    let addr = server.addr();
    run(async move {
        for n in [300, 1000] {
            let start = std::time::Instant::now();
            // The h2 client keeps calls beyond the server's advertised limit queued; a client
            // that does not is refused (see streams_beyond_the_concurrency_limit_are_refused_at_once).
            let (client, _conn) = h2_client(addr, 1 << 20).await;
            let calls: Vec<_> = (0..n)
                .map(|i| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let body = bulky_hello(&i.to_string(), 60_000);
                        (h2_say_hello(&client, addr, body).await, start.elapsed())
                    })
                })
                .collect();
            let (mut ok, mut refused) = (0, 0);
            for c in calls {
                match c.await.unwrap() {
                    (Ok(status), _) if status == "0" => ok += 1,
                    // Refused by the protocol (retryable), and at once.
                    (Err(e), after) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                        assert!(
                            after < Duration::from_secs(2),
                            "refused only after {after:?}"
                        );
                        refused += 1;
                    }
                    (other, after) => {
                        panic!("{n} calls: a call ended {other:?} after {after:?}")
                    }
                }
            }
            eprintln!(
                "{n} calls of 60 KB on one connection: {ok} completed, \
                 {refused} refused, in {:?}",
                start.elapsed()
            );
            assert_eq!(ok + refused, n);
            assert!(ok > 0, "{n} calls: none completed");
        }
    });
}
