//! Pool micro-benchmarks: checkout + return on pinned threads, for the sharded pool, the
//! `MutexPool` baseline and peer pools from crates.io, side by side in the same groups; the steal
//! path; the pool's clock; the idle stack against crossbeam's `ArrayQueue`.
//!
//! Method, machine, commands and results: docs/benchmarks.md, "Pool micro-benchmarks (criterion)".
//!
//! * Every multi-threaded measurement runs on a [`Team`] of worker threads that live for the whole
//!   benchmark, each pinned to one CPU (thread `i` on the `i mod n`-th CPU this process may use) and,
//!   for the sharded pool, bound to shard `i mod shards`. Criterion's `iter_custom` hands every
//!   worker the same number of checkout+return pairs; they start together at a barrier and each
//!   times its own loop. The reported time is the mean over threads of time per pair: time per
//!   operation per thread. With more threads than CPUs, threads share CPUs and this time includes
//!   the time a thread waits for its CPU.
//! * Every async pool (ours and the peers) is driven by the same minimal executor, [`run`]: one poll
//!   with a thread-parking waker made once per thread. No pool is ever exhausted here (64 connections
//!   per key, at most 8 threads), so once a pool is warm every checkout completes at its first
//!   poll; [`PENDING`] counts those that did not, and the run prints it (bb8 creates connections in
//!   tasks on its runtime, so its first checkouts on an empty pool wait for those tasks).
//! * Peers are used as their docs show: deadpool's and bb8's `Pool::builder`, r2d2's
//!   `Pool::builder().build`, qp's `Pool::new` + `acquire`, pingora-pool's `get` + `put` (as in its
//!   own benchmark; the eviction and use notifications that `put` returns are dropped, as there).
//!   Pools that hold one destination get one pool per key; with 64 keys the bench looks the pool up
//!   in a `HashMap` with foldhash (the hasher our key table uses), and pingora's `u64` group key is
//!   the foldhash of the address. With one key they use their pool (or group key) directly.

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use shardpool::baseline::MutexPool;
use shardpool::pool::bind_thread_to_shard;
use shardpool::{Clock, Config, ConnectionPool, Manage, ManualClock, ShardedPool, Stats};
use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

// The pool's own idle stack and clock, compiled from the pool's source files (they are
// `pub(crate)`), so the bench measures exactly the code the pool runs without widening its API.
// They name their siblings as `super::sync`, so they sit at the crate root here, as in the pool.
#[allow(dead_code, unused_imports)]
#[path = "../src/pool/clock.rs"]
mod clock;
#[allow(dead_code, unused_imports)]
#[path = "../src/pool/stack.rs"]
mod stack;
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../src/pool/sync.rs"]
mod sync;

/// Thread counts of the checkout+return groups.
const THREADS: [usize; 4] = [1, 2, 4, 8];
/// Connections allowed per key, in every pool.
const MAX_SIZE: usize = 64;
/// The key count of the many-keys group (a power of two: the key rotation masks).
const MANY_KEYS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Threads: pinning, the team of workers, the executor.
// ---------------------------------------------------------------------------------------------

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data for which all-zero bytes is the empty set;
    // `sched_getaffinity(0, ..)` writes the calling thread's mask into the set it is given, which
    // is exactly `size_of::<cpu_set_t>()` bytes; `CPU_ISSET` reads within the set.
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            Vec::new()
        } else {
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        }
    };
    if cpus.is_empty() { vec![0] } else { cpus }
}

/// Pins the calling thread to `cpu`. A failure (a CPU taken away meanwhile) leaves it unpinned,
/// which only adds noise, so it is reported and not fatal.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: as in `allowed_cpus`: an all-zero `cpu_set_t` is the empty set, `CPU_SET` writes
    // within it (`cpu` < CPU_SETSIZE, it came from `allowed_cpus`), and `sched_setaffinity(0, ..)`
    // reads exactly that many bytes and changes only the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        eprintln!(
            "warning: could not pin a bench thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The shard count of every sharded pool here: one per CPU this process may use.
fn shards() -> usize {
    allowed_cpus().len()
}

/// A batch of `n` checkout+return pairs (or other operations) on one worker thread.
type Batch = Box<dyn FnMut(u64)>;

/// Worker threads that live for one benchmark: each pinned, each running its own [`Batch`].
struct Team {
    jobs: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<Duration>,
    workers: Vec<thread::JoinHandle<()>>,
    /// Operations run so far, over all threads (for checking the pool's counters afterwards).
    ops: Cell<u64>,
}

