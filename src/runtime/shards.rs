//! Starting the shards: one glommio executor per entry of a [`ShardMap`], pinned to its CPU and
//! bound to its pool shard, and the shard context each executor thread records.

use crate::topology::ShardMap;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Where a shard runs; handed to the closure given to [`spawn_shards`].
///
/// ```
/// use shardpool::runtime::{RuntimeOptions, current_shard, spawn_shards};
/// use shardpool::topology::{Placement, Topology};
///
/// // One shard, unpinned (as on a busy machine).
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let handles = spawn_shards(&map, &options, |ctx| async move {
///     assert_eq!(current_shard(), Some(ctx));
///     ctx.shard
/// })
/// .unwrap();
/// assert_eq!(handles.len(), 1);
/// assert_eq!(handles.join().unwrap(), vec![0]);
/// assert_eq!(current_shard(), None, "not on a shard thread");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardContext {
    /// Shard index, `0..shards`; also the pool shard this thread is bound to.
    pub shard: usize,
    /// Number of shards.
    pub shards: usize,
    /// CPU the executor is pinned to.
    pub cpu: usize,
    /// NUMA node of that CPU.
    pub node: usize,
}

thread_local! {
    static CURRENT: Cell<Option<ShardContext>> = const { Cell::new(None) };
}

/// The shard the current thread runs, if it is a shard executor started by [`spawn_shards`].
///
/// ```
/// // The test's own thread is no shard.
/// assert_eq!(shardpool::runtime::current_shard(), None);
/// ```
pub fn current_shard() -> Option<ShardContext> {
    CURRENT.with(Cell::get)
}

/// Options of the executors (everything else comes from the [`ShardMap`]).
///
/// ```
/// use shardpool::runtime::RuntimeOptions;
/// use std::time::Duration;
///
/// let options = RuntimeOptions {
///     name: "gateway".into(),
///     spin_before_park: Some(Duration::from_micros(50)),
///     ..RuntimeOptions::default()
/// };
/// assert!(options.pin, "pinned by default");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Thread name prefix; threads are named `<name>-<shard>`.
    pub name: String,
    /// Busy-poll this long before parking an idle executor (`None`: park at once). Spinning
    /// lowers latency at the cost of burning an idle core.
    pub spin_before_park: Option<Duration>,
    /// Pin each executor to its CPU (default). `false` runs unpinned, for tests on busy machines.
    pub pin: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            name: "shard".into(),
            spin_before_park: None,
            pin: true,
        }
    }
}

/// Why shards could not be started.
///
/// Its message names the shard, the CPU and the usual causes (io_uring disabled, `ulimit -l`):
///
/// ```
/// use shardpool::runtime::{RuntimeOptions, spawn_shards};
/// use shardpool::topology::{Placement, Topology};
///
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// // A shard that panics is reported by `join` as an error naming it.
/// let handles = spawn_shards(&map, &options, |_| async { panic!("boom") }).unwrap();
/// let e: shardpool::runtime::RuntimeError = handles.join().unwrap_err();
/// assert!(e.to_string().contains("shard 0"), "{e}");
/// ```
#[derive(Debug)]
pub struct RuntimeError {
    shard: usize,
    cpu: usize,
    source: String,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot start shard {} on cpu {}: {}. glommio needs io_uring (Linux >= 5.8, not \
             disabled by sysctl kernel.io_uring_disabled or a seccomp profile) and locked memory \
             (check `ulimit -l`; raise it with LimitMEMLOCK= in systemd or --ulimit memlock in \
             containers)",
            self.shard, self.cpu, self.source
        )
    }
}

impl std::error::Error for RuntimeError {}

