//! Checkouts waiting for an exhausted key: a FIFO of waiters with direct hand-off.
//!
//! Waiting is the slow path, so the queue is a mutex around a deque. The hot path never looks at
//! it: whether anybody waits is announced through a [`WaitSignal`], which the sharded pool turns
//! into a flag bit in the very words a return or a freed permit already changes with a CAS (each
//! idle stack's head, the key's permit counter). The signal is raised when the queue goes from
//! empty to one waiter and lowered when it empties, always under the queue's lock.
//!
//! Three things wake a waiter:
//! * [`WaitQueue::hand_off`]: a returned connection goes straight to the oldest waiter, which leaves
//!   the queue holding it (nobody can barge in between the return and the waiter).
//! * [`WaitQueue::notify_one`]: a permit was freed; the oldest waiter not yet notified retries its
//!   checkout and stays queued if it still finds nothing.
//! * [`WaitQueue::close`]: the pool or key closed; every waiter fails with `Closed`.
//!
//! With `Config::max_total`, a waiter that the total refused is also on a second queue, the
//! pool's ([`WaitQueue::enqueue`]), whose only wake-up is [`WaitQueue::notify_all`]: a total
//! permit was freed, and every waiter on it not yet told retries (invariant 7).
//!
//! # No lost wake-up (invariant 4)
//!
//! A waiter registers (raising the signal), then retries its checkout once before it sleeps. The
//! retry reads the same words the signal flagged, after flagging them, so a return or release that
//! came first is seen by the retry, and one that came later sees the flag (one word, one modification
//! order). A notification that its waiter did not act on (it left with a hand-off, succeeded on its
//! own, timed out, or was dropped) is passed on to the next waiter, so none is swallowed.

use super::sync::{Arc, Mutex, lock};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// What a waiter learns when it wakes.
#[derive(Debug)]
pub(crate) enum Wake<T> {
    /// A returner handed this item straight to us; we are no longer queued.
    Handed(T),
    /// Something changed: retry the checkout. We are still queued.
    Retry,
    /// The pool or key closed; we are no longer queued.
    Closed,
}

enum Slot<T> {
    Waiting {
        waker: Option<Waker>,
        notified: bool,
    },
    Handed(T),
    Closed,
    /// The waiter took its wake-up; used only transiently while polling.
    Taken,
}

/// One waiting checkout.
pub(crate) struct Waiter<T> {
    slot: Mutex<Slot<T>>,
}

/// The queue of waiters for one key.
pub(crate) struct WaitQueue<T> {
    queue: Mutex<VecDeque<Arc<Waiter<T>>>>,
}

/// Announces whether a key has waiters, to the code that must hand off or notify. Called under the
/// queue's lock, so raising and lowering never interleave.
pub(crate) trait WaitSignal {
    /// `true` when the first waiter arrives, `false` when the last one leaves.
    fn set_waiting(&self, waiting: bool);
}

/// No signal: for a pool that looks at its waiters under a lock of its own.
impl WaitSignal for () {
    fn set_waiting(&self, _waiting: bool) {}
}

