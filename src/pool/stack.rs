//! The idle stacks: bounded, allocation-free, lock-free LIFOs, one per shard, over one node arena.
//!
//! Each key has an [`IdleStacks`]: one stack per shard for that key's idle connections, and one array
//! of nodes the stacks share. LIFO is the point: the connection returned last is the warmest (its
//! socket buffers, its route, the backend's cache of it), and a surplus left after a burst sinks to
//! the bottom, where the idle timeout reaps it. A FIFO such as crossbeam's `ArrayQueue` would rotate
//! through every idle connection and keep them all lukewarm, so none would ever expire
//! (docs/ARCHITECTURE.md, "Why a stack").
//!
//! # Algorithm
//!
//! Treiber stacks over a fixed array of nodes. A node is a [`Slot`] for one value. A value that has
//! been idle once keeps its slot for life: it carries it ([`Slotted`]) while checked out and brings
//! it back with it, so a push is one CAS (link the value's own node onto a shard's `head`) and a pop
//! is one CAS (unlink the top node; the popped value takes the node with it). A value that has no
//! slot yet (a new connection) reserves one from the `free` list at its first push, and a value that
//! is closed gives its slot back ([`IdleStacks::release`]); both are off the hot path.
//!
//! Each list (every shard's `head`, and `free`) is a single `AtomicU64` word:
//!
//! ```text
//!  63               30  29       28        27       14 13        0
//! +-------------------+--------+---------+-----------+-----------+
//! |   tag (34 bits)   | CLOSED | WAITING | len (14)  | top (14)  |   top == NIL: empty
//! +-------------------+--------+---------+-----------+-----------+
//! ```
//!
//! Every successful CAS increments the tag, so a thread that read the word, was delayed, and tries
//! to swing it after the same node was popped and pushed back (ABA), here or on another shard's
//! stack and back, fails and retries. `len` rides in the same word, so [`IdleStacks::len`] is one
//! load and always exact, and a push checks the shard's capacity in the CAS that links it.
//!
//! The two flag bits (on the `head` words only) let the pool's protocol ride on the push itself:
//! * `WAITING`: a checkout is waiting for this key. A push that sees it is refused with
//!   [`Refused::Waiting`], and the pusher hands its value to the waiter instead.
//! * `CLOSED`: the key is closed. A push that sees it is refused with [`Refused::Closed`], and the
//!   pusher drops its value; pops still drain what is left.
//!
//! Because the flag and the push are the same word, a set flag and a push are ordered by the word's
//! own modification order: either the push came first (and whoever set the flag sees the value on
//! the stack) or the pusher sees the flag. No fence is needed.
//!
//! A node's value is written only while the node is on no list (owned by the value's holder, or just
//! reserved) and read only after it left a `head` (owned by the popper). A stale reader of a node's
//! `next` link (a pop that lost a race) reads an atomic and then fails its CAS.
//!
//! # Memory ordering
//!
//! Every change of a list word is a CAS. The CAS that links a node is `Release` (with `Acquire`, so
//! it continues the release sequence): it publishes the node's value and `next` link written before
//! it. The load and the CAS that unlink a node are `Acquire`: they make that value and link visible
//! to the popper. All operations on a word are read-modify-writes, so each new value continues the
//! release sequence of the ones before it.
//!
//! # Limits
//!
//! At most [`MAX_CAPACITY`] nodes per key and values per stack. The tag wraps after 2³⁴ changes of
//! one list; a thread would have to stall between its load and its CAS for exactly that many
//! operations on the same list (minutes of a single stack's full speed) for ABA to return, which we
//! accept.

use super::sync::{AtomicU16, AtomicU64, Ordering, UnsafeCell};
use crossbeam_utils::{Backoff, CachePadded};
use std::mem::MaybeUninit;
use std::num::NonZeroU16;

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

/// The largest number of nodes (and of values per stack) supported.
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

/// Why [`IdleStacks::push`] gave its value back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<T> {
    /// The stack is at its capacity, or the value has no slot and none is free.
    Full(T),
    /// A checkout is waiting (the `WAITING` flag): hand the value to it.
    Waiting(T),
    /// The stack is closed: drop the value.
    Closed(T),
}

