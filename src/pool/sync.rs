//! The one place the pool names its synchronisation primitives.
//!
//! Every atomic, cell, lock, `Arc`, thread-local and blocking wait the pool protocol uses comes from here.
//! A normal build maps them to `std`; a build with `--cfg shardpool_loom` maps them to [loom]'s
//! instrumented twins, so the loom models in `loom-tests/` explore every interleaving of the real
//! protocol code. The cfg is specific to this crate, so it cannot change how other crates compile.
//!
//! Two things deliberately stay on `std` in both builds, because no control flow reads them and
//! letting loom explore them would only multiply the states it must visit:
//! [`Counter`] (monotonic metric counters) and [`MetricMutex`] (the wait-time histogram).
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(shardpool_loom))]
pub(crate) use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    thread_local,
};

#[cfg(shardpool_loom)]
pub(crate) use loom::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    thread_local,
};

#[cfg(not(shardpool_loom))]
pub(crate) use std::sync::Condvar;
#[cfg(not(shardpool_loom))]
pub(crate) use std::thread;

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

    /// Runs `f` with a raw pointer to the contents; the caller upholds exclusive access.
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

/// A mutex for metrics only (the wait histogram). Always `std`: see the module docs. It is never held
/// across a loom operation, so loom's scheduler cannot switch threads while it is held.
pub(crate) type MetricMutex<T> = std::sync::Mutex<T>;
