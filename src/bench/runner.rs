//! Client shards: one OS thread per shard, pinned to a CPU, each running a tokio current-thread
//! runtime that drives its share of the connections with the `h2` client directly. Nothing is
//! shared between shards during the run except three counters; each shard records into its own
//! histograms, merged when the run ends.

use super::config::{BenchConfig, Load, Stop, available_cpus};
use super::grpc::{self, Code, Failure, Side};
use super::histogram::{LatencyHistogram, Schedule};
use super::metrics::{self, PoolSnapshot};
use crate::wire::{HelloReply, HelloRequest, SAY_HELLO, encode_frame};
use bytes::Bytes;
use h2::client::SendRequest;
use http::Request;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a run could not produce a result. Failed *calls* are not errors: they are counted in the
/// result by status.
#[derive(Debug)]
pub enum BenchError {
    /// The configuration is invalid (names the flag to fix).
    Config(super::config::ConfigError),
    /// The target could not be reached before the load started.
    Connect(String),
    /// The client itself failed (runtime or thread creation, a shard panicked).
    Client(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Config(e) => write!(f, "{e}"),
            BenchError::Connect(e) => write!(f, "{e}"),
            BenchError::Client(e) => write!(f, "load generator failed: {e}"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<super::config::ConfigError> for BenchError {
    fn from(e: super::config::ConfigError) -> Self {
        BenchError::Config(e)
    }
}

/// Which part of a run is in progress (for progress display).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Load is offered but not recorded.
    Warmup,
    /// Load is recorded.
    Measure,
}

/// A snapshot handed to the progress callback about every 100 ms.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Current phase.
    pub phase: Phase,
    /// Time spent in the current phase.
    pub elapsed: Duration,
    /// Measured calls completed so far (ok + failed).
    pub completed: u64,
    /// Measured calls failed so far.
    pub failed: u64,
}

/// Failures of one kind: how many, and the first message seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCount {
    /// Calls that failed this way.
    pub count: u64,
    /// The first `grpc-message` (or client-side error) seen for this kind.
    pub example: String,
}

/// Everything measured in one run, merged over the client shards.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Latency of successful calls: in the open loop from the intended start when the request
    /// had to wait for a busy stream slot (corrected for coordinated omission), otherwise from
    /// the send.
    pub latency: LatencyHistogram,
    /// Service time of successful calls: always from the actual send.
    pub service: LatencyHistogram,
    /// Calls that ended with `OK` and a well-formed reply.
    pub ok: u64,
    /// Failed calls by (status, who decided).
    pub failures: BTreeMap<(Code, Side), FailureCount>,
    /// From the start of the measured phase to the last measured completion.
    pub elapsed: Duration,
    /// Open loop only: requests due in the measured phase that were never sent because the client
    /// fell too far behind the schedule (the run is cut one grace period after its end).
    pub unsent: u64,
    /// Client shards used.
    pub shards: usize,
    /// The CPU each shard was pinned to (`None`: not pinned).
    pub pinned: Vec<Option<usize>>,
    /// Pool statistics before and after the measured phase, when the target serves
    /// `shardpool.v1.Admin/PoolMetrics`.
    pub pool: Option<(PoolSnapshot, PoolSnapshot)>,
    /// Why pool statistics are missing, when they were asked for.
    pub pool_error: Option<String>,
}

impl RunResult {
    /// All failed calls.
    pub fn failed(&self) -> u64 {
        self.failures.values().map(|f| f.count).sum()
    }
}

/// Counters shared by all shards.
struct Shared {
    /// Measured requests issued so far (for `Stop::Requests`). Ordering: Relaxed; the
    /// read-modify-write alone hands each request a unique number, nothing else is published.
    issued: AtomicU64,
    /// Measured calls completed (progress only). Ordering: Relaxed, a statistic.
    completed: AtomicU64,
    /// Measured calls failed (progress only). Ordering: Relaxed, a statistic.
    failed: AtomicU64,
}

