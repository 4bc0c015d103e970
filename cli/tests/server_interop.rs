//! `shardpool serve` as a process, driven by Python grpcio, h2load, a tonic client and plain
//! HTTP/1.1 (`/metrics`); knobs from flags, environment and TOML; SIGTERM.
//!
//! External tools (installed by the CI script; these tests fail, never skip, without them):
//! - `python3` with `pip install grpcio grpcio-tools protobuf`
//! - `h2load` from Debian/Ubuntu `nghttp2-client`

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "../../tests/common/grpc.rs"]
mod grpc;
#[path = "common/process.rs"]
mod process;
#[path = "../../tests/common/raw.rs"]
mod raw;

use grpc::say_hello_blocking;
use process::{Proc, fails_with, scratch_path};
use raw::{GOAWAY, frame_types, h2_connect, http};

/// A running `shardpool serve`; killed on drop.
struct ServeProcess {
    process: Proc,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
}

impl ServeProcess {
    /// Starts the binary with `args` (plus `--listen 127.0.0.1:0 --pin false`) and `envs`, and
    /// waits for its "serving gRPC on" line.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--pin", "false"];
        all.extend_from_slice(args);
        // stderr inherited: if the server does not start, its reason shows in the test output.
        let process = Proc::start(&all, envs, Stdio::inherit());
        // `ADDR` or `ADDR (admin /metrics on ADMIN)`.
        let rest = process.line_with("shardpool: serving gRPC on ");
        ServeProcess {
            addr: rest.split_whitespace().next().unwrap().parse().unwrap(),
            admin: rest
                .split("on ")
                .nth(1)
                .map(|a| a.trim_end_matches(')').parse().unwrap()),
            process,
        }
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop")
}

/// GET /metrics over HTTP/1.1; the body.
fn scrape(admin: SocketAddr) -> String {
    let text = http(admin, "GET /metrics");
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
    let req = scratch_path("h2load-request.bin");
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
    std::fs::remove_dir_all(req.parent().unwrap()).unwrap();
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
    let toml = scratch_path("serve.toml");
    std::fs::write(
        &toml,
        "max_message_size = \"100\"\nshards = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let big = |addr: SocketAddr, len: usize| {
        say_hello_blocking(addr, &"x".repeat(len))
            .map(|_| ())
            .map_err(|e| e.code())
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
    std::fs::remove_dir_all(toml.parent().unwrap()).unwrap();

    // A bad value is a clear CLI error, not a panic.
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--request-timeout",
            "soon",
        ],
        &["--request-timeout", "SHARDPOOL_REQUEST_TIMEOUT"],
    );
    fails_with(
        &["serve", "--listen", "127.0.0.1:0", "--shards", "100000"],
        &["--shards"],
    );
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    // This raw client never acknowledges the server's PING, so h2's graceful close waits for the
    // grace period (1 s) and the abort phase closes the connection.
    let mut server = ServeProcess::start(&["--shards", "2", "--shutdown-grace", "1s"], &[]);
    let addr = server.addr;
    // An open, idle HTTP/2 connection must not keep the server alive past the drain: it gets a
    // GOAWAY and closes.
    let mut idle = h2_connect(addr);
    // Wait for the server's first frame (its SETTINGS): the connection is then being served.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = vec![0u8; 9];
    idle.read_exact(&mut seen).unwrap();
    server.process.signal(libc::SIGTERM);
    let status = server.process.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "a stopped server must refuse connections"
    );
    // The idle connection saw the server's frames (SETTINGS, GOAWAY) and then EOF.
    let _ = idle.read_to_end(&mut seen);
    assert!(
        frame_types(&seen).contains(&GOAWAY),
        "no GOAWAY frame in {seen:?}"
    );
}
