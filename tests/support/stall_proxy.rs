//! A loopback TCP proxy whose established connections can be stalled: after
//! [`StallProxy::stall_existing`], bytes stop flowing on every connection it has accepted so far
//! while their sockets stay open, so a pooled connection through it looks alive (no close, no
//! error) but never answers again. Connections accepted later pass bytes normally.
//!
//! Used by the adapter tests to show that the check before reuse (`Manage::validate`) catches what
//! the cheap closed-flag check cannot. Dropping the proxy closes every socket it holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct StallProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    epoch: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl StallProxy {
    /// A proxy on 127.0.0.1 (a free port) to `target`.
    pub async fn start(target: SocketAddr) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let epoch = Arc::new(AtomicU64::new(0));
        let shared = Arc::clone(&epoch);
        let task = tokio::spawn(async move {
            // Owned here, so aborting this task drops (aborts) every connection's task too.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                connections.spawn(forward(client, server, Arc::clone(&shared)));
            }
        });
        StallProxy { addr, epoch, task }
    }

    /// Stops the flow of bytes on every connection accepted so far, leaving the sockets open.
    pub fn stall_existing(&self) {
        // Ordering: SeqCst; a test-only flag read by the forwarding tasks after each read.
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes both ways until either side closes, or forever holds both sockets silent once the
/// proxy's epoch has moved past the one this connection was accepted in.
async fn forward(client: TcpStream, server: TcpStream, epoch: Arc<AtomicU64>) {
    // Ordering: SeqCst, as in `stall_existing`.
    let accepted_in = epoch.load(Ordering::SeqCst);
    let stalled = || epoch.load(Ordering::SeqCst) != accepted_in;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        let (bytes, to) = tokio::select! {
            n = client_read.read(&mut up) => match n {
                Ok(n) if n > 0 => (&up[..n], &mut server_write),
                _ => return,
            },
            n = server_read.read(&mut down) => match n {
                Ok(n) if n > 0 => (&down[..n], &mut client_write),
                _ => return,
            },
        };
        if stalled() {
            // Swallow this and everything after; keep the sockets open until the proxy drops.
            std::future::pending::<()>().await;
        }
        if to.write_all(bytes).await.is_err() {
            return;
        }
    }
}

/// The `host:port` part of `url`'s authority: its byte range in `url`.
fn authority_host(url: &str) -> std::ops::Range<usize> {
    let start = url.find("://").expect("a URL with a scheme") + 3;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    host..end
}

/// The address `url` names (its `host:port`).
pub fn target(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let host_port = &url[authority_host(url)];
    let mut addrs = host_port.to_socket_addrs().expect("host:port in the URL");
    addrs.next().expect("an address")
}

/// `url` with its `host:port` replaced by `addr`.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let range = authority_host(url);
    format!("{}{addr}{}", &url[..range.start], &url[range.end..])
}