/// When the phases start and end; the same for every shard.
#[derive(Clone, Copy, Debug)]
struct Go {
    start: Instant,
    measure_start: Instant,
    /// `Stop::Duration`: no request whose (intended) start is at or after this is sent.
    end: Option<Instant>,
    /// Open loop with a duration: no request at all is sent after this (a client that has
    /// fallen behind its schedule gives up here and counts the rest as unsent).
    cut: Option<Instant>,
}

/// What one shard does.
#[derive(Clone, Debug)]
struct ShardPlan {
    index: usize,
    connections: usize,
    cpu: Option<usize>,
    /// Open loop: this shard's share of the rate and its phase offset.
    schedule: Option<(f64, f64)>,
}

fn plan(config: &BenchConfig) -> Vec<ShardPlan> {
    let shards = config.shard_count();
    let cpus = if config.cpus.is_empty() {
        available_cpus()
    } else {
        config.cpus.clone()
    };
    (0..shards)
        .map(|index| {
            let connections =
                config.connections / shards + usize::from(index < config.connections % shards);
            let schedule = match config.load {
                Load::Closed => None,
                Load::Open { rate } => Some((
                    rate * connections as f64 / config.connections as f64,
                    index as f64 / shards as f64,
                )),
            };
            ShardPlan {
                index,
                connections,
                cpu: if config.pin && !cpus.is_empty() {
                    Some(cpus[index % cpus.len()])
                } else {
                    None
                },
                schedule,
            }
        })
        .collect()
}

/// What one shard measured.
#[derive(Default)]
struct Recorder {
    latency: LatencyHistogram,
    service: LatencyHistogram,
    ok: u64,
    failures: BTreeMap<(Code, Side), FailureCount>,
    last_done: Option<Instant>,
    unsent: u64,
}

impl Recorder {
    fn fail(&mut self, failure: Failure) {
        self.failures
            .entry((failure.code, failure.side))
            .or_insert_with(|| FailureCount {
                count: 0,
                example: failure.message,
            })
            .count += 1;
    }

    fn absorb(&mut self, other: Recorder) {
        self.latency.merge(&other.latency);
        self.service.merge(&other.service);
        self.ok += other.ok;
        for (key, f) in other.failures {
            self.failures
                .entry(key)
                .or_insert_with(|| FailureCount {
                    count: 0,
                    example: f.example,
                })
                .count += f.count;
        }
        self.last_done = self.last_done.max(other.last_done);
        self.unsent += other.unsent;
    }
}

/// One HTTP/2 connection of a shard, re-dialled when it breaks.
struct Conn {
    addr: SocketAddr,
    send: RefCell<Option<SendRequest<Bytes>>>,
    /// Bumped at every (re)dial, so a worker only discards the connection it saw fail.
    generation: Cell<u64>,
    dialing: tokio::sync::Mutex<()>,
}

impl Conn {
    async fn dial(addr: SocketAddr) -> Result<Conn, String> {
        let send = grpc::connect(addr).await?;
        Ok(Conn {
            addr,
            send: RefCell::new(Some(send)),
            generation: Cell::new(0),
            dialing: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Option<(u64, SendRequest<Bytes>)> {
        self.send
            .borrow()
            .as_ref()
            .map(|s| (self.generation.get(), s.clone()))
    }

    async fn sender(&self) -> Result<(u64, SendRequest<Bytes>), Failure> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        match grpc::connect(self.addr).await {
            Ok(send) => {
                self.generation.set(self.generation.get() + 1);
                *self.send.borrow_mut() = Some(send.clone());
                Ok((self.generation.get(), send))
            }
            Err(message) => {
                // Back off so a dead target is not hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err(Failure::client(
                    Code::Unavailable,
                    format!("reconnect failed: {message}"),
                    false,
                ))
            }
        }
    }

    fn broken(&self, generation: u64) {
        if self.generation.get() == generation {
            self.send.borrow_mut().take();
        }
    }
}