/// Running shards; [`ShardHandles::join`] waits for all of them (see [`spawn_shards`]).
///
/// ```
/// use shardpool::runtime::{RuntimeOptions, current_shard, spawn_shards};
/// use shardpool::topology::{Placement, Topology};
///
/// // One shard, unpinned (as on a busy machine).
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let handles = spawn_shards(&map, &options, |ctx| async move {
///     assert_eq!(current_shard(), Some(ctx));
///     ctx.shard
/// })
/// .unwrap();
/// assert_eq!(handles.len(), 1);
/// assert_eq!(handles.join().unwrap(), vec![0]);
/// assert_eq!(current_shard(), None, "not on a shard thread");
/// ```
#[must_use = "dropping the handles detaches the shard threads; call join()"]
pub struct ShardHandles<T: Send + 'static> {
    handles: Vec<glommio::ExecutorJoinHandle<T>>,
}

impl<T: Send + 'static> ShardHandles<T> {
    /// Waits for every shard and returns their results in shard order. A shard that panicked or
    /// failed to start its executor is reported as an error naming the shard.
    pub fn join(self) -> Result<Vec<T>, RuntimeError> {
        let mut out = Vec::with_capacity(self.handles.len());
        for (shard, h) in self.handles.into_iter().enumerate() {
            match h.join() {
                Ok(v) => out.push(v),
                Err(e) => {
                    return Err(RuntimeError {
                        shard,
                        cpu: usize::MAX,
                        source: e.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True when there are no shards (never, for handles from [`spawn_shards`]).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// Starts one glommio executor per shard of `map`, pinned to its CPU, and runs `f(ctx)` on it.
///
/// Each executor thread first records its [`ShardContext`] (see [`current_shard`]) and binds
/// itself to pool shard `ctx.shard`, so `ConnectionPool::get` on that thread uses its own shard.
///
/// ```
/// use shardpool::runtime::{RuntimeOptions, current_shard, spawn_shards};
/// use shardpool::topology::{Placement, Topology};
///
/// // One shard, unpinned (as on a busy machine).
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let handles = spawn_shards(&map, &options, |ctx| async move {
///     assert_eq!(current_shard(), Some(ctx));
///     ctx.shard
/// })
/// .unwrap();
/// assert_eq!(handles.len(), 1);
/// assert_eq!(handles.join().unwrap(), vec![0]);
/// assert_eq!(current_shard(), None, "not on a shard thread");
/// ```
pub fn spawn_shards<G, F, T>(
    map: &ShardMap,
    options: &RuntimeOptions,
    f: G,
) -> Result<ShardHandles<T>, RuntimeError>
where
    G: Fn(ShardContext) -> F + Send + Sync + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let mut handles = Vec::with_capacity(map.len());
    for (shard, place) in map.places().iter().enumerate() {
        let ctx = ShardContext {
            shard,
            shards: map.len(),
            cpu: place.cpu,
            node: place.node,
        };
        let placement = if options.pin {
            glommio::Placement::Fixed(place.cpu)
        } else {
            glommio::Placement::Unbound
        };
        let mut builder = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("{}-{shard}", options.name));
        if let Some(spin) = options.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let f = Arc::clone(&f);
        let handle = builder
            .spawn(move || {
                CURRENT.with(|c| c.set(Some(ctx)));
                crate::pool::bind_thread_to_shard(ctx.shard);
                f(ctx)
            })
            .map_err(|e| RuntimeError {
                shard,
                cpu: place.cpu,
                source: e.to_string(),
            })?;
        handles.push(handle);
    }
    Ok(ShardHandles { handles })
}

/// Sleeps on the current glommio executor's timer.
///
/// ```
/// use shardpool::runtime::{RuntimeOptions, sleep, spawn_shards};
/// use shardpool::topology::{Placement, Topology};
/// use std::time::{Duration, Instant};
///
/// let map = Topology::detect().place(&Placement::AllCores, Some(1)).unwrap();
/// let options = RuntimeOptions { pin: false, ..RuntimeOptions::default() };
/// let took = spawn_shards(&map, &options, |_| async {
///     let start = Instant::now();
///     sleep(Duration::from_millis(5)).await;
///     start.elapsed()
/// })
/// .unwrap()
/// .join()
/// .unwrap();
/// assert!(took[0] >= Duration::from_millis(5));
/// ```
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Two shards on made-up CPUs 0 and 1, unpinned (the tests run on busy machines).
#[cfg(test)]
pub(crate) fn two_shards_unpinned() -> (ShardMap, RuntimeOptions) {
    let topo = crate::topology::Topology::from_nodes(vec![(0, vec![0]), (1, vec![1])]).unwrap();
    let map = topo
        .place(&crate::topology::Placement::AllCores, None)
        .unwrap();
    let opts = RuntimeOptions {
        pin: false,
        ..RuntimeOptions::default()
    };
    (map, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_know_their_place() {
        let (map, opts) = two_shards_unpinned();
        let out = spawn_shards(&map, &opts, |ctx| async move {
            assert_eq!(current_shard(), Some(ctx));
            (ctx.shard, ctx.node, ctx.shards)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(out, vec![(0, 0, 2), (1, 1, 2)]);
        assert_eq!(current_shard(), None);
    }
}
