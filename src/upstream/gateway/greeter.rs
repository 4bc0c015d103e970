//! Answering one `SayHello` through a backend: the attempt, who a failure blames, the retry on a
//! stale pooled connection, fail-over and panic mode.

use super::{Backend, CallStart, HealthConfig, ShardCounters, Shared, bump, panic_pick, read};
use crate::pool::{ConnectionPool, Error as PoolError, PooledConn};
use crate::runtime::ShardContext;
use crate::server::{Code, GreetHandler, Status};
use crate::upstream::balance::Picker;
use crate::upstream::conn::{Exchange, UpstreamManager, drop_thread_wrappers};
use crate::upstream::frame::{self, Code as FrameCode, Op};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Who a failed attempt says something about; only [`Blame::Backend`] counts toward ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blame {
    /// The backend: it refused or dropped the connection, did not answer in time, sent
    /// garbage, or reported its own failure (`SERVER_ERROR`). Counts, and the call fails over.
    Backend,
    /// This gateway: the pool's wait ran out (every allowed connection busy), the request
    /// timeout ran out before a connection was checked out, or the pool is closed (shutdown).
    /// Does not count; the call fails over.
    Local,
    /// The request: the backend refused it (`BAD_REQUEST`, `TOO_LARGE`). Does not count, and
    /// is not retried elsewhere (every backend would refuse it).
    Request,
}

/// How far one attempt got, so a timeout can be blamed right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a pooled connection.
    Checkout,
    /// Connecting (no pool) or exchanging the frames with the backend.
    Exchange,
}

/// Why one attempt on one backend failed.
#[derive(Debug)]
pub(super) enum AttemptError {
    /// Connecting, sending or reading failed (refused, reset, closed, a bad frame).
    Io(io::Error),
    /// No answer within the request timeout once the request was the backend's.
    Timeout(Duration),
    /// The backend answered `SERVER_ERROR`.
    ServerError(String),
    /// The backend refused the request (`BAD_REQUEST` or `TOO_LARGE`).
    Refused(FrameCode, String),
    /// Our side failed (see [`Blame::Local`]).
    Local(String),
}

impl AttemptError {
    /// Who the failure is about.
    pub(super) fn blame(&self) -> Blame {
        match self {
            AttemptError::Io(_) | AttemptError::Timeout(_) | AttemptError::ServerError(_) => {
                Blame::Backend
            }
            AttemptError::Refused(..) => Blame::Request,
            AttemptError::Local(_) => Blame::Local,
        }
    }

    /// A failed checkout: creating the connection is the backend's part, waiting and a
    /// closed pool are ours.
    pub(super) fn from_pool(e: PoolError<io::Error>) -> AttemptError {
        match e {
            PoolError::Create { error, .. } => AttemptError::Io(error),
            other @ (PoolError::Timeout { .. }
            | PoolError::Closed
            | PoolError::Overloaded { .. }) => AttemptError::Local(other.to_string()),
        }
    }

    /// The request timeout ran out during `phase`.
    pub(super) fn timed_out(phase: Phase, timeout: Duration) -> AttemptError {
        match phase {
            Phase::Checkout => AttemptError::Local(format!(
                "no pooled connection became available within the request timeout {timeout:?}"
            )),
            Phase::Exchange => AttemptError::Timeout(timeout),
        }
    }

    /// The backend's answer: the greeting, or the error it stands for.
    pub(super) fn from_response(response: frame::Response) -> Result<String, AttemptError> {
        match response.code {
            FrameCode::Ok => Ok(response.message),
            FrameCode::ServerError => Err(AttemptError::ServerError(response.message)),
            code @ (FrameCode::BadRequest | FrameCode::TooLarge) => {
                Err(AttemptError::Refused(code, response.message))
            }
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Io(e) => write!(f, "{e}"),
            AttemptError::Timeout(t) => write!(f, "no answer within {t:?}"),
            AttemptError::ServerError(e) => write!(f, "the backend failed: {e}"),
            AttemptError::Refused(code, e) => {
                write!(f, "the backend refused the request ({code:?}): {e}")
            }
            AttemptError::Local(e) => f.write_str(e),
        }
    }
}

/// A stale pooled connection: the backend closed it while idle, so nothing was answered.
pub(super) fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
    )
}

/// Decrements a shard's in-flight count when the attempt ends (also when cancelled).
pub(super) struct InFlight<'a>(&'a ShardCounters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        bump(&self.0.in_flight, -1);
    }
}

/// The per-shard `SayHello` handler of gateway mode.
pub struct GatewayGreeter<P> {
    pub(super) shared: Arc<Shared<P>>,
    pub(super) shard: usize,
    pub(super) picker: Picker,
    pub(super) cache: RefCell<(u64, Arc<Vec<Arc<Backend>>>)>,
}

