//! The real-workload comparison (issue 15): shardpool's PostgreSQL and Redis adapters against
//! deadpool-postgres, bb8-postgres, deadpool-redis and bb8-redis, on the same servers, in one run.
//!
//! Run it with `scripts/bench-real.sh` (starts the servers, writes JSON and a table), or:
//!
//! ```text
//! eval "$(scripts/services.sh env)"
//! cargo bench --bench real_workloads --features real-bench -- --seconds 3 --rounds 3 --json target/real.json
//! ```
//!
//! `--rounds N` (default 1) repeats the whole plan N times, alternating the pools cell by cell,
//! and merges each cell's rounds: queries/s over all rounds (and each round's), histograms
//! merged, per-task counts per round.
//!
//! Cells: scenarios {2 worker threads × 16 tasks, 2 × 256 tasks} with 16 connections per pool ×
//! workloads {`SELECT 1`, a prepared point lookup, Redis `GET` of a 16-byte value} × pools. Each
//! cell builds its pool, **fills it** (16 checkouts held at once, then returned, and the pool's own
//! count checked to be 16) and only then measures for `--seconds`. Per query it records the
//! checkout wait and the whole query (checkout + round trip + return) in HDR histograms (ns),
//! and per task the number of completed queries (fairness: min, max, coefficient of variation).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::AsyncCommands;
use shardpool::adapters::postgres::{PgManager, PgServer, Reset};
use shardpool::adapters::redis::{RedisManager, RedisServer};
use shardpool::{Config, ConnectionPool, ShardedPool};

const CONNS: usize = 16;
const LOOKUP_ROWS: i32 = 1000;
const LOOKUP_SQL: &str = "SELECT v FROM sp_bench_kv WHERE id = $1";
const REDIS_KEY: &str = "sp:bench:key";
const REDIS_VALUE: &str = "0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Select1,
    Lookup,
    RedisGet,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Select1 => "SELECT 1",
            Workload::Lookup => "prepared lookup",
            Workload::RedisGet => "Redis GET",
        }
    }
}