/// The right to one node of an [`IdleStacks`]: held by exactly one value, or by no value while the
/// node is on a list. Not `Clone`: a slot is moved, never shared.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Slot(NonZeroU16);

impl Slot {
    fn new(index: u16) -> Self {
        Slot(NonZeroU16::new(index + 1).unwrap_or_else(|| unreachable!("index < NIL")))
    }
    fn index(&self) -> usize {
        usize::from(self.0.get() - 1)
    }
}

/// A value that carries the slot it idles in (see the module docs).
pub(crate) trait Slotted {
    /// The value's slot: `None` until its first push, and while it is on a stack.
    fn slot(&mut self) -> &mut Option<Slot>;
}

struct Node<T> {
    /// The node below this one on whichever list holds it.
    next: AtomicU16,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// One shard's stack: its list word and its capacity.
struct Head {
    word: CachePadded<AtomicU64>,
    capacity: usize,
}

/// A key's idle stacks, one per shard, sharing one node arena. See the module docs.
pub(crate) struct IdleStacks<T: Slotted> {
    heads: Box<[Head]>,
    free: CachePadded<AtomicU64>,
    /// Cache-padded: nodes travel between shards with their connections, so neighbouring nodes
    /// are often written by different cores. Unpadded, two threads on two shards of one key shared
    /// lines and took 143–283 ns per checkout+return where per-shard arrays took 73–124 ns
    /// (docs/benchmarks.md).
    nodes: Box<[CachePadded<Node<T>>]>,
}

// SAFETY: the stacks move `T` values between threads (push on one, pop on another) and never share
// a `&T`, so `T: Send` is all they need; each value is accessed by one owner at a time (module docs).
unsafe impl<T: Slotted + Send> Send for IdleStacks<T> {}
// SAFETY: as above: concurrent `push`/`pop` through `&self` hand each value to exactly one thread.
unsafe impl<T: Slotted + Send> Sync for IdleStacks<T> {}

impl<T: Slotted> IdleStacks<T> {
    /// Empty stacks, one per entry of `capacities` (each its most values; 0 refuses every push),
    /// sharing `nodes` nodes (at most [`MAX_CAPACITY`]).
    pub(crate) fn new(capacities: impl IntoIterator<Item = usize>, nodes: usize) -> Self {
        let heads: Box<[Head]> = capacities
            .into_iter()
            .map(|capacity| {
                assert!(
                    capacity <= MAX_CAPACITY,
                    "idle stack capacity {capacity} over {MAX_CAPACITY}"
                );
                Head {
                    word: CachePadded::new(AtomicU64::new(Word::new(0, 0, 0, NIL).0)),
                    capacity,
                }
            })
            .collect();
        assert!(nodes <= MAX_CAPACITY, "{nodes} nodes over {MAX_CAPACITY}");
        let nodes: Box<[CachePadded<Node<T>>]> = (0..nodes)
            .map(|i| {
                CachePadded::new(Node {
                    // Initially every node is on the free list, in index order.
                    next: AtomicU16::new(if i + 1 < nodes { (i + 1) as u16 } else { NIL }),
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                })
            })
            .collect();
        let free_top = if nodes.is_empty() { NIL } else { 0 };
        IdleStacks {
            heads,
            free: CachePadded::new(AtomicU64::new(Word::new(0, 0, nodes.len(), free_top).0)),
            nodes,
        }
    }

    /// How many values shard `shard`'s stack holds now (exact at the instant of the load).
    pub(crate) fn len(&self, shard: usize) -> usize {
        // Ordering: Relaxed. A gauge for metrics and maintenance; it publishes nothing.
        Word(self.heads[shard].word.load(Ordering::Relaxed)).len()
    }

