//! The linearizable stand-in for the idle stacks, used only by the loom models.
//!
//! Built instead of the real [`stack`](super::stack) when the crate is compiled with
//! `--cfg shardpool_loom --cfg shardpool_loom_model_stack` (see `scripts/loom.sh` and
//! docs/protocol.md). It has the real stacks' interface and semantics, the node arena, the leases
//! and the `WAITING` and `CLOSED` flags included, but each shard's stack and the free list are a
//! loom `Mutex` around a list of node indices: every operation is atomic and orders everything
//! before it. The models run once against it and once against the real, fully instrumented stack,
//! so a model failure can be told apart as a protocol bug (fails on both) or a memory-ordering bug
//! inside the stack (fails only on the real one). The locks also make this stand-in blind to
//! missing `Release`/`Acquire` in the stack: it proves the protocol *given* a linearizable stack,
//! which is exactly what the real stack's own run then has to back up.

use super::stack::{Lease, Refused};
use super::sync::{Mutex, UnsafeCell, lock};
use std::collections::VecDeque;
use std::mem::MaybeUninit;

/// What one shard's lock guards.
struct State {
    /// Node indices, oldest first.
    nodes: VecDeque<u16>,
    /// A checkout waits for this key: pushes are refused with [`Refused::Waiting`].
    waiting: bool,
    /// The key is closed: pushes are refused with [`Refused::Closed`]; pops still drain.
    closed: bool,
    /// The key is over its lowered `max_size`: pushes are refused with [`Refused::Over`].
    over: bool,
}

/// Bounded LIFOs, one per shard, over one node arena, with the real idle stacks' interface (see
/// the module docs).
pub(crate) struct IdleStacks<T> {
    stacks: Box<[(usize, Mutex<State>)]>,
    free: Mutex<Vec<u16>>,
    cells: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: as for the real stacks: a value is reached only through its one lease.
unsafe impl<T: Send> Send for IdleStacks<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for IdleStacks<T> {}

impl<T> IdleStacks<T> {
    /// Empty stacks with the given capacities, sharing `nodes` nodes.
    pub(crate) fn new(capacities: impl IntoIterator<Item = usize>, nodes: usize) -> Self {
        let stacks = capacities
            .into_iter()
            .map(|capacity| {
                let state = State {
                    nodes: VecDeque::with_capacity(capacity),
                    waiting: false,
                    closed: false,
                    over: false,
                };
                (capacity, Mutex::new(state))
            })
            .collect();
        IdleStacks {
            stacks,
            free: Mutex::new((0..nodes as u16).rev().collect()),
            cells: (0..nodes)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
        }
    }

    /// How many values shard `shard`'s stack holds now.
    pub(crate) fn len(&self, shard: usize) -> usize {
        lock(&self.stacks[shard].1).nodes.len()
    }

    /// Moves `value` into a free node and leases it, or gives it back when every node is taken.
    pub(crate) fn occupy(&self, value: T) -> Result<Lease<T>, T> {
        let Some(index) = lock(&self.free).pop() else {
            return Err(value);
        };
        let cell = &self.cells[usize::from(index)];
        // SAFETY: the node left the free list under its lock, so this thread alone owns it.
        cell.with_mut(|cell| unsafe { (*cell).write(value) });
        // SAFETY: the value was just written, and the node, off every list, is this thread's.
        Ok(unsafe { Lease::new(cell, index) })
    }

    /// Moves the leased value out and puts its node back on the free list.
    pub(crate) fn vacate(&self, lease: Lease<T>) -> T {
        let index = lease.index();
        // SAFETY: the lease is one of ours, and `&self` keeps the node alive.
        let value = unsafe { lease.take() };
        lock(&self.free).push(index);
        value
    }

    /// Pushes the leased node on top of shard `shard`'s stack, unless it is closed, flagged `OVER`,
    /// flagged `WAITING`, or full (checked in that order, as the real stacks do: a flag wins over
    /// `Full`).
    pub(crate) fn push(&self, shard: usize, lease: Lease<T>) -> Result<(), Refused<Lease<T>>> {
        let (capacity, state) = &self.stacks[shard];
        let mut state = lock(state);
        if state.closed {
            Err(Refused::Closed(lease))
        } else if state.over {
            Err(Refused::Over(lease))
        } else if state.waiting {
            Err(Refused::Waiting(lease))
        } else if state.nodes.len() >= *capacity {
            Err(Refused::Full(lease))
        } else {
            state.nodes.push_back(lease.index());
            Ok(())
        }
    }

    /// Pops the most recently pushed node of shard `shard`'s stack and leases it.
    pub(crate) fn pop(&self, shard: usize) -> Option<Lease<T>> {
        let index = lock(&self.stacks[shard].1).nodes.pop_back()?;
        // SAFETY: a node on a stack holds a value (pushed with its lease), and the pop under the
        // stack's lock took it off, so this thread alone holds the node.
        Some(unsafe { Lease::new(&self.cells[usize::from(index)], index) })
    }

    /// Sets or clears the `WAITING` flag on every shard's stack.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        for (_, state) in self.stacks.iter() {
            lock(state).waiting = waiting;
        }
    }

    /// Sets or clears the `OVER` flag on every shard's stack.
    pub(crate) fn set_over(&self, over: bool) {
        for (_, state) in self.stacks.iter() {
            lock(state).over = over;
        }
    }

    /// Sets the `CLOSED` flag on every shard's stack: from now on every push is refused. Pops still
    /// drain them.
    pub(crate) fn close(&self) {
        for (_, state) in self.stacks.iter() {
            lock(state).closed = true;
        }
    }
}

impl<T> Drop for IdleStacks<T> {
    /// Drops the idle values, as the real stacks do.
    fn drop(&mut self) {
        for shard in 0..self.stacks.len() {
            while let Some(lease) = self.pop(shard) {
                // SAFETY: the lease was just popped from these stacks, alive until we return.
                drop(unsafe { lease.take() });
            }
        }
    }
}