impl Team {
    /// Starts `threads` workers; worker `i` pins itself, then builds its batch with `setup(i)`.
    fn new<S>(threads: usize, setup: S) -> Team
    where
        S: Fn(usize) -> Batch + Send + Sync + 'static,
    {
        let setup = Arc::new(setup);
        let cpus = allowed_cpus();
        let start = Arc::new(Barrier::new(threads));
        let (done_tx, done) = mpsc::channel();
        let mut jobs = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (job_tx, job_rx) = mpsc::channel::<u64>();
            let setup = Arc::clone(&setup);
            let start = Arc::clone(&start);
            let done_tx = done_tx.clone();
            let cpu = cpus[i % cpus.len()];
            let worker = thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn(move || {
                    pin_to_cpu(cpu);
                    let mut batch = setup(i);
                    for iters in job_rx {
                        start.wait();
                        let started = Instant::now();
                        batch(iters);
                        if done_tx.send(started.elapsed()).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawning a bench thread");
            jobs.push(job_tx);
            workers.push(worker);
        }
        Team {
            jobs,
            done,
            workers,
            ops: Cell::new(0),
        }
    }

    /// Runs `iters` operations on every worker at once; returns the mean over threads of the time
    /// each took (so criterion reports time per operation per thread).
    fn run(&self, iters: u64) -> Duration {
        for job in &self.jobs {
            job.send(iters).expect("a bench thread died");
        }
        let total: Duration = (0..self.jobs.len())
            .map(|_| self.done.recv().expect("a bench thread died"))
            .sum();
        self.ops
            .set(self.ops.get() + iters * self.jobs.len() as u64);
        total / self.jobs.len() as u32
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.jobs.clear(); // ends every worker's job loop
        if !thread::panicking() {
            for worker in self.workers.drain(..) {
                worker.join().expect("a bench thread panicked");
            }
        }
    }
}

/// Checkouts whose future was not ready at its first poll (see the module docs).
static PENDING: AtomicU64 = AtomicU64::new(0);

struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
}

/// The one executor every async pool here runs on: polls `future` with this thread's parking waker
/// until it is ready. A checkout that completes at once costs one poll and nothing else.
#[inline]
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            // Ordering: Relaxed. A statistic read after the workers are joined.
            PENDING.fetch_add(1, Ordering::Relaxed);
            thread::park();
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Keys and the contenders.
// ---------------------------------------------------------------------------------------------

/// `n` destinations: 127.0.0.1:10000, :10001, …
fn destinations(n: usize) -> Arc<[SocketAddr]> {
    (0..n)
        .map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16)))
        .collect()
}

/// Walks a power-of-two number of keys round-robin, each thread from its own offset.
struct Rotation {
    next: usize,
    mask: usize,
}

impl Rotation {
    fn new(thread: usize, keys: usize) -> Rotation {
        debug_assert!(keys.is_power_of_two());
        Rotation {
            next: (thread * 7) & (keys - 1),
            mask: keys - 1,
        }
    }

    #[inline]
    fn step(&mut self) -> usize {
        let k = self.next;
        self.next = (k + 1) & self.mask;
        k
    }
}

/// Our manager: a "connection" is a number and creating one costs nothing, so the benches
/// measure the pools and nothing else. The peers' managers below are the same.
struct Numbers;

impl Manage for Numbers {
    type Key = SocketAddr;
    type Conn = u64;
    type Error = Infallible;

    async fn create(&self, _key: &SocketAddr) -> Result<u64, Infallible> {
        Ok(0)
    }
}

/// The configuration of both of our pools: documented defaults (90 s idle timeout, so the clock
/// is read on every checkout and return) with one shard per CPU and 64 connections per key.
fn config() -> Config {
    Config::default().shards(shards()).max_size(MAX_SIZE)
}

struct DeadpoolNumbers;

impl deadpool::managed::Manager for DeadpoolNumbers {
    type Type = u64;
    type Error = Infallible;

    async fn create(&self) -> Result<u64, Infallible> {
        Ok(0)
    }

