//! The gRPC server in-process, driven by a tonic client and raw HTTP/2 (h2): answers, status
//! codes for bad input, concurrency, deadlines and graceful shutdown.
//!
//! Every server here binds 127.0.0.1:0 with one unpinned shard (so tests do not fight over
//! CPUs), and every test is bounded by a timeout.

use bytes::Bytes;
use prost::Message;
use shardpool::pool::{ShardStats, Stats};
use shardpool::runtime::{RuntimeOptions, ShardContext};
use shardpool::server::proto::{
    HealthCheckRequest, HealthCheckResponse, HelloReply, HelloRequest, PoolMetricsRequest,
    PoolMetricsResponse, ServingStatus,
};
use shardpool::server::{GreetHandler, RunningServer, Server, ServerConfig, Status};
use shardpool::topology::{Placement, ShardMap, Topology};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const TEST_LIMIT: Duration = Duration::from_secs(30);

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

fn one_shard() -> (ShardMap, RuntimeOptions) {
    let map = Topology::from_nodes(vec![(0, vec![0])])
        .unwrap()
        .place(&Placement::AllCores, None)
        .unwrap();
    let opts = RuntimeOptions {
        pin: false,
        ..RuntimeOptions::default()
    };
    (map, opts)
}

fn local_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
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
        let (map, opts) = one_shard();
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

    fn take(&mut self) -> RunningServer {
        self.server.take().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.shutdown(Duration::from_millis(100));
        }
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn unary<Req, Resp>(
    ch: Channel,
    path: &'static str,
    req: tonic::Request<Req>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(tonic::Response::into_inner)
}

async fn say_hello(ch: Channel, name: impl Into<String>) -> Result<String, tonic::Status> {
    let req = tonic::Request::new(HelloRequest { name: name.into() });
    let reply: HelloReply = unary(ch, "/helloworld.Greeter/SayHello", req).await?;
    Ok(reply.message)
}

async fn health(ch: Channel, service: &str) -> Result<i32, tonic::Status> {
    let req = tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    });
    let r: HealthCheckResponse = unary(ch, "/grpc.health.v1.Health/Check", req).await?;
    Ok(r.status)
}

/// Waits (bounded) until the greeter has started `n` calls.
async fn until_started(started: &AtomicUsize, n: usize) {
    for _ in 0..1000 {
        // Ordering: Relaxed, see TestGreeter.
        if started.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server did not start {n} calls within 10 s");
}

fn run<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(TEST_LIMIT, f)
            .await
            .expect("test took too long");
    });
}

/// What a raw HTTP/2 request got back.
#[derive(Debug)]
struct Raw {
    http_status: u16,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
}

