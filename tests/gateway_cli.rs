//! `shardpool origin` and `shardpool serve` in gateway mode as processes: external backends, the
//! backends file re-read on SIGHUP, the upstream admin endpoint, bad flags. Children are killed
//! in Drop; everything binds port 0 on loopback.
#![cfg(feature = "cli")]

use shardpool::server::proto::{HelloReply, HelloRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shardpool");

/// A child process killed on drop; its stdout lines arrive on `lines`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        Proc::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("SHARDPOOL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// The address printed after `marker` on a stdout line (waits up to 10 s).
    fn addr_after(&self, marker: &str) -> SocketAddr {
        let rest = self.line_with(marker);
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The rest of the first stdout line containing `marker` (waits up to 10 s).
    fn line_with(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            if let Some(rest) = line.split(marker).nth(1) {
                return rest.to_string();
            }
        }
        panic!("no `{marker}` line on stdout within 10 s");
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("{req} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

fn say_hello(addr: SocketAddr, name: &str) -> Result<String, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
        let req = tonic::Request::new(HelloRequest { name: name.into() });
        let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
        tokio::time::timeout(Duration::from_secs(10), grpc.unary(req, path, codec))
            .await
            .expect("call took too long")
            .map(|r| r.into_inner().message)
    })
}

#[test]
fn serve_with_external_origins_reloads_backends_on_sighup() {
    let a = Proc::start(&["origin", "--listen", "127.0.0.1:0", "--id", "a"]);
    let b = Proc::start(&["origin", "--listen", "127.0.0.1:0", "--id", "b"]);
    let (a_addr, b_addr) = (a.addr_after("listening on "), b.addr_after("listening on "));
    let dir = std::env::temp_dir().join(format!("shardpool-gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backends.toml");
    std::fs::write(&file, format!("backends = [\"{a_addr}\"]\n")).unwrap();
    let serve = Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pin",
        "false",
        "--backends-file",
        file.to_str().unwrap(),
        "--upstream-admin-listen",
        "127.0.0.1:0",
        "--lb",
        "p2c",
        "--pool",
        "mutex",
    ]);
    let admin = serve.addr_after("upstream admin on ");
    let grpc = serve.addr_after("serving gRPC on ");
    assert_eq!(say_hello(grpc, "Ada").unwrap(), "Hello, Ada!");
    let table = http(admin, "GET /backends");
    assert!(
        table.contains(&a_addr.to_string()) && !table.contains(&b_addr.to_string()),
        "{table}"
    );

    std::fs::write(&file, format!("backends = [\"{b_addr}\"]\n")).unwrap();
    serve.signal(libc::SIGHUP);
    eventually("SIGHUP swaps a for b", || {
        let t = http(admin, "GET /backends");
        t.contains(&b_addr.to_string()) && !t.contains(&a_addr.to_string())
    });
    // A broken file keeps the current backends.
    std::fs::write(&file, "backends = 7\n").unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(http(admin, "GET /backends").contains(&b_addr.to_string()));
    assert_eq!(say_hello(grpc, "Bob").unwrap(), "Hello, Bob!");
    let metrics = http(admin, "GET /metrics");
    assert!(
        metrics.contains(&format!(
            "shardpool_upstream_requests_total{{backend=\"{b_addr}\"}} 1"
        )),
        "{metrics}"
    );
    // Killing the only origin: UNAVAILABLE with a clear message, never a hang.
    drop(b);
    let err = say_hello(grpc, "Cy").unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&b_addr.to_string()), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_starts_embedded_origins_by_default_and_bad_flags_say_how_to_fix() {
    let serve = Proc::start(&["serve", "--listen", "127.0.0.1:0", "--pin", "false"]);
    let grpc = serve.addr_after("serving gRPC on ");
    assert_eq!(say_hello(grpc, "Dee").unwrap(), "Hello, Dee!");
    drop(serve);

    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--lb", "fastest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("round-robin, least-connections, random"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--embedded-origins",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend ADDR"), "{err}");
}

#[test]
fn the_config_file_upstream_table_configures_the_gateway_and_sighup_rereads_its_backends() {
    let a = Proc::start(&["origin", "--listen", "127.0.0.1:0", "--id", "a"]);
    let b = Proc::start(&["origin", "--listen", "127.0.0.1:0", "--id", "b"]);
    let (a_addr, b_addr) = (a.addr_after("listening on "), b.addr_after("listening on "));
    let dir = std::env::temp_dir().join(format!("shardpool-gateway-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("serve.toml");
    let config = |backend: SocketAddr, extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\npin = false\n[upstream]\nbackends = [\"{backend}\"]\n\
             lb = \"random\"\npool = \"sharded\"\nupstream_admin_listen = \"127.0.0.1:0\"\n{extra}"
        )
    };
    std::fs::write(&file, config(a_addr, "")).unwrap();
    // The variable beats the file (pool), the flag beats both (lb).
    let serve = Proc::start_env(
        &["serve", "--config", file.to_str().unwrap(), "--lb", "p2c"],
        &[("SHARDPOOL_POOL", "mutex"), ("SHARDPOOL_LB", "round-robin")],
    );
    let started = serve.line_with("gateway to ");
    assert!(
        started.contains(&a_addr.to_string())
            && started.contains("pool Mutex")
            && started.contains("lb power-of-two"),
        "{started}"
    );
    let admin = serve.addr_after("upstream admin on ");
    let grpc = serve.addr_after("serving gRPC on ");
    assert_eq!(say_hello(grpc, "Ada").unwrap(), "Hello, Ada!");

    std::fs::write(&file, config(b_addr, "")).unwrap();
    serve.signal(libc::SIGHUP);
    eventually("SIGHUP swaps a for b", || {
        let t = http(admin, "GET /backends");
        t.contains(&b_addr.to_string()) && !t.contains(&a_addr.to_string())
    });
    // A bad value keeps the current backends.
    std::fs::write(&file, config(a_addr, "pool_max_size = \"lots\"\n")).unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    let t = http(admin, "GET /backends");
    assert!(
        t.contains(&b_addr.to_string()) && !t.contains(&a_addr.to_string()),
        "{t}"
    );
    assert_eq!(say_hello(grpc, "Bob").unwrap(), "Hello, Bob!");
    drop(serve);

    // At start, a bad value is an error naming the key and what is expected.
    let out = Command::new(BIN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.pool_max_size") && err.contains("whole number"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