    async fn recycle(
        &self,
        _conn: &mut u64,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

struct Bb8Numbers;

impl bb8::ManageConnection for Bb8Numbers {
    type Connection = u64;
    type Error = Infallible;

    async fn connect(&self) -> Result<u64, Infallible> {
        Ok(0)
    }

    async fn is_valid(&self, _conn: &mut u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut u64) -> bool {
        false
    }
}

struct R2d2Numbers;

impl r2d2::ManageConnection for R2d2Numbers {
    type Connection = u64;
    type Error = Infallible;

    fn connect(&self) -> Result<u64, Infallible> {
        Ok(0)
    }

    fn is_valid(&self, _conn: &mut u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut u64) -> bool {
        false
    }
}

struct QpNumbers;

#[qp::async_trait]
impl qp::resource::Manage for QpNumbers {
    type Output = u64;
    type Error = Infallible;

    async fn try_create(&self) -> Result<u64, Infallible> {
        Ok(0)
    }
}

/// A pingora-pool "connection": it carries the metadata `put` needs back.
struct PingoraConn(pingora_pool::ConnectionMeta);

/// Unique pingora connection ids.
static PINGORA_IDS: AtomicI32 = AtomicI32::new(0);

/// One pool per destination, for the peers that pool one destination each.
enum PerKey<P> {
    One(P),
    Many(HashMap<SocketAddr, P, foldhash::fast::RandomState>),
}

impl<P> PerKey<P> {
    fn new(keys: &[SocketAddr], mut make: impl FnMut() -> P) -> Self {
        if keys.len() == 1 {
            PerKey::One(make())
        } else {
            PerKey::Many(keys.iter().map(|&k| (k, make())).collect())
        }
    }

    #[inline]
    fn get(&self, key: &SocketAddr) -> &P {
        match self {
            PerKey::One(pool) => pool,
            PerKey::Many(pools) => &pools[key],
        }
    }
}

/// A pool under test.
#[derive(Clone, Copy)]
enum Contender {
    Sharded,
    Mutex,
    Deadpool,
    Bb8,
    R2d2,
    Qp,
    Pingora,
}

const CONTENDERS: [Contender; 7] = [
    Contender::Sharded,
    Contender::Mutex,
    Contender::Deadpool,
    Contender::Bb8,
    Contender::R2d2,
    Contender::Qp,
    Contender::Pingora,
];

/// A team with, for our pools, a way to read the pool's counters afterwards.
struct Setup {
    team: Team,
    stats: Option<Box<dyn Fn() -> Stats>>,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Sharded => "sharded",
            Contender::Mutex => "mutex_baseline",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::R2d2 => "r2d2",
            Contender::Qp => "qp",
            Contender::Pingora => "pingora_pool",
        }
    }

    /// A fresh pool of this kind and `threads` workers doing checkout+return pairs over `keys`.
    fn setup(self, threads: usize, keys: Arc<[SocketAddr]>) -> Setup {
        match self {
            Contender::Sharded => ours(
                ShardedPool::new(Numbers, config()).expect("a valid config"),
                threads,
                keys,
            ),
            Contender::Mutex => ours(
                MutexPool::new(Numbers, config()).expect("a valid config"),
                threads,
                keys,
            ),
            Contender::Deadpool => {
                let pools = Arc::new(PerKey::new(&keys, || {
                    deadpool::managed::Pool::<DeadpoolNumbers>::builder(DeadpoolNumbers)
                        .max_size(MAX_SIZE)
                        .build()
                        .expect("a deadpool")
                }));
                peer(threads, keys, move |keys| {
                    let pools = Arc::clone(&pools);
                    Box::new(move |key: usize| {
                        let conn = run(pools.get(&keys[key]).get()).expect("a deadpool object");
                        black_box(&*conn);
                    })
                })
            }
            Contender::Bb8 => {
                // bb8 needs a running tokio runtime: it spawns its reaper and every connection it
                // creates onto the runtime, and times each `get` out with tokio's timer. Workers
                // enter this one (a single runtime thread, idle once the pool is warm: a checkout
                // of an idle connection is ready at its first poll and spawns nothing).
                let runtime = Arc::new(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_time()
                        .build()
                        .expect("a tokio runtime"),
                );
                let pools = Arc::new(PerKey::new(&keys, || {
                    runtime
                        .block_on(
                            bb8::Pool::builder()
                                .max_size(MAX_SIZE as u32)
                                .build(Bb8Numbers),
                        )
                        .expect("a bb8 pool")
                }));
                peer(threads, keys, move |keys| {
                    let pools = Arc::clone(&pools);
                    let runtime = Arc::clone(&runtime);
                    Box::new(move |key: usize| {
                        let _context = runtime.enter();
                        let conn = run(pools.get(&keys[key]).get()).expect("a bb8 connection");
                        black_box(&*conn);
                    })
                })
            }
            Contender::R2d2 => {
                let pools = Arc::new(PerKey::new(&keys, || {
                    r2d2::Pool::builder()
                        .max_size(MAX_SIZE as u32)
                        .build(R2d2Numbers)
                        .expect("an r2d2 pool")
                }));
                peer(threads, keys, move |keys| {
                    let pools = Arc::clone(&pools);
                    Box::new(move |key: usize| {
                        let conn = pools.get(&keys[key]).get().expect("an r2d2 connection");
                        black_box(&*conn);
                    })
                })
            }
            Contender::Qp => {
                let pools = Arc::new(PerKey::new(&keys, || qp::Pool::new(QpNumbers, MAX_SIZE)));
                peer(threads, keys, move |keys| {
                    let pools = Arc::clone(&pools);
                    Box::new(move |key: usize| {
                        let conn = run(pools.get(&keys[key]).acquire()).expect("a qp resource");
                        black_box(&*conn);
                    })
                })
            }
            Contender::Pingora => {
                let pool = Arc::new(pingora_pool::ConnectionPool::<PingoraConn>::new(
                    MAX_SIZE * keys.len(),
                ));
                let hasher = foldhash::fast::RandomState::default();
                let only = hasher.hash_one(keys[0]);
                let many = keys.len() > 1;
                peer(threads, keys, move |keys| {
                    let pool = Arc::clone(&pool);
                    let hasher = hasher.clone();
                    Box::new(move |key: usize| {
                        let group = if many {
                            hasher.hash_one(keys[key])
                        } else {
                            only
                        };
                        let conn = pool.get(&group).unwrap_or_else(|| {
                            // Ordering: Relaxed. Ids only need to be distinct.
                            let id = PINGORA_IDS.fetch_add(1, Ordering::Relaxed);
                            PingoraConn(pingora_pool::ConnectionMeta::new(group, id))
                        });
                        black_box(&conn);
                        let meta = conn.0.clone();
                        drop(pool.put(&meta, conn));
                    })
                })
            }
        }
    }
}

