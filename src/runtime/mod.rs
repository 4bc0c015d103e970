//! The thread-per-core runtime: one glommio executor per shard, pinned to the shard's CPU.
//!
//! - [`spawn_shards`] starts one executor thread per entry of a [`ShardMap`](crate::topology::ShardMap) (from
//!   [`crate::topology`]), pins it with `Placement::Fixed(cpu)`, binds the thread to its pool shard
//!   ([`crate::pool::bind_thread_to_shard`]) and runs the future your closure builds from a
//!   [`ShardContext`].
//! - [`Shutdown`] is the process-wide, thread-safe shutdown switch (drain, then abort); each shard
//!   mirrors it into a cheap shard-local [`LocalEvent`] that connections and calls wait on.
//! - [`SendSleep`] is a `Send + Sync` sleep driven by the shard's glommio timer, for libraries
//!   (hyper) that insist on `Send` timers although they poll them on one thread only.
//!
//! ```no_run
//! use shardpool::runtime::{spawn_shards, RuntimeOptions};
//! use shardpool::topology::{Placement, Topology};
//!
//! let map = Topology::detect().place(&Placement::AllCores, None).unwrap();
//! let handles = spawn_shards(&map, &RuntimeOptions::default(), |ctx| async move {
//!     println!("shard {} on cpu {} (node {})", ctx.shard, ctx.cpu, ctx.node);
//!     ctx.shard * 10
//! })
//! .unwrap();
//! let results = handles.join().unwrap();
//! assert_eq!(results.len(), map.len());
//! ```

mod clock;
mod event;
mod send_sleep;
mod shards;
mod shutdown;

pub use clock::coarse_now;
pub use event::{EventWait, LocalEvent};
pub use send_sleep::SendSleep;
#[cfg(test)]
use shards::two_shards_unpinned;
pub use shards::{
    RuntimeError, RuntimeOptions, ShardContext, ShardHandles, current_shard, sleep, spawn_shards,
};
pub use shutdown::Shutdown;
