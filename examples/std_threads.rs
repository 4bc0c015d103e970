//! The pool on plain std threads: one shard per thread, real TCP connections to a loopback echo
//! server this example starts itself, and the pool's statistics at the end.
//!
//! Run: `cargo run --example std_threads`

use shardpool::pool::{bind_thread_to_shard, block_on};
use shardpool::{Config, ConnectionPool, Manage, PooledConn, ShardedPool};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Creates and checks TCP connections to an address.
struct Tcp;

impl Manage for Tcp {
    type Key = SocketAddr;
    type Conn = TcpStream;
    type Error = std::io::Error;

    async fn create(&self, addr: &SocketAddr) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(addr, Duration::from_secs(1))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A cheap liveness check: a non-blocking peek sees EOF if the server closed the connection.
    fn is_valid(&self, conn: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        let _ = conn.set_nonblocking(true);
        let alive = match conn.peek(&mut byte) {
            Ok(0) => false,                              // closed by the peer
            Ok(_) => false,                              // unread bytes: out of sync
            Err(e) => e.kind() == ErrorKind::WouldBlock, // nothing to read: fine
        };
        let _ = conn.set_nonblocking(false);
        alive
    }
}

/// An echo server on loopback, one thread per connection.
fn start_echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = start_echo_server()?;
    const THREADS: usize = 4;
    const REQUESTS: usize = 2_000;
    let pool = ShardedPool::new(Tcp, Config::default().shards(THREADS).max_size(8))?;

    let workers: Vec<_> = (0..THREADS)
        .map(|shard| {
            let pool = pool.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                bind_thread_to_shard(shard);
                for i in 0..REQUESTS {
                    let mut conn = block_on(pool.get(&server)).map_err(std::io::Error::other)?;
                    let msg = (i as u32).to_be_bytes();
                    let mut echo = [0u8; 4];
                    if let Err(e) = conn
                        .write_all(&msg)
                        .and_then(|()| conn.read_exact(&mut echo))
                    {
                        conn.discard(); // broken: close it rather than return it
                        return Err(e);
                    }
                    assert_eq!(echo, msg);
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker panicked")?;
    }

    let stats = pool.stats();
    println!(
        "{} requests over {} connections: {} local hits, {} steals, {} creates, reuse {:.2} %",
        stats.total.checkouts,
        stats.total.live,
        stats.total.local_hits,
        stats.total.steals,
        stats.total.creates,
        100.0 * stats.total.reuse_rate()
    );
    Ok(())
}
