//! Issue 13, point 2: idle connections must not take the whole gateway down. The `shardpool`
//! binary runs in gateway mode with an embedded origin under a descriptor limit of 1024; more
//! idle connections than fit are opened. A client connected before the storm and one connecting
//! during it are both served (through the origin, whose descriptors are reserved), Health stays
//! SERVING, and accept errors are not logged more than a few times a second. Bounded: a few
//! seconds; loopback only; the child is killed on drop.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[path = "../../tests/common/grpc.rs"]
mod grpc;
#[path = "common/process.rs"]
mod process;

use process::{Proc, scratch_path};

/// The descriptor limit the server runs under.
const NOFILE: u64 = 1024;
/// Idle connections opened: more than the limit, so without a cap below it the server runs out.
const STORM: usize = 1500;
/// SERVING in grpc.health.v1.
const SERVING: i32 = 1;

/// One SayHello and one Health check on `ch`, each within 5 s.
async fn served(ch: &tonic::transport::Channel, name: &str) -> Result<(), String> {
    let limit = Duration::from_secs(5);
    let reply = tokio::time::timeout(limit, grpc::say_hello(ch.clone(), name))
        .await
        .map_err(|_| format!("SayHello({name}) took more than {limit:?}"))?
        .map_err(|s| format!("SayHello({name}): {s}"))?;
    if !reply.contains(name) {
        return Err(format!("SayHello({name}) answered {reply:?}"));
    }
    let status = tokio::time::timeout(limit, grpc::health(ch.clone(), ""))
        .await
        .map_err(|_| format!("Health took more than {limit:?}"))?
        .map_err(|s| format!("Health: {s}"))?;
    if status != SERVING {
        return Err(format!("Health answered {status}, not SERVING"));
    }
    Ok(())
}

/// A new HTTP/2 connection to `addr`, within 5 s.
async fn connect(addr: SocketAddr) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(5), endpoint.connect())
        .await
        .map_err(|_| "connecting took more than 5s".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))
}

#[test]
fn idle_connections_beyond_the_descriptor_limit_do_not_take_the_gateway_down() {
    let log = scratch_path("storm.log");
    let serve = Proc::start_with_nofile(
        NOFILE,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--pin",
            "false",
            "--embedded-origins",
            "1",
            "--pool-max-size",
            "32",
            "--pool-max-idle",
            "32",
        ],
        &[],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let addr = serve.addr_after("serving gRPC on ");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let established = rt.block_on(async {
        let ch = connect(addr).await.unwrap();
        served(&ch, "before").await.unwrap();
        ch
    });

    // The storm: idle connections that never send a byte, more than the limit.
    let start = Instant::now();
    let mut idle = Vec::with_capacity(STORM);
    for i in 0..STORM {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {i} of the storm: {e}"),
        }
    }
    // Let the server accept (and shed) what it can.
    std::thread::sleep(Duration::from_millis(500));

    let outcome: Vec<Result<(), String>> = rt.block_on(async {
        let mut out = Vec::new();
        for round in 0..3 {
            out.push(served(&established, &format!("established-{round}")).await);
            let fresh = match connect(addr).await {
                Ok(ch) => served(&ch, &format!("new-{round}")).await,
                Err(e) => Err(format!("new client: {e}")),
            };
            out.push(fresh);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        out
    });
    let elapsed = start.elapsed();

    let oldest_closed = idle
        .iter()
        .take(100)
        .filter(|s| closed_by_server(s))
        .count();
    let newest_closed = idle
        .iter()
        .rev()
        .take(100)
        .filter(|s| closed_by_server(s))
        .count();
    drop(idle);
    drop(established);
    drop(serve);

    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    let accept_lines = text.lines().filter(|l| l.contains("accept")).count();
    let failures: Vec<_> = outcome.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "clients not served during the storm: {failures:?}\nserver log (tail):\n{}",
        tail(&text)
    );
    // Two shards, at most one line a second each, plus one for rounding.
    let allowed = 2 * (elapsed.as_secs() as usize + 1) + 1;
    assert!(
        accept_lines <= allowed,
        "{accept_lines} log lines about accept in {elapsed:?} (at most {allowed}):\n{}",
        tail(&text)
    );
    // At the cap the oldest idle connections were shed to make room for the newest (refusing
    // the newest instead would leave the oldest holding their descriptors).
    assert!(
        oldest_closed >= 90 && newest_closed <= 10,
        "of the 100 oldest idle connections {oldest_closed} were closed, of the 100 newest \
         {newest_closed}"
    );
}

