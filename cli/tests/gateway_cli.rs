//! `shardpool origin` and `shardpool serve` in gateway mode as processes: external backends, the
//! backends file re-read on SIGHUP, the upstream admin endpoint, bad flags. Children are killed
//! in Drop; everything binds port 0 on loopback.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

#[path = "../../tests/common/grpc.rs"]
mod grpc;
#[path = "common/process.rs"]
mod process;
#[path = "../../tests/common/raw.rs"]
mod raw;

use grpc::say_hello_blocking;
use process::{Proc, fails_with, scratch_path};
use raw::http;

/// `shardpool origin --id ID` on a loopback port: the process and its address.
fn origin(id: &str) -> (Proc, SocketAddr) {
    let args = ["origin", "--listen", "127.0.0.1:0", "--id", id];
    let origin = Proc::start(&args, &[], Stdio::null());
    let addr = origin.addr_after("listening on ");
    (origin, addr)
}

/// Sends SIGHUP to `serve` and waits (up to 10 s) until its upstream admin endpoint lists `now`
/// and no longer `before`.
fn sighup_until_backends_change(
    serve: &Proc,
    admin: SocketAddr,
    before: SocketAddr,
    now: SocketAddr,
) {
    serve.signal(libc::SIGHUP);
    for _ in 0..500 {
        let t = http(admin, "GET /backends");
        if t.contains(&now.to_string()) && !t.contains(&before.to_string()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for SIGHUP to swap {before} for {now}");
}

#[test]
fn serve_with_external_origins_reloads_backends_on_sighup() {
    let ((_a, a_addr), (b, b_addr)) = (origin("a"), origin("b"));
    let file = scratch_path("backends.toml");
    std::fs::write(&file, format!("backends = [\"{a_addr}\"]\n")).unwrap();
    let serve = Proc::start(
        &[
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
        ],
        &[],
        Stdio::null(),
    );
    let admin = serve.addr_after("upstream admin on ");
    let grpc = serve.addr_after("serving gRPC on ");
    assert_eq!(say_hello_blocking(grpc, "Ada").unwrap(), "Hello, Ada!");
    let table = http(admin, "GET /backends");
    assert!(
        table.contains(&a_addr.to_string()) && !table.contains(&b_addr.to_string()),
        "{table}"
    );

    std::fs::write(&file, format!("backends = [\"{b_addr}\"]\n")).unwrap();
    sighup_until_backends_change(&serve, admin, a_addr, b_addr);
    // A broken file keeps the current backends.
    std::fs::write(&file, "backends = 7\n").unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(http(admin, "GET /backends").contains(&b_addr.to_string()));
    assert_eq!(say_hello_blocking(grpc, "Bob").unwrap(), "Hello, Bob!");
    let metrics = http(admin, "GET /metrics");
    assert!(
        metrics.contains(&format!(
            "shardpool_upstream_requests_total{{backend=\"{b_addr}\"}} 1"
        )),
        "{metrics}"
    );
    // Killing the only origin: UNAVAILABLE with a clear message, never a hang.
    drop(b);
    let err = say_hello_blocking(grpc, "Cy").unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&b_addr.to_string()), "{err:?}");
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[test]
fn serve_starts_embedded_origins_by_default_and_bad_flags_say_how_to_fix() {
    let serve = Proc::start(
        &["serve", "--listen", "127.0.0.1:0", "--pin", "false"],
        &[],
        Stdio::null(),
    );
    let grpc = serve.addr_after("serving gRPC on ");
    assert_eq!(say_hello_blocking(grpc, "Dee").unwrap(), "Hello, Dee!");
    drop(serve);

    fails_with(
        &["serve", "--listen", "127.0.0.1:0", "--lb", "fastest"],
        &["round-robin, least-connections, random"],
    );
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--embedded-origins",
            "0",
        ],
        &["--backend ADDR"],
    );
}

