//! Gateway mode end to end, in-process: a tonic client → the glommio gRPC server → pooled
//! upstream connections → origins on loopback. Every test binds port 0, is bounded in time and
//! stops what it started.
#![cfg(feature = "upstream")]

use shardpool::baseline::MutexPool;
use shardpool::pool::{Config, ConnectionPool, ShardedPool};
use shardpool::server::proto::{
    AddBackendRequest, BackendList, ListBackendsRequest, RemoveBackendRequest,
};
use shardpool::server::{RunningServer, Server, ServerConfig};
use shardpool::upstream::admin::AdminEndpoint;
use shardpool::upstream::frame::{self, Code as FrameCode, Op};
use shardpool::upstream::origin::{Origin, OriginConfig, RunningOrigin};
use shardpool::upstream::{
    Balance, Gateway, GatewayConfig, HealthChecker, HealthConfig, UpstreamManager,
};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[path = "common/grpc.rs"]
mod grpc;
#[path = "common/inproc.rs"]
mod inproc;
#[path = "common/raw.rs"]
mod raw;

use grpc::{channel, health, say_hello, unary};
use inproc::{eventually, local_config, run, shards};

fn origin(id: &str) -> RunningOrigin {
    Origin::start(OriginConfig {
        id: id.into(),
        ..OriginConfig::default()
    })
    .unwrap()
}

/// A gateway server on `n` shards. Dropping it shuts the server down, then closes the pool.
struct TestGateway<P: ConnectionPool<UpstreamManager>> {
    server: Option<RunningServer>,
    gateway: Gateway<P>,
    _health: Option<HealthChecker>,
}

impl<P: ConnectionPool<UpstreamManager>> TestGateway<P> {
    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    /// The admin listener (the backend RPCs are served only there).
    fn admin_addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().admin_addr().unwrap()
    }
}

impl<P: ConnectionPool<UpstreamManager>> Drop for TestGateway<P> {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.shutdown(Duration::from_secs(2));
        }
        if let Some(p) = self.gateway.pool() {
            p.close();
        }
    }
}

fn pool_config(n: usize) -> Config {
    Config::default()
        .shards(n)
        .max_size(16)
        .wait_timeout(Some(Duration::from_secs(2)))
}

fn start<P: ConnectionPool<UpstreamManager>>(
    n: usize,
    config: GatewayConfig,
    pool: impl FnOnce(UpstreamManager) -> Option<P>,
    backends: &[SocketAddr],
) -> TestGateway<P> {
    let (map, opts) = shards(n);
    let manager = UpstreamManager::new(config.connector.clone(), n);
    let gateway = Gateway::new(config, pool(manager.clone()), manager, n);
    for b in backends {
        assert_eq!(gateway.add_backend(*b), Ok(true));
    }
    let server = gateway.install(Server::new(ServerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..local_config()
    }));
    let health = gateway.start_health_checks();
    let server = server.start(&map, &opts).unwrap();
    TestGateway {
        server: Some(server),
        gateway,
        _health: health,
    }
}

/// A sharded pool with `config`, for [`start`].
fn sharded_with(
    config: Config,
) -> impl FnOnce(UpstreamManager) -> Option<ShardedPool<UpstreamManager>> {
    move |m| Some(ShardedPool::new(m, config).unwrap())
}

/// A sharded pool for `n` shards with the default test limits, for [`start`].
fn sharded(n: usize) -> impl FnOnce(UpstreamManager) -> Option<ShardedPool<UpstreamManager>> {
    sharded_with(pool_config(n))
}

/// The default gateway with the active health checks off.
fn quiet_gateway() -> GatewayConfig {
    GatewayConfig {
        health: HealthConfig {
            interval: None,
            ..HealthConfig::default()
        },
        ..GatewayConfig::default()
    }
}

