//! The control plane in-process: the serving port refuses the backend RPCs, the admin listener
//! serves them (h2c gRPC next to HTTP/1.1 `/metrics`) behind the admin token, the backend
//! allow-list, and both admin ports serving each connection concurrently within their limits.
//! Every listener binds 127.0.0.1:0; every test is bounded in time and stops what it started.
#![cfg(feature = "upstream")]

use shardpool::pool::{Config, ConnectionPool, ShardedPool};
use shardpool::server::proto::{
    AddBackendRequest, BackendList, ListBackendsRequest, RemoveBackendRequest,
};
use shardpool::server::{AdminConfig, AdminToken, RunningServer, Server, ServerConfig};
use shardpool::upstream::admin::AdminEndpoint;
use shardpool::upstream::allow::{AllowListed, BackendAllow};
use shardpool::upstream::origin::{Origin, OriginConfig, RunningOrigin};
use shardpool::upstream::{Gateway, GatewayConfig, HealthConfig, UpstreamManager};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

#[path = "common/grpc.rs"]
mod grpc;
#[path = "common/inproc.rs"]
mod inproc;
#[path = "common/raw.rs"]
mod raw;

use grpc::{channel, say_hello, unary};
use inproc::{local_config, run, shards};

const TOKEN: &str = "test-admin-token-0123456789";

fn origin(id: &str) -> RunningOrigin {
    Origin::start(OriginConfig {
        id: id.into(),
        ..OriginConfig::default()
    })
    .unwrap()
}

type Pool = ShardedPool<UpstreamManager>;

/// A one-shard gateway in front of `backends`, served with `config`; `allow` wraps its backend
/// hook in an allow-list, as `serve --backend-allow` does.
struct TestGateway {
    server: Option<RunningServer>,
    gateway: Gateway<Pool>,
}

impl TestGateway {
    fn start(config: ServerConfig, backends: &[SocketAddr], allow: Option<BackendAllow>) -> Self {
        Self::start_with_max(
            config,
            backends,
            allow,
            GatewayConfig::default().max_backends,
        )
    }

    /// [`TestGateway::start`] with `GatewayConfig::max_backends` set to `max_backends`.
    fn start_with_max(
        config: ServerConfig,
        backends: &[SocketAddr],
        allow: Option<BackendAllow>,
        max_backends: usize,
    ) -> Self {
        let (map, opts) = shards(1);
        let gconfig = GatewayConfig {
            health: HealthConfig {
                interval: None,
                ..HealthConfig::default()
            },
            max_backends,
            ..GatewayConfig::default()
        };
        let manager = UpstreamManager::new(gconfig.connector.clone(), 1);
        let pool =
            ShardedPool::new(manager.clone(), Config::default().shards(1).max_size(8)).unwrap();
        let gateway = Gateway::new(gconfig, Some(pool), manager, 1);
        for b in backends {
            assert_eq!(gateway.add_backend(*b), Ok(true));
        }
        let server = gateway.install(Server::new(config));
        let server = match allow {
            Some(a) => server.backend_admin(Arc::new(AllowListed::new(gateway.clone(), a))),
            None => server,
        };
        TestGateway {
            server: Some(server.start(&map, &opts).unwrap()),
            gateway,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    fn admin(&self) -> SocketAddr {
        self.server.as_ref().unwrap().admin_addr().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.shutdown(Duration::from_millis(200));
        }
        if let Some(p) = self.gateway.pool() {
            p.close();
        }
    }
}

fn with_admin(admin: AdminConfig) -> ServerConfig {
    ServerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin,
        ..local_config()
    }
}

fn with_token() -> AdminConfig {
    AdminConfig {
        token: Some(AdminToken::new(TOKEN).unwrap()),
        ..AdminConfig::default()
    }
}

/// One backend RPC, with `authorization: Bearer <token>` when `token` is given; bounded to 10 s.
async fn backend_rpc<Req>(
    ch: Channel,
    method: &'static str,
    req: Req,
    token: Option<&str>,
) -> Result<BackendList, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
{
    let mut req = tonic::Request::new(req);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio::time::timeout(Duration::from_secs(10), unary(ch, method, req))
        .await
        .expect("admin call took too long")
}