/// Workers doing checkout+return pairs on one of our pools, each bound to shard `i mod shards`.
fn ours<P: ConnectionPool<Numbers>>(pool: P, threads: usize, keys: Arc<[SocketAddr]>) -> Setup {
    let shards = pool.shard_count();
    let observed = pool.clone();
    let team = Team::new(threads, move |i| {
        bind_thread_to_shard(i % shards);
        let pool = pool.clone();
        let keys = Arc::clone(&keys);
        let mut rotation = Rotation::new(i, keys.len());
        Box::new(move |iters| {
            for _ in 0..iters {
                let conn = run(pool.get(&keys[rotation.step()])).expect("a connection");
                black_box(&*conn);
            }
        })
    });
    Setup {
        team,
        stats: Some(Box::new(move || observed.stats())),
    }
}

/// Workers doing one peer's checkout+return pair (`pair(key index)`) over `keys`.
fn peer<F>(threads: usize, keys: Arc<[SocketAddr]>, make_pair: F) -> Setup
where
    F: Fn(Arc<[SocketAddr]>) -> Box<dyn FnMut(usize)> + Send + Sync + 'static,
{
    let team = Team::new(threads, move |i| {
        let mut pair = make_pair(Arc::clone(&keys));
        let mut rotation = Rotation::new(i, keys.len());
        Box::new(move |iters| {
            for _ in 0..iters {
                pair(rotation.step());
            }
        })
    });
    Setup { team, stats: None }
}

// ---------------------------------------------------------------------------------------------
// The groups.
// ---------------------------------------------------------------------------------------------

/// Benchmarks `id` on a team built on first use (criterion calls the routine once per sample; the
/// team and its pool live across them), then hands the team to `after`.
fn bench_team(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    name: &str,
    param: usize,
    make: impl FnOnce() -> Setup,
    after: impl FnOnce(&str, Setup),
) {
    let label = format!("{group_name}/{name}/{param}");
    let mut make = Some(make);
    let mut setup = None;
    // Ordering: Relaxed. Read after the previous team's workers were joined.
    PENDING.store(0, Ordering::Relaxed);
    group.bench_function(BenchmarkId::new(name, param), |b| {
        let setup = setup.get_or_insert_with(|| (make.take().expect("made once"))());
        b.iter_custom(|iters| setup.team.run(iters));
    });
    if let Some(setup) = setup {
        after(&label, setup);
        // Ordering: Relaxed, as above (`after` joined the workers).
        let pending = PENDING.load(Ordering::Relaxed);
        if pending > 0 {
            eprintln!("note: {label}: {pending} checkouts needed more than one poll");
        }
    }
}