struct ShardState {
    conns: Vec<Conn>,
    head: Request<()>,
    body: Bytes,
    timeout: Duration,
    go: Go,
    requests: Option<u64>,
    schedule: Option<Schedule>,
    next_k: Cell<u64>,
    shared: Arc<Shared>,
    rec: RefCell<Recorder>,
}

impl ShardState {
    async fn call(&self, conn: &Conn) -> Result<(), Failure> {
        let (generation, send) = conn.sender().await?;
        let result = grpc::unary_with_timeout(&send, &self.head, self.body.clone(), self.timeout)
            .await
            .and_then(|reply| {
                grpc::decode_message::<HelloReply>(reply)
                    .map(|_| ())
                    .map_err(|e| Failure::client(Code::Internal, e, false))
            });
        if let Err(f) = &result
            && f.connection_broken
        {
            conn.broken(generation);
        }
        result
    }

    /// One stream slot: sends requests one after another on `conn` until the run ends.
    async fn slot(self: Rc<Self>, conn: usize) {
        let conn = &self.conns[conn];
        tokio::time::sleep_until(self.go.start.into()).await;
        loop {
            // When this slot became free to send its next request.
            let free = Instant::now();
            let intended = match &self.schedule {
                None => Instant::now(),
                Some(schedule) => {
                    let k = self.next_k.get();
                    self.next_k.set(k + 1);
                    schedule.intended(k)
                }
            };
            if self.go.end.is_some_and(|end| intended >= end) {
                break;
            }
            let measured = intended >= self.go.measure_start;
            // Ordering: Relaxed; the read-modify-write alone numbers each request uniquely,
            // nothing else is published through `issued`.
            if measured
                && let Some(n) = self.requests
                && self.shared.issued.fetch_add(1, Ordering::Relaxed) >= n
            {
                break;
            }
            if self.schedule.is_some() {
                tokio::time::sleep_until(intended.into()).await;
                if self.go.cut.is_some_and(|cut| Instant::now() >= cut) {
                    if measured {
                        self.rec.borrow_mut().unsent += 1;
                    }
                    break;
                }
            }
            let sent = Instant::now();
            let result = self.call(conn).await;
            let done = Instant::now();
            if !measured {
                continue;
            }
            // Ordering: Relaxed; a statistic for the progress display.
            self.shared.completed.fetch_add(1, Ordering::Relaxed);
            let mut rec = self.rec.borrow_mut();
            rec.last_done = rec.last_done.max(Some(done));
            match result {
                Ok(()) => {
                    rec.ok += 1;
                    // Open loop, slot still busy when the request was due: from the intended
                    // start (coordinated-omission correction). Open loop, slot free in time: from
                    // the send, so the timer's own oversleep (tokio timers have 1 ms resolution)
                    // is not charged to the server. Closed loop: from the send.
                    let start = if self.schedule.is_some() && free > intended {
                        intended
                    } else {
                        sent
                    };
                    rec.latency.record(done - start);
                    rec.service.record(done - sent);
                }
                Err(failure) => {
                    // Ordering: Relaxed; a statistic for the progress display.
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    rec.fail(failure);
                }
            }
        }
    }
}

struct ShardDone {
    rec: Recorder,
    cpu: Option<usize>,
}

