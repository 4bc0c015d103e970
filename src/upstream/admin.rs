//! The upstream admin endpoint: a tiny HTTP/1.1 server (one thread, one request per connection)
//! for per-backend metrics and for adding and removing backends while serving.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | per-backend metrics, Prometheus text |
//! | `GET /backends` | one line per backend: `addr healthy requests errors new reused steals` |
//! | `POST /backends/add?addr=HOST:PORT` | `added` / `already present` |
//! | `POST /backends/remove?addr=HOST:PORT` | `removed` / `not present` |
//!
//! ```text
//! curl -X POST 'http://127.0.0.1:9091/backends/add?addr=127.0.0.1:7003'
//! ```

use super::{Gateway, UpstreamManager};
use crate::pool::ConnectionPool;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A running admin endpoint; dropping it stops the thread.
pub struct AdminEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminEndpoint {
    /// Serves `gateway`'s admin endpoint on `listen`.
    pub fn start<P: ConnectionPool<UpstreamManager>>(
        listen: SocketAddr,
        gateway: Gateway<P>,
    ) -> io::Result<AdminEndpoint> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind upstream admin {listen}: {e}"),
            )
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("upstream-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    // Ordering: Acquire, pairs with the Release store in `drop`.
                    if stop2.load(Ordering::Acquire) {
                        return;
                    }
                    if let Ok(conn) = conn {
                        // A client that misbehaves only loses its own answer.
                        let _ = handle(conn, &gateway);
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

fn handle<P: ConnectionPool<UpstreamManager>>(
    conn: TcpStream,
    gateway: &Gateway<P>,
) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?).take(8192);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Skip the headers (bounded by `take`).
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
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
        ("POST", "/backends/add" | "/backends/remove", Some(Ok(a))) => {
            let done = if path.ends_with("add") {
                if gateway.add_backend(a) { "added" } else { "already present" }
            } else if gateway.remove_backend(a) {
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
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
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
