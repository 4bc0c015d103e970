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
//! Treiber stacks over a fixed array of nodes. A value lives in one node from the moment it enters
//! the stacks ([`IdleStacks::occupy`]) until it leaves them for good ([`IdleStacks::vacate`]); in
//! between only the node's index moves. Whoever holds a value's [`Lease`] owns the node and reaches
//! the value through it in place. A push links the leased node onto a shard's `head` (one CAS) and
//! gives the lease up; a pop unlinks the top node (one CAS) and returns a lease on it. So a checkout
//! and a return move an index, never the value, and touch no free list: `occupy` and `vacate`, the
//! only users of the `free` list, run when a connection is created and when it is closed.
//!
//! Each list (every shard's `head`, and `free`) is a single `AtomicU64` word:
//!
//! ```text
//!  63           31  30     29       28        27       14 13        0
//! +---------------+------+--------+---------+-----------+-----------+
//! | tag (33 bits) | OVER | CLOSED | WAITING | len (14)  | top (14)  |   top == NIL: empty
//! +---------------+------+--------+---------+-----------+-----------+
//! ```
//!
//! Every successful CAS increments the tag, so a thread that read the word, was delayed, and tries
//! to swing it after the same node was popped and pushed back (ABA), here or on another shard's
//! stack and back, fails and retries. `len` rides in the same word, so [`IdleStacks::len`] is one
//! load and always exact, and a push checks the shard's capacity in the CAS that links it.
//!
//! The three flag bits (on the `head` words only) let the pool's protocol ride on the push itself:
//! * `WAITING`: a checkout is waiting for this key. A push that sees it is refused with
//!   [`Refused::Waiting`], and the pusher hands its value to the waiter instead.
//! * `CLOSED`: the key is closed. A push that sees it is refused with [`Refused::Closed`], and the
//!   pusher drops its value; pops still drain what is left.
//! * `OVER`: the key has more live connections than its `max_size`, lowered at run time
//!   (`ShardedPool::set_max_size`). A push that sees it is refused with [`Refused::Over`], and the
//!   pusher closes its value (or, if the key is no longer over its cap, clears the flag and pushes
//!   again).
//!
//! A push tests the three flags with one branch (any flag set: the cold path sorts out which), so
//! they cost the hot path nothing while clear.
//!
//! Because the flag and the push are the same word, a set flag and a push are ordered by the word's
//! own modification order: either the push came first (and whoever set the flag sees the value on
//! the stack) or the pusher sees the flag. No fence is needed.
//!
//! A node's value is accessed only through a lease: while the node is on no list, by the one thread
//! that holds its lease (pushing gives the lease up, popping hands out a new one). A stale reader of
//! a node's `next` link (a pop that lost a race) reads an atomic and then fails its CAS.
//!
//! # Memory ordering
//!
//! Every change of a list word is a CAS. The CAS that links a node is `Release`: it publishes the
//! node's `next` link and everything the lease holder wrote to the value before it. The load and
//! the CAS that unlink a node are `Acquire`: they make that value and link visible to the popper.
//! All changes of a word are read-modify-writes, and a read-modify-write of any ordering continues
//! the release sequences before it, so a pop that reads a later value (another push, a pop, a flag
//! change) still synchronizes with every push below it.
//!
//! # Limits
//!
//! At most [`MAX_CAPACITY`] nodes per key and values per stack; the pool's `max_size` is capped
//! there, so every connection that may exist has a node. The tag wraps after 2³³ changes of
//! one list; a thread would have to stall between its load and its CAS for exactly that many
//! operations on the same list (minutes of a single stack's full speed) for ABA to return, which we
//! accept.

use super::sync::{AtomicU16, AtomicU64, Ordering, UnsafeCell};
use crossbeam_utils::{Backoff, CachePadded};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

const INDEX_BITS: u32 = 14;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const NIL: u16 = INDEX_MASK as u16;
const LEN_SHIFT: u32 = INDEX_BITS;
const WAITING: u64 = 1 << (2 * INDEX_BITS);
const CLOSED: u64 = 1 << (2 * INDEX_BITS + 1);
const OVER: u64 = 1 << (2 * INDEX_BITS + 2);
const FLAGS: u64 = WAITING | CLOSED | OVER;
const TAG_SHIFT: u32 = 2 * INDEX_BITS + 3;

/// The success ordering of the CAS that links a node (see `link`).
#[cfg(not(shardpool_seeded_bug = "stack_relaxed"))]
const LINK_ORDERING: Ordering = Ordering::Release;
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