fn shard_main(
    plan: ShardPlan,
    config: Arc<BenchConfig>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    go: tokio::sync::oneshot::Receiver<Option<Go>>,
) -> Result<ShardDone, String> {
    let cpu = plan
        .cpu
        .filter(|&id| core_affinity::set_for_current(core_affinity::CoreId { id }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut conns = Vec::with_capacity(plan.connections);
        for _ in 0..plan.connections {
            match Conn::dial(config.target).await {
                Ok(conn) => conns.push(conn),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Ok(ShardDone {
                        rec: Recorder::default(),
                        cpu,
                    });
                }
            }
        }
        let _ = ready.send(Ok(()));
        let Ok(Some(go)) = go.await else {
            return Ok(ShardDone {
                rec: Recorder::default(),
                cpu,
            });
        };
        let request = HelloRequest {
            name: config.name.clone(),
        };
        let state = Rc::new(ShardState {
            conns,
            head: grpc::request_head(&config.authority, SAY_HELLO),
            body: encode_frame(&request),
            timeout: config.timeout,
            go,
            requests: match config.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            schedule: plan
                .schedule
                .map(|(rate, phase)| Schedule::new(go.start, rate, phase)),
            next_k: Cell::new(0),
            shared,
            rec: RefCell::new(Recorder::default()),
        });
        let slots: Vec<_> = (0..plan.connections)
            .flat_map(|c| std::iter::repeat_n(c, config.streams))
            .map(|c| tokio::task::spawn_local(Rc::clone(&state).slot(c)))
            .collect();
        for slot in slots {
            slot.await
                .map_err(|e| format!("client shard {} task failed: {e}", plan.index))?;
        }
        let mut rec = state.rec.take();
        if let (Some(schedule), Some(end)) = (&state.schedule, go.end) {
            // Requests due before the end that no slot even picked up.
            let first_unpicked = state
                .next_k
                .get()
                .max(schedule.due_before(go.measure_start));
            rec.unsent += schedule.due_before(end).saturating_sub(first_unpicked);
        }
        Ok(ShardDone { rec, cpu })
    })
}