fn add(addr: impl ToString) -> AddBackendRequest {
    AddBackendRequest {
        address: addr.to_string(),
    }
}

/// An HTTP/1.1 request with extra header lines; the whole response (10 s at most).
fn http_with(addr: SocketAddr, request_line: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("{request_line} HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn backend_rpcs_on_the_serving_port_are_refused_and_change_nothing() {
    let (a, b) = (origin("a"), origin("b"));
    let gw = TestGateway::start(local_config(), &[a.local_addr()], None);
    run(async {
        let ch = channel(gw.addr()).await;
        let refused = [
            backend_rpc(
                ch.clone(),
                "/shardpool.v1.Admin/AddBackend",
                add(b.local_addr()),
                None,
            )
            .await,
            backend_rpc(
                ch.clone(),
                "/shardpool.v1.Admin/RemoveBackend",
                RemoveBackendRequest {
                    address: a.local_addr().to_string(),
                },
                None,
            )
            .await,
            backend_rpc(
                ch.clone(),
                "/shardpool.v1.Admin/ListBackends",
                ListBackendsRequest {},
                None,
            )
            .await,
        ];
        for r in refused {
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("admin listener"), "{e:?}");
        }
        assert_eq!(gw.gateway.backends(), vec![a.local_addr()]);
        for i in 0..10 {
            let name = format!("caller-{i}");
            assert_eq!(
                say_hello(ch.clone(), &name).await.unwrap(),
                format!("Hello, {name}!")
            );
        }
    });
    assert!(a.served() >= 10, "the original origin answers");
    assert_eq!(b.served(), 0, "the client's origin saw nothing");
}

#[test]
fn add_backend_beyond_max_backends_is_resource_exhausted_and_changes_nothing() {
    let (a, b) = (origin("a"), origin("b"));
    let gw = TestGateway::start_with_max(with_admin(with_token()), &[a.local_addr()], None, 1);
    let admin = gw.admin();
    run(async {
        let ch = channel(admin).await;
        let e = backend_rpc(
            ch.clone(),
            "/shardpool.v1.Admin/AddBackend",
            add(b.local_addr()),
            Some(TOKEN),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("--max-backends"), "{e:?}");
    });
    assert_eq!(
        gw.gateway.backends(),
        vec![a.local_addr()],
        "nothing changed"
    );
    // The upstream admin endpoint answers 429 the same way.
    let ep = AdminEndpoint::start_with(
        "127.0.0.1:0".parse().unwrap(),
        gw.gateway.clone(),
        with_token(),
        None,
    )
    .unwrap();
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    let r = http_with(
        ep.local_addr(),
        &format!("POST /backends/add?addr={}", b.local_addr()),
        &auth,
    );
    assert!(
        r.starts_with("HTTP/1.1 429") && r.contains("--max-backends"),
        "{r}"
    );
    assert_eq!(gw.gateway.backends(), vec![a.local_addr()]);
}

