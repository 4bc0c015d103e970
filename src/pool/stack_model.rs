//! The linearizable stand-in for the idle stack, used only by the loom models.
//!
//! Built instead of the real [`stack`](super::stack) when the crate is compiled with
//! `--cfg shardpool_loom --cfg shardpool_loom_model_stack` (see `scripts/loom.sh` and
//! docs/protocol.md). It has the real stack's interface and semantics, the `WAITING` and `CLOSED`
//! flags included, but is one loom `Mutex` around a deque: every operation is atomic and orders
//! everything before it. The models run once against it and once against the real, fully
//! instrumented stack, so a model failure can be told apart as a protocol bug (fails on both) or a
//! memory-ordering bug inside the stack (fails only on the real one). The lock also makes this
//! stand-in blind to missing `Release`/`Acquire` in the stack: it proves the protocol *given* a
//! linearizable stack, which is exactly what the real stack's own run then has to back up.

use super::stack::Refused;
use super::sync::{Mutex, lock};
use std::collections::VecDeque;

/// What the lock guards.
struct State<T> {
    values: VecDeque<T>,
    /// A checkout waits for this key: pushes are refused with [`Refused::Waiting`].
    waiting: bool,
    /// The key is closed: pushes are refused with [`Refused::Closed`]; pops still drain.
    closed: bool,
}

/// A bounded LIFO with the real idle stack's interface (see the module docs).
pub(crate) struct IdleStack<T> {
    capacity: usize,
    state: Mutex<State<T>>,
}

impl<T> IdleStack<T> {
    /// An empty stack with room for `capacity` values.
    pub(crate) fn new(capacity: usize) -> Self {
        IdleStack {
            capacity,
            state: Mutex::new(State {
                values: VecDeque::with_capacity(capacity),
                waiting: false,
                closed: false,
            }),
        }
    }

    /// How many values are on the stack now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).values.len()
    }

    /// Pushes `value` on top, unless the stack is closed, flagged `WAITING`, or full (checked in
    /// that order, as the real stack does: a flag wins over `Full`).
    pub(crate) fn push(&self, value: T) -> Result<(), Refused<T>> {
        let mut state = lock(&self.state);
        if state.closed {
            Err(Refused::Closed(value))
        } else if state.waiting {
            Err(Refused::Waiting(value))
        } else if state.values.len() >= self.capacity {
            Err(Refused::Full(value))
        } else {
            state.values.push_back(value);
            Ok(())
        }
    }

    /// Pops the most recently pushed value.
    pub(crate) fn pop(&self) -> Option<T> {
        lock(&self.state).values.pop_back()
    }

    /// Sets or clears the `WAITING` flag.
    pub(crate) fn set_waiting(&self, waiting: bool) {
        lock(&self.state).waiting = waiting;
    }

    /// Sets the `CLOSED` flag: from now on every push is refused. Pops still drain the stack.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
    }
}
