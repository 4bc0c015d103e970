//! `shardpool bench` end to end against a minimal gRPC Greeter written here with tokio + h2 (so
//! these tests do not depend on the server layer): a healthy target, a target that fails calls
//! with several statuses, a target that stalls (coordinated-omission correction), a target that
//! is down, and bad flags. Every run is a fraction of a second to about a second of load.

use bytes::Bytes;
use shardpool::bench::{self, BenchConfig, Load, Stop};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[path = "common/process.rs"]
mod process;
#[path = "../../tests/common/raw.rs"]
mod raw;

use process::{Proc, fails_with, scratch_path, shardpool};
use raw::grpc_frame;

/// How the test server answers `SayHello`.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Always OK.
    Healthy,
    /// Call n: n % 3 == 0 trailers-only UNAVAILABLE, n % 3 == 1 INVALID_ARGUMENT after the
    /// headers, otherwise OK.
    Failing,
    /// OK, but call number `at` takes `stall` before answering.
    StallOnce { at: u64, stall: Duration },
}

struct TestServer {
    addr: SocketAddr,
}

/// `HelloReply { message }` encoded by hand: field 1, wire type 2.
fn hello_reply(message: &str) -> Vec<u8> {
    let mut out = vec![0x0a, message.len() as u8];
    out.extend_from_slice(message.as_bytes());
    out
}

/// `ShardPoolMetrics { checkouts: tag 14, creates: tag 7, steals: tag 6 }` by hand (varints).
fn pool_metrics(checkouts: u64, creates: u64, steals: u64) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut total = Vec::new();
    for (tag, value) in [(14u64, checkouts), (7, creates), (6, steals)] {
        varint(&mut total, tag << 3);
        varint(&mut total, value);
    }
    // PoolMetricsResponse { total: tag 2, length-delimited }.
    let mut out = vec![0x12];
    varint(&mut out, total.len() as u64);
    out.extend_from_slice(&total);
    out
}

fn trailers(status: u32, message: &str) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", status.into());
    if !message.is_empty() {
        map.insert("grpc-message", message.parse().unwrap());
    }
    map
}

/// Response headers of a gRPC answer: HTTP 200, `content-type: application/grpc`.
fn ok_head() -> http::Response<()> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

/// A trailers-only answer: [`ok_head`] with the gRPC status (and message, if any) in it.
fn trailers_only(status: u32, message: &str) -> http::Response<()> {
    let mut head = ok_head();
    head.headers_mut().extend(trailers(status, message));
    head
}

async fn handle(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    behaviour: Behaviour,
    calls: Arc<AtomicU64>,
) -> Result<(), h2::Error> {
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if path == "/shardpool.v1.Admin/PoolMetrics" {
        // Pretend every SayHello was a checkout, with 3 connections ever created and 1 steal.
        let served = calls.load(Ordering::Relaxed);
        let mut send = respond.send_response(ok_head(), false)?;
        send.send_data(
            grpc_frame(&pool_metrics(served, 3, served / 100), false),
            false,
        )?;
        return send.send_trailers(trailers(0, ""));
    }
    if path != "/helloworld.Greeter/SayHello" {
        respond.send_response(trailers_only(12, ""), true)?;
        return Ok(());
    }
    let n = calls.fetch_add(1, Ordering::Relaxed);
    match behaviour {
        Behaviour::Failing if n.is_multiple_of(3) => {
            respond.send_response(trailers_only(14, "backend%20down"), true)?;
            return Ok(());
        }
        Behaviour::Failing if n % 3 == 1 => {
            let send = respond.send_response(ok_head(), false)?;
            let mut send = send;
            return send.send_trailers(trailers(3, "bad name"));
        }
        Behaviour::StallOnce { at, stall } if n == at => tokio::time::sleep(stall).await,
        _ => {}
    }
    let mut send = respond.send_response(ok_head(), false)?;
    send.send_data(grpc_frame(&hello_reply("Hello shardpool"), false), false)?;
    send.send_trailers(trailers(0, ""))
}

