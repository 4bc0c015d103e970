//! The key table: which key pool serves a key. Lookups are lock-free and write nothing.
//!
//! A checkout looks its key up every time, so the lookup is on the hot path. Here it is a hash,
//! then plain loads (`Acquire` loads compile to plain moves on x86) of an open-addressing table: no
//! lock, no reference count, no write to a shared cache line. Every core reads the table and none
//! writes it in steady state, so its lines stay shared in every core's cache.
//!
//! Writers (adding, removing, listing keys, closing, and a create finding its key pool's `Arc`)
//! take one mutex, which also owns the key pools' `Arc`s. What makes lock-free readers safe
//! without a reclamation scheme: **nothing a reader can reach is freed while the pool lives.** A
//! removed key pool is retired (closed, kept in `retired`); a table replaced by a bigger one is
//! kept too. Both go when the pool is dropped, which needs `&mut`, so no reader can be left. The
//! price is memory that grows with key churn: each removed
//! key keeps its (empty, closed) key pool and each table growth keeps the old table until the pool
//! is dropped. A pool keyed by a stable set of backends pays nothing for this.
//!
//! # Memory ordering
//!
//! A slot is published by writing its hash, then its pool pointer with `Release`; a reader loads the
//! pointer with `Acquire` and then the hash. A new table is filled, then published through
//! `current` with `Release`; readers load `current` with `Acquire`.

use super::sync::{Arc, AtomicPtr, AtomicU64, Mutex, MutexGuard, Ordering, lock};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

#[cfg(not(shardpool_loom))]
type Hasher = foldhash::fast::RandomState;
/// Under loom a fixed seed: loom replays each execution from its start and needs the same probe
/// sequences and `HashMap` order every time (the models with two keys failed with "Is the model
/// fully deterministic?" on a random seed).
#[cfg(shardpool_loom)]
type Hasher = foldhash::fast::FixedState;

/// What the table maps a key to: a value that knows its own key, so a lookup compares keys
/// without the slot storing one. The pool's key pools implement it (`sharded`); the table knows
/// nothing else about them.
pub(crate) trait Keyed {
    /// The key.
    type Key: Clone + Eq + Hash;
    /// The key this value serves.
    fn key(&self) -> &Self::Key;
}

/// Marks a removed slot: probing continues past it.
fn tombstone<V>() -> *mut V {
    std::ptr::dangling_mut()
}

struct Slot<V: Keyed> {
    hash: AtomicU64,
    pool: AtomicPtr<V>,
}

struct Table<V: Keyed> {
    slots: Box<[Slot<V>]>,
}

impl<V: Keyed> Table<V> {
    fn with_capacity(capacity: usize) -> Box<Self> {
        debug_assert!(capacity.is_power_of_two());
        Box::new(Table {
            slots: (0..capacity)
                .map(|_| Slot {
                    hash: AtomicU64::new(0),
                    pool: AtomicPtr::new(std::ptr::null_mut()),
                })
                .collect(),
        })
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }
}

/// Everything writers change, under one lock.
pub(crate) struct Keys<V: Keyed> {
    live: HashMap<V::Key, Arc<V>, Hasher>,
    /// Removed key pools, kept so that lock-free readers never see freed memory (module docs).
    retired: Vec<Arc<V>>,
    /// Every table ever published, the current one last (module docs). Boxed because `current`
    /// points at a table, and a `Vec<Table>` would move its tables when it grows.
    #[allow(clippy::vec_box)]
    tables: Vec<Box<Table<V>>>,
    /// Slots of the current table in use, tombstones included.
    used: usize,
    closed: bool,
}

/// The key table of one pool.
pub(crate) struct KeyTable<V: Keyed> {
    hasher: Hasher,
    current: AtomicPtr<Table<V>>,
    keys: Mutex<Keys<V>>,
}

impl<V: Keyed> KeyTable<V> {
    pub(crate) fn new() -> Self {
        let mut first = Table::with_capacity(8);
        let current = AtomicPtr::new(&mut *first as *mut Table<V>);
        let hasher = Hasher::default();
        KeyTable {
            keys: Mutex::new(Keys {
                live: HashMap::with_hasher(hasher.clone()),
                retired: Vec::new(),
                tables: vec![first],
                used: 0,
                closed: false,
            }),
            hasher,
            current,
        }
    }

