//! A shard-local, level-triggered event that many tasks of one executor wait on.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A shard-local, level-triggered event: once [`LocalEvent::set`], every current and future
/// [`LocalEvent::wait`] completes. Cheap to wait on from many tasks of one executor (`!Send`).
///
/// ```
/// # use shardpool::runtime::LocalEvent;
/// let ev = LocalEvent::new();
/// assert!(!ev.is_set());
/// ev.set();
/// futures_lite::future::block_on(ev.wait());
/// ```
#[derive(Clone, Default)]
pub struct LocalEvent {
    inner: Rc<RefCell<EventState>>,
}

#[derive(Default)]
struct EventState {
    set: bool,
    /// Slab of waiting tasks; `free` lists vacant slots.
    waiters: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl fmt::Debug for LocalEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEvent")
            .field("set", &self.is_set())
            .finish()
    }
}

impl LocalEvent {
    /// An unset event.
    pub fn new() -> LocalEvent {
        LocalEvent::default()
    }

    /// Sets the event and wakes every waiter (idempotent).
    pub fn set(&self) {
        let wakers: Vec<Waker> = {
            let mut st = self.inner.borrow_mut();
            st.set = true;
            st.free.clear();
            st.waiters.drain(..).flatten().collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// True once set.
    pub fn is_set(&self) -> bool {
        self.inner.borrow().set
    }

    /// Completes once the event is set.
    pub fn wait(&self) -> EventWait {
        EventWait {
            event: self.clone(),
            slot: None,
        }
    }
}

/// Future of [`LocalEvent::wait`]; leaves the waiter list when dropped.
#[must_use = "futures do nothing unless polled"]
pub struct EventWait {
    event: LocalEvent,
    slot: Option<usize>,
}

impl Future for EventWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut st = this.event.inner.borrow_mut();
        if st.set {
            this.slot = None;
            return Poll::Ready(());
        }
        match this.slot {
            Some(i) => match &mut st.waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match st.free.pop() {
                    Some(i) => {
                        st.waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        st.waiters.push(Some(cx.waker().clone()));
                        st.waiters.len() - 1
                    }
                };
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for EventWait {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut st = self.event.inner.borrow_mut();
            if !st.set && i < st.waiters.len() {
                st.waiters[i] = None;
                st.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{sleep, spawn_shards, two_shards_unpinned};
    use std::time::Duration;

    #[test]
    fn local_event_wakes_waiters_and_forgets_dropped_ones() {
        let (map, opts) = two_shards_unpinned();
        let out = spawn_shards(&map, &opts, |_| async {
            let ev = LocalEvent::new();
            let early = {
                let ev = ev.clone();
                glommio::spawn_local(async move { ev.wait().await })
            };
            // A waiter that gives up must leave no waker behind.
            let gave_up = futures_lite::future::or(
                async {
                    ev.wait().await;
                    false
                },
                async {
                    sleep(Duration::from_millis(1)).await;
                    true
                },
            )
            .await;
            glommio::executor().yield_now().await;
            let vacant = ev.inner.borrow().free.len();
            ev.set();
            early.await;
            ev.wait().await;
            (gave_up, vacant)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(out, vec![(true, 1), (true, 1)]);
    }
}