/// Sends one request with the h2 crate, bypassing tonic's checks.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: Bytes,
) -> Raw {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{addr}{path}"))
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

fn framed(payload: &[u8], compressed: bool) -> Bytes {
    let mut v = vec![u8::from(compressed)];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    Bytes::from(v)
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

        let req = || tonic::Request::new(PoolMetricsRequest {});
        let first: PoolMetricsResponse =
            unary(ch.clone(), "/shardpool.v1.Admin/PoolMetrics", req())
                .await
                .unwrap();
        let second: PoolMetricsResponse =
            unary(ch.clone(), "/shardpool.v1.Admin/PoolMetrics", req())
                .await
                .unwrap();
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
        let calls: Vec<_> = (0..500)
            .map(|i| tokio::spawn(say_hello(ch.clone(), format!("one-{i}"))))
            .collect();
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
        let r: Result<HelloReply, _> = unary(
            ch.clone(),
            "/helloworld.Greeter/SayGoodbye",
            tonic::Request::new(HelloRequest::default()),
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("SayGoodbye"), "{e:?}");
        let r: Result<HelloReply, _> = unary(
            ch.clone(),
            "/nope.Nope/X",
            tonic::Request::new(HelloRequest::default()),
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unimplemented);

        // Larger than the configured maximum.
        let e = say_hello(ch.clone(), "x".repeat(2000)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("1024"), "{e:?}");
        // Just under the limit is fine.
        assert!(say_hello(ch.clone(), "x".repeat(1000)).await.is_ok());

        let path = "/helloworld.Greeter/SayHello";
        let good = framed(b"\x0a\x03Bob", false);
        let ok = raw_call(addr, path, "application/grpc", &[], good.clone()).await;
        assert_eq!(
            (ok.http_status, ok.grpc_status.as_deref()),
            (200, Some("0"))
        );

        // Wrong content-type → HTTP 415.
        let r = raw_call(addr, path, "application/json", &[], good.clone()).await;
        assert_eq!(r.http_status, 415, "{r:?}");

        // A compressed message with no supported encoding → UNIMPLEMENTED.
        let r = raw_call(
            addr,
            path,
            "application/grpc",
            &[],
            framed(b"\x0a\x03Bob", true),
        )
        .await;
        assert_eq!(r.grpc_status.as_deref(), Some("12"), "{r:?}");
        let r = raw_call(
            addr,
            path,
            "application/grpc",
            &[("grpc-encoding", "gzip")],
            good.clone(),
        )
        .await;
        assert_eq!(r.grpc_status.as_deref(), Some("12"), "{r:?}");
        assert!(r.grpc_message.unwrap().contains("gzip"));

        // Undecodable protobuf → INVALID_ARGUMENT with a message.
        let r = raw_call(
            addr,
            path,
            "application/grpc",
            &[],
            framed(b"\x0a\x09ab", false),
        )
        .await;
        assert_eq!(r.grpc_status.as_deref(), Some("3"), "{r:?}");
        assert!(r.grpc_message.unwrap().contains("HelloRequest"));

        // A body cut inside the message → INTERNAL; a malformed grpc-timeout → INVALID_ARGUMENT.
        let r = raw_call(addr, path, "application/grpc", &[], good.slice(..6)).await;
        assert_eq!(r.grpc_status.as_deref(), Some("13"), "{r:?}");
        let r = raw_call(
            addr,
            path,
            "application/grpc",
            &[("grpc-timeout", "soon")],
            good.clone(),
        )
        .await;
        assert_eq!(r.grpc_status.as_deref(), Some("3"), "{r:?}");

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
        let late = framed(
            &HelloRequest {
                name: "sleep:5000:late".into(),
            }
            .encode_to_vec(),
            false,
        );
        let path = "/helloworld.Greeter/SayHello";
        let r = raw_call(
            addr,
            path,
            "application/grpc",
            &[("grpc-timeout", "50m")],
            late,
        )
        .await;
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
    let server = TestServer::start(ServerConfig {
        concurrency_limit_per_connection: Some(2),
        ..local_config()
    });
    let addr = server.addr();
    run(async move {
        let ch = channel(addr).await;
        let calls: Vec<_> = (0..6)
            .map(|i| tokio::spawn(say_hello(ch.clone(), format!("sleep:200:{i}"))))
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
    });
    // Ordering: Relaxed, the calls are over.
    assert_eq!(server.max_in_flight.load(Ordering::Relaxed), 2);
}

#[test]
fn graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones() {
    let mut server = TestServer::start(local_config());
    let addr = server.addr();
    let running = server.take();
    let started = Arc::clone(&server.started);
    run(async move {
        let ch = channel(addr).await;
        let calls: Vec<_> = (0..20)
            .map(|i| tokio::spawn(say_hello(ch.clone(), format!("sleep:300:{i}"))))
            .collect();
        until_started(&started, 20).await;
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
    let mut server = TestServer::start(local_config());
    let addr = server.addr();
    let running = server.take();
    let started = Arc::clone(&server.started);
    run(async move {
        let ch = channel(addr).await;
        let calls: Vec<_> = (0..5)
            .map(|i| tokio::spawn(say_hello(ch.clone(), format!("sleep:20000:{i}"))))
            .collect();
        until_started(&started, 5).await;
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
    let (map, opts) = one_shard();
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
        let calls: Vec<_> = (0..100)
            .map(|i| tokio::spawn(say_hello(ch.clone(), format!("p{i}"))))
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let reply = c.await.unwrap().unwrap();
            assert!(
                reply.starts_with(&format!("Hello, p{i}! (session ")),
                "{reply}"
            );
        }
        let m: PoolMetricsResponse = unary(
            ch,
            "/shardpool.v1.Admin/PoolMetrics",
            tonic::Request::new(PoolMetricsRequest {}),
        )
        .await
        .unwrap();
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

/// Opens a raw HTTP/2 connection (preface + empty SETTINGS) and returns the stream.
fn raw_h2_connect(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s
}

/// Reads HTTP/2 frames until `done(types so far)`, EOF, an error or `limit`; returns the frame
/// types seen.
fn frame_types(
    s: &mut std::net::TcpStream,
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    use std::io::Read;
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let parse = |buf: &[u8]| {
        let mut types = Vec::new();
        let mut pos = 0;
        while pos + 9 <= buf.len() {
            let len = u32::from_be_bytes([0, buf[pos], buf[pos + 1], buf[pos + 2]]) as usize;
            types.push(buf[pos + 3]);
            pos += 9 + len;
        }
        types
    };
    while start.elapsed() < limit && !done(&parse(&buf)) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    parse(&buf)
}

const PING: u8 = 0x6;

#[test]
fn http2_keepalive_pings_idle_connections() {
    // The PING timer runs on the hyper ↔ glommio timer bridge (SendSleep).
    let server = TestServer::start(ServerConfig {
        http2_keepalive_interval: Some(Duration::from_millis(100)),
        ..local_config()
    });
    let mut s = raw_h2_connect(server.addr());
    let types = frame_types(&mut s, Duration::from_secs(5), |t| t.contains(&PING));
    assert!(
        types.contains(&PING),
        "no PING within 600 ms: frame types {types:?}"
    );

    let quiet = TestServer::start(local_config());
    let mut s = raw_h2_connect(quiet.addr());
    let types = frame_types(&mut s, Duration::from_millis(300), |_| false);
    assert!(
        !types.contains(&PING),
        "PING without keepalive configured: {types:?}"
    );
}

#[test]
fn connections_over_the_per_shard_limit_are_closed() {
    let server = TestServer::start(ServerConfig {
        max_connections_per_shard: 2,
        ..local_config()
    });
    let addr = server.addr();
    let mut first = raw_h2_connect(addr);
    let mut second = raw_h2_connect(addr);
    // Both are served: the server answers with its SETTINGS (type 4).
    assert_eq!(
        frame_types(&mut first, Duration::from_secs(5), |t| !t.is_empty()).first(),
        Some(&4)
    );
    assert_eq!(
        frame_types(&mut second, Duration::from_secs(5), |t| !t.is_empty()).first(),
        Some(&4)
    );
    // The third is accepted by the kernel and closed by the server without a frame.
    let mut third = raw_h2_connect(addr);
    assert_eq!(
        frame_types(&mut third, Duration::from_secs(5), |t| !t.is_empty()),
        Vec::<u8>::new()
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
