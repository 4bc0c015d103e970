//! The upstream admin endpoint: a small HTTP/1.1 server (one request per connection) for
//! per-backend metrics and for adding and removing backends while serving.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | per-backend metrics, Prometheus text |
//! | `GET /backends` | one line per backend: `addr healthy requests errors new reused steals` |
//! | `POST /backends/add?addr=HOST:PORT` | `added` / `already present`; 429 at `--max-backends` |
//! | `POST /backends/remove?addr=HOST:PORT` | `removed` / `not present` |
//!
//! ```text
//! curl -H "authorization: Bearer $(cat token)" -X POST 'http://127.0.0.1:9091/backends/add?addr=127.0.0.1:7003'
//! ```
//!
//! It follows the rules of the server's admin listener ([`AdminConfig`]): every request must
//! carry `authorization: Bearer <token>` when a token is configured (else 401); it refuses to
//! start on a non-loopback address without a token unless `allow_insecure`; each connection
//! has a thread of its own, at most `max_connections` at once (more are answered 503 and
//! closed); the request head (at most [`ADMIN_MAX_HEAD`] bytes) must arrive within
//! `read_timeout`. With an allow-list, `POST /backends/add` of an address outside it is
//! answered 403 and changes nothing.

use super::allow::BackendAllow;
use super::{Gateway, UpstreamManager};
use crate::pool::ConnectionPool;
use crate::server::{ADMIN_MAX_HEAD, AdminConfig};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running admin endpoint; dropping it stops the accept thread (connection threads end
/// within the read timeout).
pub struct AdminEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What one connection thread needs.
struct Ctx<P: ConnectionPool<UpstreamManager>> {
    gateway: Gateway<P>,
    config: AdminConfig,
    allow: Option<BackendAllow>,
}

impl AdminEndpoint {
    /// Serves `gateway`'s admin endpoint on `listen` with the default [`AdminConfig`] (no
    /// token: loopback only) and no allow-list.
    pub fn start<P: ConnectionPool<UpstreamManager>>(
        listen: SocketAddr,
        gateway: Gateway<P>,
    ) -> io::Result<AdminEndpoint> {
        AdminEndpoint::start_with(listen, gateway, AdminConfig::default(), None)
    }

    /// Serves `gateway`'s admin endpoint on `listen` under `config`; backends added through it
    /// must pass `allow` when given.
    pub fn start_with<P: ConnectionPool<UpstreamManager>>(
        listen: SocketAddr,
        gateway: Gateway<P>,
        config: AdminConfig,
        allow: Option<BackendAllow>,
    ) -> io::Result<AdminEndpoint> {
        config
            .check("upstream_admin_listen", listen)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.message))?;
        let listener = TcpListener::bind(listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind upstream admin {listen}: {e}"),
            )
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let ctx = Arc::new(Ctx {
            gateway,
            config,
            allow,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("upstream-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    // Ordering: Acquire, pairs with the Release store in `drop`.
                    if stop2.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else {
                        // Typically EMFILE: back off instead of spinning.
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    // Ordering: Relaxed, a counter only this thread increments; the
                    // connection threads' decrements need no other memory to be visible.
                    if open.load(Ordering::Relaxed) >= ctx.config.max_connections {
                        let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
                        let _ = reply(
                            &conn,
                            "503 Service Unavailable",
                            "too many admin connections (--admin-max-connections); retry\n",
                        );
                        continue;
                    }
                    // Ordering: Relaxed, as above.
                    open.fetch_add(1, Ordering::Relaxed);
                    let (ctx, conn_open) = (Arc::clone(&ctx), Arc::clone(&open));
                    let spawned = std::thread::Builder::new()
                        .name("upstream-admin-conn".into())
                        .spawn(move || {
                            // A client that misbehaves only loses its own answer.
                            let _ = handle(conn, &ctx);
                            // Ordering: Relaxed, as above.
                            conn_open.fetch_sub(1, Ordering::Relaxed);
                        });
                    if spawned.is_err() {
                        // Ordering: Relaxed, as above.
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(AdminEndpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminEndpoint {
    fn drop(&mut self) {
        // Ordering: Release, pairs with the Acquire load in the accept loop.
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop with one connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head (up to the blank line) within `limit`, at most [`ADMIN_MAX_HEAD`]
/// bytes; `None` if it does not come whole in time or is too large.
fn read_head(conn: &mut TcpStream, limit: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + limit;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() >= ADMIN_MAX_HEAD {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        conn.set_read_timeout(Some(left))?;
        let want = chunk.len().min(ADMIN_MAX_HEAD - head.len());
        match conn.read(&mut chunk[..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn reply(mut conn: &TcpStream, status: &str, body: &str) -> io::Result<()> {
    let auth = if status.starts_with("401") {
        "www-authenticate: Bearer\r\n"
    } else {
        ""
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n{auth}connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn handle<P: ConnectionPool<UpstreamManager>>(mut conn: TcpStream, ctx: &Ctx<P>) -> io::Result<()> {
    conn.set_write_timeout(Some(ctx.config.read_timeout))?;
    let Some(head) = read_head(&mut conn, ctx.config.read_timeout)? else {
        return reply(
            &conn,
            "408 Request Timeout",
            "the request head did not arrive whole in time (--admin-read-timeout) or is over 8 KiB\n",
        );
    };
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let auth = lines.find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim())
    });
    if let Err(denied) = ctx.config.authorize(auth.map(str::as_bytes)) {
        return reply(
            &conn,
            "401 Unauthorized",
            &format!("{}\n", denied.message()),
        );
    }
    let gateway = &ctx.gateway;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let addr = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("addr="))
        .map(|a| a.parse::<SocketAddr>());
    let (status, body) = match (method, path, addr) {
        ("GET", "/metrics", _) => ("200 OK", gateway.prometheus()),
        ("GET", "/backends", _) => ("200 OK", backends_text(gateway)),
        ("POST", "/backends/add", Some(Ok(a)))
            if ctx.allow.as_ref().is_some_and(|l| !l.admits(a)) =>
        {
            let why = ctx.allow.as_ref().map(|l| l.check(a));
            let why = why.and_then(Result::err).unwrap_or_default();
            ("403 Forbidden", format!("{why}; nothing was changed\n"))
        }
        ("POST", "/backends/add", Some(Ok(a))) => match gateway.add_backend(a) {
            Ok(true) => ("200 OK", format!("added {a}\n")),
            Ok(false) => ("200 OK", format!("already present {a}\n")),
            Err(full) => (
                "429 Too Many Requests",
                format!("{full}; nothing was changed\n"),
            ),
        },
        ("POST", "/backends/remove", Some(Ok(a))) => {
            let done = if gateway.remove_backend(a) {
                "removed"
            } else {
                "not present"
            };
            ("200 OK", format!("{done} {a}\n"))
        }
        ("POST", "/backends/add" | "/backends/remove", _) => (
            "400 Bad Request",
            "give the backend as ?addr=IP:PORT (for example ?addr=127.0.0.1:7001)\n".into(),
        ),
        _ => (
            "404 Not Found",
            "known: GET /metrics, GET /backends, POST /backends/add?addr=, POST /backends/remove?addr=\n"
                .into(),
        ),
    };
    reply(&conn, status, &body)
}

fn backends_text<P: ConnectionPool<UpstreamManager>>(gateway: &Gateway<P>) -> String {
    let mut out = String::from("# addr healthy requests errors new reused steals reuse_rate\n");
    for s in gateway.backend_stats() {
        out.push_str(&format!(
            "{} {} {} {} {} {} {} {:.5}\n",
            s.addr,
            s.healthy,
            s.requests,
            s.errors,
            s.connections_new,
            s.connections_reused,
            s.steals,
            s.reuse_rate()
        ));
    }
    out
}