#[test]
fn admin_listener_serves_backend_rpcs_only_with_the_token() {
    let (a, b) = (origin("a"), origin("b"));
    let gw = TestGateway::start(with_admin(with_token()), &[a.local_addr()], None);
    let admin = gw.admin();
    run(async {
        let ch = channel(admin).await;
        let list = "/shardpool.v1.Admin/ListBackends";
        let add_path = "/shardpool.v1.Admin/AddBackend";
        let e = backend_rpc(ch.clone(), list, ListBackendsRequest {}, None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("Bearer"), "{e:?}");
        let e = backend_rpc(ch.clone(), add_path, add(b.local_addr()), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        for wrong in [
            "nope",
            "test-admin-token-012345678",
            "test-admin-token-01234567890",
        ] {
            let e = backend_rpc(ch.clone(), add_path, add(b.local_addr()), Some(wrong))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{wrong}: {e:?}");
            assert!(!e.message().contains(TOKEN), "the token leaked: {e:?}");
        }
        assert_eq!(
            gw.gateway.backends(),
            vec![a.local_addr()],
            "nothing changed"
        );
        let after = backend_rpc(ch.clone(), add_path, add(b.local_addr()), Some(TOKEN))
            .await
            .unwrap();
        assert_eq!(after.backends.len(), 2);
        assert_eq!(gw.gateway.backends(), vec![a.local_addr(), b.local_addr()]);
        let l = backend_rpc(ch.clone(), list, ListBackendsRequest {}, Some(TOKEN))
            .await
            .unwrap();
        assert_eq!(l.backends.len(), 2);
        // SayHello belongs to the serving port.
        let mut req =
            tonic::Request::new(shardpool::server::proto::HelloRequest { name: "x".into() });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let e = unary::<_, shardpool::server::proto::HelloReply>(
            ch.clone(),
            "/helloworld.Greeter/SayHello",
            req,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    });
    // /metrics over HTTP/1.1 on the same port needs the token too.
    let r = http_with(admin, "GET /metrics", "");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = http_with(admin, "GET /metrics", "authorization: Bearer wrong\r\n");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = http_with(
        admin,
        "GET /metrics",
        &format!("authorization: Bearer {TOKEN}\r\n"),
    );
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("shardpool_server_calls_total"),
        "{r}"
    );
}

#[test]
fn without_a_token_the_admin_listener_is_loopback_only() {
    let (map, opts) = shards(1);
    let open = ServerConfig {
        admin_listen: Some("0.0.0.0:0".parse().unwrap()),
        ..local_config()
    };
    let e = open.validate().unwrap_err();
    assert_eq!(e.field, "admin_listen");
    assert!(
        e.message.contains("--admin-token-file") && e.message.contains("--admin-allow-insecure"),
        "{e}"
    );
    let e = match Server::new(open.clone()).start(&map, &opts) {
        Err(e) => e.to_string(),
        Ok(s) => {
            let _ = s.shutdown(Duration::from_millis(100));
            panic!("an open admin listener without a token started");
        }
    };
    assert!(e.contains("--admin-token-file"), "{e}");
    // A token, or the explicit opt-out, lets it start.
    assert!(
        ServerConfig {
            admin: with_token(),
            ..open.clone()
        }
        .validate()
        .is_ok()
    );
    assert!(
        ServerConfig {
            admin: AdminConfig {
                allow_insecure: true,
                ..AdminConfig::default()
            },
            ..open
        }
        .validate()
        .is_ok()
    );
    // The upstream admin endpoint follows the same rule.
    let gw = TestGateway::start(local_config(), &[], None);
    let e = AdminEndpoint::start("0.0.0.0:0".parse().unwrap(), gw.gateway.clone())
        .err()
        .expect("the upstream admin endpoint started open without a token");
    assert!(e.to_string().contains("--admin-token-file"), "{e}");
}

#[test]
fn the_allow_list_refuses_backends_outside_it_at_run_time() {
    let a = origin("a");
    let allow: BackendAllow = "127.0.0.0/8".parse().unwrap();
    let gw = TestGateway::start(
        with_admin(with_token()),
        &[a.local_addr()],
        Some(allow.clone()),
    );
    let b = origin("b");
    run(async {
        let ch = channel(gw.admin()).await;
        let path = "/shardpool.v1.Admin/AddBackend";
        for outside in ["10.1.2.3:7001", "[::1]:7001", "192.168.0.1:80"] {
            let e = backend_rpc(ch.clone(), path, add(outside), Some(TOKEN))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{outside}: {e:?}");
            assert!(
                e.message().contains("allow-list") && e.message().contains("--backend-allow"),
                "{e:?}"
            );
        }
        assert_eq!(gw.gateway.backends(), vec![a.local_addr()]);
        backend_rpc(ch.clone(), path, add(b.local_addr()), Some(TOKEN))
            .await
            .unwrap();
    });
    assert_eq!(gw.gateway.backends(), vec![a.local_addr(), b.local_addr()]);
    // The upstream admin endpoint checks the same list.
    let ep = AdminEndpoint::start_with(
        "127.0.0.1:0".parse().unwrap(),
        gw.gateway.clone(),
        with_token(),
        Some(allow),
    )
    .unwrap();
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    let r = http_with(
        ep.local_addr(),
        "POST /backends/add?addr=10.1.2.3:7001",
        &auth,
    );
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("allow-list"),
        "{r}"
    );
    assert_eq!(gw.gateway.backends().len(), 2);
    let r = http_with(ep.local_addr(), "GET /backends", "");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = http_with(ep.local_addr(), "GET /backends", &auth);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Opens `n` connections to `addr` that send nothing.
fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

/// `GET /metrics` on `addr` must answer 200 within 2 s.
fn metrics_quickly(addr: SocketAddr, what: &str) {
    let started = Instant::now();
    let r = http_with(addr, "GET /metrics", "");
    let took = started.elapsed();
    assert!(r.starts_with("HTTP/1.1 200"), "{what}: {r}");
    assert!(
        took < Duration::from_secs(2),
        "{what}: /metrics took {took:?} behind silent connections"
    );
}

#[test]
fn silent_connections_do_not_block_either_admin_port() {
    let a = origin("a");
    let gw = TestGateway::start(with_admin(AdminConfig::default()), &[a.local_addr()], None);
    let upstream_admin =
        AdminEndpoint::start("127.0.0.1:0".parse().unwrap(), gw.gateway.clone()).unwrap();
    let _held = (
        silent(gw.admin(), 4),
        silent(upstream_admin.local_addr(), 4),
    );
    metrics_quickly(gw.admin(), "server admin");
    metrics_quickly(upstream_admin.local_addr(), "upstream admin");
}

#[test]
fn admin_connections_are_capped_and_silent_ones_time_out() {
    let a = origin("a");
    let admin = AdminConfig {
        max_connections: 2,
        read_timeout: Duration::from_millis(300),
        ..AdminConfig::default()
    };
    let gw = TestGateway::start(with_admin(admin.clone()), &[a.local_addr()], None);
    let upstream_admin = AdminEndpoint::start_with(
        "127.0.0.1:0".parse().unwrap(),
        gw.gateway.clone(),
        admin,
        None,
    )
    .unwrap();
    for (addr, what) in [
        (gw.admin(), "server admin"),
        (upstream_admin.local_addr(), "upstream admin"),
    ] {
        let held = silent(addr, 2);
        std::thread::sleep(Duration::from_millis(50));
        // Over the cap: closed at once (the upstream endpoint says 503 first).
        let mut third = TcpStream::connect(addr).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let _ = third.read_to_end(&mut got);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{what}: the connection over the cap was kept {:?}",
            started.elapsed()
        );
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 503"),
            "{what}: {got}"
        );
        // The silent ones are dropped after the read timeout, then /metrics answers.
        for mut s in held {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let started = Instant::now();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{what}: a silent connection was kept {:?}",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
        metrics_quickly(addr, what);
    }
}

