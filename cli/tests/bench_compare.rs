//! `shardpool compare` end to end: it starts the servers itself (here `shardpool serve` given as
//! the external command, plus the built-in `sharded` variant), alternates rounds, writes the
//! report files and leaves no server running. Bad flags fail with a message naming the fix.

use std::net::TcpStream;

#[path = "common/process.rs"]
mod process;

use process::{BIN, fails_with, shardpool};

#[test]
fn compare_runs_alternating_rounds_and_cleans_up() {
    let out = std::env::temp_dir().join(format!("shardpool-compare-test-{}", std::process::id()));
    let server_cmd = format!("{BIN} serve --listen {{addr}} --shards 1");
    let output = shardpool(&[
        "compare",
        "--variants",
        "sharded,external",
        "--server-cmd",
        &server_cmd,
        "--rounds",
        "2",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "-c",
        "2",
        "-m",
        "4",
        "--startup-timeout",
        "20s",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("variant"), "{stdout}");
    // Progress lines name the rounds in alternating order.
    let order: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ok req/s"))
        .map(|l| {
            if l.contains("external") {
                "external"
            } else {
                "sharded"
            }
        })
        .collect();
    assert!(
        order == ["external", "external"]
            || order == ["sharded", "external", "sharded", "external"],
        "{order:?}\n{stderr}"
    );

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let variants = results.as_array().unwrap();
    assert_eq!(variants[0]["variant"], "sharded");
    // The gateway flags may not exist yet: then `sharded` is skipped with the server's reason.
    assert!(
        variants[0]["runs"].as_array().unwrap().len() == 2 || variants[0]["skipped"].is_string(),
        "{}",
        variants[0]
    );
    let external = &variants[1];
    assert_eq!(external["variant"], "external");
    let runs = external["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{external}");
    for run in runs {
        assert!(run["ok"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["failed"], 0, "{run}");
        // The server was killed when its run ended.
        let target: std::net::SocketAddr = run["target"].as_str().unwrap().parse().unwrap();
        assert!(
            TcpStream::connect(target).is_err(),
            "a server still listens on {target}"
        );
    }

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("# shardpool compare"), "{report}");
    assert!(report.contains("| external | 2 |"), "{report}");
    assert!(report.contains("![latency by percentile](latency.svg)"));
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_rejects_bad_flags_with_the_fix() {
    for (args, expected) in [
        (&["--variants", "external"][..], "needs --server-cmd"),
        (
            &["--server-cmd", "my-server"][..],
            "must contain {addr} or {port}",
        ),
        (&["--rounds", "0"][..], "--rounds must be at least 1"),
        (
            &["--connections", "0"][..],
            "--connections must be at least 1",
        ),
        (&["--duration", "forever"][..], "write it like 10s"),
    ] {
        let mut all = vec!["compare", "--quiet", "--out"];
        let out =
            std::env::temp_dir().join(format!("shardpool-compare-bad-{}", std::process::id()));
        all.push(out.to_str().unwrap());
        all.extend_from_slice(args);
        fails_with(&all, &[expected]);
        let _ = std::fs::remove_dir_all(&out);
    }
}