    /// Pushes `value` on top of shard `shard`'s stack, unless that stack is flagged (closed or
    /// `WAITING`) or full, or the value has no slot and none is free.
    ///
    /// On success this CAS is the last access the pusher makes to the stacks: the value may be
    /// popped, and the stacks' owner freed, the moment it lands.
    #[inline(always)]
    pub(crate) fn push(&self, shard: usize, mut value: T) -> Result<(), Refused<T>> {
        let head = &self.heads[shard];
        let slot = match value.slot().take() {
            Some(slot) => slot,
            None => {
                // Ordering: Relaxed. A first look at the flags and length before taking a node
                // for a value that has none; the CAS in `link` re-checks them.
                let word = Word(head.word.load(Ordering::Relaxed));
                if let Some(refusal) = Refusal::of(word, head.capacity) {
                    return Err(refusal.with(value));
                }
                match self.reserve() {
                    Some(slot) => slot,
                    None => return Err(Refused::Full(value)),
                }
            }
        };
        let index = slot.index();
        let node = &self.nodes[index];
        // SAFETY: `slot` gives this thread the node: it is on no list, and no other value holds it
        // (module docs: one owner at a time), so no other thread reads or writes its value.
        node.value.with_mut(|cell| unsafe { (*cell).write(value) });
        match self.link(&head.word, index as u16, Some(head.capacity)) {
            Ok(()) => Ok(()),
            Err(refused) => {
                // SAFETY: the node is still ours (never linked); we wrote its value just above.
                let mut value = node
                    .value
                    .with_mut(|cell| unsafe { (*cell).assume_init_read() });
                *value.slot() = Some(slot);
                Err(refused.with(value))
            }
        }
    }

    /// Pops the most recently pushed value of shard `shard`'s stack; it takes its slot with it.
    #[inline]
    pub(crate) fn pop(&self, shard: usize) -> Option<T> {
        let index = self.unlink(&self.heads[shard].word)?;
        let node = &self.nodes[usize::from(index)];
        // SAFETY: `unlink` took the node off the stack, so this thread owns it; the value was
        // initialised by the push that linked it, whose Release CAS our Acquire in `unlink` saw.
        let mut value = node
            .value
            .with_mut(|cell| unsafe { (*cell).assume_init_read() });
        *value.slot() = Some(Slot::new(index));
        Some(value)
    }

    /// Gives a slot back to the free list (its value is being closed).
    pub(crate) fn release(&self, slot: Slot) {
        self.link(&self.free, slot.index() as u16, None)
            .unwrap_or_else(|_| unreachable!("the free list is never flagged or bounded"));
    }

