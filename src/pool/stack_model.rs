//! The linearizable stand-in for the idle stacks, used only by the loom models.
//!
//! Built instead of the real [`stack`](super::stack) when the crate is compiled with
//! `--cfg shardpool_loom --cfg shardpool_loom_model_stack` (see `scripts/loom.sh` and
//! docs/protocol.md). It has the real stacks' interface and semantics, the `WAITING` and `CLOSED`
//! flags included, but each shard's stack is one loom `Mutex` around a deque, and there is no node
//! arena (values never get a slot, so none is ever released): every operation is atomic and orders
//! everything before it. The models run once against it and once against the real, fully
//! instrumented stack, so a model failure can be told apart as a protocol bug (fails on both) or a
//! memory-ordering bug inside the stack (fails only on the real one). The lock also makes this
//! stand-in blind to missing `Release`/`Acquire` in the stack: it proves the protocol *given* a
//! linearizable stack, which is exactly what the real stack's own run then has to back up.

use super::stack::{Refused, Slot};
use super::sync::{Mutex, lock};
use std::collections::VecDeque;

/// What one shard's lock guards.
struct State<T> {
    values: VecDeque<T>,
    /// A checkout waits for this key: pushes are refused with [`Refused::Waiting`].
    waiting: bool,
    /// The key is closed: pushes are refused with [`Refused::Closed`]; pops still drain.
    closed: bool,
}

/// Bounded LIFOs, one per shard, with the real idle stacks' interface (see the module docs).
pub(crate) struct IdleStacks<T> {
    stacks: Box<[(usize, Mutex<State<T>>)]>,
}

impl<T> IdleStacks<T> {
    /// Empty stacks with the given capacities; `nodes` is ignored (no arena).
    pub(crate) fn new(capacities: impl IntoIterator<Item = usize>, _nodes: usize) -> Self {
        let stacks = capacities
            .into_iter()
            .map(|capacity| {
                let state = State {
                    values: VecDeque::with_capacity(capacity),
                    waiting: false,
                    closed: false,
                };
                (capacity, Mutex::new(state))
            })
            .collect();
        IdleStacks { stacks }
    }

    /// How many values shard `shard`'s stack holds now.
    pub(crate) fn len(&self, shard: usize) -> usize {
        lock(&self.stacks[shard].1).values.len()
    }

    /// Pushes `value` on top of shard `shard`'s stack, unless it is closed, flagged `WAITING`, or
    /// full (checked in that order, as the real stacks do: a flag wins over `Full`).
    pub(crate) fn push(&self, shard: usize, value: T) -> Result<(), Refused<T>> {
        let (capacity, state) = &self.stacks[shard];
        let mut state = lock(state);
        if state.closed {
            Err(Refused::Closed(value))
        } else if state.waiting {
            Err(Refused::Waiting(value))
        } else if state.values.len() >= *capacity {
            Err(Refused::Full(value))
        } else {
            state.values.push_back(value);
            Ok(())
        }
    }

    /// Pops the most recently pushed value of shard `shard`'s stack.
    pub(crate) fn pop(&self, shard: usize) -> Option<T> {
        lock(&self.stacks[shard].1).values.pop_back()
    }

    /// Values here never get a slot, so there is none to give back.
    pub(crate) fn release(&self, slot: Slot) {
        drop(slot);
    }

    /// Sets or clears the `WAITING` flag on every shard's stack.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        for (_, state) in self.stacks.iter() {
            lock(state).waiting = waiting;
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
