//! Active health checks: a thread that PINGs every backend and ends or starts ejections.

use super::Gateway;
use crate::pool::ConnectionPool;
use crate::upstream::conn::UpstreamManager;
use crate::upstream::frame::{self, Code as FrameCode, Op};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

impl<P: ConnectionPool<UpstreamManager>> Gateway<P> {
    /// Starts the active health checks (a thread; `None` if disabled). Dropping the returned
    /// handle stops it.
    pub fn start_health_checks(&self) -> Option<HealthChecker> {
        let interval = self.shared.config.health.interval?;
        let shared = Arc::clone(&self.shared);
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("upstream-health".into())
            .spawn(move || {
                loop {
                    for b in shared.snapshot().iter() {
                        let generation = b.generation();
                        let ok = ping(b.addr, shared.config.health.timeout).is_ok();
                        // Ordering: Relaxed, advisory (see `Backend::is_ejected`).
                        let was_down = b.active_down.swap(!ok, Ordering::Relaxed);
                        if was_down == ok {
                            tracing::info!(backend = %b.addr, healthy = ok, "active health check changed");
                        }
                        if ok && b.end_ejection_early(generation, shared.now_ms()) {
                            tracing::info!(backend = %b.addr, "a passing active check ended the ejection");
                        }
                    }
                    shared.update_health_table();
                    let (lock, cv) = &*stop2;
                    let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = cv
                        .wait_timeout_while(guard, interval, |stopped| !*stopped)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *guard {
                        return;
                    }
                }
            })
            .ok()?;
        Some(HealthChecker {
            stop,
            thread: Some(thread),
        })
    }
}

/// One active check: connect, PING, expect `OK`, all within `timeout`.
pub(super) fn ping(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut buf = Vec::with_capacity(8);
    frame::encode_request(Op::Ping, "", &mut buf);
    s.write_all(&buf)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > frame::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    buf.resize(len, 0);
    s.read_exact(&mut buf)?;
    match frame::decode_response(&buf)?.code {
        FrameCode::Ok => Ok(()),
        other => Err(io::Error::other(format!("PING answered {other:?}"))),
    }
}

/// The active health-check thread; dropping it stops the thread.
pub struct HealthChecker {
    pub(super) stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            // The thread only sleeps and pings; a panic there has nothing left to clean up.
            let _ = t.join();
        }
    }
}
