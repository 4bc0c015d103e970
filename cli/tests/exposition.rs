//! What `shardpool serve` exposes to operators, checked from outside the process: the Prometheus
//! text of the admin `/metrics` and of the upstream admin `/metrics` (parsed by `promtool check
//! metrics`, plus the rules that parser does not check), and the log on stderr (no ANSI colour
//! when stderr is not a terminal or `NO_COLOR` is set; colour on a terminal otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "../../tests/common/grpc.rs"]
mod grpc;
#[path = "common/process.rs"]
mod process;
#[path = "../../tests/common/raw.rs"]
mod raw;

use grpc::say_hello_blocking;
use process::{BIN, Proc};
use raw::http;

/// The body of `GET /metrics` from `addr`; panics unless it is a 200 with the Prometheus text
/// content type.
fn scrape(addr: SocketAddr) -> String {
    let response = http(addr, "GET /metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{response}");
    assert!(head.contains("text/plain; version=0.0.4"), "{response}");
    body.to_string()
}

/// The `promtool` to run: `SHARDPOOL_PROMTOOL` (scripts/test-all.sh sets it, after taking
/// promtool out of Debian's `prometheus` package), else `promtool` on the PATH; `None` (and a note
/// on stderr) when neither runs, which fails the test when `SHARDPOOL_PROMTOOL` or `CI` is set.
fn promtool() -> Option<String> {
    let given = std::env::var("SHARDPOOL_PROMTOOL").ok();
    let tool = given.clone().unwrap_or_else(|| "promtool".into());
    let found = Command::new(&tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(tool);
    }
    assert!(
        given.is_none() && std::env::var_os("CI").is_none(),
        "promtool ({tool}) does not run; scripts/test-all.sh fetches it (see its prerequisites)"
    );
    eprintln!(
        "SKIPPED the promtool part: promtool is not installed (scripts/test-all.sh fetches it, \
         or Debian: apt-get install prometheus); the other checks still run"
    );
    None
}

/// Runs `promtool check metrics` on `text`: it must parse and pass every lint (HELP present,
/// counters end in `_total`, base units, no abbreviated units, ...).
fn promtool_accepts(what: &str, text: &str) {
    let Some(tool) = promtool() else { return };
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics rejects {what} ({}):\n{report}\n--- the text:\n{text}",
        out.status
    );
}

/// The rules `promtool` does not check (its parser takes a family without TYPE, and a sum over
/// a label cannot see a series that already is the sum): every family has exactly one HELP and
/// one TYPE, both before its samples; every sample belongs to the family declared last; no
/// family comes twice, no series comes twice, and no `shard="total"` series sits beside the
/// per-shard ones.
fn follows_the_rules(what: &str, text: &str) {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!doc.trim().is_empty(), "{what}: empty HELP for {name}");
            assert!(
                help.insert(name.to_string()),
                "{what}: second HELP for {name}"
            );
            assert!(
                !types.contains_key(name),
                "{what}: HELP after TYPE or a family twice: {name}"
            );
            current = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(
                current.as_deref(),
                Some(name),
                "{what}: TYPE {name} without its HELP right before it"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{what}: second TYPE for {name}"
            );
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (key, value) = line.rsplit_once(' ').expect("`series value`");
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{what}: {line}: {e}"));
            let name = key.split('{').next().unwrap();
            assert_eq!(
                current.as_deref(),
                Some(name),
                "{what}: sample {line} outside its family (HELP and TYPE first)"
            );
            assert!(types.contains_key(name), "{what}: {name} has no TYPE");
            assert!(!key.contains("shard=\"total\""), "{what}: {line}");
            assert!(series.insert(key.to_string()), "{what}: {key} twice");
            if types[name] == "counter" {
                assert!(name.ends_with("_total"), "{what}: counter {name}");
            }
        }
    }
    assert_eq!(
        help.len(),
        types.len(),
        "{what}: HELP and TYPE do not pair up"
    );
    assert!(!types.is_empty(), "{what}: no metric at all");
}

fn check(what: &str, text: &str) {
    promtool_accepts(what, text);
    follows_the_rules(what, text);
}

/// `shardpool origin` on a loopback port.
fn origin() -> (Proc, SocketAddr) {
    let args = ["origin", "--listen", "127.0.0.1:0", "--id", "x"];
    let origin = Proc::start(&args, &[], Stdio::null());
    let addr = origin.addr_after("listening on ");
    (origin, addr)
}

