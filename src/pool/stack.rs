//! The idle stack: a bounded, allocation-free, lock-free LIFO shared by every thread.
//!
//! Each shard keeps its idle connections for a key in one of these. LIFO is the point: the
//! connection returned last is the warmest (its socket buffers, its route, the backend's cache of
//! it), and a surplus left after a burst sinks to the bottom, where the idle timeout reaps it. A
//! FIFO such as crossbeam's `ArrayQueue` would rotate through every idle connection and keep them all
//! lukewarm, so none would ever expire (docs/ARCHITECTURE.md, "Why a stack").
//!
//! # Algorithm
//!
//! A Treiber stack over a fixed array of nodes. Two lists thread through the nodes: `head`, the
//! stack of filled nodes, and `free`, the stack of empty ones. Each is a single `AtomicU64` word:
//!
//! ```text
//!  63               30  29       28        27       14 13        0
//! +-------------------+--------+---------+-----------+-----------+
//! |   tag (34 bits)   | CLOSED | WAITING | len (14)  | top (14)  |   top == NIL: empty
//! +-------------------+--------+---------+-----------+-----------+
//! ```
//!
//! Every successful CAS increments the tag, so a thread that read the word, was delayed, and tries
//! to swing it after the same node was popped and pushed back (ABA) fails and retries. `len` rides
//! in the same word, so [`IdleStack::len`] is one load and always exact.
//!
//! The two flag bits (used on `head` only) let the pool's protocol ride on the push itself:
//! * `WAITING`: a checkout is waiting for this key. A push that sees it is refused with
//!   [`Refused::Waiting`], and the pusher hands its value to the waiter instead.
//! * `CLOSED`: the key is closed. A push that sees it is refused with [`Refused::Closed`], and the
//!   pusher drops its value; pops still drain what is left.
//!
//! Because the flag and the push are the same word, a set flag and a push are ordered by the word's
//! own modification order: either the push came first (and whoever set the flag sees the value on
//! the stack) or the pusher sees the flag. No fence is needed.
//!
//! * `push(v)`: pop a node from `free`, write `v` into it, push the node onto `head`.
//! * `pop()`: pop a node from `head`, read its value, push the node onto `free`.
//!
//! A node's value is written only while the node is on neither list (exclusively owned by the
//! pusher) and read only after it left `head` (exclusively owned by the popper).
//!
//! # Memory ordering
//!
//! Every change of a list word is a CAS with `AcqRel` on success: the `Release` half publishes the
//! node's value and `next` link written before it; the `Acquire` half, and the `Acquire` load that
//! read the word being replaced, make them visible to the next owner. All operations on a word are
//! read-modify-writes, so each new value continues the release sequence of the ones before it.
//!
//! # Limits
//!
//! At most [`MAX_CAPACITY`] nodes per stack. The tag wraps after 2³⁴ changes of one list; a thread
//! would have to stall between its load and its CAS for exactly that many operations on the same
//! stack (minutes of a single stack's full speed) for ABA to return, which we accept.

use super::sync::{AtomicU16, AtomicU64, Ordering, UnsafeCell};
use crossbeam_utils::{Backoff, CachePadded};
use std::mem::MaybeUninit;

const INDEX_BITS: u32 = 14;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const NIL: u16 = INDEX_MASK as u16;
const LEN_SHIFT: u32 = INDEX_BITS;
const WAITING: u64 = 1 << (2 * INDEX_BITS);
const CLOSED: u64 = 1 << (2 * INDEX_BITS + 1);
const FLAGS: u64 = WAITING | CLOSED;
const TAG_SHIFT: u32 = 2 * INDEX_BITS + 2;

/// The success ordering of the CAS that links a node (see `link`).
#[cfg(not(shardpool_seeded_bug = "stack_relaxed"))]
const LINK_ORDERING: Ordering = Ordering::AcqRel;
/// Seeded bug for the loom models (docs/protocol.md): a `Relaxed` link publishes neither the node's
/// value nor its `next`, so the popper reads them without a happens-before edge.
#[cfg(shardpool_seeded_bug = "stack_relaxed")]
const LINK_ORDERING: Ordering = Ordering::Relaxed;

