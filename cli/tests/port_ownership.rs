//! One process owns its port: a second `shardpool serve` (or `origin`) on a port already in use
//! exits with an error naming `--reuse-port-shared` instead of silently joining the kernel's
//! SO_REUSEPORT group; with the flag it joins on purpose. Children are killed in Drop; everything
//! binds port 0 on loopback first.

use std::fs::File;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

#[path = "common/process.rs"]
mod process;

use process::{Proc, scratch_path};

/// How long a refused second process may take to exit.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// `shardpool serve` on one shard, without gateway, with `extra` flags and the environment `env`.
fn serve(listen: &str, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Proc {
    let mut args = vec![
        "serve",
        "--listen",
        listen,
        "--shards",
        "1",
        "--pin",
        "false",
        "--upstream",
        "none",
    ];
    args.extend_from_slice(extra);
    Proc::start(&args, env, stderr)
}

/// Runs `start` with its stderr in a scratch file; it must exit non-zero within 10 s. Its stderr.
#[track_caller]
fn refused(name: &str, start: impl FnOnce(Stdio) -> Proc) -> String {
    let path = scratch_path(name);
    let mut p = start(Stdio::from(File::create(&path).unwrap()));
    let status = p.wait_exit(EXIT_LIMIT);
    let stderr = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(
        !status.success(),
        "the second process should fail: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_second_serve_on_a_port_in_use_is_refused_unless_shared() {
    let first = serve(
        "127.0.0.1:0",
        &["--admin-listen", "127.0.0.1:0"],
        &[],
        Stdio::null(),
    );
    let line = first.line_with("serving gRPC on ");
    let grpc: SocketAddr = line.split_whitespace().next().unwrap().parse().unwrap();
    let admin = line.split("admin /metrics on ").nth(1).unwrap();
    let admin: SocketAddr = admin.trim_end_matches(')').parse().unwrap();

    let port = grpc.to_string();
    let err = refused("serve-grpc.err", |e| serve(&port, &[], &[], e));
    assert!(
        err.contains(&format!("cannot bind {grpc}"))
            && err.contains("already in use")
            && err.contains("--reuse-port-shared"),
        "{err}"
    );

    // The admin listener is guarded the same way.
    let admin_port = admin.to_string();
    let err = refused("serve-admin.err", |e| {
        serve("127.0.0.1:0", &["--admin-listen", &admin_port], &[], e)
    });
    assert!(
        err.contains("admin listener") && err.contains("--reuse-port-shared"),
        "{err}"
    );

    // Deliberate sharing: the bare flag, and the environment variable.
    let second = serve(&port, &["--reuse-port-shared"], &[], Stdio::null());
    assert_eq!(second.addr_after("serving gRPC on "), grpc);
    let env = [("SHARDPOOL_REUSE_PORT_SHARED", "true")];
    let third = serve(&port, &[], &env, Stdio::null());
    assert_eq!(third.addr_after("serving gRPC on "), grpc);
}

#[test]
fn a_second_origin_on_a_port_in_use_is_refused_unless_shared() {
    let origin = |listen: &str, extra: &[&str], stderr: Stdio| {
        let mut args = vec!["origin", "--listen", listen];
        args.extend_from_slice(extra);
        Proc::start(&args, &[], stderr)
    };
    let first = origin("127.0.0.1:0", &[], Stdio::null());
    let addr = first.addr_after("listening on ");
    let port = addr.to_string();
    let err = refused("origin.err", |e| origin(&port, &[], e));
    assert!(
        err.contains("already in use") && err.contains("--reuse-port-shared"),
        "{err}"
    );
    let second = origin(&port, &["--reuse-port-shared"], Stdio::null());
    assert_eq!(second.addr_after("listening on "), addr);
}