/// `serve` with `extra` flags, both admin listeners on loopback; a few calls so that every
/// labelled family has series; then both `/metrics` checked.
fn serve_and_check(what: &str, extra: &[&str], gateway: bool) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pin",
        "false",
        "--shards",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    if gateway {
        args.extend(["--upstream-admin-listen", "127.0.0.1:0"]);
    }
    args.extend(extra);
    let serve = Proc::start(&args, &[], Stdio::null());
    let upstream_admin = gateway.then(|| serve.addr_after("upstream admin on "));
    let line = serve.line_with("serving gRPC on ");
    let grpc: SocketAddr = line.split_whitespace().next().unwrap().parse().unwrap();
    let admin: SocketAddr = line
        .split("admin /metrics on ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    for i in 0..8 {
        assert_eq!(
            say_hello_blocking(grpc, &format!("n{i}")).unwrap(),
            format!("Hello, n{i}!")
        );
    }
    let text = scrape(admin);
    check(&format!("{what}: admin /metrics"), &text);
    assert!(text.contains("shardpool_server_calls_total{"), "{text}");
    if gateway {
        assert!(text.contains("shardpool_pool_checkouts_total{"), "{text}");
        assert!(text.contains("\nshardpool_pool_connections "), "{text}");
    }
    if let Some(upstream_admin) = upstream_admin {
        let text = scrape(upstream_admin);
        check(&format!("{what}: upstream admin /metrics"), &text);
        assert!(
            text.contains("shardpool_upstream_requests_total{backend="),
            "{text}"
        );
    }
}

#[test]
fn metrics_pass_promtool_and_the_exposition_rules() {
    // The default: a gateway to embedded origins through the sharded pool.
    serve_and_check("embedded origins (default)", &[], true);
    // A gateway to an external origin.
    let (_origin, addr) = origin();
    let backend = addr.to_string();
    serve_and_check("external backend", &["--backend", &backend], true);
    // No upstream: the server's own metrics alone.
    serve_and_check("--upstream none", &["--upstream", "none"], false);
}

/// Starts `serve` with `SHARDPOOL_LOG=info`, stderr on `stderr`, `env` added; waits until it
/// serves and stops it with SIGTERM.
fn serve_and_stop(env: &[(&str, &str)], stderr: Stdio) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pin",
        "false",
        "--shards",
        "1",
        "--upstream",
        "none",
        "--shutdown-grace",
        "100ms",
    ])
    .env("SHARDPOOL_LOG", "info")
    .env_remove("NO_COLOR")
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .stderr(stderr);
    let mut child = cmd.spawn().expect("start shardpool");
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("serving gRPC on ") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "serve exited early");
        seen.extend_from_slice(&buf[..n]);
    }
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // The signal may come before the handler is installed (right after that line) and end the
    // process at once: the start-up lines (descriptor limit and reserve) are logged either way.
    child.wait().unwrap();
}

/// The log written to a pipe.
fn log_through_pipe(env: &[(&str, &str)]) -> Vec<u8> {
    let (mut reader, writer) = std::io::pipe().unwrap();
    serve_and_stop(env, Stdio::from(writer));
    let mut log = Vec::new();
    reader.read_to_end(&mut log).unwrap();
    log
}

/// The log written to a pseudo-terminal.
fn log_through_terminal(env: &[(&str, &str)]) -> Vec<u8> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes the two descriptors it opens into the two ints we own; the name,
    // termios and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and nothing else owns them.
    let (master, slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    // Read the terminal while the child writes, so it never blocks on a full buffer.
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last slave descriptor is closed: the end of the log.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            log.extend_from_slice(&buf[..n]);
        }
        log
    });
    // `Stdio::from` takes the slave; the child's copy closes when it exits.
    serve_and_stop(env, Stdio::from(slave));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "terminal never closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    reader.join().unwrap()
}

fn has_escape(log: &[u8]) -> bool {
    log.contains(&0x1b)
}

#[test]
fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    let piped = log_through_pipe(&[]);
    let text = String::from_utf8_lossy(&piped);
    assert!(text.contains("INFO"), "no log line to check:\n{text}");
    assert!(
        !has_escape(&piped),
        "colour codes in a piped log:\n{text:?}"
    );

    let tty = log_through_terminal(&[]);
    let text = String::from_utf8_lossy(&tty);
    assert!(text.contains("INFO"), "no log line to check:\n{text}");
    assert!(has_escape(&tty), "no colour on a terminal:\n{text:?}");

    for value in ["1", "true"] {
        let tty = log_through_terminal(&[("NO_COLOR", value)]);
        let text = String::from_utf8_lossy(&tty);
        assert!(text.contains("INFO"), "no log line to check:\n{text}");
        assert!(
            !has_escape(&tty),
            "colour codes with NO_COLOR={value}:\n{text:?}"
        );
    }
    // An empty NO_COLOR does not count (no-color.org).
    let tty = log_through_terminal(&[("NO_COLOR", "")]);
    assert!(has_escape(&tty), "{:?}", String::from_utf8_lossy(&tty));
}
