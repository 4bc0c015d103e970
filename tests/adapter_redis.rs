//! The Redis adapter against a real server (issue 15). Start one with `scripts/services.sh start`
//! and export `eval "$(scripts/services.sh env)"`; without `SHARDPOOL_REDIS_URL` every test says
//! so and passes without running.
//!
//! The tests restart and stop the server, so they take a process-wide lock and run one at a time.

use redis::AsyncCommands;
use shardpool::adapters::redis::{RedisManager, RedisServer};
use shardpool::{Config, ConnectionPool, Error, ShardedPool};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

#[path = "support/stall_proxy.rs"]
mod stall_proxy;

static SERVER: Mutex<()> = Mutex::const_new(());

/// The server lock and URL, or `None` (with a message) when no server is configured.
async fn server(test: &str) -> Option<(MutexGuard<'static, ()>, String)> {
    let Ok(url) = std::env::var("SHARDPOOL_REDIS_URL") else {
        eprintln!(
            "SKIPPED {test}: SHARDPOOL_REDIS_URL is not set; run `scripts/services.sh start` and \
             `eval \"$(scripts/services.sh env)\"` to test against a real Redis"
        );
        return None;
    };
    let lock = SERVER.lock().await;
    Some((lock, url))
}

fn services(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "services.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pool(max_size: usize, wait: Duration, manager: RedisManager) -> ShardedPool<RedisManager> {
    ShardedPool::new(
        manager,
        Config::default()
            .shards(2)
            .max_size(max_size)
            .wait_timeout(Some(wait)),
    )
    .unwrap()
}