#[test]
fn an_idle_h2c_admin_connection_is_closed_after_the_idle_timeout() {
    let a = origin("a");
    let admin = AdminConfig {
        idle_timeout: Duration::from_millis(300),
        ..AdminConfig::default()
    };
    let gw = TestGateway::start(with_admin(admin), &[a.local_addr()], None);
    let mut s = raw::h2_connect(gw.admin());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    // The server's SETTINGS arrive, then nothing until the connection is closed.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "the idle h2c admin connection was closed after {took:?}"
    );
}

#[test]
fn connections_the_watchdog_closes_are_counted_in_metrics() {
    let a = origin("a");
    let config = ServerConfig {
        handshake_timeout: Some(Duration::from_millis(200)),
        ..with_admin(AdminConfig::default())
    };
    let gw = TestGateway::start(config, &[a.local_addr()], None);
    // Sends nothing: dropped at the handshake timeout.
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while !matches!(s.read(&mut buf), Ok(0) | Err(_)) {
        assert!(started.elapsed() < Duration::from_secs(5), "still open");
    }
    let m = http_with(gw.admin(), "GET /metrics", "");
    let line = m
        .lines()
        .find(|l| l.starts_with("shardpool_server_connections_handshake_timeouts_total{"))
        .unwrap_or_else(|| panic!("no handshake-timeout metric in:\n{m}"));
    assert!(line.ends_with(" 1"), "{line}");
    let idle = m
        .lines()
        .find(|l| l.starts_with("shardpool_server_connections_idle_closed_total{"))
        .unwrap_or_else(|| panic!("no idle-close metric in:\n{m}"));
    assert!(idle.ends_with(" 0"), "{idle}");
}

