//! `shardpool serve` as a process, driven by Python grpcio, h2load, a tonic client and plain
//! HTTP/1.1 (`/metrics`); knobs from flags, environment and TOML; SIGTERM.
//!
//! External tools (installed by the CI script; these tests fail, never skip, without them):
//! - `python3` with `pip install grpcio grpcio-tools protobuf`
//! - `h2load` from Debian/Ubuntu `nghttp2-client`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// A running `shardpool serve`; killed on drop.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    stdout_rest: mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Starts the binary with `args` (plus `--listen 127.0.0.1:0 --pin false`) and `envs`, and
    /// waits for its "serving gRPC on" line.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardpool"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--pin", "false"])
            .args(args)
            .envs(envs.iter().copied())
            .env("SHARDPOOL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the shardpool binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ServeProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            stdout_rest: rx,
        };
        loop {
            let line = server
                .stdout_rest
                .recv_timeout(STARTUP_LIMIT)
                .expect("shardpool serve did not print its address in time (see its stderr above)");
            if let Some(rest) = line.strip_prefix("shardpool: serving gRPC on ") {
                let mut parts = rest.split_whitespace();
                server.addr = parts.next().unwrap().parse().unwrap();
                server.admin = rest
                    .split("on ")
                    .nth(1)
                    .map(|a| a.trim_end_matches(')').parse().unwrap());
                return server;
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of our own child process has no memory-safety concerns.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "shardpool serve did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// GET /metrics over HTTP/1.1; the body.
fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Sum of the samples of one metric (all label sets that contain `label_filter`).
fn metric_sum(text: &str, name: &str, label_filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label_filter))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

/// Runs tests/interop/grpc_client.py against `server`; `pool_shards` is what PoolMetrics must
/// report (`None`: the server has no pool and must answer FAILED_PRECONDITION).
fn python_client(server: &ServeProcess, pool_shards: Option<usize>) {
    let mut cmd = Command::new("python3");
    cmd.arg(interop_dir().join("grpc_client.py")).args([
        "--addr",
        &server.addr.to_string(),
        "--max-message-size",
        "65536",
    ]);
    if let Some(n) = pool_shards {
        cmd.args(["--expect-pool", &n.to_string()]);
    }
    let out = cmd.output().expect(
        "python3 not found: install Python 3 and `pip install grpcio grpcio-tools protobuf`",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python interop failed ({}); if a package is missing: pip install grpcio grpcio-tools \
         protobuf\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}

#[test]
fn python_grpcio_client_interoperates_with_the_pooled_gateway() {
    // Default `serve`: SayHello goes through pooled upstream connections (gateway mode).
    let server = ServeProcess::start(&["--shards", "2", "--max-message-size", "64KiB"], &[]);
    python_client(&server, Some(2));
}

#[test]
fn python_grpcio_client_interoperates_with_the_direct_greeter() {
    let server = ServeProcess::start(
        &[
            "--shards",
            "2",
            "--max-message-size",
            "64KiB",
            "--upstream",
            "none",
        ],
        &[],
    );
    python_client(&server, None);
}

#[test]
fn h2load_run_has_zero_errors_and_every_call_is_ok() {
    let server = ServeProcess::start(&["--shards", "2", "--admin-listen", "127.0.0.1:0"], &[]);
    // helloworld.HelloRequest{name: "h2load"} with the 5-byte gRPC prefix.
    let mut body = vec![0, 0, 0, 0, 8, 0x0a, 6];
    body.extend_from_slice(b"h2load");
    let req = std::env::temp_dir().join(format!("shardpool-h2load-{}.bin", std::process::id()));
    std::fs::write(&req, &body).unwrap();
    let n = 20_000;
    let out = Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", "16", "-m", "16", "-t", "1"])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
        ])
        .arg(&req)
        .arg(format!(
            "http://{}/helloworld.Greeter/SayHello",
            server.addr
        ))
        .output()
        .expect("h2load not found: install it with `apt-get install nghttp2-client`");
    std::fs::remove_file(&req).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed:\n{text}");
    assert!(
        text.contains(&format!("requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored, 0 timeout")),
        "h2load reported errors:\n{text}"
    );
    // h2load checks HTTP status only: check the gRPC status on the server side.
    let metrics = scrape(server.admin.expect("admin address"));
    let ok = metrics_sum_ok(&metrics);
    assert_eq!(ok, n, "calls answered OK per /metrics:\n{metrics}");
    assert_eq!(metric_sum(&metrics, "shardpool_server_calls_total", ""), n);
}