impl<P: ConnectionPool<UpstreamManager>> GatewayGreeter<P> {
    pub(super) fn new(shared: Arc<Shared<P>>, ctx: ShardContext) -> GatewayGreeter<P> {
        let seed = ((ctx.shard as u64 + 1) * 0x2545_F491_4F6C_DD1D)
            ^ shared.epoch.elapsed().as_nanos() as u64;
        let cache = RefCell::new((shared.version(), shared.snapshot()));
        // Maintenance on this shard: drop wrappers of connections that moved away or closed,
        // and let the pool expire idle connections. Detached: it ends with the executor.
        glommio::spawn_local({
            let shared = Arc::clone(&shared);
            let shard = ctx.shard;
            async move {
                let mut n = 0u32;
                loop {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    shared.manager.inboxes().drain(shard);
                    n += 1;
                    match &shared.pool {
                        Some(pool) if n.is_multiple_of(10) => pool.maintain(shard).await,
                        _ => {}
                    }
                }
            }
        })
        .detach();
        GatewayGreeter {
            picker: Picker::new(shared.config.balance, seed),
            shared,
            shard: ctx.shard,
            cache,
        }
    }

    pub(super) fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        let v = self.shared.version();
        let mut cache = self.cache.borrow_mut();
        if cache.0 != v {
            *cache = (v, self.shared.snapshot());
        }
        Arc::clone(&cache.1)
    }

    /// One attempt on `b`: checkout (or connect), exchange, and the stale-connection retry.
    /// `phase` tells the caller's timeout how far it got.
    pub(super) async fn attempt(
        &self,
        b: &Backend,
        name: &str,
        phase: &Cell<Phase>,
    ) -> Result<String, AttemptError> {
        let c = b.counters(self.shard);
        let exchange = match &self.shared.pool {
            None => {
                bump(&c.new_conns, 1);
                phase.set(Phase::Exchange);
                let connect = self.shared.manager.connect(b.addr).await;
                let mut conn = connect.map_err(AttemptError::Io)?;
                conn.exchange(self.shard, Op::Hello, name).await
            }
            Some(pool) => {
                let mut guard = self.checkout(pool, b, false).await?;
                phase.set(Phase::Exchange);
                match guard.exchange(self.shard, Op::Hello, name).await {
                    Err(e) if guard.is_reused() && is_stale(&e) => {
                        // The backend closed this idle connection before the request reached
                        // it, so nothing was done: retry once (SayHello is idempotent). The
                        // discard frees the connection's permit first, so the retry's
                        // connection is another pooled one or is created within `max_size`.
                        guard.discard();
                        bump(&c.stale_retries, 1);
                        phase.set(Phase::Checkout);
                        let mut guard = self.checkout(pool, b, true).await?;
                        phase.set(Phase::Exchange);
                        let result = guard.exchange(self.shard, Op::Hello, name).await;
                        Self::finish(c, guard, result)
                    }
                    result => Self::finish(c, guard, result),
                }
            }
        };
        AttemptError::from_response(exchange.map_err(AttemptError::Io)?.response)
    }

    /// Checks a connection to `b` out of the pool on this shard and counts it as new or reused.
    /// With `verify`, reused connections the backend has closed (a peek, whatever their idle
    /// time) are discarded and the checkout repeated; each repeat yields first, so the attempt's
    /// timeout bounds the loop.
    pub(super) async fn checkout(
        &self,
        pool: &P,
        b: &Backend,
        verify: bool,
    ) -> Result<P::Guard, AttemptError> {
        let c = b.counters(self.shard);
        loop {
            let guard = pool.get(&b.addr).await.map_err(AttemptError::from_pool)?;
            let reused = guard.is_reused();
            if verify && reused && guard.peer_gone() {
                guard.discard();
                futures_lite::future::yield_now().await;
                continue;
            }
            bump(if reused { &c.reused } else { &c.new_conns }, 1);
            return Ok(guard);
        }
    }

    /// Ends a pooled exchange: counts a steal and returns the connection, or closes it after a
    /// failure (its stream position is unknown) or a `TOO_LARGE` answer (the origin closes the
    /// connection after it).
    pub(super) fn finish(
        c: &ShardCounters,
        guard: P::Guard,
        result: io::Result<Exchange>,
    ) -> io::Result<Exchange> {
        match result {
            Ok(x) => {
                if x.moved {
                    bump(&c.steals, 1);
                }
                if x.response.code == FrameCode::TooLarge {
                    guard.discard();
                } else {
                    drop(guard);
                }
                Ok(x)
            }
            Err(e) => {
                guard.discard();
                Err(e)
            }
        }
    }

    /// One attempt with the request timeout, counted and fed to passive health. `panic`: sent
    /// to an unhealthy backend because none is healthy (panic mode).
    /// `now_ms`: when the backend was picked.
    pub(super) async fn call(
        &self,
        b: &Backend,
        name: &str,
        panic: bool,
        now_ms: u64,
    ) -> Result<String, AttemptError> {
        let c = b.counters(self.shard);
        bump(&c.requests, 1);
        bump(&c.in_flight, 1);
        let _in_flight = InFlight(c);
        let start = b.begin(panic, now_ms);
        let timeout = self.shared.config.request_timeout;
        let phase = Cell::new(Phase::Checkout);
        let result = futures_lite::future::or(self.attempt(b, name, &phase), async {
            glommio::timer::sleep(timeout).await;
            Err(AttemptError::timed_out(phase.get(), timeout))
        })
        .await;
        if result.is_err() {
            bump(&c.errors, 1);
        }
        feed_health(
            b,
            start,
            &result,
            || self.shared.now_ms(),
            &self.shared.config.health,
        );
        result
    }
}