/// Why [`IdleStacks::push`] gave its lease back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<T> {
    /// The stack is at its capacity.
    Full(T),
    /// A checkout is waiting (the `WAITING` flag): hand the value to it.
    Waiting(T),
    /// The stack is closed: close the value.
    Closed(T),
    /// The key is over its (lowered) `max_size` (the `OVER` flag): close the value, unless the key
    /// is no longer over it.
    Over(T),
}

/// The right to one node of an [`IdleStacks`] and to the value in it: held by exactly one owner, and
/// by nobody while the node is on a stack. Not `Clone`: a lease is moved, never shared.
///
/// A lease does not borrow its stacks; whoever holds one keeps the stacks that issued it alive (the
/// pool does: the value in the node owns an `Arc` to the key pool that owns the stacks). A lease
/// that is dropped instead of pushed or vacated leaks its value and node; the pool never does that.
#[derive(Debug)]
#[must_use = "push or vacate a lease; dropping it leaks its value and node"]
pub(crate) struct Lease<T> {
    cell: NonNull<UnsafeCell<MaybeUninit<T>>>,
    index: u16,
}

// SAFETY: a lease is the only access path to its value (module docs), so sending the lease sends the
// value: `T: Send` suffices.
unsafe impl<T: Send> Send for Lease<T> {}
// SAFETY: `&Lease` only gives `&T` (`get`), so sharing it shares a `&T`: `T: Sync` suffices.
unsafe impl<T: Sync> Sync for Lease<T> {}

impl<T> Lease<T> {
    /// A lease on node `index`, whose value cell is `cell`.
    ///
    /// # Safety
    ///
    /// `cell` is node `index`'s value cell and holds an initialised value, and the caller gives
    /// the node's one lease up to the result: no other lease on the node exists, and the node is on
    /// no list (module docs).
    pub(super) unsafe fn new(cell: &UnsafeCell<MaybeUninit<T>>, index: u16) -> Self {
        Lease {
            cell: NonNull::from(cell),
            index,
        }
    }

    /// The index of the leased node.
    pub(super) fn index(&self) -> u16 {
        self.index
    }

    /// The leased value.
    ///
    /// # Safety
    ///
    /// The stacks that issued this lease are alive (see the type's docs).
    #[inline]
    pub(crate) unsafe fn get(&self) -> &T {
        // SAFETY: the caller keeps the node alive; holding the lease means no other thread accesses
        // the value, which the push or `occupy` that produced the lease initialised.
        unsafe { self.cell.as_ref() }.with(|value| unsafe { (*value).assume_init_ref() })
    }

    /// The leased value, mutably.
    ///
    /// # Safety
    ///
    /// As for [`Lease::get`].
    #[inline]
    pub(crate) unsafe fn get_mut(&mut self) -> &mut T {
        // SAFETY: as in `get`; `&mut self` makes this the only reference to the value.
        unsafe { self.cell.as_ref() }.with_mut(|value| unsafe { (*value).assume_init_mut() })
    }

    /// Moves the value out, leaving the node's cell uninitialised.
    ///
    /// # Safety
    ///
    /// As for [`Lease::get`]; the node is then free for another value, and the lease is gone.
    pub(super) unsafe fn take(self) -> T {
        // SAFETY: as in `get_mut`; consuming the lease means nobody reads the moved-out value again.
        unsafe { self.cell.as_ref() }.with_mut(|value| unsafe { (*value).assume_init_read() })
    }
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
pub(crate) struct IdleStacks<T> {
    heads: Box<[Head]>,
    free: CachePadded<AtomicU64>,
    /// Cache-padded: nodes travel between shards with their connections, so neighbouring nodes
    /// are often written by different cores. Unpadded, two threads on two shards of one key shared
    /// lines and took 143–283 ns per checkout+return where per-shard arrays took 73–124 ns
    /// (docs/benchmarks.md).
    nodes: Box<[CachePadded<Node<T>>]>,
}

// SAFETY: the stacks move `T` values between threads (a lease goes from one thread to another) and
// never share a `&T` between two of them at once, so `T: Send` is all they need (module docs).
unsafe impl<T: Send> Send for IdleStacks<T> {}
// SAFETY: as above: concurrent `push`/`pop` through `&self` hand each node to exactly one thread.
unsafe impl<T: Send> Sync for IdleStacks<T> {}

impl<T> IdleStacks<T> {
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