fn metrics_sum_ok(metrics: &str) -> u64 {
    metric_sum(metrics, "shardpool_server_calls_total", "code=\"OK\"")
}

#[test]
fn knobs_come_from_flags_env_and_toml_in_that_order() {
    let dir = std::env::temp_dir().join(format!("shardpool-knobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("serve.toml");
    std::fs::write(
        &toml,
        "max_message_size = \"100\"\nshards = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let big = |addr: SocketAddr, len: usize| {
        rt.block_on(async move {
            let mut grpc = tonic::client::Grpc::new(
                tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
            grpc.ready().await.unwrap();
            let req = shardpool::server::proto::HelloRequest {
                name: "x".repeat(len),
            };
            let codec =
                tonic_prost::ProstCodec::<_, shardpool::server::proto::HelloReply>::default();
            let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
            grpc.unary(tonic::Request::new(req), path, codec)
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        })
    };
    let cfg = toml.to_str().unwrap();
    // File only: limit 100 bytes.
    let s = ServeProcess::start(&["--config", cfg], &[]);
    assert_eq!(big(s.addr, 200), Err(tonic::Code::ResourceExhausted));
    assert_eq!(big(s.addr, 50), Ok(()));
    assert!(scrape(s.admin.unwrap()).contains("shard=\"0\""));
    drop(s);
    // Environment beats the file.
    let s = ServeProcess::start(
        &["--config", cfg],
        &[("SHARDPOOL_MAX_MESSAGE_SIZE", "1KiB")],
    );
    assert_eq!(big(s.addr, 200), Ok(()));
    assert_eq!(big(s.addr, 2000), Err(tonic::Code::ResourceExhausted));
    drop(s);
    // The flag beats the environment.
    let s = ServeProcess::start(
        &["--config", cfg, "--max-message-size", "10"],
        &[("SHARDPOOL_MAX_MESSAGE_SIZE", "1KiB")],
    );
    assert_eq!(big(s.addr, 50), Err(tonic::Code::ResourceExhausted));
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();

    // A bad value is a clear CLI error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_shardpool"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--request-timeout",
            "soon",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--request-timeout") && err.contains("SHARDPOOL_REQUEST_TIMEOUT"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shardpool"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "100000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards"));
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    // This raw client never acknowledges the server's PING, so h2's graceful close waits for the
    // grace period (1 s) and the abort phase closes the connection.
    let mut server = ServeProcess::start(&["--shards", "2", "--shutdown-grace", "1s"], &[]);
    let addr = server.addr;
    // An open, idle HTTP/2 connection must not keep the server alive past the drain: it gets a
    // GOAWAY and closes.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    // Wait for the server's first frame (its SETTINGS): the connection is then being served.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = vec![0u8; 9];
    idle.read_exact(&mut seen).unwrap();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "a stopped server must refuse connections"
    );
    // The idle connection saw the server's frames (SETTINGS, GOAWAY) and then EOF.
    let _ = idle.read_to_end(&mut seen);
    let mut goaway = false;
    let mut pos = 0;
    while pos + 9 <= seen.len() {
        let len = u32::from_be_bytes([0, seen[pos], seen[pos + 1], seen[pos + 2]]) as usize;
        goaway |= seen[pos + 3] == 0x07;
        pos += 9 + len;
    }
    assert!(goaway, "no GOAWAY frame in {seen:?}");
}