/// `tasks` concurrent clients, `each` calls each; returns the failures' statuses.
async fn load(ch: &Channel, tasks: usize, each: usize) -> Vec<tonic::Status> {
    let mut joins = Vec::new();
    for t in 0..tasks {
        let ch = ch.clone();
        joins.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..each {
                let name = format!("t{t}-{i}");
                match say_hello(ch.clone(), &name).await {
                    Ok(reply) => assert_eq!(reply, format!("Hello, {name}!")),
                    Err(s) => failed.push(s),
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for j in joins {
        failed.extend(j.await.unwrap());
    }
    failed
}

/// At quiescence every live connection is idle or checked out (here: idle).
fn assert_no_leaks<P: ConnectionPool<UpstreamManager>>(pool: &P) {
    let t = pool.stats().total;
    assert_eq!(t.live, t.idle + t.checked_out, "leak: {t:?}");
    assert_eq!(t.checked_out, 0, "a connection is still checked out: {t:?}");
}

#[test]
fn every_pool_kind_and_policy_greets_through_the_origins() {
    let (a, b) = (origin("a"), origin("b"));
    let backends = [a.local_addr(), b.local_addr()];
    let mut served = (a.served(), b.served());
    let mut check = |name: &str, failed: Vec<tonic::Status>, spread_within: u64| {
        assert!(failed.is_empty(), "{name}: {failed:?}");
        let now = (a.served(), b.served());
        let (da, db) = (now.0 - served.0, now.1 - served.1);
        served = now;
        assert_eq!(da + db, 200, "{name}");
        assert!(
            da.abs_diff(db) <= spread_within,
            "{name}: spread {da} vs {db}"
        );
    };
    for policy in [
        Balance::RoundRobin,
        Balance::LeastConnections,
        Balance::Random,
        Balance::PowerOfTwo,
    ] {
        let config = GatewayConfig {
            balance: policy,
            ..quiet_gateway()
        };
        let gw = start(2, config, sharded(2), &backends);
        run(async {
            let ch = channel(gw.addr()).await;
            let failed = load(&ch, 4, 50).await;
            // Round-robin alternates per shard; the others are random or load-driven.
            let within = if policy == Balance::RoundRobin {
                4
            } else {
                120
            };
            check(&policy.to_string(), failed, within);
        });
        let stats = gw.gateway.backend_stats();
        let reused: u64 = stats.iter().map(|s| s.connections_reused).sum();
        let new: u64 = stats.iter().map(|s| s.connections_new).sum();
        assert_eq!(reused + new, 200);
        assert!(
            new <= 2 * 2 * 4 + 4,
            "{policy}: {new} connections for 4 concurrent callers"
        );
        assert_no_leaks(gw.gateway.pool().unwrap());
    }
    let config = quiet_gateway();
    let gw = start(
        2,
        config.clone(),
        |m| Some(MutexPool::new(m, pool_config(2)).unwrap()),
        &backends,
    );
    run(async {
        let ch = channel(gw.addr()).await;
        check("mutex pool", load(&ch, 4, 50).await, 4);
    });
    assert_no_leaks(gw.gateway.pool().unwrap());
    drop(gw);
    let gw = start::<ShardedPool<UpstreamManager>>(2, config, |_| None, &backends);
    let accepted = a.accepted() + b.accepted();
    run(async {
        let ch = channel(gw.addr()).await;
        check("no pool", load(&ch, 4, 50).await, 4);
    });
    assert_eq!(
        a.accepted() + b.accepted() - accepted,
        200,
        "--pool none connects per request"
    );
    let stats = gw.gateway.backend_stats();
    assert!(stats.iter().all(|s| s.connections_reused == 0));
}

#[test]
fn the_hot_path_reuses_its_own_wrapper_and_steals_rewrap() {
    let o = origin("hot");
    let config = quiet_gateway();
    let gw = start(1, config, sharded(1), &[o.local_addr()]);
    run(async {
        let ch = channel(gw.addr()).await;
        assert!(load(&ch, 1, 500).await.is_empty());
    });
    let s = &gw.gateway.backend_stats()[0];
    assert_eq!((s.connections_new, s.connections_reused), (1, 499));
    assert_eq!(s.steals, 0);
    assert_eq!(
        gw.gateway.rewraps(),
        0,
        "a shard reusing its own connection must not re-wrap"
    );
    assert_eq!(o.accepted(), 1);
    drop(gw);

    // Two shards, one idle connection per shard at most: when a shard finds its own queue empty
    // it steals the other's connection, which is re-wrapped (dup) exactly once per move.
    let config = quiet_gateway();
    let gw = start(
        2,
        config,
        sharded_with(pool_config(2).max_size(1)),
        &[o.local_addr()],
    );
    run(async {
        // Separate HTTP/2 connections land on both shards (SO_REUSEPORT).
        let mut chans = Vec::new();
        for _ in 0..16 {
            chans.push(channel(gw.addr()).await);
        }
        for round in 0..20 {
            for ch in &chans {
                say_hello(ch.clone(), &format!("r{round}")).await.unwrap();
            }
        }
    });
    let s = &gw.gateway.backend_stats()[0];
    assert_eq!(
        s.connections_new, 1,
        "max_size 1: a single connection serves both shards"
    );
    assert!(
        s.steals > 0,
        "16 client connections should land on both shards: {s:?}"
    );
    assert_eq!(
        s.steals,
        gw.gateway.rewraps(),
        "every re-wrap is a steal here"
    );
    assert_no_leaks(gw.gateway.pool().unwrap());
}

#[test]
fn an_origin_killed_mid_load_fails_over_without_leaks() {
    let (a, b) = (origin("dies"), origin("lives"));
    let config = GatewayConfig {
        health: HealthConfig {
            interval: Some(Duration::from_millis(50)),
            backoff_base: Duration::from_secs(5),
            ..HealthConfig::default()
        },
        ..GatewayConfig::default()
    };
    let gw = start(2, config, sharded(2), &[a.local_addr(), b.local_addr()]);
    let a_addr = a.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    run(async {
        let ch = channel(gw.addr()).await;
        let before = a.served();
        let loader = {
            let ch = ch.clone();
            tokio::spawn(async move { load(&ch, 6, 150).await })
        };
        eventually("the doomed origin serves", || a.served() > before + 50).await;
        a.stop();
        stop.store(true, Ordering::Relaxed);
        let failed = loader.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed instead of failing over: {failed:?}"
        );
        // The active check notices, and the Greeter stays SERVING (b is healthy).
        eventually("a is unhealthy", || {
            gw.gateway
                .backend_stats()
                .iter()
                .any(|s| s.addr == a_addr && !s.healthy)
        })
        .await;
        assert_eq!(health(ch.clone(), "helloworld.Greeter").await.unwrap(), 1);
        assert!(load(&ch, 2, 20).await.is_empty());
    });
    assert!(stop.load(Ordering::Relaxed));
    let pool = gw.gateway.pool().unwrap();
    assert_no_leaks(pool);
    // Only b's connections are left open at the origin, and every one of them is pooled.
    let live = pool.stats().total.live;
    run(async {
        eventually("b's open connections match the pool", || {
            b.open_connections() <= live
        })
        .await;
    });
}

#[test]
fn a_stalled_origin_times_out_and_the_pool_recovers() {
    let o = origin("stalls");
    o.set_delay(Duration::from_secs(3));
    let config = GatewayConfig {
        health: HealthConfig {
            interval: None,
            eject_after: 2,
            backoff_base: Duration::from_millis(200),
            ..HealthConfig::default()
        },
        request_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let gw = start(
        1,
        config,
        sharded_with(pool_config(1).max_size(2)),
        &[o.local_addr()],
    );
    run(async {
        let ch = channel(gw.addr()).await;
        let started = std::time::Instant::now();
        let failed = load(&ch, 4, 2).await;
        assert_eq!(failed.len(), 8);
        for s in &failed {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            assert!(
                s.message().contains("no answer within")
                    || s.message()
                        .contains("no pooled connection became available within")
                    || s.message().contains("no healthy upstream backend"),
                "{s:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timeouts did not bound the calls"
        );
        // Timed-out connections were closed, not kept: nothing is stuck checked out.
        assert_no_leaks(gw.gateway.pool().unwrap());
        o.set_delay(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(900)).await;
        let failed = load(&ch, 4, 5).await;
        assert!(failed.is_empty(), "the pool did not recover: {failed:?}");
    });
    assert_no_leaks(gw.gateway.pool().unwrap());
}

#[test]
fn backends_added_and_removed_while_serving() {
    let (a, b) = (origin("a"), origin("b"));
    let config = quiet_gateway();
    let gw = start(2, config, sharded(2), &[a.local_addr()]);
    let admin = AdminEndpoint::start("127.0.0.1:0".parse().unwrap(), gw.gateway.clone()).unwrap();
    let admin_addr = admin.local_addr();
    let http = move |req: &str| raw::http(admin_addr, req);
    let counted = Arc::new(AtomicU64::new(0));
    run(async {
        let ch = channel(gw.addr()).await;
        let bg = {
            let (ch, counted) = (ch.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                let failed = load(&ch, 3, 200).await;
                counted.store(200 * 3, Ordering::Relaxed);
                failed
            })
        };
        eventually("a serves", || a.served() > 20).await;
        let added = tokio::task::spawn_blocking({
            let b = b.local_addr();
            move || http(&format!("POST /backends/add?addr={b}"))
        });
        assert!(added.await.unwrap().contains("added"));
        eventually("b serves", || b.served() > 20).await;
        assert!(gw.gateway.remove_backend(a.local_addr()));
        let a_after_removal = a.served();
        assert!(bg.await.unwrap().is_empty());
        // At most the calls in flight at the removal still reached a.
        assert!(a.served() <= a_after_removal + 3);
        assert!(load(&ch, 2, 10).await.is_empty());
        assert_eq!(gw.gateway.backends(), vec![b.local_addr()]);
        gw.gateway.set_backends(&[]).unwrap();
        let err = say_hello(ch.clone(), "nobody").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            err.message().contains("no upstream backend is configured"),
            "{err:?}"
        );
    });
    assert_eq!(counted.load(Ordering::Relaxed), 600);
    let bad = http("POST /backends/add?addr=nowhere");
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("?addr=IP:PORT"),
        "{bad}"
    );
    gw.gateway.add_backend(b.local_addr()).unwrap();
    let metrics = http("GET /metrics");
    assert!(
        metrics.contains("shardpool_upstream_requests_total{backend="),
        "{metrics}"
    );
    assert_no_leaks(gw.gateway.pool().unwrap());
}

#[test]
fn no_healthy_backend_answers_unavailable_and_health_says_not_serving() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = GatewayConfig {
        health: HealthConfig {
            interval: Some(Duration::from_millis(50)),
            eject_after: 1,
            ..HealthConfig::default()
        },
        ..GatewayConfig::default()
    };
    let gw = start(1, config, sharded(1), &[dead]);
    run(async {
        let ch = channel(gw.addr()).await;
        eventually("the dead backend is unhealthy", || {
            !gw.gateway.backend_stats()[0].healthy
        })
        .await;
        let err = say_hello(ch.clone(), "x").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            err.message().contains("no healthy upstream backend"),
            "{err:?}"
        );
        assert!(err.message().contains(&dead.to_string()), "{err:?}");
        assert_eq!(
            health(ch.clone(), "helloworld.Greeter").await.unwrap(),
            2,
            "NOT_SERVING while no backend is healthy"
        );
    });
}