/// Prints what our pool's counters say about a finished run.
fn report(label: &str, setup: Setup) {
    let Setup { team, stats } = setup;
    let ops = team.ops.get();
    drop(team);
    if let Some(stats) = stats {
        let t = stats().total;
        eprintln!(
            "{label}: {ops} pairs; checkouts {}, local hits {}, steals {}, creates {}, waits {}",
            t.checkouts, t.local_hits, t.steals, t.creates, t.waits
        );
    }
}

/// Checkout+return on 1, 2, 4, 8 threads, one key and 64 keys, every contender side by side.
fn checkout_return(c: &mut Criterion) {
    for (group_name, keys) in [
        ("checkout_return_1_key", 1),
        ("checkout_return_64_keys", MANY_KEYS),
    ] {
        let mut group = c.benchmark_group(group_name);
        let keys = destinations(keys);
        for threads in THREADS {
            for contender in CONTENDERS {
                let keys = Arc::clone(&keys);
                bench_team(
                    &mut group,
                    group_name,
                    contender.name(),
                    threads,
                    move || contender.setup(threads, keys),
                    report,
                );
            }
        }
        group.finish();
    }
}

/// Workers that check out from shard `home` (`hop == false`), or alternately from `home` and the
/// next shard (`hop == true`), each thread with a key of its own and so a single connection.
/// Hopping, every checkout finds its own shard's stack empty and steals the connection the last
/// return left on the other shard.
fn hopper<P: ConnectionPool<Numbers>>(pool: P, threads: usize, hop: bool) -> Setup {
    let shards = pool.shard_count();
    let keys = destinations(threads);
    let observed = pool.clone();
    let team = Team::new(threads, move |i| {
        let pool = pool.clone();
        let key = keys[i];
        let home = i % shards;
        let away = (i + 1) % shards;
        let mut shard = home;
        Box::new(move |iters| {
            for _ in 0..iters {
                let conn = run(pool.get_on(shard, &key)).expect("a connection");
                black_box(&*conn);
                drop(conn);
                if hop {
                    shard = if shard == home { away } else { home };
                }
            }
        })
    });
    Setup {
        team,
        stats: Some(Box::new(move || observed.stats())),
    }
}

/// The steal path against a local hit and against the baseline running the same loop.
fn steal_path(c: &mut Criterion) {
    let group_name = "steal_path";
    let mut group = c.benchmark_group(group_name);
    for threads in [1, 2] {
        bench_team(
            &mut group,
            group_name,
            "sharded_local_hit",
            threads,
            || hopper(ShardedPool::new(Numbers, config()).unwrap(), threads, false),
            |label, setup| {
                let t = (setup.stats.as_ref().expect("our pool"))().total;
                assert_eq!(t.steals, 0, "{label}: a local loop stole");
                report(label, setup);
            },
        );
        bench_team(
            &mut group,
            group_name,
            "sharded_steal",
            threads,
            || hopper(ShardedPool::new(Numbers, config()).unwrap(), threads, true),
            |label, setup| {
                let t = (setup.stats.as_ref().expect("our pool"))().total;
                assert_eq!(
                    (t.local_hits, t.steals + t.creates, t.creates),
                    (0, setup.team.ops.get(), threads as u64),
                    "{label}: every checkout but each thread's first must be a steal"
                );
                report(label, setup);
            },
        );
        bench_team(
            &mut group,
            group_name,
            "mutex_baseline_same_loop",
            threads,
            || hopper(MutexPool::new(Numbers, config()).unwrap(), threads, true),
            report,
        );
    }
    group.finish();
}

/// A team of one worker running `op` in a loop.
fn solo(op: impl Fn() + Send + Sync + 'static) -> Setup {
    let op = Arc::new(op);
    let team = Team::new(1, move |_| {
        let op = Arc::clone(&op);
        Box::new(move |iters| {
            for _ in 0..iters {
                op();
            }
        })
    });
    Setup { team, stats: None }
}

