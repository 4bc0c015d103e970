//! The thread-per-core runtime: one glommio executor per shard, pinned to the shard's CPU.
//!
//! - [`spawn_shards`] starts one executor thread per entry of a [`ShardMap`] (from
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

use crate::topology::ShardMap;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Where a shard runs; handed to the closure given to [`spawn_shards`].
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
pub fn current_shard() -> Option<ShardContext> {
    CURRENT.with(Cell::get)
}

/// Options of the executors (everything else comes from the [`ShardMap`]).
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

/// Running shards; [`ShardHandles::join`] waits for all of them.
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
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

const DRAINING: u8 = 1;
const ABORTED: u8 = 2;

/// The process-wide shutdown switch, safe to trigger from any thread (a signal handler thread,
/// a test). Two phases: **drain** (stop accepting, finish in-flight work) then **abort**
/// (give up on what is still running, answering it with an error).
///
/// ```
/// # use shardpool::runtime::Shutdown;
/// let s = Shutdown::new();
/// assert!(!s.is_draining());
/// s.drain();
/// assert!(s.is_draining() && !s.is_aborted());
/// s.abort();
/// assert!(s.is_aborted());
/// ```
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    /// 0 (running) → DRAINING → ABORTED, never backwards.
    phase: AtomicU8,
    /// Wakers of tasks waiting for a phase change (one watcher per shard: few entries).
    wakers: Mutex<Vec<Waker>>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("draining", &self.is_draining())
            .field("aborted", &self.is_aborted())
            .finish()
    }
}

impl Shutdown {
    /// A switch in the running phase.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Enters the drain phase (idempotent).
    pub fn drain(&self) {
        self.advance(DRAINING);
    }

    /// Enters the abort phase (implies drain; idempotent).
    pub fn abort(&self) {
        self.advance(ABORTED);
    }

    fn advance(&self, to: u8) {
        // Ordering: AcqRel/Acquire so a waiter that observes the new phase also observes
        // whatever the triggering thread did before; the waker list is then taken under its
        // mutex, which pairs with `wait`'s register-then-recheck.
        let _ = self.inner.phase.fetch_max(to, Ordering::AcqRel);
        let wakers = std::mem::take(
            &mut *self
                .inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for w in wakers {
            w.wake();
        }
    }

    fn phase(&self) -> u8 {
        // Ordering: Acquire, pairs with the AcqRel fetch_max in `advance`.
        self.inner.phase.load(Ordering::Acquire)
    }

    /// True once [`Shutdown::drain`] (or abort) was called.
    pub fn is_draining(&self) -> bool {
        self.phase() >= DRAINING
    }

    /// True once [`Shutdown::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.phase() >= ABORTED
    }

    /// Completes when the switch is at least in the drain phase.
    pub fn drained(&self) -> impl Future<Output = ()> + '_ {
        self.wait(DRAINING)
    }

    /// Completes when the switch is in the abort phase.
    pub fn aborted(&self) -> impl Future<Output = ()> + '_ {
        self.wait(ABORTED)
    }

    fn wait(&self, phase: u8) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.phase() >= phase {
                return Poll::Ready(());
            }
            let mut wakers = self
                .inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            drop(wakers);
            // Re-check after registering: `advance` stores the phase before taking the list, so
            // either we see the new phase here or our waker is in the list it takes.
            if self.phase() >= phase {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// A shard-local, level-triggered event: once [`LocalEvent::set`], every current and future
/// [`LocalEvent::wait`] completes. Cheap to wait on from many tasks of one executor (`!Send`).
///
/// ```
/// # use shardpool::runtime::LocalEvent;
/// let ev = LocalEvent::new();
/// assert!(!ev.is_set());
/// ev.set();
/// futures_lite::future::block_on(ev.wait());
/// ```
#[derive(Clone, Default)]
pub struct LocalEvent {
    inner: Rc<RefCell<EventState>>,
}

#[derive(Default)]
struct EventState {
    set: bool,
    /// Slab of waiting tasks; `free` lists vacant slots.
    waiters: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl fmt::Debug for LocalEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEvent")
            .field("set", &self.is_set())
            .finish()
    }
}

