//! The one place the pool names its synchronisation primitives.
//!
//! Every atomic, cell, lock, `Arc`, thread-local and blocking wait the pool protocol uses comes from here.
//! A normal build maps them to `std`; a build with `--cfg shardpool_loom` maps them to [loom]'s
//! instrumented twins, so the loom models in `loom-tests/` explore every interleaving of the real
//! protocol code. The cfg is specific to this crate, so it cannot change how other crates compile.
//!
//! Two things deliberately stay on `std` in both builds, because no control flow reads them and
//! letting loom explore them would only multiply the states it must visit:
//! [`Counter`] and [`HotCounter`] (monotonic metric counters) and [`MetricMutex`] (the wait-time
//! histogram).
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(shardpool_loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering},
};

#[cfg(shardpool_loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering},
};

#[cfg(not(shardpool_loom))]
pub(crate) use std::sync::Condvar;
// loom's `Arc` has no weak references; `WeakPool` (outside the protocol) exists only without loom.
#[cfg(not(shardpool_loom))]
pub(crate) use std::sync::Weak;
#[cfg(not(shardpool_loom))]
pub(crate) use std::thread;

/// `thread_local!` with a `const` initialiser, so each access is a plain thread-relative load with
/// no lazy-initialisation check. Under loom, whose `thread_local!` has no const form, a lazy one.
#[cfg(not(shardpool_loom))]
macro_rules! const_thread_local {
    ($(#[$meta:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        std::thread_local! { $(#[$meta])* static $name: $ty = const { $init }; }
    };
}
#[cfg(shardpool_loom)]
macro_rules! const_thread_local {
    ($(#[$meta:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        loom::thread_local! { $(#[$meta])* static $name: $ty = $init; }
    };
}
pub(crate) use const_thread_local;

/// Locks `mutex`, ignoring poisoning: the pool never panics while holding a lock, and a user panic
/// elsewhere must not turn every later checkout into a panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An interior-mutable cell with loom's closure-based API in both builds.
#[cfg(not(shardpool_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(shardpool_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a raw pointer to the contents; the caller upholds that nobody writes them.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a raw pointer to the contents; the caller upholds exclusive access.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(shardpool_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// Drives a future to completion on the current thread (loom's executor under loom).
#[cfg(shardpool_loom)]
pub(crate) use loom::future::block_on;

/// Drives a future to completion on the current thread, parking it while the future is pending.
#[cfg(not(shardpool_loom))]
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            // A spurious unpark only costs one more poll.
            Poll::Pending => thread::park(),
        }
    }
}

/// A monotonic metric counter. Always a `std` atomic: see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    pub(crate) const fn new() -> Self {
        Counter(std::sync::atomic::AtomicU64::new(0))
    }

    /// Increments and returns the previous value.
    pub(crate) fn fetch_incr(&self) -> u64 {
        // Ordering: Relaxed. Callers want distinct values, not ordering.
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: u64) {
        // Ordering: Relaxed. A counter orders nothing; readers only want an eventually exact sum.
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn incr(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        // Ordering: Relaxed, as in `add`.
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A metric counter for the checkout/return hot path, in two cells: its owner thread adds with a
/// plain load and store (no locked instruction), every other thread with `fetch_add`. Always `std`,
/// like [`Counter`]. Who the owner is, is decided by the caller (`metrics::ShardCounters`); the
/// caller guarantees that at most one thread ever passes `owner = true` for a given counter.
#[derive(Debug, Default)]
pub(crate) struct HotCounter {
    owned: std::sync::atomic::AtomicU64,
    shared: std::sync::atomic::AtomicU64,
}

impl HotCounter {
    /// Adds one; `owner` says whether the calling thread is this counter's single owner.
    #[inline]
    pub(crate) fn incr(&self, owner: bool) {
        if owner {
            // Ordering: Relaxed. Only the owner writes `owned`, so a load and a store lose nothing;
            // readers only want an eventually exact sum, as for `Counter`.
            let n = self.owned.load(std::sync::atomic::Ordering::Relaxed);
            // Ordering: Relaxed, as above.
            self.owned
                .store(n + 1, std::sync::atomic::Ordering::Relaxed);
        } else {
            // Ordering: Relaxed, as in `Counter::add`.
            self.shared
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        // Ordering: Relaxed (both loads), as in `Counter::get`.
        self.owned.load(std::sync::atomic::Ordering::Relaxed)
            + self.shared.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A mutex for metrics only (the wait histogram). Always `std`: see the module docs. It is never held
/// across a loom operation, so loom's scheduler cannot switch threads while it is held.
pub(crate) type MetricMutex<T> = std::sync::Mutex<T>;