/// One pool under test.
#[derive(Clone)]
enum Pool {
    Shard(ShardedPool<PgManager>, PgServer),
    Deadpool(deadpool_postgres::Pool),
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>),
    ShardRedis(ShardedPool<RedisManager>, RedisServer),
    DeadpoolRedis(deadpool_redis::Pool),
    Bb8Redis(bb8::Pool<bb8_redis::RedisConnectionManager>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Pool {
    /// Builds the pool the way its docs recommend, `CONNS` connections at most.
    async fn build(name: &str, pg_url: &str, redis_url: &str) -> Result<Pool, BoxError> {
        let pg_config: tokio_postgres::Config = pg_url.parse()?;
        Ok(match name {
            // Reset::None is what deadpool's default (RecyclingMethod::Fast) and bb8 do: only a
            // liveness check. "shardpool+reset" pays for a clean session on every return.
            "shardpool" | "shardpool+reset" => {
                let reset = if name == "shardpool" {
                    Reset::None
                } else {
                    Reset::KeepStatements
                };
                let pool = ShardedPool::new(
                    PgManager::new().reset(reset),
                    Config::default()
                        .shards(2)
                        .max_size(CONNS)
                        .wait_timeout(Some(WAIT)),
                )?;
                Pool::Shard(pool, PgServer::new(pg_url)?)
            }
            "deadpool" => {
                let manager = deadpool_postgres::Manager::from_config(
                    pg_config,
                    tokio_postgres::NoTls,
                    deadpool_postgres::ManagerConfig {
                        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                    },
                );
                Pool::Deadpool(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(CONNS)
                        .wait_timeout(Some(WAIT))
                        .runtime(deadpool_postgres::Runtime::Tokio1)
                        .build()?,
                )
            }
            "bb8" => {
                let manager =
                    bb8_postgres::PostgresConnectionManager::new(pg_config, tokio_postgres::NoTls);
                Pool::Bb8(
                    bb8::Pool::builder()
                        .max_size(CONNS as u32)
                        .connection_timeout(WAIT)
                        .build(manager)
                        .await?,
                )
            }
            "shardpool-redis" => {
                let pool = ShardedPool::new(
                    RedisManager::new(),
                    Config::default()
                        .shards(2)
                        .max_size(CONNS)
                        .wait_timeout(Some(WAIT)),
                )?;
                Pool::ShardRedis(pool, RedisServer::new(redis_url)?)
            }
            "deadpool-redis" => {
                let mut config = deadpool_redis::Config::from_url(redis_url);
                let mut pool_config = deadpool_redis::PoolConfig::new(CONNS);
                pool_config.timeouts.wait = Some(WAIT);
                config.pool = Some(pool_config);
                Pool::DeadpoolRedis(config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?)
            }
            "bb8-redis" => {
                let manager = bb8_redis::RedisConnectionManager::new(redis_url)?;
                Pool::Bb8Redis(
                    bb8::Pool::builder()
                        .max_size(CONNS as u32)
                        .connection_timeout(WAIT)
                        .build(manager)
                        .await?,
                )
            }
            other => return Err(format!("unknown pool {other}").into()),
        })
    }

    /// Connections the pool holds now, by its own count.
    fn size(&self) -> usize {
        match self {
            Pool::Shard(p, _) => p.stats().total.live as usize,
            Pool::ShardRedis(p, _) => p.stats().total.live as usize,
            Pool::Deadpool(p) => p.status().size,
            Pool::DeadpoolRedis(p) => p.status().size,
            Pool::Bb8(p) => p.state().connections as usize,
            Pool::Bb8Redis(p) => p.state().connections as usize,
        }
    }

    /// Checks out `CONNS` connections at once and uses each, then returns them all.
    async fn fill(&self) -> Result<(), BoxError> {
        let barrier = Arc::new(tokio::sync::Barrier::new(CONNS));
        let mut tasks = Vec::new();
        for _ in 0..CONNS {
            let (pool, barrier) = (self.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                // Each holds its connection until all have one.
                match &pool {
                    Pool::Shard(p, s) => {
                        let c = p.get(s).await?;
                        c.client().simple_query("").await?;
                        barrier.wait().await;
                    }
                    Pool::Deadpool(p) => {
                        let c = p.get().await?;
                        c.simple_query("").await?;
                        barrier.wait().await;
                    }
                    Pool::Bb8(p) => {
                        let c = p.get().await.map_err(|e| e.to_string())?;
                        c.simple_query("").await?;
                        barrier.wait().await;
                    }
                    Pool::ShardRedis(p, s) => {
                        let mut c = p.get(s).await?;
                        redis::cmd("PING").query_async::<String>(&mut *c).await?;
                        barrier.wait().await;
                    }
                    Pool::DeadpoolRedis(p) => {
                        let mut c = p.get().await?;
                        redis::cmd("PING").query_async::<String>(&mut *c).await?;
                        barrier.wait().await;
                    }
                    Pool::Bb8Redis(p) => {
                        let mut c = p.get().await.map_err(|e| e.to_string())?;
                        redis::cmd("PING").query_async::<String>(&mut *c).await?;
                        barrier.wait().await;
                    }
                }
                Ok::<_, BoxError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let size = self.size();
        if size != CONNS {
            return Err(format!("warm-up left {size} connections, not {CONNS}").into());
        }
        Ok(())
    }

    /// One query; returns (checkout wait, whole query) in ns.
    async fn query(&self, workload: Workload, n: i32) -> Result<(u64, u64), BoxError> {
        let started = Instant::now();
        let id = n % LOOKUP_ROWS + 1;
        let waited;
        match self {
            Pool::Shard(p, s) => {
                let mut c = p.get(s).await?;
                waited = started.elapsed();
                match workload {
                    Workload::Select1 => {
                        c.client().simple_query("SELECT 1").await?;
                    }
                    _ => {
                        let st = c.prepare_cached(LOOKUP_SQL).await?;
                        let row = c.client().query_one(&st, &[&id]).await?;
                        check_row(row.get(0), id)?;
                    }
                }
            }
            Pool::Deadpool(p) => {
                let c = p.get().await?;
                waited = started.elapsed();
                match workload {
                    Workload::Select1 => {
                        c.simple_query("SELECT 1").await?;
                    }
                    _ => {
                        let st = c.prepare_cached(LOOKUP_SQL).await?;
                        let row = c.query_one(&st, &[&id]).await?;
                        check_row(row.get(0), id)?;
                    }
                }
            }
            Pool::Bb8(p) => {
                let c = p.get().await.map_err(|e| e.to_string())?;
                waited = started.elapsed();
                match workload {
                    Workload::Select1 => {
                        c.simple_query("SELECT 1").await?;
                    }
                    // bb8-postgres has no statement cache: prepare, then execute, as its
                    // examples do.
                    _ => {
                        let st = c.prepare(LOOKUP_SQL).await?;
                        let row = c.query_one(&st, &[&id]).await?;
                        check_row(row.get(0), id)?;
                    }
                }
            }
            Pool::ShardRedis(p, s) => {
                let mut c = p.get(s).await?;
                waited = started.elapsed();
                let v: String = c.get(REDIS_KEY).await?;
                check_value(&v)?;
            }
            Pool::DeadpoolRedis(p) => {
                let mut c = p.get().await?;
                waited = started.elapsed();
                let v: String = c.get(REDIS_KEY).await?;
                check_value(&v)?;
            }
            Pool::Bb8Redis(p) => {
                let mut c = p.get().await.map_err(|e| e.to_string())?;
                waited = started.elapsed();
                let v: String = c.get(REDIS_KEY).await?;
                check_value(&v)?;
            }
        }
        Ok((
            waited.as_nanos() as u64,
            started.elapsed().as_nanos() as u64,
        ))
    }
}

fn check_row(v: String, id: i32) -> Result<(), BoxError> {
    if v == format!("value-{id}") {
        Ok(())
    } else {
        Err(format!("wrong row for {id}: {v}").into())
    }
}

fn check_value(v: &str) -> Result<(), BoxError> {
    if v == REDIS_VALUE {
        Ok(())
    } else {
        Err(format!("wrong value: {v}").into())
    }
}

/// The measured result of one cell.
struct Cell {
    scenario: String,
    workload: Workload,
    pool: String,
    queries: u64,
    errors: u64,
    seconds: f64,
    wait: Histogram<u64>,
    whole: Histogram<u64>,
    /// Completions per task, one entry per task and round.
    per_task: Vec<u64>,
    /// Queries/s of each round.
    round_qps: Vec<f64>,
}

impl Cell {
    /// Adds another round of the same cell.
    fn merge(&mut self, other: Cell) -> Result<(), BoxError> {
        self.queries += other.queries;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.wait.add(&other.wait)?;
        self.whole.add(&other.whole)?;
        self.per_task.extend(other.per_task);
        self.round_qps.extend(other.round_qps);
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid bounds")
}

fn run_cell(
    threads: usize,
    tasks: usize,
    workload: Workload,
    pool_name: &str,
    seconds: f64,
    urls: &(String, String),
) -> Result<Cell, BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pool = Pool::build(pool_name, &urls.0, &urls.1).await?;
        pool.fill().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut handles = Vec::new();
        for task in 0..tasks {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            handles.push(tokio::spawn(async move {
                let (mut wait, mut whole) = (histogram(), histogram());
                let (mut done, mut errors) = (0u64, 0u64);
                let mut n = task as i32 * 7919;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1) & 0x3fff_ffff;
                    match pool.query(workload, n).await {
                        Ok((w, q)) => {
                            let _ = wait.record(w.max(1));
                            let _ = whole.record(q.max(1));
                            done += 1;
                        }
                        Err(e) => {
                            errors += 1;
                            if errors == 1 {
                                eprintln!("query error: {e}");
                            }
                        }
                    }
                }
                (wait, whole, done, errors)
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let (mut wait, mut whole) = (histogram(), histogram());
        let (mut queries, mut errors) = (0, 0);
        let mut per_task = Vec::new();
        for h in handles {
            let (w, q, done, e) = h.await?;
            wait.add(&w)?;
            whole.add(&q)?;
            queries += done;
            errors += e;
            per_task.push(done);
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(Cell {
            round_qps: vec![queries as f64 / seconds],
            scenario: format!("{threads} threads x {tasks} tasks / {CONNS} conns"),
            workload,
            pool: pool_name.to_string(),
            queries,
            errors,
            seconds,
            wait,
            whole,
            per_task,
        })
    })
}

/// Creates the lookup table and the Redis key.
fn prepare_data(urls: &(String, String)) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(&urls.0, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS sp_bench_kv;
                 CREATE TABLE sp_bench_kv (id int PRIMARY KEY, v text NOT NULL);
                 INSERT INTO sp_bench_kv SELECT g, 'value-' || g FROM generate_series(1, {LOOKUP_ROWS}) g;
                 ANALYZE sp_bench_kv;"
            ))
            .await?;
        let client_r = redis::Client::open(urls.1.as_str())?;
        let mut r = client_r.get_multiplexed_async_connection().await?;
        let _: () = r.set(REDIS_KEY, REDIS_VALUE).await?;
        Ok(())
    })
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn fairness(per_task: &[u64]) -> (u64, u64, f64) {
    let n = per_task.len().max(1) as f64;
    let mean = per_task.iter().sum::<u64>() as f64 / n;
    let var = per_task
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let cv = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
    (
        per_task.iter().copied().min().unwrap_or(0),
        per_task.iter().copied().max().unwrap_or(0),
        cv,
    )
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let seconds: f64 = arg("--seconds").map_or(Ok(3.0), |s| s.parse())?;
    if !(0.1..=600.0).contains(&seconds) {
        return Err("--seconds must be between 0.1 and 600".into());
    }
    let rounds: usize = arg("--rounds").map_or(Ok(1), |s| s.parse())?;
    if !(1..=20).contains(&rounds) {
        return Err("--rounds must be between 1 and 20".into());
    }
    let json_path = arg("--json");
    let (Ok(pg), Ok(redis)) = (
        std::env::var("SHARDPOOL_PG_URL"),
        std::env::var("SHARDPOOL_REDIS_URL"),
    ) else {
        eprintln!(
            "real_workloads: SHARDPOOL_PG_URL and SHARDPOOL_REDIS_URL must be set \
             (scripts/bench-real.sh does it; or scripts/services.sh start && eval \"$(scripts/services.sh env)\")"
        );
        std::process::exit(2);
    };
    let urls = (pg, redis);
    prepare_data(&urls)?;

    let scenarios = [(2usize, 16usize), (2, 256)];
    let plan: [(Workload, &[&str]); 3] = [
        (
            Workload::Select1,
            &["shardpool", "deadpool", "bb8", "shardpool+reset"],
        ),
        (
            Workload::Lookup,
            &["shardpool", "deadpool", "bb8", "shardpool+reset"],
        ),
        (
            Workload::RedisGet,
            &["shardpool-redis", "deadpool-redis", "bb8-redis"],
        ),
    ];
    // Rounds alternate the pools cell by cell; each cell's rounds are merged below.
    let mut cells: Vec<Cell> = Vec::new();
    for round in 1..=rounds {
        for &(threads, tasks) in &scenarios {
            for (workload, pools) in &plan {
                for pool in pools.iter() {
                    eprintln!(
                        "round {round}/{rounds}: {threads} threads x {tasks} tasks, {}, {pool} ...",
                        workload.name()
                    );
                    let cell = run_cell(threads, tasks, *workload, pool, seconds, &urls)?;
                    match cells.iter_mut().find(|c| {
                        c.scenario == cell.scenario
                            && c.workload == cell.workload
                            && c.pool == cell.pool
                    }) {
                        Some(merged) => merged.merge(cell)?,
                        None => cells.push(cell),
                    }
                    // Let the server finish closing the last cell's connections.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    println!(
        "| scenario | workload | pool | queries/s | per round | wait p50 µs | wait p99 µs | wait p99.9 µs | query p50 µs | query p99 µs | query p99.9 µs | per-task min..max (cv) | errors |"
    );
    println!("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut json = Vec::new();
    for c in &cells {
        let qps = c.queries as f64 / c.seconds;
        let (min, max, cv) = fairness(&c.per_task);
        println!(
            "| {} | {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {min}..{max} ({cv:.3}) | {} |",
            c.scenario,
            c.workload.name(),
            c.pool,
            qps,
            c.round_qps
                .iter()
                .map(|q| format!("{q:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            us(&c.wait, 0.5),
            us(&c.wait, 0.99),
            us(&c.wait, 0.999),
            us(&c.whole, 0.5),
            us(&c.whole, 0.99),
            us(&c.whole, 0.999),
            c.errors
        );
        json.push(serde_json::json!({
            "scenario": c.scenario,
            "workload": c.workload.name(),
            "pool": c.pool,
            "seconds": c.seconds,
            "queries": c.queries,
            "errors": c.errors,
            "queries_per_s": qps,
            "queries_per_s_per_round": c.round_qps,
            "wait_us": {"p50": us(&c.wait, 0.5), "p99": us(&c.wait, 0.99), "p999": us(&c.wait, 0.999), "max": c.wait.max() as f64 / 1000.0},
            "query_us": {"p50": us(&c.whole, 0.5), "p99": us(&c.whole, 0.99), "p999": us(&c.whole, 0.999), "max": c.whole.max() as f64 / 1000.0},
            "per_task": {"min": min, "max": max, "cv": cv},
        }));
    }
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