/// Runs the load described by `config` and returns what was measured.
///
/// `on_progress` is called from the calling thread about every 100 ms while load runs.
/// Calls that fail are counted in the result; the run itself fails only when the configuration
/// is invalid, the target cannot be reached at the start, or the client breaks.
///
/// # Example
///
/// ```no_run
/// use shardpool::bench::{BenchConfig, Stop, run};
/// use std::time::Duration;
///
/// let config = BenchConfig::new("127.0.0.1:50051".parse().unwrap())
///     .stop(Stop::Duration(Duration::from_secs(2)));
/// let result = run(&config, &mut |_| {})?;
/// println!("{} ok, {} failed", result.ok, result.failed());
/// # Ok::<(), shardpool::bench::BenchError>(())
/// ```
pub fn run(
    config: &BenchConfig,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<RunResult, BenchError> {
    config.validate()?;
    let config = Arc::new(config.clone());
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let plans = plan(&config);
    let shards = plans.len();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut go_senders = Vec::with_capacity(shards);
    let mut handles = Vec::with_capacity(shards);
    for plan in plans {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        go_senders.push(go_tx);
        let (config, shared, ready) = (Arc::clone(&config), Arc::clone(&shared), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-shard-{}", plan.index))
            .spawn(move || shard_main(plan, config, shared, ready, go_rx))
            .map_err(|e| BenchError::Client(format!("cannot start a client thread: {e}")))?;
        handles.push(handle);
    }
    drop(ready_tx);

    let mut connect_error = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                connect_error.get_or_insert(e);
            }
            Err(_) => {
                connect_error
                    .get_or_insert_with(|| "a client shard stopped before connecting".into());
            }
        }
    }

    let metrics_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Client(format!("cannot start a tokio runtime: {e}")))?;
    let metrics_local = tokio::task::LocalSet::new();
    let snapshot = || {
        metrics_local.block_on(
            &metrics_rt,
            metrics::fetch(config.target, &config.authority, config.timeout),
        )
    };

    let go = connect_error.is_none().then(|| {
        let start = Instant::now() + Duration::from_millis(5);
        let measure_start = start + config.warmup;
        let (end, cut) = match (config.stop, config.load) {
            (Stop::Duration(d), Load::Open { .. }) => {
                let end = measure_start + d;
                (Some(end), Some(end + Duration::from_secs(1) + d / 10))
            }
            (Stop::Duration(d), Load::Closed) => (Some(measure_start + d), None),
            (Stop::Requests(_), _) => (None, None),
        };
        Go {
            start,
            measure_start,
            end,
            cut,
        }
    });
    for tx in go_senders {
        let _ = tx.send(go);
    }

    let mut pool_before = None;
    let mut pool_error = None;
    if let Some(go) = go {
        let mut next_tick = go.start;
        while !handles.iter().all(|h| h.is_finished()) {
            let now = Instant::now();
            if config.pool_metrics
                && pool_before.is_none()
                && pool_error.is_none()
                && now >= go.measure_start
            {
                match snapshot() {
                    Ok(s) => pool_before = Some(s),
                    Err(e) => pool_error = Some(e),
                }
            }
            if now >= next_tick {
                let (phase, since) = if now < go.measure_start {
                    (Phase::Warmup, go.start)
                } else {
                    (Phase::Measure, go.measure_start)
                };
                on_progress(&Progress {
                    phase,
                    elapsed: now.saturating_duration_since(since),
                    // Ordering: Relaxed; progress display only, nothing is read through these.
                    completed: shared.completed.load(Ordering::Relaxed),
                    failed: shared.failed.load(Ordering::Relaxed),
                });
                next_tick = now + Duration::from_millis(100);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    let mut rec = Recorder::default();
    let mut pinned = Vec::with_capacity(shards);
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(done)) => {
                rec.absorb(done.rec);
                pinned.push(done.cpu);
            }
            Ok(Err(e)) => return Err(BenchError::Client(e)),
            Err(_) => return Err(BenchError::Client(format!("client shard {index} panicked"))),
        }
    }
    if let Some(e) = connect_error {
        return Err(BenchError::Connect(e));
    }
    let go = go.expect("go is set whenever there was no connect error");

    let pool = match (config.pool_metrics, pool_before) {
        (true, Some(before)) => match snapshot() {
            Ok(after) => Some((before, after)),
            Err(e) => {
                pool_error = Some(e);
                None
            }
        },
        (true, None) if pool_error.is_none() => {
            // The run ended before the measured phase started (tiny --requests).
            pool_error = Some("the run ended before pool metrics could be read".into());
            None
        }
        _ => None,
    };

    let elapsed = rec.last_done.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(go.measure_start)
    });
    Ok(RunResult {
        latency: rec.latency,
        service: rec.service,
        ok: rec.ok,
        failures: rec.failures,
        elapsed,
        unsent: rec.unsent,
        shards,
        pinned,
        pool,
        pool_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_connections_and_rate() {
        let config = BenchConfig::new("127.0.0.1:1".parse().unwrap())
            .connections(5)
            .threads(2)
            .pin(false)
            .load(Load::Open { rate: 1000.0 });
        let plans = plan(&config);
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].connections + plans[1].connections, 5);
        assert_eq!(plans[0].connections, 3);
        let rates: f64 = plans.iter().map(|p| p.schedule.unwrap().0).sum();
        assert!((rates - 1000.0).abs() < 1e-9);
        assert_eq!(plans[0].schedule.unwrap().1, 0.0);
        assert_eq!(plans[1].schedule.unwrap().1, 0.5);
        assert!(plans.iter().all(|p| p.cpu.is_none()));
    }

    #[test]
    fn recorder_merges_failures_by_status() {
        let mut a = Recorder::default();
        a.fail(Failure::client(Code::Unavailable, "first", false));
        let mut b = Recorder::default();
        b.fail(Failure::client(Code::Unavailable, "second", true));
        b.fail(Failure {
            code: Code::Unavailable,
            side: Side::Server,
            message: "backend down".into(),
            connection_broken: false,
        });
        a.absorb(b);
        let client = &a.failures[&(Code::Unavailable, Side::Client)];
        assert_eq!(client.count, 2);
        assert_eq!(client.example, "first");
        assert_eq!(a.failures[&(Code::Unavailable, Side::Server)].count, 1);
    }
}
