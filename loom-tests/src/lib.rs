//! loom models of shardpool's checkout/return protocol: the shared test harness.
//!
//! The models themselves live in `tests/`, one scenario per file; docs/protocol.md says which model
//! checks which invariant (numbered as in `shardpool::pool`). They only exist in the loom build:
//!
//! ```text
//! RUSTFLAGS="--cfg shardpool_loom" CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release
//! ```
//!
//! and `scripts/loom.sh` runs them against both idle-stack stand-ins plus the seeded bugs. In a
//! normal build this crate is empty.
//!
//! # How the harness observes the pool
//!
//! * [`Manager`] creates [`Conn`]s with unique ids and counts them in a [`Tracker`]: how many exist
//!   (asserted `≤ max_size` at every create: invariant 1), which were dropped (a second drop of the
//!   same id panics: invariant 3), which are held by a guard (a second guard for the same id panics:
//!   invariant 2), and which are expired (handing one out panics: invariant 6). The tracker uses
//!   plain `std` atomics on purpose: loom runs one thread at a time, so they record the real order
//!   of events without adding interleavings for loom to explore.
//! * Every [`Conn`] carries a loom `UnsafeCell` that each user and its drop write, so loom itself
//!   reports two accesses to one connection that are not ordered by happens-before (a connection
//!   published without `Release`/`Acquire`, or used by two threads at once), and a loom `Arc` token,
//!   so loom's leak check reports a connection that is never dropped.
//! * A waiter that is never woken blocks in `loom::future::block_on` (through the pool's `block_on`)
//!   forever, which loom reports as a deadlock (invariant 4).
#![cfg_attr(not(shardpool_loom), allow(unused))]

#[cfg(shardpool_loom)]
mod harness;

#[cfg(shardpool_loom)]
pub use harness::*;
