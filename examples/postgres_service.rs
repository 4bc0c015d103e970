//! A tokio service that runs PostgreSQL queries through the pool from many tasks.
//!
//! ```text
//! scripts/services.sh start && eval "$(scripts/services.sh env)"
//! cargo run --example postgres_service --features postgres
//! ```
//!
//! Reads the server from `SHARDPOOL_PG_URL` (or the first argument). 64 tasks share 8
//! connections; each does 50 requests: a prepared point lookup, and every tenth an update in a
//! transaction. At the end it checks the balances add up and prints the pool's counters.

use shardpool::adapters::postgres::{PgManager, PgServer, Reset};
use shardpool::{Config, ConnectionPool, ShardedPool};
use std::time::{Duration, Instant};

const ACCOUNTS: i32 = 100;
const TASKS: i32 = 64;
const REQUESTS: i32 = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SHARDPOOL_PG_URL").ok())
    else {
        eprintln!(
            "postgres_service: no server. Set SHARDPOOL_PG_URL (scripts/services.sh start; \
             eval \"$(scripts/services.sh env)\") or pass a postgres:// URL"
        );
        std::process::exit(2);
    };
    let server = PgServer::new(&url)?;
    // KeepStatements: each connection's prepared lookup survives its return to the pool, while
    // settings, temporary tables and open transactions are still reset.
    let manager = PgManager::new()
        .connect_timeout(Duration::from_secs(3))
        .reset(Reset::KeepStatements);
    let pool = ShardedPool::new(
        manager,
        Config::default()
            .shards(2)
            .max_size(8)
            .wait_timeout(Some(Duration::from_secs(2))),
    )?;

    {
        let conn = pool.get(&server).await?;
        conn.client()
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS sp_example_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
                 TRUNCATE sp_example_accounts;",
            )
            .await?;
        conn.client()
            .execute(
                "INSERT INTO sp_example_accounts SELECT g, 1000 FROM generate_series(1, $1) g",
                &[&ACCOUNTS],
            )
            .await?;
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (pool, server) = (pool.clone(), server.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..REQUESTS {
                let mut conn = pool.get(&server).await?;
                let id = (task * REQUESTS + i) % ACCOUNTS + 1;
                if i % 10 == 0 {
                    // Move 1 from `id` to the next account, atomically.
                    let to = id % ACCOUNTS + 1;
                    let client = conn.client();
                    client.batch_execute("BEGIN").await?;
                    client
                        .execute(
                            "UPDATE sp_example_accounts SET balance = balance - 1 WHERE id = $1",
                            &[&id],
                        )
                        .await?;
                    client
                        .execute(
                            "UPDATE sp_example_accounts SET balance = balance + 1 WHERE id = $1",
                            &[&to],
                        )
                        .await?;
                    client.batch_execute("COMMIT").await?;
                } else {
                    let lookup = conn
                        .prepare_cached("SELECT balance FROM sp_example_accounts WHERE id = $1")
                        .await?;
                    let row = conn.client().query_one(&lookup, &[&id]).await?;
                    let _balance: i64 = row.get(0);
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();

    let conn = pool.get(&server).await?;
    let row = conn
        .client()
        .query_one(
            "SELECT sum(balance)::bigint, count(*) FROM sp_example_accounts",
            &[],
        )
        .await?;
    let (sum, count): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (sum, count),
        (1000 * i64::from(ACCOUNTS), i64::from(ACCOUNTS)),
        "balances add up"
    );
    conn.client()
        .batch_execute("DROP TABLE sp_example_accounts")
        .await?;
    drop(conn);

    let total = pool.stats().total;
    println!(
        "{} requests from {TASKS} tasks over at most 8 connections in {elapsed:.2?}; \
         balances add up ({sum})",
        TASKS * REQUESTS
    );
    println!(
        "pool: {} checkouts, {} creates, {} waits (p99 {} µs), {} live, {} idle",
        total.checkouts, total.creates, total.waits, total.wait_p99_us, total.live, total.idle
    );
    Ok(())
}