/// The largest capacity a stack supports.
pub(crate) const MAX_CAPACITY: usize = NIL as usize - 1;

/// A list word: tag, flags, length and top index, packed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    const fn new(tag: u64, flags: u64, len: usize, top: u16) -> Self {
        Word((tag << TAG_SHIFT) | flags | ((len as u64) << LEN_SHIFT) | top as u64)
    }
    const fn tag(self) -> u64 {
        self.0 >> TAG_SHIFT
    }
    const fn flags(self) -> u64 {
        self.0 & FLAGS
    }
    const fn len(self) -> usize {
        ((self.0 >> LEN_SHIFT) & INDEX_MASK) as usize
    }
    const fn top(self) -> u16 {
        (self.0 & INDEX_MASK) as u16
    }
    /// The next version of this word: tag bumped, other fields replaced.
    const fn next(self, flags: u64, len: usize, top: u16) -> Self {
        Word::new(self.tag().wrapping_add(1), flags, len, top)
    }
}

/// Why [`IdleStack::push`] gave its value back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<T> {
    /// No free node.
    Full(T),
    /// A checkout is waiting (the `WAITING` flag): hand the value to it.
    Waiting(T),
    /// The stack is closed: drop the value.
    Closed(T),
}

struct Node<T> {
    /// The node below this one on whichever list holds it.
    next: AtomicU16,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded lock-free LIFO of `T`. See the module docs.
pub(crate) struct IdleStack<T> {
    head: CachePadded<AtomicU64>,
    free: CachePadded<AtomicU64>,
    nodes: Box<[Node<T>]>,
}

// SAFETY: the stack moves `T` values between threads (push on one, pop on another) and never shares
// a `&T`, so `T: Send` is all it needs; each value is accessed by one owner at a time (module docs).
unsafe impl<T: Send> Send for IdleStack<T> {}
// SAFETY: as above: concurrent `push`/`pop` through `&self` hand each value to exactly one thread.
unsafe impl<T: Send> Sync for IdleStack<T> {}

impl<T> IdleStack<T> {
    /// An empty stack with room for `capacity` values (0 is allowed: every push is then `Full`).
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(
            capacity <= MAX_CAPACITY,
            "idle stack capacity {capacity} over {MAX_CAPACITY}"
        );
        let nodes: Box<[Node<T>]> = (0..capacity)
            .map(|i| Node {
                // Initially every node is on the free list, in index order.
                next: AtomicU16::new(if i + 1 < capacity {
                    (i + 1) as u16
                } else {
                    NIL
                }),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        let free_top = if capacity == 0 { NIL } else { 0 };
        IdleStack {
            head: CachePadded::new(AtomicU64::new(Word::new(0, 0, 0, NIL).0)),
            free: CachePadded::new(AtomicU64::new(Word::new(0, 0, capacity, free_top).0)),
            nodes,
        }
    }

    /// How many values are on the stack now (exact at the instant of the load).
    pub(crate) fn len(&self) -> usize {
        // Ordering: Relaxed. A gauge for metrics and maintenance; it publishes nothing.
        Word(self.head.load(Ordering::Relaxed)).len()
    }

    /// Pushes `value` on top, unless the stack is full, flagged `WAITING`, or closed.
    ///
    /// On success this CAS is the last access the pusher makes to the stack: the value may be
    /// popped, and the stack's owner freed, the moment it lands.
    pub(crate) fn push(&self, value: T) -> Result<(), Refused<T>> {
        // Ordering: Relaxed. A first look at the flags; the CAS in `link` re-checks them.
        if let Some(refusal) = refusal(Word(self.head.load(Ordering::Relaxed)).flags()) {
            return Err(refusal(value));
        }
        let Some(index) = self.unlink(&self.free) else {
            return Err(Refused::Full(value));
        };
        let node = &self.nodes[index as usize];
        // SAFETY: `unlink` gave this thread the node off the free list; no other thread can reach its
        // value until `link` puts it on `head` (module docs: one owner at a time).
        node.value.with_mut(|slot| unsafe { (*slot).write(value) });
        match self.link(&self.head, index, true) {
            Ok(()) => Ok(()),
            Err(flags) => {
                // SAFETY: the node is still ours (never linked); we wrote its value just above.
                let value = node
                    .value
                    .with_mut(|slot| unsafe { (*slot).assume_init_read() });
                self.link(&self.free, index, false)
                    .unwrap_or_else(|_| unreachable!("the free list is never flagged"));
                let refuse = refusal(flags).unwrap_or_else(|| unreachable!("refused with a flag"));
                Err(refuse(value))
            }
        }
    }

    /// Pops the most recently pushed value.
    pub(crate) fn pop(&self) -> Option<T> {
        let index = self.unlink(&self.head)?;
        let node = &self.nodes[index as usize];
        // SAFETY: `unlink` took the node off `head`, so this thread owns it; the value was
        // initialised by the push that linked it, whose Release CAS our Acquire in `unlink` saw.
        let value = node
            .value
            .with_mut(|slot| unsafe { (*slot).assume_init_read() });
        self.link(&self.free, index, false)
            .unwrap_or_else(|_| unreachable!("the free list is never flagged"));
        Some(value)
    }

    /// Sets or clears the `WAITING` flag.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.update_flags(|flags| {
            if waiting {
                flags | WAITING
            } else {
                flags & !WAITING
            }
        });
    }

    /// Sets the `CLOSED` flag: from now on every push is refused. Pops still drain the stack.
    pub(crate) fn close(&self) {
        self.update_flags(|flags| flags | CLOSED);
    }

    fn update_flags(&self, change: impl Fn(u64) -> u64) {
        // Ordering: Relaxed; the CAS decides.
        let mut word = Word(self.head.load(Ordering::Relaxed));
        loop {
            let new = word.next(change(word.flags()), word.len(), word.top());
            // Ordering: AcqRel keeps this RMW in the word's release sequence (pushes before it stay
            // visible to later pops); it publishes nothing of its own.
            match self.head.compare_exchange_weak(
                word.0,
                new.0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => word = Word(current),
            }
        }
    }

    /// Unlinks the top node of `list` and returns its index.
    fn unlink(&self, list: &AtomicU64) -> Option<u16> {
        let backoff = Backoff::new();
        // Ordering: Acquire pairs with the AcqRel CAS that wrote this word, so the top node's `next`
        // and value, written before that CAS, are visible here.
        let mut word = Word(list.load(Ordering::Acquire));
        loop {
            let top = word.top();
            if top == NIL {
                return None;
            }
            // Ordering: Relaxed. Made visible by the Acquire above; if the node moved since (ABA),
            // the value read here is stale but the tag makes the CAS below fail.
            let next = self.nodes[top as usize].next.load(Ordering::Relaxed);
            let new = word.next(word.flags(), word.len() - 1, next);
            // Ordering: AcqRel on success: Acquire as for the load above, Release so the next thread
            // to link this node sees our reads of it finished. Acquire on failure reloads as above.
            match list.compare_exchange_weak(word.0, new.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(top),
                Err(current) => {
                    word = Word(current);
                    backoff.spin();
                }
            }
        }
    }

    /// Links node `index`, which this thread owns, on top of `list`. With `respect_flags`, gives up
    /// and returns the flags when `list` is flagged.
    fn link(&self, list: &AtomicU64, index: u16, respect_flags: bool) -> Result<(), u64> {
        let backoff = Backoff::new();
        // Ordering: Relaxed. Only the CAS below publishes anything; a stale word just fails it.
        let mut word = Word(list.load(Ordering::Relaxed));
        loop {
            if respect_flags && word.flags() != 0 {
                return Err(word.flags());
            }
            // Ordering: Relaxed. Published by the Release half of the CAS below.
            self.nodes[index as usize]
                .next
                .store(word.top(), Ordering::Relaxed);
            let new = word.next(word.flags(), word.len() + 1, index);
            // Ordering: AcqRel on success: Release publishes `next` and the node's value (pairs with
            // the Acquire in `unlink`); Acquire keeps the release sequence of earlier CASes intact.
            match list.compare_exchange_weak(word.0, new.0, LINK_ORDERING, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => {
                    word = Word(current);
                    backoff.spin();
                }
            }
        }
    }
}

