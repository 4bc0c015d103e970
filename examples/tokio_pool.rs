//! The pool on tokio's multi-threaded runtime: a manager built on tokio's TcpStream and timer, and
//! checkouts in spawned tasks (the pool's futures are `Send` because this manager's are).
//!
//! Run: `cargo run --example tokio_pool`

use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Tcp;

impl Manage for Tcp {
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

    /// Bounds waits with tokio's own timer instead of the pool's default timer thread.
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = echo_server().await?;
    // tokio moves tasks between its workers, so shards are not tied to threads here: each task
    // uses the shard of the worker thread that polls its checkout (assigned round-robin).
    let pool = ShardedPool::new(
        Tcp,
        Config::default()
            .shards(2)
            .max_size(16)
            .wait_timeout(Some(Duration::from_secs(2))),
    )?;

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

    let stats = pool.stats();
    println!(
        "{} requests, {} live connections (max 16), {} waits, reuse {:.2} %",
        stats.total.checkouts,
        stats.total.live,
        stats.total.waits,
        100.0 * stats.total.reuse_rate()
    );
    Ok(())
}