/// True if the server has closed `s`: reading (without waiting) gives end of stream or a reset,
/// after whatever the server sent first (its SETTINGS).
fn closed_by_server(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn a_limit_too_low_for_the_reserve_is_refused_naming_ulimit() {
    // The default gateway (2 embedded origins, 256 pooled connections each, both ends in this
    // process) reserves more than 1024 descriptors.
    let log = scratch_path("refused.log");
    let mut serve = Proc::start_with_nofile(
        NOFILE,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--pin",
            "false",
        ],
        &[],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let status = serve.wait_exit(Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("ulimit -n") && text.contains("too low to serve"),
        "{text}"
    );
}

/// What a storm of idle connections below a cap set by hand did to a server of `shards` shards.
struct FixedCapStorm {
    /// How many of the 100 oldest / 100 newest idle connections the server closed.
    oldest_closed: usize,
    newest_closed: usize,
    /// Log lines about accept errors, and the storm's length.
    accept_lines: usize,
    elapsed: Duration,
    /// Whether a new client got in after the storm (with up to three attempts).
    served_new: Result<(), String>,
    log_tail: String,
}

/// Runs the server under a descriptor limit of 512 with a cap set by hand far above what that
/// holds (so accepts fail with EMFILE), opens 1,000 idle connections, then tries a new client.
fn storm_below_a_fixed_cap(shards: &str) -> FixedCapStorm {
    let log = scratch_path(&format!("emfile-{shards}-shards.log"));
    let serve = Proc::start_with_nofile(
        512,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            shards,
            "--pin",
            "false",
            "--upstream",
            "none",
            "--max-connections-per-shard",
            "5000",
        ],
        &[],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let addr = serve.addr_after("serving gRPC on ");
    let start = Instant::now();
    let idle: Vec<_> = (0..1000)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connection {i} of the storm: {e}"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A new client gets in: idle connections are shed to make room (it may take a retry when
    // its first attempt is in a backlog being reset).
    let served_new = rt.block_on(async {
        let mut last = String::new();
        for attempt in 0..3 {
            match connect(addr).await {
                Ok(ch) => match served(&ch, &format!("new-{attempt}")).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    });
    let elapsed = start.elapsed();
    let oldest_closed = idle
        .iter()
        .take(100)
        .filter(|s| closed_by_server(s))
        .count();
    let newest_closed = idle
        .iter()
        .rev()
        .take(100)
        .filter(|s| closed_by_server(s))
        .count();
    drop(idle);
    drop(serve);
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    FixedCapStorm {
        oldest_closed,
        newest_closed,
        accept_lines: text.lines().filter(|l| l.contains("accept failed")).count(),
        elapsed,
        served_new,
        log_tail: tail(&text),
    }
}

impl FixedCapStorm {
    /// Accept errors happened, were logged at most once a second per shard, and the new client
    /// was served.
    fn assert_quiet_and_served(&self, shards: usize) {
        let (lines, elapsed, log) = (self.accept_lines, self.elapsed, &self.log_tail);
        assert!(
            lines >= 1,
            "the test did not run the server out of descriptors:\n{log}"
        );
        let allowed = shards * (elapsed.as_secs() as usize + 1) + 1;
        assert!(
            lines <= allowed,
            "{lines} log lines about accept errors in {elapsed:?} (at most {allowed}):\n{log}"
        );
        assert!(
            self.served_new.is_ok(),
            "{:?}\nserver log (tail):\n{log}",
            self.served_new
        );
    }
}

#[test]
fn out_of_descriptors_below_a_fixed_cap_accept_errors_are_quiet_and_clients_still_get_in() {
    // One shard: room is made by shedding the oldest idle connections, not by resetting the
    // newest.
    let one = storm_below_a_fixed_cap("1");
    one.assert_quiet_and_served(1);
    assert!(
        one.oldest_closed >= 90 && one.newest_closed <= 10,
        "one shard: of the 100 oldest idle connections {} were closed, of the 100 newest {}",
        one.oldest_closed,
        one.newest_closed
    );
    // Two shards share the process's descriptors but each sheds only its own connections (see
    // docs/security.md, "Limits not covered"): which ones close depends on which shard hits
    // EMFILE, so only quiet errors and a served client are checked. (Run one after the other:
    // each storm holds 1,000 descriptors in this process.)
    storm_below_a_fixed_cap("2").assert_quiet_and_served(2);
}