/// The refusal a set of flags calls for (`CLOSED` wins over `WAITING`), or `None` when clear.
fn refusal<T>(flags: u64) -> Option<fn(T) -> Refused<T>> {
    if flags & CLOSED != 0 {
        Some(Refused::Closed)
    } else if flags & WAITING != 0 {
        Some(Refused::Waiting)
    } else {
        None
    }
}

impl<T> Drop for IdleStack<T> {
    fn drop(&mut self) {
        while let Some(value) = self.pop() {
            drop(value);
        }
    }
}

#[cfg(all(test, not(shardpool_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lifo_order_and_capacity() {
        let stack = IdleStack::new(3);
        assert_eq!(stack.pop(), None);
        for v in 1..=3 {
            stack.push(v).unwrap();
        }
        assert_eq!(
            stack.push(4),
            Err(Refused::Full(4)),
            "a full stack gives the value back"
        );
        assert_eq!(stack.len(), 3);
        assert_eq!(stack.pop(), Some(3), "most recently pushed first");
        stack.push(5).unwrap();
        assert_eq!(stack.pop(), Some(5));
        assert_eq!(stack.pop(), Some(2));
        assert_eq!(stack.pop(), Some(1));
        assert_eq!(stack.pop(), None);
        assert_eq!(stack.len(), 0);
    }

    #[test]
    fn flags_refuse_pushes_but_not_pops() {
        let stack = IdleStack::new(2);
        stack.push(1).unwrap();
        stack.set_waiting(true);
        assert_eq!(stack.push(2), Err(Refused::Waiting(2)));
        assert_eq!(stack.len(), 1, "a refused push leaves no trace");
        stack.set_waiting(false);
        stack.push(2).unwrap();
        stack.close();
        stack.set_waiting(true);
        assert_eq!(
            stack.push(3),
            Err(Refused::Closed(3)),
            "closed wins over waiting"
        );
        assert_eq!(stack.pop(), Some(2));
        assert_eq!(stack.pop(), Some(1));
        assert_eq!(stack.pop(), None);
        assert_eq!(
            stack.push(4),
            Err(Refused::Closed(4)),
            "stays closed when empty"
        );
    }

    #[test]
    fn zero_capacity_rejects_every_push() {
        let stack = IdleStack::new(0);
        assert_eq!(stack.push(1), Err(Refused::Full(1)));
        assert_eq!(stack.pop(), None);
    }

    #[test]
    fn drop_drops_every_value_once() {
        let tracker = Arc::new(());
        let stack = IdleStack::new(4);
        for _ in 0..3 {
            stack.push(Arc::clone(&tracker)).unwrap();
        }
        assert_eq!(Arc::strong_count(&tracker), 4);
        drop(stack);
        assert_eq!(Arc::strong_count(&tracker), 1);
    }

    /// Many threads push and pop distinct tokens; at the end every token is present exactly once.
    #[test]
    fn concurrent_push_pop_loses_and_duplicates_nothing() {
        const THREADS: usize = 4;
        const TOKENS_PER_THREAD: usize = 16;
        const ROUNDS: usize = 20_000;
        let stack = Arc::new(IdleStack::new(THREADS * TOKENS_PER_THREAD));
        for token in 0..THREADS * TOKENS_PER_THREAD {
            stack.push(token).unwrap();
        }
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let stack = Arc::clone(&stack);
                std::thread::spawn(move || {
                    let mut held = Vec::with_capacity(TOKENS_PER_THREAD);
                    for round in 0..ROUNDS {
                        if round % 3 == 2 || held.len() == TOKENS_PER_THREAD {
                            while let Some(token) = held.pop() {
                                assert!(stack.push(token).is_ok(), "room for every token");
                            }
                        } else if let Some(token) = stack.pop() {
                            held.push(token);
                        }
                    }
                    for token in held {
                        assert!(stack.push(token).is_ok(), "room for every token");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let mut seen = [false; THREADS * TOKENS_PER_THREAD];
        while let Some(token) = stack.pop() {
            assert!(!seen[token], "token {token} popped twice");
            seen[token] = true;
        }
        assert!(seen.iter().all(|&s| s), "a token was lost");
    }
}