#[test]
fn the_origin_answers_bad_frames_with_error_frames_and_survives() {
    let o = origin("strict");
    let read_response = |s: &mut std::net::TcpStream| -> Option<frame::Response> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut buf = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).ok()?;
        Some(frame::decode_response(&buf).unwrap())
    };
    let connect = || {
        let s = std::net::TcpStream::connect(o.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let mut s = connect();
    // Unknown op, then a name that is not UTF-8: error frames, connection kept.
    s.write_all(&[0, 0, 0, 2, 0x7f, b'x']).unwrap();
    assert_eq!(read_response(&mut s).unwrap().code, FrameCode::BadRequest);
    s.write_all(&[0, 0, 0, 3, 1, 0xff, 0xfe]).unwrap();
    let r = read_response(&mut s).unwrap();
    assert!(
        r.code == FrameCode::BadRequest && r.message.contains("UTF-8"),
        "{r:?}"
    );
    // A name whose greeting would not fit one frame: BAD_REQUEST naming the limit, never an
    // oversized frame; the longest one that fits is greeted in full.
    let mut long = Vec::new();
    frame::encode_request(Op::Hello, &"x".repeat(frame::MAX_HELLO_NAME + 1), &mut long);
    s.write_all(&long).unwrap();
    let r = read_response(&mut s).unwrap();
    assert!(
        r.code == FrameCode::BadRequest && r.message.contains(&frame::MAX_HELLO_NAME.to_string()),
        "{r:?}"
    );
    let longest = "y".repeat(frame::MAX_HELLO_NAME);
    long.clear();
    frame::encode_request(Op::Hello, &longest, &mut long);
    s.write_all(&long).unwrap();
    assert_eq!(
        read_response(&mut s).unwrap(),
        frame::Response::ok(frame::hello_reply(&longest))
    );
    let mut ok = Vec::new();
    frame::encode_request(Op::Hello, "still here", &mut ok);
    s.write_all(&ok).unwrap();
    assert_eq!(
        read_response(&mut s).unwrap(),
        frame::Response::ok("Hello, still here!")
    );
    // Lengths that cannot be skipped: an error frame, then the origin closes.
    for bad in [0u32, u32::MAX, frame::MAX_FRAME as u32 + 1] {
        let mut s = connect();
        s.write_all(&bad.to_be_bytes()).unwrap();
        assert_eq!(read_response(&mut s).unwrap().code, FrameCode::TooLarge);
        assert!(
            read_response(&mut s).is_none(),
            "connection should be closed"
        );
    }
    // A client that vanishes mid-frame does not hurt the origin.
    let mut s = connect();
    s.write_all(&[0, 0, 0, 9, 1, b'a']).unwrap();
    drop(s);
    let mut s = connect();
    s.write_all(&ok).unwrap();
    assert_eq!(read_response(&mut s).unwrap().code, FrameCode::Ok);
}

#[test]
fn stale_connections_are_retried_once_within_the_pool_limits() {
    // The origin closes connections idle for 50 ms (a keep-alive timeout); the gateway does not
    // peek before reuse (validate_after 60 s), so every burst after a pause meets stale
    // connections and must retry them through the pool.
    let o = Origin::start(OriginConfig {
        id: "closes-idle".into(),
        idle_timeout: Some(Duration::from_millis(50)),
        ..OriginConfig::default()
    })
    .unwrap();
    let mut config = GatewayConfig {
        health: HealthConfig {
            interval: None,
            eject_after: 0,
            ..HealthConfig::default()
        },
        ..GatewayConfig::default()
    };
    config.connector.validate_after = Duration::from_secs(60);
    let max_size = 2;
    let gw = start(
        1,
        config,
        sharded_with(pool_config(1).max_size(max_size)),
        &[o.local_addr()],
    );
    run(async {
        let ch = channel(gw.addr()).await;
        for round in 0..5 {
            let failed = load(&ch, 6, 4).await;
            assert!(failed.is_empty(), "round {round}: {failed:?}");
            eventually("the origin closed the idle connections", || {
                o.open_connections() == 0
            })
            .await;
        }
    });
    let s = &gw.gateway.backend_stats()[0];
    assert!(
        s.stale_retries >= 4,
        "every burst after a pause should meet stale connections: {s:?}"
    );
    assert_eq!(s.errors, 0, "stale connections are not backend failures");
    assert!(
        o.peak_open_connections() <= max_size as u64,
        "the retry opened connections beyond max_size {max_size}: peak {}",
        o.peak_open_connections()
    );
    let pool = gw.gateway.pool().unwrap();
    assert!(pool.stats().total.live <= max_size as u64);
    assert_no_leaks(pool);
}

async fn admin_rpc<Req>(
    ch: Channel,
    method: &'static str,
    req: Req,
) -> Result<BackendList, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
{
    unary(ch, method, tonic::Request::new(req)).await
}

fn addresses(list: &BackendList) -> Vec<String> {
    list.backends.iter().map(|b| b.address.clone()).collect()
}

#[test]
fn backends_are_added_and_removed_through_the_grpc_admin_service_under_load() {
    let (a, b) = (origin("a"), origin("b"));
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    let config = quiet_gateway();
    let gw = start(2, config, sharded(2), &[a.local_addr()]);
    run(async {
        let ch = channel(gw.addr()).await;
        // The backend RPCs are served on the admin listener, not the serving port.
        let admin = channel(gw.admin_addr()).await;
        let bg = {
            let ch = ch.clone();
            tokio::spawn(async move { load(&ch, 3, 200).await })
        };
        eventually("a serves", || a.served() > 20).await;
        let add = AddBackendRequest {
            address: b_addr.clone(),
        };
        let list = admin_rpc(admin.clone(), "/shardpool.v1.Admin/AddBackend", add.clone())
            .await
            .unwrap();
        assert_eq!(addresses(&list), vec![a_addr.clone(), b_addr.clone()]);
        eventually("b serves", || b.served() > 20).await;
        let remove = RemoveBackendRequest {
            address: a_addr.clone(),
        };
        let list = admin_rpc(
            admin.clone(),
            "/shardpool.v1.Admin/RemoveBackend",
            remove.clone(),
        )
        .await
        .unwrap();
        assert_eq!(addresses(&list), vec![b_addr.clone()]);
        let a_after_removal = a.served();
        let failed = bg.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed while backends changed: {failed:?}"
        );
        // At most the calls in flight at the removal still reached a.
        assert!(a.served() <= a_after_removal + 3);
        let list = admin_rpc(
            admin.clone(),
            "/shardpool.v1.Admin/ListBackends",
            ListBackendsRequest {},
        )
        .await
        .unwrap();
        let only = &list.backends[..];
        assert_eq!(only.len(), 1);
        assert!(
            only[0].healthy && only[0].requests > 20 && only[0].connections_reused > 0,
            "{only:?}"
        );

        // Bad input: a status with a message, and nothing changes.
        for bad in ["nowhere", "", "127.0.0.1", "localhost:7001"] {
            let err = admin_rpc(
                admin.clone(),
                "/shardpool.v1.Admin/AddBackend",
                AddBackendRequest {
                    address: bad.into(),
                },
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
            assert!(
                err.message().contains(&format!("`{bad}`")) && err.message().contains("IP:PORT"),
                "{err:?}"
            );
        }
        let err = admin_rpc(admin.clone(), "/shardpool.v1.Admin/AddBackend", add)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        assert!(err.message().contains(&b_addr), "{err:?}");
        let err = admin_rpc(admin.clone(), "/shardpool.v1.Admin/RemoveBackend", remove)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert!(err.message().contains(&a_addr), "{err:?}");
        assert_eq!(gw.gateway.backends(), vec![b.local_addr()]);
        assert!(load(&ch, 2, 10).await.is_empty());
    });
    assert_no_leaks(gw.gateway.pool().unwrap());
    drop(gw);

    // Without a gateway there are no backends to manage.
    let (map, opts) = shards(1);
    let direct = Server::new(ServerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..local_config()
    })
    .start(&map, &opts)
    .unwrap();
    run(async {
        let ch = channel(direct.admin_addr().unwrap()).await;
        let err = admin_rpc(
            ch,
            "/shardpool.v1.Admin/ListBackends",
            ListBackendsRequest {},
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("gateway mode"), "{err:?}");
    });
    direct.shutdown(Duration::from_secs(2)).unwrap();
}