impl TestServer {
    /// Starts the server on 127.0.0.1:0 in a background thread (it lives as long as the test
    /// process).
    fn start(behaviour: Behaviour) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let calls = Arc::new(AtomicU64::new(0));
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let calls = Arc::clone(&calls);
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(socket).await else {
                            return;
                        };
                        while let Some(Ok((request, respond))) = conn.accept().await {
                            let calls = Arc::clone(&calls);
                            tokio::spawn(handle(request, respond, behaviour, calls));
                        }
                    });
                }
            });
        });
        TestServer { addr }
    }
}

/// `shardpool bench --target TARGET ARGS`, which must succeed; its stdout.
fn bench_ok(target: SocketAddr, args: &[&str]) -> String {
    let target = target.to_string();
    let mut all = vec!["bench", "--target", &target];
    all.extend_from_slice(args);
    let output = shardpool(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An open loop at 400 req/s through one connection with one stream slot (no warmup, no pool
/// metrics), run in-process for `run_for` against a server whose call number `at` takes `stall`.
/// Its config and result; no call may fail.
fn open_loop_with_one_stall(
    at: u64,
    stall: Duration,
    run_for: Duration,
) -> (BenchConfig, bench::RunResult) {
    let server = TestServer::start(Behaviour::StallOnce { at, stall });
    let config = BenchConfig::new(server.addr)
        .connections(1)
        .streams(1)
        .threads(1)
        .pin(false)
        .warmup(Duration::ZERO)
        .pool_metrics(false)
        .load(Load::Open { rate: 400.0 })
        .stop(Stop::Duration(run_for));
    let result = bench::run(&config, &mut |_| {}).unwrap();
    assert_eq!(result.failed(), 0);
    (config, result)
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn closed_loop_against_a_healthy_server() {
    let server = TestServer::start(Behaviour::Healthy);
    let json = scratch_path("healthy.json");
    let svg = scratch_path("healthy.svg");
    let stdout = bench_ok(
        server.addr,
        &[
            "-c",
            "4",
            "-m",
            "4",
            "--requests",
            "2000",
            "--warmup",
            "200ms",
            "--threads",
            "2",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("requests   2000  ok 2000  failed 0"),
        "{stdout}"
    );
    assert!(stdout.contains("p99.9"), "{stdout}");
    // The test server answers PoolMetrics: checkouts = calls served, 3 creates ever.
    assert!(stdout.contains("pool       reuse"), "{stdout}");

    let report = read_json(&json);
    assert_eq!(report["mode"], "closed");
    // Where, when and how the report was made.
    let run = &report["run"];
    let commit = run["commit"].as_str().unwrap();
    assert!(commit == "unknown" || commit.len() == 12, "{run}");
    assert!(run["date_utc"].as_str().unwrap().ends_with('Z'), "{run}");
    assert!(run["cpus"].as_u64().unwrap() >= 1, "{run}");
    assert!(!run["host"].as_str().unwrap().is_empty(), "{run}");
    assert!(
        run["command_line"]
            .as_str()
            .unwrap()
            .contains("--requests 2000"),
        "{run}"
    );
    assert_eq!(report["requests"], 2000);
    assert_eq!(report["ok"], 2000);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["connections"], 4);
    assert_eq!(report["streams"], 4);
    assert_eq!(report["threads"], 2);
    assert!(report["qps"].as_f64().unwrap() > 0.0);
    let latency = &report["latency"];
    assert_eq!(latency["count"], 2000);
    let (min, p50, p99, max) = (
        latency["min_us"].as_f64().unwrap(),
        latency["p50_us"].as_f64().unwrap(),
        latency["p99_us"].as_f64().unwrap(),
        latency["max_us"].as_f64().unwrap(),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p99 && p99 <= max,
        "{latency}"
    );
    // Checkouts counted by the server during the measured phase: the 2000 measured calls (the
    // "before" snapshot is taken at the phase start, so a few warmup calls may be included).
    let pool = &report["pool"];
    let checkouts = pool["checkouts"].as_u64().unwrap();
    assert!((1900..=2100).contains(&checkouts), "{pool}");
    assert_eq!(pool["creates"], 0);
    assert_eq!(pool["reuse_rate"], 1.0);

    let svg_path = svg;
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 1);
    let _ = std::fs::remove_dir_all(json.parent().unwrap());
    let _ = std::fs::remove_dir_all(svg_path.parent().unwrap());
}

#[test]
fn failed_calls_are_counted_by_status_and_fail_the_run_beyond_max_error_rate() {
    let server = TestServer::start(Behaviour::Failing);
    let json = scratch_path("failing.json");
    let target = server.addr.to_string();
    let base = [
        "bench",
        "--target",
        &target,
        "-c",
        "2",
        "-m",
        "4",
        "--warmup",
        "0s",
        "--quiet",
        "--no-pool-metrics",
    ];
    let mut args = base.to_vec();
    args.extend(["--requests", "3000", "--json", json.to_str().unwrap()]);
    // Two calls in three fail: beyond the default --max-error-rate 0, the run fails, after the
    // table and the JSON were written.
    let output = shardpool(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("2000 of 3000 calls failed") && stderr.contains("--max-error-rate"),
        "{stderr}"
    );
    assert!(stdout.contains("UNAVAILABLE"), "{stdout}");
    assert!(stdout.contains("backend down"), "{stdout}");
    assert!(stdout.contains("INVALID_ARGUMENT"), "{stdout}");
    assert!(stdout.contains("bad name"), "{stdout}");

    let report = read_json(&json);
    assert_eq!(report["requests"], 3000);
    assert_eq!(report["ok"], 1000);
    assert_eq!(report["failed"], 2000);
    let failures = report["failures"].as_array().unwrap();
    let count = |status: &str| {
        failures
            .iter()
            .find(|f| f["status"] == status)
            .unwrap_or_else(|| panic!("no {status} in {failures:?}"))
    };
    assert_eq!(count("INVALID_ARGUMENT")["count"], 1000);
    assert_eq!(count("INVALID_ARGUMENT")["side"], "server");
    assert_eq!(count("UNAVAILABLE")["count"], 1000);
    assert_eq!(count("UNAVAILABLE")["code"], 14);
    assert_eq!(count("UNAVAILABLE")["example"], "backend down");
    assert_eq!(
        report["latency"]["count"], 1000,
        "latency counts only OK calls"
    );
    let _ = std::fs::remove_dir_all(json.parent().unwrap());

    // 2 in 3 is within 70% and beyond 0.6.
    let mut args = base.to_vec();
    args.extend(["--requests", "300", "--max-error-rate", "70%"]);
    let output = shardpool(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut args = base.to_vec();
    args.extend(["--requests", "300", "--max-error-rate", "0.6"]);
    fails_with(&args, &["200 of 300 calls failed"]);
}

#[test]
fn a_closed_stdout_or_a_missing_directory_is_not_a_panic() {
    let server = TestServer::start(Behaviour::Healthy);
    let target = server.addr.to_string();
    let short = |requests: &'static str| {
        [
            "bench",
            "--target",
            target.as_str(),
            "-c",
            "1",
            "--requests",
            requests,
            "--warmup",
            "0s",
            "--quiet",
        ]
    };
    let json = scratch_path("piped.json");
    // `shardpool bench ... | head -0`: the reader is gone before the table is printed.
    let mut child = std::process::Command::new(process::BIN)
        .args(short("200"))
        .args(["--json", json.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("panicked"),
        "{:?}\n{stderr}",
        output.status
    );
    assert_eq!(read_json(&json)["ok"], 200, "the JSON is still written");
    let _ = std::fs::remove_dir_all(json.parent().unwrap());

    // A --json (or --svg) path in a directory that does not exist is refused, not created.
    let dir = std::env::temp_dir().join(format!("shardpool-no-such-dir-{}", std::process::id()));
    for flag in ["--json", "--svg"] {
        let path = dir.join("out.file");
        let mut args = short("50").to_vec();
        args.extend([flag, path.to_str().unwrap()]);
        fails_with(&args, &[flag, "does not exist", "mkdir -p"]);
        assert!(!dir.exists(), "{flag} created {}", dir.display());
    }
}

#[test]
fn a_target_that_is_down_is_a_clear_error() {
    // A port that was just free: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    fails_with(
        &["bench", "--target", &target, "--duration", "1s", "--quiet"],
        &[&format!("cannot connect to {target}"), "Start a server"],
    );
}

#[test]
fn bad_flags_name_the_fix() {
    for (args, expected) in [
        (
            &["--connections", "0"][..],
            "--connections must be at least 1",
        ),
        (&["--streams", "0"][..], "--streams must be at least 1"),
        (
            &["--rate", "0"][..],
            "'--rate <RATE>': `0` requests per second: give more than 0",
        ),
        // Beyond any machine, and an overflow in the schedule (a panic before).
        (&["--rate", "1e30"][..], "at most 100000000"),
        (&["--duration", "soon"][..], "write it like 10s"),
        (&["--requests", "0"][..], "--requests must be at least 1"),
        (&["--target", "nowhere"][..], "give it as HOST:PORT"),
        // Negative values reach their parser (not clap's "unexpected argument '-5'").
        (&["--connections", "-5"][..], "`-5` is negative"),
        (&["-c", "-5"][..], "`-5` is negative"),
        (&["--duration", "-1s"][..], "`-1s` is negative"),
    ] {
        let mut all = vec!["bench", "--quiet"];
        all.extend_from_slice(args);
        fails_with(&all, &[expected]);
    }
}

/// More connections than the descriptor limit allows are refused before any is opened, with
/// the limit and the fix (the target is down: without the check this fails on the connect).
#[test]
fn more_connections_than_the_descriptor_limit_are_refused() {
    let err = scratch_path("bench-nofile.err");
    let file = std::fs::File::create(&err).unwrap();
    let mut p = Proc::start_with_nofile(
        256,
        &[
            "bench",
            "--target",
            "127.0.0.1:1",
            "-c",
            "1000",
            "-d",
            "1s",
            "--quiet",
        ],
        &[],
        std::process::Stdio::from(file),
    );
    let status = p.wait_exit(Duration::from_secs(20));
    let text = std::fs::read_to_string(&err).unwrap();
    std::fs::remove_dir_all(err.parent().unwrap()).unwrap();
    assert!(!status.success(), "{text}");
    for want in ["--connections 1000", "descriptor limit (256)", "ulimit -n"] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

/// Open loop at 400 req/s through a single stream slot; call 100 stalls 300 ms. Measured from
/// the intended start, every call scheduled during the stall waits for it (~120 calls = ~30 %
/// of the run), so the corrected p90 is hundreds of ms; the service time (from the send) sees
/// one slow call and stays low.
#[test]
fn open_loop_latency_is_corrected_for_coordinated_omission() {
    let (config, result) =
        open_loop_with_one_stall(100, Duration::from_millis(300), Duration::from_secs(1));
    assert_eq!(result.unsent, 0);
    let report = bench::Report::new(&config, &result);
    assert_eq!(report.mode, "open");
    // 400 req/s for 1 s, give or take scheduling at the edges.
    assert!(
        (380..=420).contains(&report.requests),
        "{}",
        report.requests
    );
    assert!(report.latency.max_us >= 290_000.0, "{:?}", report.latency);
    assert!(report.latency.p90_us >= 100_000.0, "{:?}", report.latency);
    assert!(
        report.service_time.max_us >= 290_000.0,
        "{:?}",
        report.service_time
    );
    assert!(
        report.service_time.p90_us < 100_000.0,
        "{:?}",
        report.service_time
    );
}

/// Open loop far behind its schedule: call 5 stalls 1.5 s, longer than the run (0.2 s) plus the
/// grace period (1 s + 20 ms). Requests due during the run that were never sent are counted as
/// unsent, not silently dropped: ok + unsent = the 80 requests the schedule had due.
#[test]
fn open_loop_counts_requests_it_could_not_send() {
    let (config, result) =
        open_loop_with_one_stall(5, Duration::from_millis(1500), Duration::from_millis(200));
    assert_eq!(
        result.ok + result.unsent,
        80,
        "ok {} unsent {}",
        result.ok,
        result.unsent
    );
    assert!(result.unsent >= 70, "unsent {}", result.unsent);
    let table = bench::Report::new(&config, &result).to_table();
    assert!(table.contains("client fell behind the schedule"), "{table}");
}