/// `connected_clients` from `INFO clients`, asked over `conn`.
async fn connected_clients(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits (at most 3 s) until the server has exactly `expected` clients, counted over a pooled
/// connection (which is one of them); returns the last count.
async fn settle_clients(
    pool: &ShardedPool<RedisManager>,
    server: &RedisServer,
    expected: i64,
) -> i64 {
    let mut conn = pool.get(server).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = connected_clients(&mut conn).await;
        if n == expected || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 32 tasks × 40 SET/GET pairs over 8 connections: every value read back right; at the end the
/// pool's live count equals its idle count, and the server has exactly that many clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_many_queries_all_correct() {
    let Some((_lock, url)) = server("many_tasks_many_queries_all_correct").await else {
        return;
    };
    let server = RedisServer::new(&url).unwrap();
    let pool = pool(8, Duration::from_secs(5), RedisManager::new());
    let mut tasks = Vec::new();
    for task in 0..32u32 {
        let (pool, server) = (pool.clone(), server.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40u32 {
                let mut conn = pool.get(&server).await.unwrap();
                let key = format!("sp:many:{task}");
                let value = format!("{task}-{i}");
                let _: () = conn.set(&key, &value).await.unwrap();
                let got: String = conn.get(&key).await.unwrap();
                assert_eq!(got, value);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = pool.stats().total;
    assert!(total.live >= 1 && total.live <= 8, "{total:?}");
    assert_eq!(total.live, total.idle, "nothing is checked out: {total:?}");
    assert_eq!(total.checkouts, 32 * 40);
    let live = total.live as i64;
    assert_eq!(
        settle_clients(&pool, &server, live).await,
        live,
        "server-side clients"
    );
}

/// The server restarts while 16 tasks run commands over 8 connections. A connection the server
/// closed fails at most the one command in flight and is never handed out again (the tasks give
/// failed connections back instead of discarding them, so only the pool's checks stop a second
/// use); failures are counted and at most one per connection that existed; the pool recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_run_recovers() {
    let Some((_lock, url)) = server("server_restart_mid_run_recovers").await else {
        return;
    };
    let server = RedisServer::new(&url).unwrap();
    let pool = pool(
        8,
        Duration::from_secs(10),
        RedisManager::new().connect_timeout(Duration::from_secs(2)),
    );
    let failed_queries = Arc::new(AtomicU64::new(0));
    let failed_creates = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_millis(3500);
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let (pool, server) = (pool.clone(), server.clone());
        let (failed_queries, failed_creates, ok) = (
            Arc::clone(&failed_queries),
            Arc::clone(&failed_creates),
            Arc::clone(&ok),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop_at {
                i += 1;
                let mut conn = match pool.get(&server).await {
                    Ok(conn) => conn,
                    Err(Error::Create { error: e, .. }) => {
                        if failed_creates.fetch_add(1, Ordering::Relaxed) % 200 == 0 {
                            eprintln!("create failed (the server is restarting): {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => panic!("checkout: {e}"),
                };
                let n = task * 1_000_000 + i;
                let answer: redis::RedisResult<u64> =
                    redis::cmd("ECHO").arg(n).query_async(&mut *conn).await;
                match answer {
                    Ok(echoed) => {
                        assert_eq!(echoed, n);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    // Returned, not discarded: the pool must notice by itself.
                    Err(_) => {
                        failed_queries.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(conn);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = pool.stats().total;
    tokio::task::spawn_blocking(|| services(&["restart", "redis"]))
        .await
        .unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let after = pool.stats().total;
    let failed = failed_queries.load(Ordering::Relaxed);
    eprintln!(
        "restart: {} ok, {failed} failed commands, {} failed creates; creates {} -> {}, \
         validation failures {}",
        ok.load(Ordering::Relaxed),
        failed_creates.load(Ordering::Relaxed),
        before.creates,
        after.creates,
        after.validation_failures
    );
    // At most max_size (8) connections existed when the server went away; each fails at most
    // the one query it carried.
    assert!(
        failed <= 8,
        "at most one failed query per connection the restart closed: {failed} > 8 ({before:?})"
    );
    assert!(
        after.creates > before.creates,
        "the closed connections were replaced: {after:?}"
    );
    for n in 0..50u64 {
        let mut conn = pool.get(&server).await.unwrap();
        let echoed: u64 = redis::cmd("ECHO")
            .arg(n)
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(echoed, n);
    }
    let total = pool.stats().total;
    assert_eq!(total.live, total.idle, "{total:?}");
}

/// A wrong password or database fails the checkout at once, naming the server, the user, the
/// database and the server's reason; it is never reported as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_or_database_fails_at_once_naming_both() {
    let Some((_lock, url)) = server("wrong_password_or_database_fails_at_once_naming_both").await
    else {
        return;
    };
    let good = RedisServer::new(&url).unwrap();
    let hostport = good.to_string().split(' ').next().unwrap().to_string();
    let at = url.rfind('@').expect("the URL has a password");
    let wrong_password = format!("redis://:not-the-password{}", &url[at..]);
    let wrong_database = format!("{}/99", url.rsplit_once('/').unwrap().0);
    let pool = pool(4, Duration::from_secs(10), RedisManager::new());
    for (bad, db, expect) in [
        (wrong_password, "db 0", "authentication failed"),
        (wrong_database, "db 99", "out of range"),
    ] {
        let server = RedisServer::new(&bad).unwrap();
        let started = Instant::now();
        let err = match pool.get(&server).await {
            Err(Error::Create { error: e, .. }) => e,
            other => panic!("expected a create error, got {other:?}"),
        };
        let msg = err.to_string();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "at once, not after a wait: {:?}",
            started.elapsed()
        );
        assert!(!err.is_timeout(), "{msg}");
        assert!(msg.contains(&hostport), "names the server: {msg}");
        assert!(msg.contains("user default"), "names the user: {msg}");
        assert!(msg.contains(db), "names the database: {msg}");
        assert!(msg.contains(expect), "gives the server's reason: {msg}");
        assert_eq!(pool.stats().total.live, 0);
    }
}

/// With the server at its own `maxclients`, the next checkout fails with the server's "max number
/// of clients reached" as a clear create error; the pool counts only the connections that exist,
/// and serves again once some are returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connection_limit_is_a_clear_error_without_phantoms() {
    let Some((_lock, url)) =
        server("server_connection_limit_is_a_clear_error_without_phantoms").await
    else {
        return;
    };
    let max: usize = std::env::var("SHARDPOOL_REDIS_MAX_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let server = RedisServer::new(&url).unwrap();
    let pool = pool(max + 10, Duration::from_secs(5), RedisManager::new());
    let mut held = Vec::new();
    let err = loop {
        match pool.get(&server).await {
            Ok(conn) => held.push(conn),
            Err(Error::Create { error: e, .. }) => break e,
            Err(e) => panic!("expected the server's refusal, got {e}"),
        }
        assert!(held.len() <= max, "the server let more than maxclients in");
    };
    let msg = err.to_string();
    assert!(msg.contains("max number of clients reached"), "{msg}");
    assert!(!held.is_empty());
    let total = pool.stats().total;
    assert_eq!(
        total.live,
        held.len() as u64,
        "live counts only real connections: {total:?}"
    );
    assert_eq!(total.idle, 0);
    for conn in &mut held {
        let _: String = redis::cmd("PING").query_async(&mut **conn).await.unwrap();
    }
    let n = held.len() as u64;
    held.truncate(held.len() / 2);
    let total = pool.stats().total;
    assert_eq!(total.live, n, "{total:?}");
    assert_eq!(total.live, total.idle + held.len() as u64, "{total:?}");
    drop(held);
    let live = pool.stats().total.live as i64;
    assert_eq!(
        settle_clients(&pool, &server, live).await,
        live,
        "server-side clients"
    );
    let total = pool.stats().total;
    assert_eq!(total.live, total.idle, "{total:?}");
}

/// Sends SIGCONT to the stopped server when dropped, even if the test fails.
struct Resume(Vec<i32>);

impl Drop for Resume {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) with a pid read from the server's pid file; no memory involved.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// The server is stopped (SIGSTOP) for 2 s: commands in flight hang, further checkouts time
/// out with `Error::Timeout` after the wait timeout; after SIGCONT the pool serves again, with no
/// restart. A new connection meanwhile fails after the connect timeout, not after a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_times_out_then_serves_again() {
    let Some((_lock, url)) = server("stopped_server_times_out_then_serves_again").await else {
        return;
    };
    let server = RedisServer::new(&url).unwrap();
    let wait = Duration::from_millis(400);
    let pool = pool(4, wait, RedisManager::new());
    let mut warm = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.get(&server).await.unwrap();
        let _: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
        warm.push(conn);
    }
    drop(warm);
    let pids: Vec<i32> = services(&["pids", "redis"])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 1);
    let resume = Resume(pids.clone());
    // SAFETY: kill(2) with the test server's pid; no memory involved.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGSTOP) }, 0);
    let stopped_at = Instant::now();
    let mut in_flight = Vec::new();
    for n in 0..4u64 {
        let (pool, server) = (pool.clone(), server.clone());
        in_flight.push(tokio::spawn(async move {
            let mut conn = pool.get(&server).await.unwrap();
            let echoed: u64 = redis::cmd("ECHO")
                .arg(n)
                .query_async(&mut *conn)
                .await
                .expect("answered after SIGCONT, within the response timeout");
            assert_eq!(echoed, n);
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let started = Instant::now();
        match pool.get(&server).await {
            Err(Error::Timeout { waited }) => assert!(waited >= wait, "{waited:?}"),
            other => panic!("expected Error::Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < wait + Duration::from_millis(500));
    }
    assert!(pool.stats().total.timeouts >= 3);
    // A new connection to the stopped server: the TCP connect succeeds (the kernel accepts), the
    // handshake gets no answer; the connect timeout turns that into a create error naming the
    // server, well before the pool's wait timeout would.
    let fresh = ShardedPool::new(
        RedisManager::new().connect_timeout(Duration::from_millis(300)),
        Config::default()
            .max_size(1)
            .wait_timeout(Some(Duration::from_secs(5))),
    )
    .unwrap();
    let started = Instant::now();
    let err = match tokio::time::timeout(Duration::from_secs(3), fresh.get(&server)).await {
        Ok(Err(Error::Create { error: e, .. })) => e,
        Ok(other) => panic!("expected a connect timeout, got {other:?}"),
        Err(_) => panic!("the create hung on the stopped server"),
    };
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("timed out after 300ms"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(fresh.stats().total.live, 0);
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(stopped_at.elapsed())).await;
    drop(resume); // SIGCONT
    for t in in_flight {
        t.await.unwrap();
    }
    for n in 0..20u64 {
        let mut conn = pool.get(&server).await.unwrap();
        let echoed: u64 = redis::cmd("ECHO")
            .arg(n)
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(echoed, n);
    }
    let total = pool.stats().total;
    assert_eq!(total.live, total.idle, "{total:?}");
    assert!(total.live <= 4);
}

/// A connection that stopped answering while idle (its bytes silently dropped, its socket still
/// open, so the closed flag stays false) is not handed out when `validate_idle_after` is set: the
/// `PING` before reuse gets no `PONG` within the validate timeout, the connection is closed, and
/// the checkout creates a fresh one that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_connection_fails_validation_and_is_replaced() {
    let Some((_lock, url)) =
        server("silent_idle_connection_fails_validation_and_is_replaced").await
    else {
        return;
    };
    let proxy = stall_proxy::StallProxy::start(stall_proxy::target(&url)).await;
    let proxied = stall_proxy::through(&url, proxy.addr);
    let server = RedisServer::new(&proxied).unwrap();
    let manager = RedisManager::new().validate_timeout(Duration::from_millis(300));
    let pool = ShardedPool::new(
        manager,
        Config::default()
            .shards(1)
            .max_size(1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .validate_idle_after(Some(Duration::ZERO)),
    )
    .unwrap();
    {
        let mut conn = pool.get(&server).await.unwrap();
        let echoed: String = redis::cmd("ECHO")
            .arg("one")
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(echoed, "one");
    }
    // Reused once while the proxy still forwards: the check passes.
    drop(pool.get(&server).await.unwrap());
    assert_eq!(pool.stats().total.validation_failures, 0);
    proxy.stall_existing();
    let started = Instant::now();
    let mut conn = tokio::time::timeout(Duration::from_secs(3), pool.get(&server))
        .await
        .expect("the checkout is bounded by the validate timeout")
        .unwrap();
    let echoed: String = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("ECHO").arg("two").query_async(&mut *conn),
    )
    .await
    .expect("the connection handed out answers: it is a fresh one, not the silent one")
    .unwrap();
    assert_eq!(echoed, "two");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let total = pool.stats().total;
    assert_eq!(total.validation_failures, 1, "{total:?}");
    assert_eq!(total.creates, 2, "{total:?}");
    assert_eq!(total.live, 1, "{total:?}");
}