/// A gateway config for the failure tests: short health intervals keep them to a few seconds.
fn failure_config() -> GatewayConfig {
    GatewayConfig {
        health: HealthConfig {
            interval: Some(Duration::from_millis(200)),
            timeout: Duration::from_millis(100),
            eject_after: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        },
        request_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    }
}

/// The bound of the stall tests: one health interval plus the first backoff.
fn recovery_bound(config: &GatewayConfig) -> Duration {
    config.health.interval.unwrap() + config.health.backoff_base
}

/// One finished call of [`timed_load`]: when it ended, and its failure if it failed.
type Outcome = (Instant, Option<tonic::Status>);

/// `tasks` clients calling back to back until `stop` is set; every call's outcome.
fn timed_load(
    ch: &Channel,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    let mut joins = Vec::new();
    for t in 0..tasks {
        let (ch, stop) = (ch.clone(), Arc::clone(stop));
        joins.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("t{t}-{i}");
                i += 1;
                let r = say_hello(ch.clone(), &name).await;
                if let Ok(reply) = &r {
                    assert_eq!(reply, &format!("Hello, {name}!"));
                }
                out.push((Instant::now(), r.err()));
            }
            out
        }));
    }
    tokio::spawn(async move {
        let mut all = Vec::new();
        for j in joins {
            all.extend(j.await.unwrap());
        }
        all
    })
}