/// The gateway started the way `shardpool serve` starts it (`upstream::launch`): calls go
/// through the listed backend; a reload applies the list as it is now; a list that cannot be
/// read, or that names a backend outside the allow-list, changes nothing and says why; with no
/// backend and no embedded origin nothing starts; dropping the handle stops the embedded origins.
#[test]
fn the_launcher_starts_reloads_and_stops_the_gateway_like_the_binary() {
    use shardpool::upstream::launch::{self, Launch, LaunchError};
    use std::sync::Mutex;
    let (a, b) = (origin("a"), origin("b"));
    let list: Arc<Mutex<Result<Vec<SocketAddr>, String>>> =
        Arc::new(Mutex::new(Ok(vec![a.local_addr()])));
    let read = {
        let list = Arc::clone(&list);
        Arc::new(move || list.lock().unwrap().clone())
    };
    let quiet = |launch: Launch| Launch {
        gateway: GatewayConfig {
            health: HealthConfig {
                interval: None,
                ..HealthConfig::default()
            },
            ..launch.gateway
        },
        pool_max_size: 8,
        pool_max_idle: 8,
        allow: Some("127.0.0.0/8".parse().unwrap()),
        ..launch
    };
    let (map, opts) = shards(1);
    let (server, handle) = launch::start(
        quiet(Launch::new(read)),
        Server::new(local_config()),
        &map,
        &opts,
    )
    .unwrap();
    assert_eq!(handle.backends_at_start(), [a.local_addr()]);
    assert!(handle.embedded_origins().is_empty());
    run(async {
        let ch = channel(server.local_addr()).await;
        assert_eq!(say_hello(ch, "x").await.unwrap(), "Hello, x!");
    });
    *list.lock().unwrap() = Ok(vec![a.local_addr(), b.local_addr()]);
    assert_eq!(handle.reload(), Ok((1, 0)));
    assert_eq!(handle.backends(), vec![a.local_addr(), b.local_addr()]);
    *list.lock().unwrap() = Err("cannot read the list".into());
    assert_eq!(handle.reload(), Err("cannot read the list".into()));
    *list.lock().unwrap() = Ok(vec!["10.1.2.3:7000".parse().unwrap()]);
    let outside = handle.reload().unwrap_err();
    assert!(outside.contains("10.1.2.3"), "{outside}");
    assert_eq!(handle.backends(), vec![a.local_addr(), b.local_addr()]);
    *list.lock().unwrap() = Ok(vec![b.local_addr()]);
    assert_eq!(handle.reload(), Ok((0, 1)));
    server.shutdown(Duration::from_secs(2)).unwrap();
    drop(handle);

    // No backend listed and no embedded origin: nothing to answer, refused before starting.
    let none = Launch {
        embedded_origins: 0,
        ..Launch::new(Arc::new(|| Ok(Vec::new())))
    };
    let refused = launch::start(none, Server::new(local_config()), &map, &opts);
    assert!(
        matches!(refused, Err(LaunchError::NoBackend)),
        "{:?}",
        refused.err()
    );

    // No backend listed: one embedded origin answers, and stops with the handle.
    let embedded = Launch {
        embedded_origins: 1,
        ..quiet(Launch::new(Arc::new(|| Ok(Vec::new()))))
    };
    let (server, handle) =
        launch::start(embedded, Server::new(local_config()), &map, &opts).unwrap();
    let origin_addr = handle.embedded_origins()[0];
    assert_eq!(handle.backends_at_start(), [origin_addr]);
    run(async {
        let ch = channel(server.local_addr()).await;
        assert_eq!(say_hello(ch, "y").await.unwrap(), "Hello, y!");
    });
    server.shutdown(Duration::from_secs(2)).unwrap();
    assert!(TcpStream::connect(origin_addr).is_ok());
    drop(handle);
    assert!(
        TcpStream::connect_timeout(&origin_addr, Duration::from_secs(1)).is_err(),
        "the embedded origin still accepts after the handle was dropped"
    );
}
