//! Heavy waiting without a server: the pools' own cost when every checkout waits, with the
//! server's share of the CPU taken out (docs/benchmarks.md, "The waiting path").
//!
//! A tokio runtime with 2 worker threads runs `--tasks` tasks (default 256) over 16 connections,
//! as the heavy-waiting scenario of benches/real_workloads.rs does. A "query" is a round trip over
//! channels to a task that owns the connection's other end, so the measured work is the pool's
//! checkout (wait, hand-off, wake-up) and return, the runtime's scheduling, and two channel
//! messages. Pools: shardpool's `ShardedPool` (2 shards, waits on tokio's timer) and deadpool's
//! managed pool, both with a 30 s wait timeout, alternating round by round.
//!
//! The manager's `create` future holds 2 KiB across an await, the size of tokio-postgres's
//! connect future, because the size of what a waiting checkout boxes or moves is part of its cost.
//!
//! ```text
//! cargo bench -p shardpool --bench heavy_wait -- --tasks 256 --rounds 5 --seconds 2
//! ```
//!
//! Instructions per query are repeatable under callgrind (the runs are serialised there, so they
//! count work, not contention): run the built binary with `--seconds 1` and `--seconds 3` and
//! divide the difference of the instruction totals by the difference of the query counts it
//! prints. Under `cargo test` (no `--bench` argument) it runs one short round as a smoke test.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const CONNS: usize = 16;
const WAIT: Duration = Duration::from_secs(30);

/// A connection: the sending end of a channel to the task that answers its queries.
type Conn = mpsc::UnboundedSender<oneshot::Sender<u64>>;

/// The "server" end of a new connection: answers every query with 1.
async fn connect() -> Conn {
    // A create future as large as tokio-postgres's connect (about 2 KiB held across an await).
    let handshake = [0u8; 2048];
    tokio::task::yield_now().await;
    std::hint::black_box(&handshake);
    let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<u64>>();
    tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let _ = reply.send(1);
        }
    });
    tx
}

async fn query(conn: &Conn) -> u64 {
    let (tx, rx) = oneshot::channel();
    conn.send(tx).expect("the connection's task runs");
    rx.await.expect("an answer")
}

struct Shard;

impl shardpool::SendManage for Shard {
    type Key = u8;
    type Conn = Conn;
    type Error = Infallible;

    async fn create(&self, _: &u8) -> Result<Conn, Infallible> {
        Ok(connect().await)
    }

    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

struct Dead;

impl deadpool::managed::Manager for Dead {
    type Type = Conn;
    type Error = Infallible;

    async fn create(&self) -> Result<Conn, Infallible> {
        Ok(connect().await)
    }

    async fn recycle(
        &self,
        _: &mut Conn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

#[derive(Clone)]
enum Pool {
    Shardpool(shardpool::ShardedPool<Shard>),
    Deadpool(deadpool::managed::Pool<Dead>),
}

impl Pool {
    fn new(name: &str) -> Pool {
        match name {
            "shardpool" => {
                let config = shardpool::Config::default()
                    .shards(2)
                    .max_size(CONNS)
                    .wait_timeout(Some(WAIT));
                Pool::Shardpool(shardpool::ShardedPool::new(Shard, config).expect("a config"))
            }
            _ => Pool::Deadpool(
                deadpool::managed::Pool::builder(Dead)
                    .max_size(CONNS)
                    .wait_timeout(Some(WAIT))
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .expect("a deadpool"),
            ),
        }
    }

    async fn one_query(&self) -> u64 {
        match self {
            Pool::Shardpool(pool) => {
                use shardpool::ConnectionPool;
                query(&pool.get(&0).await.expect("a connection")).await
            }
            Pool::Deadpool(pool) => query(&pool.get().await.expect("a connection")).await,
        }
    }
}

/// Fills the pool (all connections created and idle), then runs `tasks` tasks for `seconds`;
/// returns the queries completed and the wall time.
fn round(rt: &tokio::runtime::Runtime, pool: &Pool, tasks: usize, seconds: f64) -> (u64, f64) {
    rt.block_on(async {
        let fill: Vec<_> = (0..CONNS)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.one_query().await })
            })
            .collect();
        for task in fill {
            task.await.expect("a fill task");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (pool, stop, count) = (pool.clone(), Arc::clone(&stop), Arc::clone(&count));
                tokio::spawn(async move {
                    let mut done = 0;
                    // Ordering: Relaxed; a stop flag, read again at every query.
                    while !stop.load(Ordering::Relaxed) {
                        done += pool.one_query().await;
                    }
                    // Ordering: Relaxed; read after every task has been joined.
                    count.fetch_add(done, Ordering::Relaxed);
                })
            })
            .collect();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        // Ordering: Relaxed, as above.
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.expect("a worker");
        }
        // Ordering: Relaxed; every task was joined above.
        (
            count.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
        )
    })
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number")),
        None => default,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let tasks = arg(&args, "--tasks", 256usize);
    let rounds = arg(&args, "--rounds", if benching { 5 } else { 1 });
    let seconds = arg(&args, "--seconds", if benching { 2.0 } else { 0.1 });
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("{tasks} tasks, {CONNS} connections, 2 workers, {seconds} s per round");
    for r in 1..=rounds {
        for name in ["shardpool", "deadpool"] {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let (queries, wall) = round(&rt, &Pool::new(name), tasks, seconds);
            println!(
                "round {r}: {name:<9} {:>9.0} queries/s ({queries} queries)",
                queries as f64 / wall
            );
        }
    }
}