    /// The key pool serving `key`, if the key is known. Lock-free; writes nothing.
    #[inline]
    pub(crate) fn lookup(&self, key: &V::Key) -> Option<&V> {
        let hash = self.hasher.hash_one(key);
        // Ordering: Acquire pairs with the Release store that published this table, so its
        // slots' initial contents are visible.
        let table = self.current.load(Ordering::Acquire);
        // SAFETY: `current` always points at a table owned by `keys.tables`, and tables are freed
        // only when `self` is dropped (module docs), which cannot happen while `&self` lives.
        let table = unsafe { &*table };
        let mask = table.mask();
        let mut index = hash as usize & mask;
        for _ in 0..table.slots.len() {
            let slot = &table.slots[index];
            // Ordering: Acquire pairs with the Release store in `publish`, so the slot's hash and
            // the key pool it points to are visible.
            let pool = slot.pool.load(Ordering::Acquire);
            if pool.is_null() {
                return None;
            }
            // Ordering: Relaxed; made visible by the Acquire load of `pool` above.
            if pool != tombstone::<V>() && slot.hash.load(Ordering::Relaxed) == hash {
                // SAFETY: a non-null, non-tombstone slot points at a key pool owned by
                // `keys.live` or `keys.retired`, neither freed before `self` is dropped.
                let pool = unsafe { &*pool };
                if pool.key() == key {
                    return Some(pool);
                }
            }
            index = (index + 1) & mask;
        }
        None
    }

    /// Locks the writers' side.
    pub(crate) fn write(&self) -> Writer<'_, V> {
        Writer {
            table: self,
            keys: lock(&self.keys),
        }
    }
}

/// The writers' side of a [`KeyTable`], locked.
pub(crate) struct Writer<'a, V: Keyed> {
    table: &'a KeyTable<V>,
    keys: MutexGuard<'a, Keys<V>>,
}

impl<V: Keyed> Writer<'_, V> {
    /// The key pool of `key`, created by `make` if the key is new; `None` once closed.
    pub(crate) fn get_or_insert(
        &mut self,
        key: &V::Key,
        make: impl FnOnce() -> V,
    ) -> Option<Arc<V>> {
        if self.keys.closed {
            return None;
        }
        if let Some(pool) = self.keys.live.get(key) {
            return Some(Arc::clone(pool));
        }
        if (self.keys.used + 1) * 2 > self.current().slots.len() {
            self.grow(); // before the insert: `grow` republishes every live key
        }
        let pool = Arc::new(make());
        self.keys.live.insert(key.clone(), Arc::clone(&pool));
        let hash = self.table.hasher.hash_one(key);
        self.publish(self.current(), hash, Arc::as_ptr(&pool).cast_mut());
        self.keys.used += 1;
        Some(pool)
    }

    /// The `Arc` owning `value`, a key pool that [`KeyTable::lookup`] returned, if it still
    /// serves its key: `None` once the table is closed or the key was removed since.
    pub(crate) fn live_owner(&self, value: &V) -> Option<Arc<V>> {
        if self.keys.closed {
            return None;
        }
        let pool = self.keys.live.get(value.key())?;
        std::ptr::eq(Arc::as_ptr(pool), value).then(|| Arc::clone(pool))
    }

    /// Removes `key`, returning its key pool (for the caller to close). The pool is retired, not
    /// freed (module docs).
    pub(crate) fn remove(&mut self, key: &V::Key) -> Option<Arc<V>> {
        let pool = self.keys.live.remove(key)?;
        let target = Arc::as_ptr(&pool).cast_mut();
        let table = self.current();
        let mask = table.mask();
        let mut index = self.table.hasher.hash_one(key) as usize & mask;
        loop {
            let slot = &table.slots[index];
            // Ordering: Relaxed; the lock orders writers, and readers only ever see a valid
            // pointer or the tombstone.
            if slot.pool.load(Ordering::Relaxed) == target {
                // Ordering: Release, as in `publish` (a tombstone publishes nothing, but keeps one
                // rule for every slot store).
                slot.pool.store(tombstone::<V>(), Ordering::Release);
                break;
            }
            index = (index + 1) & mask;
        }
        self.keys.retired.push(Arc::clone(&pool));
        Some(pool)
    }

    /// Marks the table closed (no key is added from now on) and returns every live key pool.
    pub(crate) fn close(&mut self) -> Vec<Arc<V>> {
        self.keys.closed = true;
        self.keys.live.values().cloned().collect()
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.keys.closed
    }

    /// Every live key pool.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &Arc<V>> {
        self.keys.live.values()
    }

    fn current(&self) -> &Table<V> {
        self.keys
            .tables
            .last()
            .expect("there is always a current table")
    }

    /// Writes `pool` into the first free slot for `hash` in `table`.
    fn publish(&self, table: &Table<V>, hash: u64, pool: *mut V) {
        let mask = table.mask();
        let mut index = hash as usize & mask;
        loop {
            let slot = &table.slots[index];
            // Ordering: Relaxed; writers are ordered by the lock.
            if slot.pool.load(Ordering::Relaxed).is_null() {
                // Ordering: Relaxed; published by the Release store below.
                slot.hash.store(hash, Ordering::Relaxed);
                // Ordering: Release pairs with the Acquire load in `lookup`.
                slot.pool.store(pool, Ordering::Release);
                return;
            }
            index = (index + 1) & mask;
        }
    }

    /// Replaces the current table with one twice the live keys' need, without tombstones.
    fn grow(&mut self) {
        let capacity = ((self.keys.live.len() + 1) * 4).next_power_of_two().max(8);
        let mut table = Table::with_capacity(capacity);
        for (key, pool) in self.keys.live.iter() {
            let hash = self.table.hasher.hash_one(key);
            self.publish(&table, hash, Arc::as_ptr(pool).cast_mut());
        }
        self.keys.used = self.keys.live.len();
        let new = &mut *table as *mut Table<V>;
        self.keys.tables.push(table);
        // Ordering: Release pairs with the Acquire load of `current` in `lookup`: the new table's
        // slots, filled above, are visible to every reader that sees it.
        self.table.current.store(new, Ordering::Release);
    }
}