    /// Moves `value` into a free node and leases it to the caller, or gives it back when every
    /// node is taken.
    pub(crate) fn occupy(&self, value: T) -> Result<Lease<T>, T> {
        let Some(index) = self.unlink(&self.free) else {
            return Err(value);
        };
        let node = &self.nodes[usize::from(index)];
        // SAFETY: `unlink` took the node off the free list, so this thread owns it and its cell is
        // uninitialised (a vacated or never used node); nobody else accesses it.
        node.value.with_mut(|cell| unsafe { (*cell).write(value) });
        // SAFETY: the value was just written, and the node, off every list, is this thread's.
        Ok(unsafe { Lease::new(&node.value, index) })
    }

    /// Moves the leased value out and puts its node back on the free list.
    pub(crate) fn vacate(&self, lease: Lease<T>) -> T {
        let index = lease.index();
        debug_assert!(self.issued(&lease), "a lease of other stacks");
        // SAFETY: the lease is one of ours, and `&self` keeps the node alive.
        let value = unsafe { lease.take() };
        self.link(&self.free, index, None)
            .unwrap_or_else(|_| unreachable!("the free list is never flagged or bounded"));
        value
    }

    /// Pushes the leased node on top of shard `shard`'s stack, unless that stack is flagged
    /// (closed or `WAITING`) or full; then the lease comes back.
    ///
    /// On success this CAS is the last access the pusher makes to the stacks: the value may be
    /// popped, and the stacks' owner freed, the moment it lands.
    #[inline(always)]
    pub(crate) fn push(&self, shard: usize, lease: Lease<T>) -> Result<(), Refused<Lease<T>>> {
        debug_assert!(self.issued(&lease), "a lease of other stacks");
        let head = &self.heads[shard];
        match self.link(&head.word, lease.index(), Some(head.capacity)) {
            Ok(()) => Ok(()),
            Err(refused) => Err(refused.with(lease)),
        }
    }

    /// Pops the most recently pushed node of shard `shard`'s stack and leases it to the caller.
    #[inline]
    pub(crate) fn pop(&self, shard: usize) -> Option<Lease<T>> {
        let index = self.unlink(&self.heads[shard].word)?;
        // `unlink` took the node off the stack, so this thread owns it; its value was initialised
        // by `occupy`, and what the last holder wrote is visible through `unlink`'s Acquire.
        // SAFETY: a node on a stack holds a value (pushed with its lease), and `unlink` took it off
        // the stack, so this thread alone holds the node.
        Some(unsafe { Lease::new(&self.nodes[usize::from(index)].value, index) })
    }