#[test]
fn the_config_file_upstream_table_configures_the_gateway_and_sighup_rereads_its_backends() {
    let ((_a, a_addr), (_b, b_addr)) = (origin("a"), origin("b"));
    let file = scratch_path("serve.toml");
    let config = |backend: SocketAddr, extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\npin = false\n[upstream]\nbackends = [\"{backend}\"]\n\
             lb = \"random\"\npool = \"sharded\"\nupstream_admin_listen = \"127.0.0.1:0\"\n{extra}"
        )
    };
    std::fs::write(&file, config(a_addr, "")).unwrap();
    // The variable beats the file (pool), the flag beats both (lb).
    let serve = Proc::start(
        &["serve", "--config", file.to_str().unwrap(), "--lb", "p2c"],
        &[("SHARDPOOL_POOL", "mutex"), ("SHARDPOOL_LB", "round-robin")],
        Stdio::null(),
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
    assert_eq!(say_hello_blocking(grpc, "Ada").unwrap(), "Hello, Ada!");

    std::fs::write(&file, config(b_addr, "")).unwrap();
    sighup_until_backends_change(&serve, admin, a_addr, b_addr);
    // A bad value keeps the current backends.
    std::fs::write(&file, config(a_addr, "pool_max_size = \"lots\"\n")).unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    let t = http(admin, "GET /backends");
    assert!(
        t.contains(&b_addr.to_string()) && !t.contains(&a_addr.to_string()),
        "{t}"
    );
    assert_eq!(say_hello_blocking(grpc, "Bob").unwrap(), "Hello, Bob!");
    drop(serve);

    // At start, a bad value is an error naming the key and what is expected.
    fails_with(
        &["serve", "--config", file.to_str().unwrap()],
        &["upstream.pool_max_size", "whole number"],
    );
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// Runs the binary with `args`: it must exit within 10 s (else it is killed and the test fails)
/// with a failure whose stderr contains every one of `expected`.
#[track_caller]
fn refused_at_start(args: &[&str], expected: &[&str]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    // Ordering: Relaxed, only a unique file name.
    let n = N.fetch_add(1, Ordering::Relaxed);
    let err = scratch_path(&format!("refused-{n}.err"));
    let file = std::fs::File::create(&err).unwrap();
    let mut p = Proc::start(args, &[], Stdio::from(file));
    let status = p.wait_exit(Duration::from_secs(10));
    let text = std::fs::read_to_string(&err).unwrap();
    std::fs::remove_dir_all(err.parent().unwrap()).unwrap();
    assert!(!status.success(), "{args:?} should fail: {text}");
    for e in expected {
        assert!(text.contains(e), "{args:?}: {text}");
    }
}

#[test]
fn serve_refuses_an_unsafe_control_plane_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let token = scratch_path("admin-token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token_path = token.to_str().unwrap();
    refused_at_start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_path,
        ],
        &["readable by every user", "chmod 600"],
    );
    // Non-loopback admin listeners without a token: the error names both fixes.
    for flag in ["--admin-listen", "--upstream-admin-listen"] {
        refused_at_start(
            &["serve", "--listen", "127.0.0.1:0", flag, "0.0.0.0:0"],
            &["--admin-token-file", "--admin-allow-insecure"],
        );
    }
    // A backend outside the allow-list (the SIGHUP test below covers the backends file).
    refused_at_start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "10.9.9.9:7001",
            "--backend-allow",
            "127.0.0.0/8",
        ],
        &["10.9.9.9:7001", "allow-list", "--backend-allow"],
    );
    refused_at_start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend-allow",
            "10.0.0.0/33",
        ],
        &["--backend-allow", "0 to 32"],
    );
    // The private token works: the bare admin port binds loopback and wants the token.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let serve = Proc::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pin",
            "false",
            "--admin-listen",
            "0",
            "--admin-token-file",
            token_path,
        ],
        &[],
        Stdio::null(),
    );
    let line = serve.line_with("serving gRPC on ");
    let admin: SocketAddr = line
        .split("admin /metrics on ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert!(admin.ip().is_loopback(), "{admin}");
    assert!(http(admin, "GET /metrics").starts_with("HTTP/1.1 401"));
    drop(serve);
    std::fs::remove_dir_all(token.parent().unwrap()).unwrap();
}