fn ejections<P: ConnectionPool<UpstreamManager>>(gw: &TestGateway<P>) -> Vec<u64> {
    gw.gateway
        .backend_stats()
        .iter()
        .map(|s| s.ejections)
        .collect()
}

#[test]
fn a_client_flooding_oversized_names_never_ejects_a_backend() {
    let (a, b) = (origin("a"), origin("b"));
    let gw = start(
        2,
        failure_config(),
        sharded(2),
        &[a.local_addr(), b.local_addr()],
    );
    let limit = frame::MAX_HELLO_NAME.to_string();
    run(async {
        let ch = channel(gw.addr()).await;
        // The longest forwardable name goes through; one byte more is refused at the gateway.
        let longest = "n".repeat(frame::MAX_HELLO_NAME);
        assert_eq!(
            say_hello(ch.clone(), longest.as_str()).await.unwrap(),
            frame::hello_reply(&longest)
        );
        let err = say_hello(ch.clone(), "n".repeat(frame::MAX_HELLO_NAME + 1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        // A flood of 65,530-byte names (they fit a request frame, their greeting does not)
        // from 3 callers, alongside a normal client.
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (ch, stop, limit) = (ch.clone(), Arc::clone(&stop), limit.clone());
            tokio::spawn(async move {
                let mut joins = Vec::new();
                for _ in 0..3 {
                    let (ch, stop, limit) = (ch.clone(), Arc::clone(&stop), limit.clone());
                    joins.push(tokio::spawn(async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let err = say_hello(ch.clone(), "f".repeat(65_530)).await.unwrap_err();
                            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
                            assert!(err.message().contains(&limit), "{err:?}");
                            n += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        n
                    }));
                }
                let mut n = 0;
                for j in joins {
                    n += j.await.unwrap();
                }
                n
            })
        };
        let failed = load(&ch, 2, 150).await;
        stop.store(true, Ordering::Relaxed);
        let flooded = flood.await.unwrap();
        assert!(
            failed.is_empty(),
            "the normal client failed {} of 300 calls: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(flooded >= 10, "the flood sent only {flooded} calls");
        println!("flood: {flooded} oversized names refused, normal client 300/300 ok");
    });
    let stats = gw.gateway.backend_stats();
    assert_eq!(ejections(&gw), vec![0, 0], "{stats:?}");
    assert!(
        stats.iter().all(|s| s.healthy && s.errors == 0),
        "{stats:?}"
    );
    // No backend saw a refused name: 300 normal calls + the longest name.
    let requests: u64 = stats.iter().map(|s| s.requests).sum();
    assert_eq!(requests, 301, "{stats:?}");
    let metrics = gw.gateway.prometheus();
    assert!(
        metrics.contains(&format!(
            "shardpool_upstream_ejections_total{{backend=\"{}\"}} 0",
            a.local_addr()
        )),
        "{metrics}"
    );
}

#[test]
fn both_origins_stalled_for_3s_serve_again_within_one_health_interval_plus_the_first_backoff() {
    let (a, b) = (origin("a"), origin("b"));
    let config = failure_config();
    let bound = recovery_bound(&config);
    let gw = start(
        2,
        config,
        sharded_with(pool_config(2).max_size(64)),
        &[a.local_addr(), b.local_addr()],
    );
    run(async {
        let ch = channel(gw.addr()).await;
        let stop = Arc::new(AtomicBool::new(false));
        // Many callers: many calls are in flight when the stall begins (the issue saw 85
        // ejections from one stall, each doubling the backoff).
        let loader = timed_load(&ch, 48, &stop);
        eventually("both origins serve", || a.served() > 20 && b.served() > 20).await;
        a.pause();
        b.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = ejections(&gw);
        a.resume();
        b.resume();
        let resumed = Instant::now();
        tokio::time::sleep(bound + Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let outcomes = loader.await.unwrap();
        let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.0 > resumed).collect();
        let recovery = after
            .iter()
            .filter(|o| o.1.is_some())
            .map(|o| o.0 - resumed)
            .max()
            .unwrap_or_default();
        let failed_during = outcomes.iter().filter(|o| o.1.is_some()).count() - {
            after.iter().filter(|o| o.1.is_some()).count()
        };
        println!(
            "both stalled 3 s: {failed_during} calls failed during the stall, ejections {during:?}; \
             serving again {recovery:?} after resume (bound {bound:?}); {} calls after resume",
            after.len()
        );
        assert!(
            recovery <= bound,
            "the gateway served again only {recovery:?} after the origins resumed (bound {bound:?}): {:?}",
            after.iter().rev().find_map(|o| o.1.as_ref())
        );
        // Panic mode: with both ejected, calls still went to the one ejected longest ago.
        assert!(
            outcomes
                .iter()
                .filter_map(|o| o.1.as_ref())
                .any(|s| s.message().contains("panic mode tried")),
            "no call was sent in panic mode during the stall"
        );
        let steady = after.iter().filter(|o| o.0 > resumed + bound).count();
        assert!(steady > 20, "only {steady} calls in the last second");
        // One ejection per episode: a 3 s stall with a 1 s first backoff is a few episodes,
        // not one per failed call.
        assert!(
            during.iter().all(|&e| (1..=4).contains(&e)),
            "ejections during the stall: {during:?}"
        );
    });
}

#[test]
fn one_origin_stalled_costs_no_call_and_is_back_within_one_health_interval_plus_the_first_backoff()
{
    // The issue asks for a 10 s stall; 3 s gives the same bound: once the stalled backend is
    // ejected, the failing active checks keep it out of rotation, so no call reaches it and no
    // further episode (or longer backoff) can start however long the stall lasts; after it
    // resumes, the next passing check puts it back.
    let (a, b) = (origin("stalls"), origin("healthy"));
    let config = failure_config();
    let bound = recovery_bound(&config);
    let gw = start(
        2,
        config,
        sharded_with(pool_config(2).max_size(32)),
        &[a.local_addr(), b.local_addr()],
    );
    let a_addr = a.local_addr();
    let stats_of_a = || {
        gw.gateway
            .backend_stats()
            .into_iter()
            .find(|s| s.addr == a_addr)
            .unwrap()
    };
    run(async {
        let ch = channel(gw.addr()).await;
        let stop = Arc::new(AtomicBool::new(false));
        // Many callers: many calls are in flight on the stalled origin when it stops.
        let loader = timed_load(&ch, 24, &stop);
        eventually("both origins serve", || a.served() > 20 && b.served() > 20).await;
        a.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ejected = stats_of_a().ejections;
        a.resume();
        let resumed = Instant::now();
        let mut back = None;
        while resumed.elapsed() < bound + Duration::from_secs(2) {
            if stats_of_a().healthy {
                back = Some(resumed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let served = a.served();
        let requests = stats_of_a().requests;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let outcomes = loader.await.unwrap();
        let failed: Vec<&tonic::Status> = outcomes.iter().filter_map(|o| o.1.as_ref()).collect();
        println!(
            "one stalled 3 s: {} calls, {} failed, {ejected} ejection(s); back in rotation {back:?} \
             after resume (bound {bound:?})",
            outcomes.len(),
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "calls failed: {:?}",
            &failed[..failed.len().min(3)]
        );
        let back = back.expect("the stalled origin never came back");
        assert!(back <= bound, "back after {back:?}, bound {bound:?}");
        assert!(
            stats_of_a().requests > requests && a.served() > served,
            "the resumed origin gets no traffic"
        );
        assert_eq!(ejected, 1, "one stall, one ejection");
    });
}

#[test]
fn a_passing_active_check_ends_a_long_ejection_early() {
    let (a, b) = (origin("ejected"), origin("other"));
    let mut config = failure_config();
    // An ejection far longer than the test: only a passing active check can end it.
    config.health.backoff_base = Duration::from_secs(60);
    config.health.backoff_max = Duration::from_secs(60);
    let interval = config.health.interval.unwrap();
    let gw = start(2, config, sharded(2), &[a.local_addr(), b.local_addr()]);
    let a_addr = a.local_addr();
    let stats_of_a = || {
        gw.gateway
            .backend_stats()
            .into_iter()
            .find(|s| s.addr == a_addr)
            .unwrap()
    };
    run(async {
        let ch = channel(gw.addr()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let loader = timed_load(&ch, 12, &stop);
        eventually("both origins serve", || a.served() > 20 && b.served() > 20).await;
        a.pause();
        eventually("a is ejected", || stats_of_a().ejections == 1).await;
        a.resume();
        let resumed = Instant::now();
        eventually("a is back", || stats_of_a().healthy).await;
        let back = resumed.elapsed();
        let served = a.served();
        eventually("a serves again", || a.served() > served + 20).await;
        stop.store(true, Ordering::Relaxed);
        let failed = loader
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.1.is_some())
            .count();
        println!(
            "a 60 s ejection ended by a passing check {back:?} after resume (interval {interval:?})"
        );
        assert_eq!(failed, 0, "calls failed although b was healthy");
        // One interval to the next check, plus that round's checks (each within the timeout).
        assert!(back <= 3 * interval, "back only after {back:?}");
        assert_eq!(stats_of_a().ejections, 1);
    });
}
