//! A `Send + Sync` sleep driven by the current shard's glommio timer, for libraries (hyper) that
//! demand `Send` timers.

use super::current_shard;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A `Send + Sync` sleep whose timing is done by a small task on the current shard's glommio
/// executor (or, off a shard, by a helper thread). It exists because hyper's `Timer` demands
/// `Send + Sync` sleeps while glommio's timers are `!Send`.
///
/// Cost: one task spawn and one small `Arc<Mutex<_>>` per sleep (per reset that moves the
/// deadline earlier); hyper uses timers per connection (keep-alive), not per request. hyper
/// polls its keep-alive sleep on every poll of a connection, from the same task: such a poll
/// reads one atomic flag and compares wakers, without the mutex.
///
/// ```no_run
/// # use shardpool::runtime::SendSleep;
/// # use std::time::{Duration, Instant};
/// # async fn demo() {
/// let mut s = Box::pin(SendSleep::until(Instant::now() + Duration::from_millis(5)));
/// s.as_mut().reset(Instant::now() + Duration::from_millis(1));
/// s.await;
/// # }
/// ```
pub struct SendSleep {
    state: Arc<SleepShared>,
    /// The waker the running driver of the current deadline will wake, as of the last poll
    /// that found one running; `None` after a reset or a poll that returned `Ready`. While it
    /// is `Some`, only that driver can end the wait, and it sets [`SleepShared::fired`] first.
    armed: Option<Waker>,
}

struct SleepShared {
    /// Set by a driver when it fires (before it wakes the task), cleared by a reset.
    fired: AtomicBool,
    state: Mutex<SleepState>,
}

struct SleepState {
    deadline: Instant,
    /// Bumped by every reset; a driver whose generation is stale exits without acting.
    generation: u64,
    /// A driver for the current generation exists.
    driving: bool,
    fired: bool,
    /// The `SendSleep` was dropped: drivers exit.
    dropped: bool,
    waker: Option<Waker>,
}

impl SendSleep {
    /// A sleep that completes at `deadline`.
    pub fn until(deadline: Instant) -> SendSleep {
        SendSleep {
            state: Arc::new(SleepShared {
                fired: AtomicBool::new(false),
                state: Mutex::new(SleepState {
                    deadline,
                    generation: 0,
                    driving: false,
                    fired: false,
                    dropped: false,
                    waker: None,
                }),
            }),
            armed: None,
        }
    }

    /// Moves the deadline (earlier or later); a fired sleep becomes pending again.
    pub fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.armed = None;
        let mut st = lock(&self.state.state);
        // A running driver can follow a later deadline (it re-checks when it wakes); an earlier
        // one needs a new driver, so retire the current one.
        if !(st.driving && deadline >= st.deadline) {
            st.generation += 1;
            st.driving = false;
        }
        st.deadline = deadline;
        st.fired = false;
        // Ordering: Relaxed; written under the mutex, which orders it with the driver's store
        // (also under the mutex).
        self.state.fired.store(false, Ordering::Relaxed);
    }

    fn start_driver(state: Arc<SleepShared>, generation: u64, deadline: Instant) {
        if current_shard().is_some() {
            glommio::spawn_local(Self::drive(
                state,
                generation,
                deadline,
                glommio::timer::sleep,
            ))
            .detach();
        } else {
            std::thread::spawn(move || {
                let blocking_sleep = |d| async move { std::thread::sleep(d) };
                futures_lite::future::block_on(Self::drive(
                    state,
                    generation,
                    deadline,
                    blocking_sleep,
                ));
            });
        }
    }

    /// Sleeps until the deadline, following resets that move it later, then fires.
    async fn drive<S: Future<Output = ()>>(
        state: Arc<SleepShared>,
        generation: u64,
        mut deadline: Instant,
        sleep: impl Fn(Duration) -> S,
    ) {
        loop {
            sleep(deadline.saturating_duration_since(Instant::now())).await;
            match Self::on_wake(&state, generation) {
                Some(later) => deadline = later,
                None => return,
            }
        }
    }

    /// A driver woke: fire if due, or return the deadline to sleep until next.
    fn on_wake(state: &SleepShared, generation: u64) -> Option<Instant> {
        let mut st = lock(&state.state);
        if st.dropped || st.generation != generation {
            return None;
        }
        if Instant::now() >= st.deadline {
            st.fired = true;
            st.driving = false;
            // Ordering: Release, before the wake below: the task it wakes sees the flag (pairs
            // with the Acquire load in `poll`).
            state.fired.store(true, Ordering::Release);
            if let Some(w) = st.waker.take() {
                drop(st);
                w.wake();
            }
            return None;
        }
        Some(st.deadline)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Future for SendSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Ordering: Acquire, pairs with the driver's Release store before its wake: a poll that
        // the wake caused sees the flag.
        if let Some(w) = &self.armed
            && w.will_wake(cx.waker())
            && !self.state.fired.load(Ordering::Acquire)
        {
            return Poll::Pending;
        }
        self.armed = None;
        let state = Arc::clone(&self.state);
        let mut st = lock(&state.state);
        // While a driver of the current deadline runs, it fires the sleep when the deadline
        // passes, so a poll need not read the clock (hyper polls its keep-alive sleep on every
        // poll of a connection).
        if st.fired || (!st.driving && Instant::now() >= st.deadline) {
            st.fired = true;
            return Poll::Ready(());
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        self.armed.clone_from(&st.waker);
        if !st.driving {
            st.driving = true;
            let (generation, deadline) = (st.generation, st.deadline);
            drop(st);
            SendSleep::start_driver(state, generation, deadline);
        }
        Poll::Pending
    }
}

impl Drop for SendSleep {
    fn drop(&mut self) {
        let mut st = lock(&self.state.state);
        st.dropped = true;
        st.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{spawn_shards, two_shards_unpinned};

    #[test]
    fn send_sleep_fires_and_resets_on_a_shard_and_off() {
        let (map, opts) = two_shards_unpinned();
        let check = || async {
            let start = Instant::now();
            let mut s = Box::pin(SendSleep::until(start + Duration::from_secs(30)));
            // Poll once so a driver for the 30 s deadline exists, then move the deadline earlier.
            assert!(futures_lite::future::poll_once(s.as_mut()).await.is_none());
            s.as_mut().reset(start + Duration::from_millis(10));
            s.as_mut().await;
            let first = start.elapsed();
            s.as_mut().reset(Instant::now() + Duration::from_millis(5));
            s.await;
            first
        };
        let out = spawn_shards(&map, &opts, move |_| check())
            .unwrap()
            .join()
            .unwrap();
        for took in out {
            assert!(
                took >= Duration::from_millis(10) && took < Duration::from_secs(10),
                "{took:?}"
            );
        }
        let off_shard = futures_lite::future::block_on(check());
        assert!(off_shard < Duration::from_secs(10));
    }
}