impl LocalEvent {
    /// An unset event.
    pub fn new() -> LocalEvent {
        LocalEvent::default()
    }

    /// Sets the event and wakes every waiter (idempotent).
    pub fn set(&self) {
        let wakers: Vec<Waker> = {
            let mut st = self.inner.borrow_mut();
            st.set = true;
            st.free.clear();
            st.waiters.drain(..).flatten().collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// True once set.
    pub fn is_set(&self) -> bool {
        self.inner.borrow().set
    }

    /// Completes once the event is set.
    pub fn wait(&self) -> EventWait {
        EventWait {
            event: self.clone(),
            slot: None,
        }
    }
}

/// Future of [`LocalEvent::wait`]; leaves the waiter list when dropped.
#[must_use = "futures do nothing unless polled"]
pub struct EventWait {
    event: LocalEvent,
    slot: Option<usize>,
}

impl Future for EventWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut st = this.event.inner.borrow_mut();
        if st.set {
            this.slot = None;
            return Poll::Ready(());
        }
        match this.slot {
            Some(i) => match &mut st.waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match st.free.pop() {
                    Some(i) => {
                        st.waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        st.waiters.push(Some(cx.waker().clone()));
                        st.waiters.len() - 1
                    }
                };
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for EventWait {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut st = self.event.inner.borrow_mut();
            if !st.set && i < st.waiters.len() {
                st.waiters[i] = None;
                st.free.push(i);
            }
        }
    }
}

/// The current time from the kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`), as an
/// [`Instant`] comparable with [`Instant::now`]: it reads no hardware counter, so it costs a
/// fraction of `Instant::now` (on this project's test machines 20 ns against 90 ns), and it is
/// within one kernel tick (1 to 10 ms, by `CONFIG_HZ`) of `Instant::now`. Monotonic.
///
/// For timeouts and keep-alive, not for measuring anything shorter than a tick.
///
/// ```
/// use shardpool::runtime::coarse_now;
/// use std::time::{Duration, Instant};
/// let (a, b) = (coarse_now(), Instant::now());
/// assert!(a.max(b) - a.min(b) < Duration::from_millis(50));
/// assert!(coarse_now() >= a);
/// ```
pub fn coarse_now() -> Instant {
    thread_local! {
        /// The last reading of the coarse clock on this thread and the `Instant` it gave: the
        /// clock moves once per tick, so most calls find the same reading and skip the
        /// conversion.
        static LAST: Cell<(Duration, Option<Instant>)> = const { Cell::new((Duration::ZERO, None)) };
    }
    let raw = coarse_clock();
    LAST.with(|last| match last.get() {
        (seen, Some(at)) if seen == raw => at,
        _ => {
            let at = coarse_instant(raw);
            last.set((raw, Some(at)));
            at
        }
    })
}

/// The `Instant` of a reading of the coarse clock: `Instant::now()` minus the coarse clock, both
/// read once, plus the reading. Instant is CLOCK_MONOTONIC on Linux, the same clock the coarse
/// one samples at each tick, so the difference stays put.
fn coarse_instant(raw: Duration) -> Instant {
    static OFFSET: std::sync::OnceLock<(Instant, Duration)> = std::sync::OnceLock::new();
    let (base, coarse_base) = *OFFSET.get_or_init(|| (Instant::now(), coarse_clock()));
    base + raw.saturating_sub(coarse_base)
}

/// `CLOCK_MONOTONIC_COARSE` as a duration since boot.
fn coarse_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC_COARSE exists on
    // every Linux since 2.6.32 and cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A `Send + Sync` sleep whose timing is done by a small task on the current shard's glommio
/// executor (or, off a shard, by a helper thread). It exists because hyper's `Timer` demands
/// `Send + Sync` sleeps while glommio's timers are `!Send`.
///
/// Cost: one task spawn and one small `Arc<Mutex<_>>` per sleep (per reset that moves the
/// deadline earlier); hyper uses timers per connection (keep-alive), not per request. hyper
/// polls its keep-alive sleep on every poll of a connection, from the same task: such a poll
/// reads one atomic flag and compares wakers, without the mutex.
///
/// ```no_run
/// # use shardpool::runtime::SendSleep;
/// # use std::time::{Duration, Instant};
/// # async fn demo() {
/// let mut s = Box::pin(SendSleep::until(Instant::now() + Duration::from_millis(5)));
/// s.as_mut().reset(Instant::now() + Duration::from_millis(1));
/// s.await;
/// # }
/// ```
pub struct SendSleep {
    state: Arc<SleepShared>,
    /// The waker the running driver of the current deadline will wake, as of the last poll
    /// that found one running; `None` after a reset or a poll that returned `Ready`. While it
    /// is `Some`, only that driver can end the wait, and it sets [`SleepShared::fired`] first.
    armed: Option<Waker>,
}

struct SleepShared {
    /// Set by a driver when it fires (before it wakes the task), cleared by a reset.
    fired: AtomicBool,
    state: Mutex<SleepState>,
}

struct SleepState {
    deadline: Instant,
    /// Bumped by every reset; a driver whose generation is stale exits without acting.
    generation: u64,
    /// A driver for the current generation exists.
    driving: bool,
    fired: bool,
    /// The `SendSleep` was dropped: drivers exit.
    dropped: bool,
    waker: Option<Waker>,
}

impl SendSleep {
    /// A sleep that completes at `deadline`.
    pub fn until(deadline: Instant) -> SendSleep {
        SendSleep {
            state: Arc::new(SleepShared {
                fired: AtomicBool::new(false),
                state: Mutex::new(SleepState {
                    deadline,
                    generation: 0,
                    driving: false,
                    fired: false,
                    dropped: false,
                    waker: None,
                }),
            }),
            armed: None,
        }
    }

