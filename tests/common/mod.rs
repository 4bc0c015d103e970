//! A test manager whose connections count themselves, so tests can check that every created
//! connection is dropped exactly once and that `live` never exceeds `max_size`.
#![allow(dead_code)] // each test binary uses a different part of this module

use shardpool::Manage;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shared counters between a [`TestManager`] and its connections.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections that exist now.
    pub alive: AtomicUsize,
    /// The most that ever existed at once, over all keys.
    pub peak: AtomicUsize,
    /// Per key (keys below 8): connections that exist now, and the most that ever did at once.
    pub alive_per_key: [AtomicUsize; 8],
    pub peak_per_key: [AtomicUsize; 8],
    pub created: AtomicU64,
    pub dropped: AtomicU64,
    /// Ids currently checked out (a test marks and unmarks them): detects two guards on one conn.
    pub in_use: Mutex<HashSet<u64>>,
    /// While set, `create` fails.
    pub fail_creates: AtomicBool,
    /// While set, `recycle` refuses every connection.
    pub refuse_recycle: AtomicBool,
    /// One-shot: the next `is_valid`, `recycle` or connection drop panics (and clears its flag).
    pub panic_in_is_valid: AtomicBool,
    pub panic_in_recycle: AtomicBool,
    pub panic_in_drop: AtomicBool,
    /// While set, the async `validate` fails every connection.
    pub fail_validate: AtomicBool,
    /// While set, the async `validate` never completes (to cancel a checkout mid-validation).
    pub stall_validate: AtomicBool,
    /// Every call of the async `validate`: the connection's id and how long it sat idle.
    pub validated: Mutex<Vec<(u64, std::time::Duration)>>,
}

#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub key: u32,
    pub broken: bool,
    tally: Arc<Tally>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tally.alive.fetch_sub(1, Ordering::SeqCst);
        self.tally.alive_per_key[self.key as usize % 8].fetch_sub(1, Ordering::SeqCst);
        self.tally.dropped.fetch_add(1, Ordering::SeqCst);
        if self.tally.panic_in_drop.swap(false, Ordering::SeqCst) {
            panic!("the test connection was told to panic in drop");
        }
    }
}

#[derive(Debug)]
pub struct CreateFailed;

impl std::fmt::Display for CreateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the test manager was told to fail")
    }
}
impl std::error::Error for CreateFailed {}

#[derive(Debug, Default)]
pub struct TestManager {
    pub tally: Arc<Tally>,
    /// Ids are numbered per key (`key * 1_000_000 + n`), so they do not depend on the order in
    /// which a pool visits its keys.
    next_id: [AtomicU64; 8],
}

impl TestManager {
    pub fn new() -> (Self, Arc<Tally>) {
        let m = TestManager::default();
        let tally = Arc::clone(&m.tally);
        (m, tally)
    }
}

impl Manage for TestManager {
    type Key = u32;
    type Conn = Conn;
    type Error = CreateFailed;

    async fn create(&self, key: &u32) -> Result<Conn, CreateFailed> {
        if self.tally.fail_creates.load(Ordering::SeqCst) {
            return Err(CreateFailed);
        }
        let alive = self.tally.alive.fetch_add(1, Ordering::SeqCst) + 1;
        self.tally.peak.fetch_max(alive, Ordering::SeqCst);
        let slot = *key as usize % 8;
        let of_key = self.tally.alive_per_key[slot].fetch_add(1, Ordering::SeqCst) + 1;
        self.tally.peak_per_key[slot].fetch_max(of_key, Ordering::SeqCst);
        self.tally.created.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            id: u64::from(*key) * 1_000_000 + self.next_id[slot].fetch_add(1, Ordering::SeqCst),
            key: *key,
            broken: false,
            tally: Arc::clone(&self.tally),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> bool {
        if self.tally.panic_in_is_valid.swap(false, Ordering::SeqCst) {
            panic!("the test manager was told to panic in is_valid");
        }
        !conn.broken
    }

    async fn validate(&self, conn: &mut Conn, idle_for: std::time::Duration) -> bool {
        self.tally
            .validated
            .lock()
            .unwrap()
            .push((conn.id, idle_for));
        if self.tally.stall_validate.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        !self.tally.fail_validate.load(Ordering::SeqCst)
    }

    fn recycle(&self, _conn: &mut Conn) -> bool {
        if self.tally.panic_in_recycle.swap(false, Ordering::SeqCst) {
            panic!("the test manager was told to panic in recycle");
        }
        !self.tally.refuse_recycle.load(Ordering::SeqCst)
    }
}

impl Tally {
    /// Marks `id` checked out; panics if it already is (two guards on one connection).
    pub fn claim(&self, id: u64) {
        assert!(
            self.in_use.lock().unwrap().insert(id),
            "connection {id} handed out twice"
        );
    }

    pub fn release(&self, id: u64) {
        assert!(self.in_use.lock().unwrap().remove(&id));
    }
}

/// Waits until `waits` checkouts of `pool` have started waiting (the pool's `waits` counter).
pub fn until_waiting(pool: &shardpool::ShardedPool<TestManager>, waits: u64) {
    use shardpool::ConnectionPool;
    while pool.stats().total.waits < waits {
        std::thread::yield_now();
    }
}
