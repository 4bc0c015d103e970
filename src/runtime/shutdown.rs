//! The process-wide shutdown switch (drain, then abort), safe to trigger from any thread.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

const DRAINING: u8 = 1;
const ABORTED: u8 = 2;

/// The process-wide shutdown switch, safe to trigger from any thread (a signal handler thread,
/// a test). Two phases: **drain** (stop accepting, finish in-flight work) then **abort**
/// (give up on what is still running, answering it with an error).
///
/// ```
/// # use shardpool::runtime::Shutdown;
/// let s = Shutdown::new();
/// assert!(!s.is_draining());
/// s.drain();
/// assert!(s.is_draining() && !s.is_aborted());
/// s.abort();
/// assert!(s.is_aborted());
/// ```
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    /// 0 (running) → DRAINING → ABORTED, never backwards.
    phase: AtomicU8,
    /// Wakers of tasks waiting for a phase change (one watcher per shard: few entries).
    wakers: Mutex<Vec<Waker>>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("draining", &self.is_draining())
            .field("aborted", &self.is_aborted())
            .finish()
    }
}

impl Shutdown {
    /// A switch in the running phase.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Enters the drain phase (idempotent).
    pub fn drain(&self) {
        self.advance(DRAINING);
    }

    /// Enters the abort phase (implies drain; idempotent).
    pub fn abort(&self) {
        self.advance(ABORTED);
    }

    fn advance(&self, to: u8) {
        // Ordering: AcqRel/Acquire so a waiter that observes the new phase also observes
        // whatever the triggering thread did before; the waker list is then taken under its
        // mutex, which pairs with `wait`'s register-then-recheck.
        let _ = self.inner.phase.fetch_max(to, Ordering::AcqRel);
        let wakers = std::mem::take(
            &mut *self
                .inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for w in wakers {
            w.wake();
        }
    }

    fn phase(&self) -> u8 {
        // Ordering: Acquire, pairs with the AcqRel fetch_max in `advance`.
        self.inner.phase.load(Ordering::Acquire)
    }

    /// True once [`Shutdown::drain`] (or abort) was called.
    pub fn is_draining(&self) -> bool {
        self.phase() >= DRAINING
    }

    /// True once [`Shutdown::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.phase() >= ABORTED
    }

    /// Completes when the switch is at least in the drain phase.
    pub fn drained(&self) -> impl Future<Output = ()> + '_ {
        self.wait(DRAINING)
    }

    /// Completes when the switch is in the abort phase.
    pub fn aborted(&self) -> impl Future<Output = ()> + '_ {
        self.wait(ABORTED)
    }

    fn wait(&self, phase: u8) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.phase() >= phase {
                return Poll::Ready(());
            }
            let mut wakers = self
                .inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            drop(wakers);
            // Re-check after registering: `advance` stores the phase before taking the list, so
            // either we see the new phase here or our waker is in the list it takes.
            if self.phase() >= phase {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{spawn_shards, two_shards_unpinned};
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn shutdown_wakes_every_shard() {
        let (map, opts) = two_shards_unpinned();
        let shutdown = Shutdown::new();
        let reached = Arc::new(AtomicUsize::new(0));
        let (s2, r2) = (shutdown.clone(), Arc::clone(&reached));
        let handles = spawn_shards(&map, &opts, move |_| {
            let (s, r) = (s2.clone(), Arc::clone(&r2));
            async move {
                s.drained().await;
                // Ordering: Relaxed, the join below synchronises with these threads.
                r.fetch_add(1, Ordering::Relaxed);
                s.aborted().await;
                s.is_aborted()
            }
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        shutdown.drain();
        shutdown.abort();
        assert_eq!(handles.join().unwrap(), vec![true, true]);
        // Ordering: Relaxed, after join.
        assert_eq!(reached.load(Ordering::Relaxed), 2);
    }
}