    /// Moves the deadline (earlier or later); a fired sleep becomes pending again.
    pub fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.armed = None;
        let mut st = lock(&self.state.state);
        // A running driver can follow a later deadline (it re-checks when it wakes); an earlier
        // one needs a new driver, so retire the current one.
        if !(st.driving && deadline >= st.deadline) {
            st.generation += 1;
            st.driving = false;
        }
        st.deadline = deadline;
        st.fired = false;
        // Ordering: Relaxed; written under the mutex, which orders it with the driver's store
        // (also under the mutex).
        self.state.fired.store(false, Ordering::Relaxed);
    }

    fn start_driver(state: Arc<SleepShared>, generation: u64, deadline: Instant) {
        if current_shard().is_some() {
            glommio::spawn_local(Self::drive(
                state,
                generation,
                deadline,
                glommio::timer::sleep,
            ))
            .detach();
        } else {
            std::thread::spawn(move || {
                let blocking_sleep = |d| async move { std::thread::sleep(d) };
                futures_lite::future::block_on(Self::drive(
                    state,
                    generation,
                    deadline,
                    blocking_sleep,
                ));
            });
        }
    }

    /// Sleeps until the deadline, following resets that move it later, then fires.
    async fn drive<S: Future<Output = ()>>(
        state: Arc<SleepShared>,
        generation: u64,
        mut deadline: Instant,
        sleep: impl Fn(Duration) -> S,
    ) {
        loop {
            sleep(deadline.saturating_duration_since(Instant::now())).await;
            match Self::on_wake(&state, generation) {
                Some(later) => deadline = later,
                None => return,
            }
        }
    }

