//! The hot path allocates nothing: after warm-up, checkout + return cycles (local hits, steals,
//! returns from the other shard) make no heap allocation. A counting global allocator proves it.
//!
//! It counts the allocations of the test's own thread only: the test harness's main thread may
//! still be allocating (finishing the spawn of this test's thread) while the loop runs, and those
//! are not the pool's.

use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (a const initialiser: reading it allocates
    /// nothing).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Sockets;
impl Manage for Sockets {
    type Key = std::net::SocketAddr;
    type Conn = [u8; 64];
    type Error = std::io::Error;
    async fn create(&self, _: &std::net::SocketAddr) -> std::io::Result<[u8; 64]> {
        Ok([0; 64])
    }
}

/// Polls a future that must complete at once (the hot path never waits).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the hot path should not wait"),
    }
}

#[test]
fn checkout_and_return_allocate_nothing_in_steady_state() {
    let pool = ShardedPool::new(Sockets, Config::default().shards(2).max_size(8)).unwrap();
    let key: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cycle = |pool: &ShardedPool<Sockets>| {
        // A local hit on each shard, two at once so each shard holds two.
        for shard in 0..2 {
            let a = ready(pool.get_on(shard, &key)).unwrap();
            let b = ready(pool.get_on(shard, &key)).unwrap();
            drop(a);
            drop(b);
        }
        // A steal: shard 1 takes shard 0's connections, and returns them to itself.
        let stolen = [(); 4].map(|_| ready(pool.get_on(1, &key)).unwrap());
        drop(stolen);
        // And shard 0 takes them back.
        let moved = [(); 4].map(|_| ready(pool.get_on(0, &key)).unwrap());
        drop(moved);
    };
    for _ in 0..10 {
        cycle(&pool); // warm up: key tables, stacks, thread-locals
    }
    COUNTED.with(|counted| counted.set(true));
    for _ in 0..10_000 {
        cycle(&pool);
    }
    COUNTED.with(|counted| counted.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 120 000 checkout/return cycles"
    );
    let stats = pool.stats();
    assert!(stats.total.steals > 0 && stats.total.local_hits > 0);
}
