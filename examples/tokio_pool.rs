//! The pool on tokio's multi-threaded runtime, with the tokio integration: worker `i` checks out
//! on shard `i`, waits use tokio's timer, and a task maintains every shard each second. The
//! manager is built on tokio's TcpStream; checkouts run in spawned tasks (the pool's futures are
//! `Send` because this manager's are).
//!
//! Run: `cargo run --example tokio_pool --features tokio`

use shardpool::integrations::tokio::{
    BindShards, MAINTENANCE_INTERVAL, TokioTimer, spawn_maintenance,
};
use shardpool::{Config, ConnectionPool, PooledConn, SendManage, ShardedPool};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WORKERS: usize = 2;

struct Tcp;

impl SendManage for Tcp {
    type Key = SocketAddr;
    type Conn = TcpStream;
    type Error = std::io::Error;

    async fn create(&self, addr: &SocketAddr) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

async fn echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .bind_pool_shards() // worker i checks out on shard i; blocking threads take no shard
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let server = echo_server().await?;
    let pool = ShardedPool::new(
        TokioTimer(Tcp), // waits on tokio's timer, not on a thread of the pool's
        Config::default()
            .shards(WORKERS)
            .max_size(16)
            .wait_timeout(Some(Duration::from_secs(2))),
    )?;
    // Expiry and min_idle, every second, until the pool is closed or dropped.
    let maintenance = spawn_maintenance(&pool, MAINTENANCE_INTERVAL)?;

    let tasks: Vec<_> = (0..64u32)
        .map(|task| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..100u32 {
                    let mut conn = pool.get(&server).await?;
                    let msg = (task * 1000 + i).to_be_bytes();
                    let mut echo = [0u8; 4];
                    let io = async {
                        conn.write_all(&msg).await?;
                        conn.read_exact(&mut echo).await
                    };
                    if let Err(e) = io.await {
                        conn.discard();
                        return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
                    }
                    assert_eq!(echo, msg);
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?.map_err(|e| e as Box<dyn std::error::Error>)?;
    }

    maintenance.abort();
    let stats = pool.stats();
    println!(
        "{} requests, {} live connections (max 16), {} waits, reuse {:.2} %",
        stats.total.checkouts,
        stats.total.live,
        stats.total.waits,
        100.0 * stats.total.reuse_rate()
    );
    let per_shard: Vec<u64> = stats.shards.iter().map(|s| s.checkouts).collect();
    println!("checkouts per shard (one per worker): {per_shard:?}");
    Ok(())
}
