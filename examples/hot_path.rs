//! The pool's hot path alone: one thread checks a connection out of its own shard and returns it,
//! a fixed number of times, for the sharded pool and the `MutexPool` baseline. It prints the
//! wall-clock time per checkout+return pair; its real use is counting instructions, which,
//! unlike time, is the same on every run of a noisy machine:
//!
//! ```sh
//! cargo build --release --example hot_path
//! for n in 100000 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n target/release/examples/hot_path sharded $n
//! done
//! # instructions per pair = (Ir of the 200 000 run - Ir of the 100 000 run) / 100 000
//! ```
//!
//! Subtracting two runs removes the start-up and the pool's construction from the count.
//! A third argument, `expiry`, keeps the default `idle_timeout` (90 s), as `benches/pool.rs`
//! does: then each checkout and return also reads the clock and tests expiry.
//! docs/benchmarks.md ("The hot-path rework", "The hot path after issue 14") quotes these counts.

use shardpool::baseline::MutexPool;
use shardpool::pool::bind_thread_to_shard;
use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Connections are numbers: creating one cannot fail and costs nothing, so only the pool is
/// measured.
struct Numbers;

impl Manage for Numbers {
    type Key = u64;
    type Conn = u64;
    type Error = Infallible;

    async fn create(&self, key: &u64) -> Result<u64, Infallible> {
        Ok(*key)
    }
}

/// Polls a checkout once. A warm pool that is never exhausted completes every checkout at its
/// first poll, so a waker that does nothing serves, and the loop measures no executor.
fn first_poll<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a checkout waited, but this pool is never exhausted"),
    }
}

/// Checks a connection out and returns it `pairs` times; the time per pair in nanoseconds.
fn pairs_per_ns<P: ConnectionPool<Numbers>>(pool: &P, pairs: u64) -> f64 {
    let key = 7;
    // The first checkout creates the connection; every later one reuses it.
    drop(first_poll(pool.get(&key)));
    let start = Instant::now();
    for _ in 0..pairs {
        let conn = first_poll(pool.get(black_box(&key))).expect("numbers are always created");
        black_box(&*conn);
    }
    start.elapsed().as_nanos() as f64 / pairs as f64
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let pool = args.next().unwrap_or_else(|| "sharded".into());
    let usage = "usage: hot_path [sharded|mutex] [PAIRS > 0] [expiry]";
    let pairs = match args.next().map(|n| n.parse::<u64>()) {
        None => 10_000_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("{usage}");
            return ExitCode::FAILURE;
        }
    };
    // Expiry off by default: with it on, each checkout and return also reads the pool's clock
    // (measured separately in benches/pool.rs, group `clock`).
    let config = Config::default().shards(2).max_size(64).max_lifetime(None);
    let config = match args.next().as_deref() {
        None => config.idle_timeout(None),
        Some("expiry") => config,
        Some(_) => {
            eprintln!("{usage}");
            return ExitCode::FAILURE;
        }
    };
    bind_thread_to_shard(0);
    let ns = match pool.as_str() {
        "sharded" => pairs_per_ns(
            &ShardedPool::new(Numbers, config).expect("valid config"),
            pairs,
        ),
        "mutex" => pairs_per_ns(
            &MutexPool::new(Numbers, config).expect("valid config"),
            pairs,
        ),
        other => {
            eprintln!("unknown pool {other:?}: use sharded or mutex");
            return ExitCode::FAILURE;
        }
    };
    println!("{pool}: {pairs} checkout+return pairs, {ns:.1} ns per pair");
    ExitCode::SUCCESS
}