/// The pool's clock against `Instant::now()`, alone and inside a checkout+return pair.
fn clock(c: &mut Criterion) {
    let group_name = "clock";
    let mut group = c.benchmark_group(group_name);
    bench_team(
        &mut group,
        group_name,
        "pool_clock_coarse",
        1,
        || {
            let coarse = clock::Clock::Coarse;
            solo(move || {
                black_box(black_box(&coarse).now());
            })
        },
        report,
    );
    bench_team(
        &mut group,
        group_name,
        "instant_now",
        1,
        || {
            solo(|| {
                black_box(Instant::now());
            })
        },
        report,
    );
    let pool_with = |config: Config| {
        move || {
            ours(
                ShardedPool::new(Numbers, config).expect("a valid config"),
                1,
                destinations(1),
            )
        }
    };
    bench_team(
        &mut group,
        group_name,
        "pair_no_expiry_no_clock_read",
        1,
        pool_with(config().idle_timeout(None)),
        report,
    );
    bench_team(
        &mut group,
        group_name,
        "pair_coarse_clock_default",
        1,
        pool_with(config()),
        report,
    );
    bench_team(
        &mut group,
        group_name,
        "pair_manual_clock",
        1,
        pool_with(config().clock(Clock::Manual(ManualClock::new()))),
        report,
    );
    group.finish();
}

/// The idle stack against crossbeam's `ArrayQueue`: pop one value and push it back (a checkout and
/// a return), on 1 and 2 threads sharing one structure holding 8 values, capacity 32 (one shard's
/// share of a 64-connection key on 2 shards; the stack's arena has the key's 64 nodes). The stack
/// hands out a lease on the value's node and the bench touches the value through it, as the pool's
/// guard does; the queue moves the value itself.
fn idle_stack(c: &mut Criterion) {
    const CAPACITY: usize = 32;
    const FILLED: u64 = 8;
    let group_name = "idle_stack";
    let mut group = c.benchmark_group(group_name);
    for threads in [1, 2] {
        bench_team(
            &mut group,
            group_name,
            "idle_stack_pop_push",
            threads,
            || {
                let stack = Arc::new(stack::IdleStacks::new([CAPACITY], MAX_SIZE));
                for id in 0..FILLED {
                    let lease = stack.occupy(id).map_err(drop).expect("a free node");
                    stack.push(0, lease).map_err(drop).expect("room");
                }
                let team = Team::new(threads, move |_| {
                    let stack = Arc::clone(&stack);
                    Box::new(move |iters| {
                        for _ in 0..iters {
                            if let Some(mut lease) = stack.pop(0) {
                                // SAFETY: this closure's `Arc` keeps the stacks alive.
                                let id = unsafe { lease.get_mut() };
                                *id = black_box(*id);
                                stack.push(0, lease).map_err(drop).expect("room");
                            }
                        }
                    })
                });
                Setup { team, stats: None }
            },
            report,
        );
        bench_team(
            &mut group,
            group_name,
            "array_queue_pop_push",
            threads,
            || {
                let queue = Arc::new(crossbeam_queue::ArrayQueue::new(CAPACITY));
                for v in 0..FILLED {
                    queue.push(v).expect("room");
                }
                let team = Team::new(threads, move |_| {
                    let queue = Arc::clone(&queue);
                    Box::new(move |iters| {
                        for _ in 0..iters {
                            if let Some(v) = queue.pop() {
                                queue.push(black_box(v)).expect("room");
                            }
                        }
                    })
                });
                Setup { team, stats: None }
            },
            report,
        );
    }
    group.finish();
}

/// What one uncontended atomic read-modify-write costs here: the unit the pool's hot path pays
/// for every counter increment and every compare-and-swap of the idle stack.
fn atomic_rmw(c: &mut Criterion) {
    let group_name = "atomic_rmw";
    let mut group = c.benchmark_group(group_name);
    bench_team(
        &mut group,
        group_name,
        "fetch_add_relaxed",
        1,
        || {
            let word = AtomicU64::new(0);
            solo(move || {
                // Ordering: Relaxed, like the pool's metric counters.
                black_box(&word).fetch_add(1, Ordering::Relaxed);
            })
        },
        report,
    );
    bench_team(
        &mut group,
        group_name,
        "compare_exchange_acqrel",
        1,
        || {
            let word = AtomicU64::new(0);
            solo(move || {
                let word = black_box(&word);
                // Ordering: Relaxed load, AcqRel CAS, like the idle stack's list words.
                let current = word.load(Ordering::Relaxed);
                let _ = word.compare_exchange(
                    current,
                    current + 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            })
        },
        report,
    );
    group.finish();
}

criterion_group! {
    name = benches;
    // Short by default, so `cargo bench --bench pool` takes a few minutes on 2 cores; the command
    // line overrides these (docs/benchmarks.md gives the longer, quieter run).
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = checkout_return, steal_path, clock, idle_stack, atomic_rmw
}
criterion_main!(benches);