    /// Whether `lease` is a lease on one of these nodes.
    fn issued(&self, lease: &Lease<T>) -> bool {
        self.nodes
            .get(usize::from(lease.index()))
            .is_some_and(|node| std::ptr::eq(&node.value, lease.cell.as_ptr()))
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

    /// Sets or clears the `OVER` flag on every shard's stack.
    pub(crate) fn set_over(&self, over: bool) {
        for head in self.heads.iter() {
            update_flags(
                &head.word,
                |flags| if over { flags | OVER } else { flags & !OVER },
            );
        }
    }

    /// Sets the `CLOSED` flag on every shard's stack: from now on every push is refused. Pops still
    /// drain the stacks.
    pub(crate) fn close(&self) {
        for head in self.heads.iter() {
            update_flags(&head.word, |flags| flags | CLOSED);
        }
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
            // Ordering: Release on success publishes `next` and the node's value (pairs with the
            // Acquire in `unlink`). Earlier pushes' release sequences continue through any RMW.
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
        // Ordering: Relaxed. It publishes nothing of its own, and as an RMW it continues the
        // release sequences of the pushes before it, so later pops still see their values.
        match word.compare_exchange_weak(current.0, new.0, Ordering::Relaxed, Ordering::Relaxed) {
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
    Over,
}

impl Refusal {
    /// Why a push onto a stack whose word is `word` and capacity `capacity` must give up, if it
    /// must (`CLOSED` wins over `OVER`, which wins over `WAITING`; every flag over `Full`). One
    /// test covers the flags, so a push with none set pays a single branch for all three.
    #[inline(always)]
    fn of(word: Word, capacity: usize) -> Option<Refusal> {
        if word.flags() != 0 {
            Some(Refusal::flagged(word.flags()))
        } else if word.len() >= capacity {
            Some(Refusal::Full)
        } else {
            None
        }
    }

    /// Which of the set `flags` refuses the push.
    #[cold]
    fn flagged(flags: u64) -> Refusal {
        if flags & CLOSED != 0 {
            Refusal::Closed
        } else if flags & OVER != 0 {
            Refusal::Over
        } else {
            Refusal::Waiting
        }
    }

    fn with<T>(self, value: T) -> Refused<T> {
        match self {
            Refusal::Full => Refused::Full(value),
            Refusal::Waiting => Refused::Waiting(value),
            Refusal::Closed => Refused::Closed(value),
            Refusal::Over => Refused::Over(value),
        }
    }
}

impl<T> Drop for IdleStacks<T> {
    /// Drops the idle values. Leased values cannot be here: their holders keep the stacks alive.
    fn drop(&mut self) {
        for shard in 0..self.heads.len() {
            while let Some(lease) = self.pop(shard) {
                // SAFETY: the lease was just popped from these stacks, which are alive until this
                // function returns.
                drop(unsafe { lease.take() });
            }
        }
    }
}

#[cfg(all(test, not(shardpool_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Puts a new value with id `id` on shard `shard`'s stack; a refusal gives the id back.
    fn put(stacks: &IdleStacks<usize>, shard: usize, id: usize) -> Result<(), Refused<usize>> {
        let lease = stacks.occupy(id).map_err(Refused::Full)?;
        stacks.push(shard, lease).map_err(|refused| match refused {
            Refused::Full(l) => Refused::Full(stacks.vacate(l)),
            Refused::Waiting(l) => Refused::Waiting(stacks.vacate(l)),
            Refused::Closed(l) => Refused::Closed(stacks.vacate(l)),
            Refused::Over(l) => Refused::Over(stacks.vacate(l)),
        })
    }

    /// Pops shard `shard`'s stack and takes the value out for good.
    fn pop_id(stacks: &IdleStacks<usize>, shard: usize) -> Option<usize> {
        stacks.pop(shard).map(|lease| stacks.vacate(lease))
    }

    #[test]
    fn lifo_order_and_capacity() {
        let stacks = IdleStacks::new([3], 8);
        assert_eq!(pop_id(&stacks, 0), None);
        for id in 1..=3 {
            put(&stacks, 0, id).unwrap();
        }
        assert_eq!(
            put(&stacks, 0, 4),
            Err(Refused::Full(4)),
            "a full stack gives the value back"
        );
        assert_eq!(stacks.len(0), 3);
        assert_eq!(pop_id(&stacks, 0), Some(3), "most recently pushed first");
        put(&stacks, 0, 5).unwrap();
        assert_eq!(pop_id(&stacks, 0), Some(5));
        assert_eq!(pop_id(&stacks, 0), Some(2));
        assert_eq!(pop_id(&stacks, 0), Some(1));
        assert_eq!(pop_id(&stacks, 0), None);
        assert_eq!(stacks.len(0), 0);
    }

    #[test]
    fn flags_refuse_pushes_but_not_pops() {
        let stacks = IdleStacks::new([2, 2], 4);
        put(&stacks, 0, 1).unwrap();
        stacks.set_waiting(true);
        assert_eq!(put(&stacks, 1, 2), Err(Refused::Waiting(2)));
        assert_eq!(stacks.len(1), 0, "a refused push leaves no trace");
        stacks.set_waiting(false);
        put(&stacks, 0, 2).unwrap();
        stacks.close();
        stacks.set_waiting(true);
        assert_eq!(
            put(&stacks, 0, 3),
            Err(Refused::Closed(3)),
            "closed wins over waiting"
        );
        assert_eq!(pop_id(&stacks, 0), Some(2));
        assert_eq!(pop_id(&stacks, 0), Some(1));
        assert_eq!(pop_id(&stacks, 0), None);
        assert_eq!(
            put(&stacks, 1, 4),
            Err(Refused::Closed(4)),
            "every shard's stack stays closed"
        );
    }

    #[test]
    fn over_refuses_pushes_below_closed_above_waiting() {
        let stacks = IdleStacks::new([2, 2], 4);
        put(&stacks, 0, 1).unwrap();
        stacks.set_over(true);
        stacks.set_waiting(true);
        assert_eq!(
            put(&stacks, 1, 2),
            Err(Refused::Over(2)),
            "over wins over waiting"
        );
        assert_eq!(pop_id(&stacks, 0), Some(1), "pops still take what is idle");
        stacks.set_waiting(false);
        stacks.set_over(false);
        put(&stacks, 1, 3).unwrap();
        stacks.set_over(true);
        stacks.close();
        assert_eq!(
            put(&stacks, 0, 4),
            Err(Refused::Closed(4)),
            "closed wins over over"
        );
        assert_eq!(pop_id(&stacks, 1), Some(3));
    }

    #[test]
    fn zero_capacity_rejects_every_push() {
        let stacks = IdleStacks::new([0], 4);
        assert_eq!(put(&stacks, 0, 1), Err(Refused::Full(1)));
        assert_eq!(pop_id(&stacks, 0), None);
    }

    /// A value stays in its node while leased and while idle on any shard's stack; with every node
    /// occupied a new value is refused until one is vacated.
    #[test]
    fn values_stay_in_their_node_across_shards() {
        let stacks = IdleStacks::new([2, 2], 2);
        put(&stacks, 0, 1).unwrap();
        put(&stacks, 1, 2).unwrap();
        let mut one = stacks.pop(0).unwrap();
        let node = one.index();
        // SAFETY: `stacks` outlives every lease in this test.
        unsafe { *one.get_mut() += 10 };
        assert_eq!(
            stacks.occupy(3).map(|lease| stacks.vacate(lease)),
            Err(3),
            "both nodes are taken (one idle on shard 1, one leased)"
        );
        stacks.push(1, one).unwrap();
        assert_eq!(stacks.len(1), 2, "a value moves to another shard's stack");
        let one = stacks.pop(1).unwrap();
        assert_eq!(one.index(), node, "in the same node");
        // SAFETY: as above.
        assert_eq!(unsafe { *one.get() }, 11, "with what its last holder wrote");
        assert_eq!(stacks.vacate(one), 11);
        put(&stacks, 0, 3).unwrap();
        assert_eq!(pop_id(&stacks, 0), Some(3));
    }

    #[test]
    fn drop_drops_every_idle_value_once() {
        let tracker = Arc::new(());
        let stacks = IdleStacks::new([2, 2], 4);
        for shard in [0, 1, 1] {
            let lease = stacks.occupy(Arc::clone(&tracker)).unwrap();
            stacks.push(shard, lease).unwrap();
        }
        let vacated = stacks.pop(1).map(|lease| stacks.vacate(lease)).unwrap();
        assert_eq!(Arc::strong_count(&tracker), 4);
        drop(stacks);
        assert_eq!(
            Arc::strong_count(&tracker),
            2,
            "only the vacated value is left"
        );
        drop(vacated);
    }

    /// Threads pop from their own shard's stack, else steal from the other, count each use in the
    /// value in place, and push back onto either; at the end every token is present exactly once
    /// and the uses add up.
    #[test]
    fn concurrent_push_pop_across_shards_loses_and_duplicates_nothing() {
        const THREADS: usize = 4;
        const TOKENS: usize = 64;
        const ROUNDS: usize = 20_000;
        let stacks: Arc<IdleStacks<(usize, u64)>> =
            Arc::new(IdleStacks::new([TOKENS, TOKENS], TOKENS));
        for id in 0..TOKENS {
            let lease = stacks.occupy((id, 0)).unwrap();
            stacks.push(id % 2, lease).unwrap();
        }
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let stacks = Arc::clone(&stacks);
                std::thread::spawn(move || {
                    let home = t % 2;
                    let mut held = Vec::new();
                    let mut uses = 0u64;
                    for round in 0..ROUNDS {
                        if round % 3 == 2 || held.len() == 8 {
                            for (i, lease) in held.drain(..).enumerate() {
                                let shard = (home + i) % 2;
                                assert!(stacks.push(shard, lease).is_ok(), "room for every token");
                            }
                        } else if let Some(mut lease) =
                            stacks.pop(home).or_else(|| stacks.pop(1 - home))
                        {
                            // SAFETY: `stacks` outlives this thread's leases (the Arc).
                            unsafe { lease.get_mut().1 += 1 };
                            uses += 1;
                            held.push(lease);
                        }
                    }
                    for lease in held {
                        assert!(stacks.push(home, lease).is_ok(), "room for every token");
                    }
                    uses
                })
            })
            .collect();
        let uses: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let mut seen = [false; TOKENS];
        let mut counted = 0;
        for shard in 0..2 {
            while let Some(lease) = stacks.pop(shard) {
                let (id, used) = stacks.vacate(lease);
                assert!(!seen[id], "token {id} popped twice");
                seen[id] = true;
                counted += used;
            }
        }
        assert!(seen.iter().all(|&s| s), "a token was lost");
        assert_eq!(counted, uses, "a use written in place was lost");
    }
}