/// Passive health: a call's outcome, judged against what it saw when it began. Only failures
/// that blame the backend count toward ejection (see [`Blame`] and [`Backend`]).
pub(super) fn feed_health(
    b: &Backend,
    start: CallStart,
    result: &Result<String, AttemptError>,
    now_ms: impl FnOnce() -> u64,
    cfg: &HealthConfig,
) {
    match result {
        Ok(_) => b.record_success(start),
        Err(e) if e.blame() == Blame::Backend => {
            if let Some(length) = b.record_failure(start, now_ms(), cfg) {
                tracing::warn!(backend = %b.addr, ?length, error = %e, "backend ejected after {} consecutive failures", cfg.eject_after);
            }
        }
        Err(_) => {}
    }
}

impl<P: ConnectionPool<UpstreamManager>> GreetHandler for GatewayGreeter<P> {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        // Refused here, before any backend sees it: a longer name's greeting does not fit one
        // upstream frame (frame::MAX_HELLO_NAME is derived from the frame limit).
        if name.len() > frame::MAX_HELLO_NAME {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "name is {} bytes; the longest name the gateway can forward is {} bytes \
                     (its greeting must fit one {}-byte upstream frame)",
                    name.len(),
                    frame::MAX_HELLO_NAME,
                    frame::MAX_FRAME
                ),
            ));
        }
        let backends = self.backends();
        if backends.is_empty() {
            return Err(Status::new(
                Code::Unavailable,
                "no upstream backend is configured (add one with --backend, the backends file and SIGHUP, or the upstream admin endpoint)",
            ));
        }
        let mut tried = [usize::MAX; 2];
        let mut last: Option<(SocketAddr, AttemptError)> = None;
        let mut panicked = false;
        for attempt in 0..2 {
            let now = self.shared.now_ms();
            let pick = self.picker.pick(
                backends.len(),
                |i| !tried.contains(&i) && backends[i].is_healthy(now),
                |i| read(&backends[i].counters(self.shard).in_flight),
            );
            let i = match pick {
                Some(i) => i,
                // Panic mode: nothing is healthy; one try on the backend ejected longest ago.
                None if attempt == 0 => match panic_pick(&backends) {
                    Some(i) => {
                        panicked = true;
                        i
                    }
                    None => break,
                },
                None => break,
            };
            tried[attempt] = i;
            match self.call(&backends[i], &name, panicked, now).await {
                Ok(reply) => return Ok(reply),
                Err(e) if e.blame() == Blame::Request => {
                    return Err(Status::new(
                        Code::InvalidArgument,
                        format!("backend {}: {e}", backends[i].addr),
                    ));
                }
                Err(e) => last = Some((backends[i].addr, e)),
            }
            if panicked {
                break;
            }
        }
        let now = self.shared.now_ms();
        let unhealthy = || -> String {
            let why: Vec<String> = backends.iter().map(|b| b.why_unhealthy(now)).collect();
            format!("no healthy upstream backend: {}", why.join("; "))
        };
        Err(match last {
            Some((addr, e)) if panicked => Status::new(
                Code::Unavailable,
                format!(
                    "{}; panic mode tried {addr} (ejected longest ago): {e}",
                    unhealthy()
                ),
            ),
            Some((addr, e)) => Status::new(
                Code::Unavailable,
                format!("upstream request failed (last backend {addr}): {e}"),
            ),
            None => Status::new(Code::Unavailable, unhealthy()),
        })
    }
}

impl<P> Drop for GatewayGreeter<P> {
    fn drop(&mut self) {
        // The shard is stopping: drop its glommio wrappers while the executor still runs.
        drop_thread_wrappers();
    }
}