/// What [`WaitQueue::deregister`] found in the slot of a waiter that is leaving.
pub(crate) enum Leftover<T> {
    Nothing,
    /// An item was handed to the waiter after it decided to leave; the caller must use or return it.
    Item(T),
    /// The pool closed while the waiter was leaving.
    Closed,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue {
            queue: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T> WaitQueue<T> {
    /// Queues a new waiter at the back, raising `signal` if it is the first, unless `limit`
    /// waiters are queued already (`None`: the caller fails with `Overloaded`). The caller must
    /// then retry its checkout once before waiting.
    pub(crate) fn register(
        &self,
        signal: &impl WaitSignal,
        limit: usize,
    ) -> Option<Arc<Waiter<T>>> {
        let mut queue = lock(&self.queue);
        if queue.len() >= limit {
            return None;
        }
        let waiter = Arc::new(Waiter {
            slot: Mutex::new(Slot::Waiting {
                waker: None,
                notified: false,
            }),
        });
        push(&mut queue, &waiter, signal);
        Some(waiter)
    }

    /// Gives `item` to the oldest waiter; when nobody waits, runs `otherwise(item)` while still
    /// holding the queue's lock, so no waiter can arrive (and raise `signal`) until it returns.
    pub(crate) fn hand_off(&self, item: T, signal: &impl WaitSignal, otherwise: impl FnOnce(T)) {
        let mut queue = lock(&self.queue);
        let Some(waiter) = queue.pop_front() else {
            otherwise(item);
            return;
        };
        if queue.is_empty() {
            signal.set_waiting(false);
        }
        // Seeded bug for the loom models (docs/protocol.md): the bug this ordering fixes (below).
        #[cfg(shardpool_seeded_bug = "handoff_unlocked")]
        drop(queue);
        // The slot is filled while the queue is still locked. A waiter leaves the queue only under
        // that lock (`deregister`), then reads its slot, so it either is still queued here (and
        // finds the item when it reads its slot) or already left (and is not popped). Filling the
        // slot after unlocking let a popped waiter that succeeded on its own retry leave first; the
        // item then sat in a dead slot, dropped without closing, its permit never freed (found by
        // the loom model `two_waiters`).
        let (waker, was_notified) = {
            let mut slot = lock(&waiter.slot);
            match std::mem::replace(&mut *slot, Slot::Handed(item)) {
                Slot::Waiting { waker, notified } => (waker, notified),
                // Loud rather than silent: a `Handed` slot here would leak its item.
                Slot::Handed(_) | Slot::Closed | Slot::Taken => {
                    unreachable!("a queued waiter's slot is Waiting")
                }
            }
        };
        #[cfg(not(shardpool_seeded_bug = "handoff_unlocked"))]
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
        if was_notified {
            // The hand-off replaces the retry this waiter was told to make; the freed permit it was
            // told about must still reach someone.
            self.notify_one();
        }
    }

    /// Tells the oldest waiter that has not been told yet to retry. Returns whether one was told.
    pub(crate) fn notify_one(&self) -> bool {
        let queue = lock(&self.queue);
        for waiter in queue.iter() {
            let mut slot = lock(&waiter.slot);
            if let Slot::Waiting { waker, notified } = &mut *slot
                && !*notified
            {
                *notified = true;
                let waker = waker.take();
                drop(slot);
                drop(queue);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return true;
            }
        }
        false
    }

    /// Queues `waiter`, already queued on its key's queue, on this second queue too (the sharded
    /// pool's queue of checkouts that a freed total permit must reach), raising `signal` if it is
    /// the first. This queue only ever tells its waiters to retry ([`WaitQueue::notify_all`]);
    /// hand-offs and closing go through the key's queue. The caller must retry its checkout once
    /// after this, before waiting.
    pub(crate) fn enqueue(&self, waiter: &Arc<Waiter<T>>, signal: &impl WaitSignal) {
        push(&mut lock(&self.queue), waiter, signal);
    }

    /// Takes `waiter` off this queue (if on it), lowering `signal` if it was the last; its slot is
    /// left alone (`deregister` deals with it on a key's queue).
    pub(crate) fn remove(&self, waiter: &Arc<Waiter<T>>, signal: &impl WaitSignal) {
        let mut queue = lock(&self.queue);
        if let Some(at) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            queue.remove(at);
            if queue.is_empty() {
                signal.set_waiting(false);
            }
        }
    }

    /// Tells every queued waiter that is still waiting and not told yet to retry. A waiter told
    /// already will retry anyway (or pass its notification on, if it leaves), and one that was
    /// handed a connection or closed meanwhile needs nothing.
    pub(crate) fn notify_all(&self) {
        let mut wakers = Vec::new();
        {
            let queue = lock(&self.queue);
            for waiter in queue.iter() {
                let mut slot = lock(&waiter.slot);
                if let Slot::Waiting { waker, notified } = &mut *slot
                    && !*notified
                {
                    *notified = true;
                    wakers.extend(waker.take());
                }
            }
        }
        for waker in wakers {
            waker.wake();
        }
    }

    /// How many waiters are queued now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Fails every queued waiter with `Closed`.
    pub(crate) fn close(&self, signal: &impl WaitSignal) {
        let drained: Vec<_> = {
            let mut queue = lock(&self.queue);
            if !queue.is_empty() {
                signal.set_waiting(false);
            }
            queue.drain(..).collect()
        };
        for waiter in drained {
            let waker = match std::mem::replace(&mut *lock(&waiter.slot), Slot::Closed) {
                Slot::Waiting { waker, .. } => waker,
                // It deregistered between the drain and here (found by the loom model
                // `close_vs_waiter`): nothing to wake.
                Slot::Taken => None,
                // Loud rather than silent: `hand_off` fills only queued slots, under the lock the
                // drain took, so a drained slot cannot be `Handed`, and only this closes slots.
                Slot::Handed(_) | Slot::Closed => {
                    unreachable!("a drained waiter's slot is Waiting or Taken")
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Removes `waiter` from the queue (if still there, lowering `signal` if it was the last) and
    /// reports what it was left holding. An unconsumed notification is passed on.
    pub(crate) fn deregister(
        &self,
        waiter: &Arc<Waiter<T>>,
        signal: &impl WaitSignal,
    ) -> Leftover<T> {
        self.remove(waiter, signal);
        let slot = std::mem::replace(&mut *lock(&waiter.slot), Slot::Taken);
        match slot {
            Slot::Handed(item) => Leftover::Item(item),
            Slot::Closed => Leftover::Closed,
            Slot::Waiting { notified, .. } => {
                if notified {
                    self.notify_one();
                }
                Leftover::Nothing
            }
            Slot::Taken => Leftover::Nothing,
        }
    }
}

/// Appends `waiter` to a locked queue, raising `signal` if it is the first (invariant 4: before
/// the caller's retry).
fn push<T>(
    queue: &mut VecDeque<Arc<Waiter<T>>>,
    waiter: &Arc<Waiter<T>>,
    signal: &impl WaitSignal,
) {
    queue.push_back(Arc::clone(waiter));
    if queue.len() == 1 {
        signal.set_waiting(true);
    }
}

impl<T> Waiter<T> {
    /// Waits for the next wake-up of this (queued) waiter.
    pub(crate) fn wait(&self) -> WaitFor<'_, T> {
        WaitFor { waiter: self }
    }
}

/// The future returned by [`Waiter::wait`].
pub(crate) struct WaitFor<'a, T> {
    waiter: &'a Waiter<T>,
}

impl<T> Future for WaitFor<'_, T> {
    type Output = Wake<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake<T>> {
        let mut slot = lock(&self.waiter.slot);
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Handed(item) => Poll::Ready(Wake::Handed(item)),
            Slot::Closed => Poll::Ready(Wake::Closed),
            Slot::Waiting { notified: true, .. } => {
                *slot = Slot::Waiting {
                    waker: None,
                    notified: false,
                };
                Poll::Ready(Wake::Retry)
            }
            Slot::Waiting {
                notified: false,
                waker,
            } => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *slot = Slot::Waiting {
                    waker: Some(waker),
                    notified: false,
                };
                Poll::Pending
            }
            // A wake-up already consumed: nothing more will come until re-registration.
            Slot::Taken => Poll::Pending,
        }
    }
}