#[cfg(all(test, not(shardpool_loom)))]
mod tests {
    use crate::pool::{Config, ConnectionPool, Manage, ShardedPool, block_on};

    struct Numbers;
    impl Manage for Numbers {
        type Key = u32;
        type Conn = u32;
        type Error = std::io::Error;
        async fn create(&self, key: &u32) -> std::io::Result<u32> {
            Ok(*key)
        }
    }

    fn pool() -> ShardedPool<Numbers> {
        ShardedPool::new(Numbers, Config::default().shards(2).max_size(1)).unwrap()
    }

    #[test]
    fn finds_every_key_across_growth_removal_and_readdition() {
        let pool = pool();
        for key in 0..1000 {
            assert_eq!(*block_on(pool.get(&key)).unwrap(), key);
        }
        for key in 0..1000 {
            assert!(
                pool.key_gauges(&key).is_some(),
                "key {key} lost after growth"
            );
        }
        for key in (0..1000).step_by(2) {
            pool.remove_key(&key);
        }
        for key in 0..1000 {
            assert_eq!(pool.key_gauges(&key).is_some(), key % 2 == 1, "key {key}");
        }
        for key in (0..1000).step_by(2) {
            assert_eq!(
                *block_on(pool.get(&key)).unwrap(),
                key,
                "re-added key {key}"
            );
        }
        assert_eq!(pool.stats().total.live, 1000);
    }

    #[test]
    fn readers_race_a_writer_safely() {
        let pool = pool();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..20u32 {
                    for key in 0..200 {
                        drop(block_on(pool.get(&(round * 1000 + key))).unwrap());
                    }
                    for key in 0..200 {
                        pool.remove_key(&(round * 1000 + key));
                    }
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            for _ in 0..2 {
                s.spawn(|| {
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        for key in 0..200 {
                            // A key may come and go under us; whatever we find must be that key.
                            if let Ok(conn) = block_on(pool.get(&key)) {
                                assert_eq!(*conn, key);
                            }
                        }
                    }
                });
            }
        });
    }
}