/// Values that would make the server useless are refused at start with the reason, and
/// negative numbers get a message about the value.
#[test]
fn serve_refuses_useless_values_at_start() {
    for (args, expected) in [
        (
            &["--request-timeout", "0s"][..],
            &["--request-timeout", "`off`"][..],
        ),
        (
            &["--upstream-timeout", "0s"][..],
            &["--upstream-timeout", "longer than 0"][..],
        ),
        (
            &["--max-message-size", "0"][..],
            &["--max-message-size", "at least 1 byte"][..],
        ),
        (
            &["--embedded-origins", "100000"][..],
            &[
                "--embedded-origins 100000",
                "more than this machine can run",
            ][..],
        ),
        (
            &["--upstream", "none", "--backend", "127.0.0.1:7001"][..],
            &["--upstream none", "--backend"][..],
        ),
        (
            &["--shards", "-2"][..],
            &["--shards", "`-2` is negative"][..],
        ),
        (
            &["--request-timeout", "-1s"][..],
            &["--request-timeout", "`-1s` is negative"][..],
        ),
        // Every upstream connect would fail at once.
        (
            &["--connect-timeout", "0s"][..],
            &["--connect-timeout", "longer than 0"][..],
        ),
        // Outside the kernel's TCP_KEEPIDLE range every connection's setsockopt fails (EINVAL).
        (
            &["--upstream-keepalive", "10h"][..],
            &["--upstream-keepalive", "1s to 32767s"][..],
        ),
        (
            &["--tcp-keepalive", "0.5s"][..],
            &["--tcp-keepalive", "1s to 32767s"][..],
        ),
        // Added to an Instant, it overflowed and panicked the shard on the first connection.
        (
            &["--handshake-timeout", "18000000000000000000"][..],
            &["--handshake-timeout", "longer than 10 years"][..],
        ),
        // Overflowed the descriptor arithmetic (a panic in a debug build).
        (
            &[
                "--upstream",
                "none",
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-max-connections",
                "18446744073709551615",
            ][..],
            &["too low to serve"][..],
        ),
        (
            &["--max-backends", "18446744073709551615"][..],
            &["too low to serve"][..],
        ),
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--pin", "false"];
        all.extend_from_slice(args);
        refused_at_start(&all, expected);
    }
}

#[test]
fn sighup_keeps_the_backends_when_the_file_lists_one_outside_the_allow_list() {
    let ((_a, a_addr), (_b, b_addr)) = (origin("a"), origin("b"));
    let file = scratch_path("allow-backends.toml");
    std::fs::write(&file, format!("backends = [\"{a_addr}\"]\n")).unwrap();
    let serve = Proc::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pin",
            "false",
            "--backends-file",
            file.to_str().unwrap(),
            "--backend-allow",
            "127.0.0.0/8",
            "--upstream-admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        Stdio::null(),
    );
    let admin = serve.addr_after("upstream admin on ");
    std::fs::write(
        &file,
        format!("backends = [\"10.9.9.9:7001\", \"{b_addr}\"]\n"),
    )
    .unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let t = http(admin, "GET /backends");
    assert!(
        t.contains(&a_addr.to_string())
            && !t.contains("10.9.9.9")
            && !t.contains(&b_addr.to_string()),
        "{t}"
    );
    // A list inside it is applied.
    std::fs::write(&file, format!("backends = [\"{b_addr}\"]\n")).unwrap();
    sighup_until_backends_change(&serve, admin, a_addr, b_addr);
    drop(serve);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}