    /// Sets or clears the `WAITING` flag on every shard's stack.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        for head in self.heads.iter() {
            update_flags(&head.word, |flags| {
                if waiting {
                    flags | WAITING
                } else {
                    flags & !WAITING
                }
            });
        }
    }

    /// Sets the `CLOSED` flag on every shard's stack: from now on every push is refused. Pops still
    /// drain the stacks.
    pub(crate) fn close(&self) {
        for head in self.heads.iter() {
            update_flags(&head.word, |flags| flags | CLOSED);
        }
    }

    /// A free slot, if any.
    fn reserve(&self) -> Option<Slot> {
        self.unlink(&self.free).map(Slot::new)
    }

    /// Unlinks the top node of `list` and returns its index.
    #[inline]
    fn unlink(&self, list: &AtomicU64) -> Option<u16> {
        let backoff = Backoff::new();
        // Ordering: Acquire pairs with the CAS that linked the top node (Release), so its `next`
        // and value, written before that CAS, are visible here.
        let mut word = Word(list.load(Ordering::Acquire));
        loop {
            let top = word.top();
            if top == NIL {
                return None;
            }
            // Ordering: Relaxed. Made visible by the Acquire above; if the node moved since (ABA,
            // or onto another list), the value read here is stale but the tag fails the CAS below.
            let next = self.nodes[usize::from(top)].next.load(Ordering::Relaxed);
            let new = word.next(word.flags(), word.len() - 1, next);
            // Ordering: Acquire on success and failure, as for the load above. No Release: the
            // node's next owner is this thread (a pop) or gets it through `link`'s own Release.
            match list.compare_exchange_weak(word.0, new.0, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top),
                Err(current) => {
                    word = Word(current);
                    backoff.spin();
                }
            }
        }
    }

    /// Links node `index`, which this thread owns, on top of `list`. With a `capacity` (a shard's
    /// stack), gives up when `list` is flagged or holds `capacity` values.
    #[inline]
    fn link(&self, list: &AtomicU64, index: u16, capacity: Option<usize>) -> Result<(), Refusal> {
        let backoff = Backoff::new();
        // Ordering: Relaxed. Only the CAS below publishes anything; a stale word just fails it.
        let mut word = Word(list.load(Ordering::Relaxed));
        loop {
            if let Some(refusal) = capacity.and_then(|capacity| Refusal::of(word, capacity)) {
                return Err(refusal);
            }
            // Ordering: Relaxed. Published by the Release half of the CAS below.
            self.nodes[usize::from(index)]
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

/// Changes the flags of a `head` word, keeping its stack.
fn update_flags(word: &AtomicU64, change: impl Fn(u64) -> u64) {
    // Ordering: Relaxed; the CAS decides.
    let mut current = Word(word.load(Ordering::Relaxed));
    loop {
        let new = current.next(change(current.flags()), current.len(), current.top());
        // Ordering: AcqRel keeps this RMW in the word's release sequence (pushes before it stay
        // visible to later pops); it publishes nothing of its own.
        match word.compare_exchange_weak(current.0, new.0, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => current = Word(now),
        }
    }
}

/// Why `link` gave up.
enum Refusal {
    Full,
    Waiting,
    Closed,
}

impl Refusal {
    /// Why a push onto a stack whose word is `word` and capacity `capacity` must give up, if it
    /// must (`CLOSED` wins over `WAITING`, both over `Full`).
    fn of(word: Word, capacity: usize) -> Option<Refusal> {
        if word.flags() & CLOSED != 0 {
            Some(Refusal::Closed)
        } else if word.flags() & WAITING != 0 {
            Some(Refusal::Waiting)
        } else if word.len() >= capacity {
            Some(Refusal::Full)
        } else {
            None
        }
    }

    fn with<T>(self, value: T) -> Refused<T> {
        match self {
            Refusal::Full => Refused::Full(value),
            Refusal::Waiting => Refused::Waiting(value),
            Refusal::Closed => Refused::Closed(value),
        }
    }
}

impl<T: Slotted> Drop for IdleStacks<T> {
    fn drop(&mut self) {
        for shard in 0..self.heads.len() {
            while let Some(value) = self.pop(shard) {
                drop(value);
            }
        }
    }
}

#[cfg(all(test, not(shardpool_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A test value: an id and the slot it carries.
    #[derive(Debug, PartialEq, Eq)]
    struct Token<V = usize> {
        id: V,
        slot: Option<Slot>,
    }

    impl<V> Slotted for Token<V> {
        fn slot(&mut self) -> &mut Option<Slot> {
            &mut self.slot
        }
    }

    fn token(id: usize) -> Token {
        Token { id, slot: None }
    }

    fn pop_id(stacks: &IdleStacks<Token>, shard: usize) -> Option<usize> {
        stacks.pop(shard).map(|t| t.id)
    }

    fn refused_id(r: Result<(), Refused<Token>>) -> Refused<usize> {
        match r.expect_err("refused") {
            Refused::Full(t) => Refused::Full(t.id),
            Refused::Waiting(t) => Refused::Waiting(t.id),
            Refused::Closed(t) => Refused::Closed(t.id),
        }
    }

    #[test]
    fn lifo_order_and_capacity() {
        let stacks = IdleStacks::new([3], 8);
        assert_eq!(pop_id(&stacks, 0), None);
        for id in 1..=3 {
            stacks.push(0, token(id)).unwrap();
        }
        assert_eq!(
            refused_id(stacks.push(0, token(4))),
            Refused::Full(4),
            "a full stack gives the value back"
        );
        assert_eq!(stacks.len(0), 3);
        assert_eq!(pop_id(&stacks, 0), Some(3), "most recently pushed first");
        stacks.push(0, token(5)).unwrap();
        assert_eq!(pop_id(&stacks, 0), Some(5));
        assert_eq!(pop_id(&stacks, 0), Some(2));
        assert_eq!(pop_id(&stacks, 0), Some(1));
        assert_eq!(pop_id(&stacks, 0), None);
        assert_eq!(stacks.len(0), 0);
    }

    #[test]
    fn flags_refuse_pushes_but_not_pops() {
        let stacks = IdleStacks::new([2, 2], 4);
        stacks.push(0, token(1)).unwrap();
        stacks.set_waiting(true);
        assert_eq!(refused_id(stacks.push(1, token(2))), Refused::Waiting(2));
        assert_eq!(stacks.len(1), 0, "a refused push leaves no trace");
        stacks.set_waiting(false);
        stacks.push(0, token(2)).unwrap();
        stacks.close();
        stacks.set_waiting(true);
        assert_eq!(
            refused_id(stacks.push(0, token(3))),
            Refused::Closed(3),
            "closed wins over waiting"
        );
        assert_eq!(pop_id(&stacks, 0), Some(2));
        assert_eq!(pop_id(&stacks, 0), Some(1));
        assert_eq!(pop_id(&stacks, 0), None);
        assert_eq!(
            refused_id(stacks.push(1, token(4))),
            Refused::Closed(4),
            "every shard's stack stays closed"
        );
    }

    #[test]
    fn zero_capacity_rejects_every_push() {
        let stacks = IdleStacks::new([0], 4);
        assert_eq!(refused_id(stacks.push(0, token(1))), Refused::Full(1));
        assert_eq!(pop_id(&stacks, 0), None);
    }

    /// Values keep their node while checked out; with every node held, a value without one is
    /// refused until a slot is released.
    #[test]
    fn slots_travel_with_values_and_are_shared_by_the_shards() {
        let stacks = IdleStacks::new([2, 2], 2);
        stacks.push(0, token(1)).unwrap();
        stacks.push(1, token(2)).unwrap();
        let mut one = stacks.pop(0).unwrap();
        assert!(one.slot.is_some(), "a popped value carries its node");
        assert_eq!(
            refused_id(stacks.push(0, token(3))),
            Refused::Full(3),
            "both nodes are held (one idle on shard 1, one by a checked-out value)"
        );
        stacks.push(1, one).unwrap();
        assert_eq!(
            stacks.len(1),
            2,
            "a value moves to another shard's stack with its node"
        );
        one = stacks.pop(1).unwrap();
        stacks.release(one.slot.take().unwrap());
        stacks.push(0, token(3)).unwrap();
        assert_eq!(pop_id(&stacks, 0), Some(3));
    }

    #[test]
    fn drop_drops_every_value_once() {
        let tracker = Arc::new(());
        let stacks = IdleStacks::new([2, 2], 4);
        for shard in [0, 1, 1] {
            let value = Token {
                id: Arc::clone(&tracker),
                slot: None,
            };
            stacks.push(shard, value).unwrap();
        }
        assert_eq!(Arc::strong_count(&tracker), 4);
        drop(stacks);
        assert_eq!(Arc::strong_count(&tracker), 1);
    }

    /// Threads pop from their own shard's stack, else steal from the other, and push back onto
    /// either; at the end every token is present exactly once.
    #[test]
    fn concurrent_push_pop_across_shards_loses_and_duplicates_nothing() {
        const THREADS: usize = 4;
        const TOKENS: usize = 64;
        const ROUNDS: usize = 20_000;
        let stacks = Arc::new(IdleStacks::new([TOKENS, TOKENS], TOKENS));
        for id in 0..TOKENS {
            stacks.push(id % 2, token(id)).unwrap();
        }
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let stacks = Arc::clone(&stacks);
                std::thread::spawn(move || {
                    let home = t % 2;
                    let mut held = Vec::new();
                    for round in 0..ROUNDS {
                        if round % 3 == 2 || held.len() == 8 {
                            for (i, value) in held.drain(..).enumerate() {
                                let shard = (home + i) % 2;
                                assert!(stacks.push(shard, value).is_ok(), "room for every token");
                            }
                        } else if let Some(value) =
                            stacks.pop(home).or_else(|| stacks.pop(1 - home))
                        {
                            held.push(value);
                        }
                    }
                    for value in held {
                        assert!(stacks.push(home, value).is_ok(), "room for every token");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let mut seen = [false; TOKENS];
        for shard in 0..2 {
            while let Some(id) = pop_id(&stacks, shard) {
                assert!(!seen[id], "token {id} popped twice");
                seen[id] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "a token was lost");
    }
}
