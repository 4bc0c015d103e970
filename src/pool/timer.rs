//! The default timer behind [`Manage::sleep`](super::Manage::sleep): one lazily started thread that
//! wakes sleepers at their deadlines. Runtimes with a timer of their own should override `sleep`.
//!
//! Under the loom build a sleep never completes: loom models wait without deadlines.

#[cfg(not(shardpool_loom))]
pub(crate) use thread_timer::sleep;

#[cfg(shardpool_loom)]
pub(crate) fn sleep(_duration: std::time::Duration) -> std::future::Pending<()> {
    std::future::pending()
}

#[cfg(not(shardpool_loom))]
mod thread_timer {
    use crate::pool::sync::{Arc, Condvar, Mutex, lock, thread};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::OnceLock;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    /// A sleeper's shared state: `None` once fired, else the waker to call.
    type Shared = Arc<Mutex<Option<Option<Waker>>>>;

    struct Entry {
        deadline: Instant,
        seq: u64,
        shared: Shared,
    }

    impl PartialEq for Entry {
        fn eq(&self, other: &Self) -> bool {
            (self.deadline, self.seq) == (other.deadline, other.seq)
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
        }
    }

    #[derive(Default)]
    struct Timers {
        heap: BinaryHeap<Reverse<Entry>>,
        next_seq: u64,
    }

    struct TimerThread {
        timers: Mutex<Timers>,
        changed: Condvar,
    }

    fn timer_thread() -> &'static TimerThread {
        static TIMER: OnceLock<&'static TimerThread> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static TimerThread = Box::leak(Box::new(TimerThread {
                timers: Mutex::new(Timers::default()),
                changed: Condvar::new(),
            }));
            thread::Builder::new()
                .name("shardpool-timer".into())
                .spawn(move || timer.run())
                .expect("spawning the shardpool timer thread");
            timer
        })
    }

    impl TimerThread {
        fn run(&self) {
            let mut timers = lock(&self.timers);
            loop {
                let now = Instant::now();
                while timers.heap.peek().is_some_and(|e| e.0.deadline <= now) {
                    let Reverse(entry) = timers.heap.pop().expect("peeked");
                    let waker = lock(&entry.shared).take().flatten();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                timers = match timers.heap.peek() {
                    Some(next) => {
                        let wait = next.0.deadline.saturating_duration_since(now);
                        self.changed
                            .wait_timeout(timers, wait)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0
                    }
                    None => self
                        .changed
                        .wait(timers)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                };
            }
        }
    }

    /// Completes after `duration`.
    pub(crate) fn sleep(duration: Duration) -> Sleep {
        Sleep {
            deadline: Instant::now().checked_add(duration),
            shared: None,
        }
    }

    /// The future returned by [`sleep`].
    pub(crate) struct Sleep {
        /// `None`: the deadline is beyond what `Instant` can hold, so it never fires.
        deadline: Option<Instant>,
        shared: Option<Shared>,
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let Some(deadline) = self.deadline else {
                return Poll::Pending;
            };
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            match &self.shared {
                Some(shared) => {
                    let mut state = lock(shared);
                    match &mut *state {
                        None => Poll::Ready(()),
                        Some(waker) => {
                            *waker = Some(cx.waker().clone());
                            Poll::Pending
                        }
                    }
                }
                None => {
                    let shared: Shared = Arc::new(Mutex::new(Some(Some(cx.waker().clone()))));
                    let timer = timer_thread();
                    let mut timers = lock(&timer.timers);
                    let seq = timers.next_seq;
                    timers.next_seq += 1;
                    timers.heap.push(Reverse(Entry {
                        deadline,
                        seq,
                        shared: Arc::clone(&shared),
                    }));
                    drop(timers);
                    timer.changed.notify_one();
                    self.shared = Some(shared);
                    Poll::Pending
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sleeps_at_least_the_duration_and_wakes() {
            let start = Instant::now();
            crate::pool::sync::block_on(sleep(Duration::from_millis(20)));
            assert!(start.elapsed() >= Duration::from_millis(20));
        }
    }
}