    /// A driver woke: fire if due, or return the deadline to sleep until next.
    fn on_wake(state: &SleepShared, generation: u64) -> Option<Instant> {
        let mut st = lock(&state.state);
        if st.dropped || st.generation != generation {
            return None;
        }
        if Instant::now() >= st.deadline {
            st.fired = true;
            st.driving = false;
            // Ordering: Release, before the wake below: the task it wakes sees the flag (pairs
            // with the Acquire load in `poll`).
            state.fired.store(true, Ordering::Release);
            if let Some(w) = st.waker.take() {
                drop(st);
                w.wake();
            }
            return None;
        }
        Some(st.deadline)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Future for SendSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Ordering: Acquire, pairs with the driver's Release store before its wake: a poll that
        // the wake caused sees the flag.
        if let Some(w) = &self.armed
            && w.will_wake(cx.waker())
            && !self.state.fired.load(Ordering::Acquire)
        {
            return Poll::Pending;
        }
        self.armed = None;
        let state = Arc::clone(&self.state);
        let mut st = lock(&state.state);
        // While a driver of the current deadline runs, it fires the sleep when the deadline
        // passes, so a poll need not read the clock (hyper polls its keep-alive sleep on every
        // poll of a connection).
        if st.fired || (!st.driving && Instant::now() >= st.deadline) {
            st.fired = true;
            return Poll::Ready(());
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        self.armed.clone_from(&st.waker);
        if !st.driving {
            st.driving = true;
            let (generation, deadline) = (st.generation, st.deadline);
            drop(st);
            SendSleep::start_driver(state, generation, deadline);
        }
        Poll::Pending
    }
}

impl Drop for SendSleep {
    fn drop(&mut self) {
        let mut st = lock(&self.state.state);
        st.dropped = true;
        st.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Placement, Topology};
    use std::sync::atomic::AtomicUsize;

    fn two_shards_unpinned() -> (ShardMap, RuntimeOptions) {
        let topo = Topology::from_nodes(vec![(0, vec![0]), (1, vec![1])]).unwrap();
        let map = topo.place(&Placement::AllCores, None).unwrap();
        let opts = RuntimeOptions {
            pin: false,
            ..RuntimeOptions::default()
        };
        (map, opts)
    }

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

    #[test]
    fn shutdown_wakes_every_shard() {
        let (map, opts) = two_shards_unpinned();
        let shutdown = Shutdown::new();
        let reached = Arc::new(AtomicUsize::new(0));
        let (s2, r2) = (shutdown.clone(), Arc::clone(&reached));
        let handles = spawn_shards(&map, &opts, move |_| {
            let (s, r) = (s2.clone(), Arc::clone(&r2));
            async move {
                s.drained().await;
                // Ordering: Relaxed, the join below synchronises with these threads.
                r.fetch_add(1, Ordering::Relaxed);
                s.aborted().await;
                s.is_aborted()
            }
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        shutdown.drain();
        shutdown.abort();
        assert_eq!(handles.join().unwrap(), vec![true, true]);
        // Ordering: Relaxed, after join.
        assert_eq!(reached.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn local_event_wakes_waiters_and_forgets_dropped_ones() {
        let (map, opts) = two_shards_unpinned();
        let out = spawn_shards(&map, &opts, |_| async {
            let ev = LocalEvent::new();
            let early = {
                let ev = ev.clone();
                glommio::spawn_local(async move { ev.wait().await })
            };
            // A waiter that gives up must leave no waker behind.
            let gave_up = futures_lite::future::or(
                async {
                    ev.wait().await;
                    false
                },
                async {
                    sleep(Duration::from_millis(1)).await;
                    true
                },
            )
            .await;
            glommio::executor().yield_now().await;
            let vacant = ev.inner.borrow().free.len();
            ev.set();
            early.await;
            ev.wait().await;
            (gave_up, vacant)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(out, vec![(true, 1), (true, 1)]);
    }

    #[test]
    fn send_sleep_fires_and_resets_on_a_shard_and_off() {
        let (map, opts) = two_shards_unpinned();
        let check = || async {
            let start = Instant::now();
            let mut s = Box::pin(SendSleep::until(start + Duration::from_secs(30)));
            // Poll once so a driver for the 30 s deadline exists, then move the deadline earlier.
            assert!(futures_lite::future::poll_once(s.as_mut()).await.is_none());
            s.as_mut().reset(start + Duration::from_millis(10));
            s.as_mut().await;
            let first = start.elapsed();
            s.as_mut().reset(Instant::now() + Duration::from_millis(5));
            s.await;
            first
        };
        let out = spawn_shards(&map, &opts, move |_| check())
            .unwrap()
            .join()
            .unwrap();
        for took in out {
            assert!(
                took >= Duration::from_millis(10) && took < Duration::from_secs(10),
                "{took:?}"
            );
        }
        let off_shard = futures_lite::future::block_on(check());
        assert!(off_shard < Duration::from_secs(10));
    }
}
