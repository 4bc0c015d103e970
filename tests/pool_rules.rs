//! One test per rule of the pool, run against both the sharded pool and the mutex baseline where
//! the rule is common to both.

mod common;

use common::{Tally, TestManager};
use shardpool::baseline::MutexPool;
use shardpool::pool::block_on;
use shardpool::{
    Clock, Config, ConnectionPool, Error, MAX_SIZE, ManualClock, PooledConn, ShardedPool, Stats,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

type Make<P> = fn(TestManager, Config) -> P;

fn sharded(m: TestManager, c: Config) -> ShardedPool<TestManager> {
    ShardedPool::new(m, c).expect("valid config")
}

fn mutex(m: TestManager, c: Config) -> MutexPool<TestManager> {
    MutexPool::new(m, c).expect("valid config")
}

/// Runs a generic rule test against both pools.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sharded { $( #[test] fn $name() { super::$name(super::sharded) } )* }
        mod on_mutex { $( #[test] fn $name() { super::$name(super::mutex) } )* }
    };
}

both!(
    reuses_the_most_recently_returned,
    max_size_bounds_live_and_waiters_get_returns,
    wait_times_out_with_a_clear_error,
    create_error_frees_its_permit,
    discard_closes_and_frees_a_permit,
    broken_connections_are_never_handed_out,
    recycle_refusal_closes,
    a_panicking_manager_or_connection_loses_no_capacity,
    a_panicking_drop_during_maintenance_loses_no_capacity,
    idle_timeout_and_lifetime_expire,
    idle_limit_per_key_closes_the_surplus,
    total_idle_limit_spans_keys,
    close_drains_and_fails_waiters,
    remove_key_forgets_a_destination,
    maintenance_reaps_and_prewarms,
    return_from_another_thread,
    keys_are_independent,
    async_validation_runs_past_its_threshold_and_moves_on,
    async_validation_of_a_handed_off_connection_moves_on,
    a_cancelled_validation_closes_the_connection,
    max_waiters_fails_fast_with_overloaded,
    expiry_jitter_spreads_a_burst,
    detach_takes_the_connection_and_frees_its_permit,
    leak_detection_reports_once_and_on_return,
    leak_detection_names_each_call_site,
);

fn config() -> Config {
    Config::default()
        .shards(2)
        .max_size(2)
        .wait_timeout(Some(Duration::from_secs(10)))
}

fn quiescent<P: ConnectionPool<TestManager>>(pool: &P, tally: &Tally) -> Stats {
    let stats = pool.stats();
    assert_eq!(
        stats.total.live,
        stats.total.idle + stats.total.checked_out,
        "live == idle + checked out at quiescence: {stats:?}"
    );
    assert_eq!(
        stats.total.live as usize,
        tally.alive.load(Ordering::SeqCst),
        "the pool's live count matches the connections that exist"
    );
    stats
}

fn reuses_the_most_recently_returned<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    // max_size 4 over 2 shards: each shard's stack holds 2, so both returns stay on shard 0.
    let pool = make(m, config().max_size(4));
    block_on(async {
        let a = pool.get_on(0, &1).await.unwrap();
        let b = pool.get_on(0, &1).await.unwrap();
        let (a_id, b_id) = (a.id, b.id);
        assert!(!a.is_reused());
        drop(a);
        drop(b);
        let again = pool.get_on(0, &1).await.unwrap();
        assert_eq!(again.id, b_id, "LIFO: the last returned comes first");
        assert!(again.is_reused());
        let next = pool.get_on(0, &1).await.unwrap();
        assert_eq!(next.id, a_id);
    });
    assert_eq!(tally.created.load(Ordering::SeqCst), 2);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.checkouts, 4);
    assert_eq!(stats.total.creates, 2);
    assert_eq!(stats.total.local_hits, 2);
}

fn max_size_bounds_live_and_waiters_get_returns<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config());
    let a = block_on(pool.get_on(0, &1)).unwrap();
    let b = block_on(pool.get_on(1, &1)).unwrap();
    let a_id = a.id;
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get_on(1, &1)).map(|c| c.id))
    };
    // Let the waiter register (its checkout cannot succeed before `a` comes back anyway).
    while pool.stats().total.waits == 0 {
        std::thread::yield_now();
    }
    drop(a);
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        a_id,
        "handed the returned connection"
    );
    drop(b);
    assert_eq!(
        tally.peak.load(Ordering::SeqCst),
        2,
        "never more than max_size"
    );
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.waits, 1);
    assert_eq!(stats.total.handoffs, 1);
    assert!(stats.total.wait_max_us > 0);
}

fn wait_times_out_with_a_clear_error<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .max_size(1)
            .wait_timeout(Some(Duration::from_millis(30))),
    );
    let held = block_on(pool.get(&1)).unwrap();
    let err = block_on(pool.get(&1)).unwrap_err();
    let Error::Timeout { waited } = err else {
        panic!("expected a timeout, got {err}");
    };
    assert!(waited >= Duration::from_millis(30));
    assert!(err.to_string().contains("raise max_size or wait_timeout"));
    drop(held);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.timeouts, 1);
}

fn create_error_frees_its_permit<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config().max_size(1));
    tally.fail_creates.store(true, Ordering::SeqCst);
    let err = block_on(pool.get(&1)).unwrap_err();
    assert!(
        matches!(&err, Error::Create { key, .. } if key == "1"),
        "got {err}"
    );
    assert!(
        err.to_string()
            .contains("creating a connection for key 1 failed: the test manager was told to fail"),
        "the message names the key: {err}"
    );
    tally.fail_creates.store(false, Ordering::SeqCst);
    let conn = block_on(pool.get(&1)).expect("the failed create gave its permit back");
    drop(conn);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.create_errors, 1);
}

fn discard_closes_and_frees_a_permit<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config().max_size(1));
    let conn = block_on(pool.get(&1)).unwrap();
    conn.discard();
    assert_eq!(tally.alive.load(Ordering::SeqCst), 0, "closed at once");
    let again = block_on(pool.get(&1)).expect("the permit came back");
    assert!(!again.is_reused());
    drop(again);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.closes, 1);
    assert_eq!(stats.total.creates, 2);
}

fn broken_connections_are_never_handed_out<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config());
    let mut conn = block_on(pool.get_on(0, &1)).unwrap();
    let broken_id = conn.id;
    conn.broken = true; // the peer closed it while it was out
    drop(conn);
    let fresh = block_on(pool.get_on(0, &1)).unwrap();
    assert_ne!(fresh.id, broken_id);
    drop(fresh);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.validation_failures, 1);
}

fn recycle_refusal_closes<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    tally.refuse_recycle.store(true, Ordering::SeqCst);
    let pool = make(m, config());
    drop(block_on(pool.get(&1)).unwrap());
    assert_eq!(tally.alive.load(Ordering::SeqCst), 0);
    quiescent(&pool, &tally);
}

/// A panic in `is_valid`, in `recycle` or in a closing connection's `Drop` reaches the caller,
/// and the connection's permit is freed all the same.
fn a_panicking_manager_or_connection_loses_no_capacity<P: ConnectionPool<TestManager>>(
    make: Make<P>,
) {
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .max_size(1)
            .wait_timeout(Some(Duration::from_secs(1))),
    );
    let panics = |what: &str, f: &mut dyn FnMut()| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        assert!(outcome.is_err(), "{what} should have panicked");
        assert_eq!(tally.alive.load(Ordering::SeqCst), 0, "{what}: closed");
        let again = block_on(pool.get(&1));
        assert!(again.is_ok(), "{what}: the permit came back, got {again:?}");
    };
    let mut conn = Some(block_on(pool.get(&1)).unwrap());
    tally.panic_in_recycle.store(true, Ordering::SeqCst);
    panics("recycle", &mut || drop(conn.take()));

    drop(block_on(pool.get(&1)).unwrap()); // one idle connection to validate
    tally.panic_in_is_valid.store(true, Ordering::SeqCst);
    panics("is_valid", &mut || drop(block_on(pool.get(&1))));

    let mut conn = Some(block_on(pool.get(&1)).unwrap());
    tally.panic_in_drop.store(true, Ordering::SeqCst);
    panics("the connection's drop", &mut || {
        if let Some(conn) = conn.take() {
            conn.discard();
        }
    });
    quiescent(&pool, &tally);
}

fn idle_timeout_and_lifetime_expire<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let clock = ManualClock::new();
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .idle_timeout(Some(Duration::from_secs(10)))
            .max_lifetime(Some(Duration::from_secs(60)))
            .clock(Clock::Manual(clock.clone())),
    );
    let first = block_on(pool.get_on(0, &1)).unwrap().id;
    clock.advance(Duration::from_secs(9));
    let conn = block_on(pool.get_on(0, &1)).unwrap();
    assert_eq!(conn.id, first, "idle 9 s of 10: reused");
    drop(conn);
    clock.advance(Duration::from_secs(10));
    let conn = block_on(pool.get_on(0, &1)).unwrap();
    assert_ne!(conn.id, first, "idle 10 s: expired, never handed out");
    let second = conn.id;
    // Keep it busy past its lifetime: it is closed on return.
    clock.advance(Duration::from_secs(61));
    drop(conn);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        0,
        "too old: closed on return"
    );
    let conn = block_on(pool.get_on(0, &1)).unwrap();
    assert_ne!(conn.id, second);
    drop(conn);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.expirations, 2);
}

fn idle_limit_per_key_closes_the_surplus<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config().max_size(4).max_idle_per_key(2));
    let conns: Vec<_> = (0..4)
        .map(|_| block_on(pool.get_on(0, &1)).unwrap())
        .collect();
    drop(conns);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.idle, 2, "only max_idle_per_key stay idle");
    assert_eq!(stats.total.closes, 2);
}

fn total_idle_limit_spans_keys<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config().max_size(4).max_total_idle(3));
    let mut conns = Vec::new();
    for key in [1, 2] {
        for _ in 0..2 {
            conns.push(block_on(pool.get_on(0, &key)).unwrap());
        }
    }
    drop(conns);
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.idle, 3, "max_total_idle across keys");
    assert_eq!(stats.total.closes, 1);
}

fn close_drains_and_fails_waiters<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config().max_size(1).wait_timeout(None));
    let idle_one = block_on(pool.get(&2)).unwrap();
    drop(idle_one); // idle on key 2
    let held = block_on(pool.get(&1)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get(&1)).map(|c| c.id))
    };
    while pool.stats().total.waits == 0 {
        std::thread::yield_now();
    }
    pool.close();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Closed),
        "waiters fail with Closed, got {err}"
    );
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        1,
        "idle closed now, held one still out"
    );
    drop(held);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        0,
        "closed when it came back"
    );
    // Checkouts of known keys after the close connect nowhere: they fail before `create`.
    let created = tally.created.load(Ordering::SeqCst);
    assert!(matches!(block_on(pool.get(&1)), Err(Error::Closed)));
    assert!(matches!(block_on(pool.get(&2)), Err(Error::Closed)));
    assert_eq!(
        tally.created.load(Ordering::SeqCst),
        created,
        "a closed pool created a connection"
    );
    assert_eq!(
        tally.created.load(Ordering::SeqCst),
        tally.dropped.load(Ordering::SeqCst)
    );
}

fn remove_key_forgets_a_destination<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config());
    let out = block_on(pool.get(&1)).unwrap();
    drop(block_on(pool.get(&1)).unwrap()); // one idle
    pool.remove_key(&1);
    assert_eq!(tally.alive.load(Ordering::SeqCst), 1, "idle one closed");
    drop(out);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        0,
        "checked-out one closed on return"
    );
    let fresh = block_on(pool.get(&1)).expect("the key starts afresh");
    assert!(!fresh.is_reused());
    drop(fresh);
    quiescent(&pool, &tally);
}

fn maintenance_reaps_and_prewarms<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let clock = ManualClock::new();
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .shards(1)
            .max_size(4)
            .min_idle(2)
            .idle_timeout(Some(Duration::from_secs(5)))
            .clock(Clock::Manual(clock.clone())),
    );
    let conns: Vec<_> = (0..3).map(|_| block_on(pool.get(&1)).unwrap()).collect();
    drop(conns);
    clock.advance(Duration::from_secs(6));
    block_on(pool.maintain(0));
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.expirations, 3, "all three idled out");
    assert_eq!(stats.total.idle, 2, "refilled to min_idle");
    assert_eq!(stats.total.prewarms, 2);
    let warm = block_on(pool.get(&1)).unwrap();
    assert!(
        !warm.is_reused(),
        "a pre-warmed connection was never used before"
    );
    drop(warm);
    assert_eq!(
        pool.stats().total.creates,
        3,
        "the pre-warmed one was not created at checkout"
    );
}

/// Maintenance closes expired connections; one whose `Drop` panics takes none of the pool's counts
/// or capacity with it, and no expired connection is handed out afterwards.
fn a_panicking_drop_during_maintenance_loses_no_capacity<P: ConnectionPool<TestManager>>(
    make: Make<P>,
) {
    let clock = ManualClock::new();
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .shards(1)
            .max_size(3)
            .idle_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(1)))
            .clock(Clock::Manual(clock.clone())),
    );
    let conns: Vec<_> = (0..3).map(|_| block_on(pool.get(&1)).unwrap()).collect();
    drop(conns);
    clock.advance(Duration::from_secs(6));
    tally.panic_in_drop.store(true, Ordering::SeqCst);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        block_on(pool.maintain(0));
    }));
    assert!(
        outcome.is_err(),
        "the connection's drop should have panicked"
    );
    // The counts still match the connections (the sharded pool stops reaping at the panic and
    // leaves the other expired ones idle, for checkout's expiry check or the next pass).
    quiescent(&pool, &tally);
    let held: Vec<_> = (0..3)
        .map(|_| block_on(pool.get(&1)).expect("every permit came back"))
        .collect();
    assert!(
        held.iter().all(|c| !c.is_reused()),
        "expired ones are not reused"
    );
    drop(held);
    assert_eq!(pool.stats().total.idle, 3, "and all three idle again");
}

fn return_from_another_thread<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config());
    let conn = block_on(pool.get_on(1, &1)).unwrap();
    let id = conn.id;
    std::thread::spawn(move || drop(conn)).join().unwrap();
    let again = block_on(pool.get_on(1, &1)).unwrap();
    assert_eq!(again.id, id, "returned to its shard from a foreign thread");
    drop(again);
    quiescent(&pool, &tally);
}

fn keys_are_independent<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .max_size(1)
            .wait_timeout(Some(Duration::from_millis(20))),
    );
    let a = block_on(pool.get(&1)).unwrap();
    let b = block_on(pool.get(&2)).expect("key 2 has its own max_size");
    assert_eq!((a.key, b.key), (1, 2));
    drop((a, b));
    quiescent(&pool, &tally);
}

// ---- rules of the sharded pool only ----

#[test]
fn steals_follow_the_configured_order() {
    let (m, tally) = TestManager::new();
    let pool = sharded(
        m,
        Config::default().shards(3).max_size(6).steal_order(vec![
            vec![2, 1],
            vec![0, 2],
            vec![1, 0],
        ]),
    );
    block_on(async {
        let on1 = pool.get_on(1, &7).await.unwrap();
        let on2 = pool.get_on(2, &7).await.unwrap();
        let (id1, id2) = (on1.id, on2.id);
        drop((on1, on2));
        let stolen = pool.get_on(0, &7).await.unwrap();
        assert_eq!(stolen.id, id2, "shard 0 steals from shard 2 first");
        assert_eq!(stolen.shard(), 0, "the connection now belongs to the thief");
        let next = pool.get_on(0, &7).await.unwrap();
        assert_eq!(next.id, id1, "then from shard 1");
    });
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.shards[0].steals, 2);
    assert_eq!(stats.shards[0].idle, 2, "returned to the thief's shard");
}

/// The largest `max_size` allowed: every node of the key's arena in use at once, the one more
/// checkout refused with a timeout, and every connection back and reusable.
#[test]
fn max_size_at_its_cap_uses_every_node() {
    let (m, tally) = TestManager::new();
    let pool = sharded(
        m,
        config()
            .max_size(MAX_SIZE)
            .max_idle_per_key(MAX_SIZE)
            .wait_timeout(Some(Duration::from_millis(20))),
    );
    let held: Vec<_> = (0..MAX_SIZE)
        .map(|i| block_on(pool.get_on(i % 2, &1)).expect("within max_size"))
        .collect();
    assert_eq!(tally.peak.load(Ordering::SeqCst), MAX_SIZE);
    let err = block_on(pool.get_on(0, &1)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "got {err}");
    drop(held);
    let stats = quiescent(&pool, &tally);
    assert_eq!(
        stats.total.idle, MAX_SIZE as u64,
        "every connection came back"
    );
    let again = block_on(pool.get_on(1, &1)).unwrap();
    assert!(again.is_reused());
    drop(again);
    assert_eq!(tally.created.load(Ordering::SeqCst), MAX_SIZE as u64);
}

#[test]
fn a_full_shard_spills_to_the_next() {
    let (m, tally) = TestManager::new();
    // max_idle_per_key 2 over 2 shards: one idle slot per shard.
    let pool = sharded(
        m,
        Config::default().shards(2).max_size(2).max_idle_per_key(2),
    );
    let conns: Vec<_> = (0..2)
        .map(|_| block_on(pool.get_on(0, &1)).unwrap())
        .collect();
    drop(conns);
    let stats = quiescent(&pool, &tally);
    assert_eq!(
        stats.total.idle, 2,
        "nothing closed while another shard had room"
    );
    assert_eq!((stats.shards[0].idle, stats.shards[1].idle), (1, 1));
}

#[test]
fn get_uses_the_bound_shard() {
    let (m, tally) = TestManager::new();
    let pool = sharded(m, Config::default().shards(4));
    std::thread::spawn(move || {
        shardpool::pool::bind_thread_to_shard(3);
        let conn = block_on(pool.get(&1)).unwrap();
        assert_eq!(conn.shard(), 3);
        drop(conn);
        assert_eq!(pool.stats().shards[3].idle, 1);
        quiescent(&pool, &tally);
    })
    .join()
    .unwrap();
}

#[test]
fn pool_drop_closes_idle_and_later_returns() {
    let (m, tally) = TestManager::new();
    let pool = sharded(m, config());
    let out = block_on(pool.get(&1)).unwrap();
    drop(block_on(pool.get(&1)).unwrap());
    drop(pool);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        1,
        "idle closed with the pool"
    );
    drop(out);
    assert_eq!(tally.alive.load(Ordering::SeqCst), 0);
}

#[test]
fn a_cancelled_wait_loses_nothing() {
    let (m, tally) = TestManager::new();
    let pool = sharded(m, config().max_size(1).wait_timeout(None));
    let held = block_on(pool.get(&1)).unwrap();
    {
        // Poll a waiting checkout once, then drop it: it must leave the queue.
        let mut fut = std::pin::pin!(pool.get(&1));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    drop(held);
    let again = block_on(pool.get(&1)).expect("nothing stuck with the cancelled waiter");
    drop(again);
    quiescent(&pool, &tally);
}

fn async_validation_runs_past_its_threshold_and_moves_on<P: ConnectionPool<TestManager>>(
    make: Make<P>,
) {
    let (m, tally) = TestManager::new();
    let clock = ManualClock::new();
    let pool = make(
        m,
        config()
            .idle_timeout(None)
            .clock(Clock::Manual(clock.clone()))
            .validate_idle_after(Some(Duration::from_secs(5))),
    );
    block_on(async {
        let a = pool.get_on(0, &1).await.unwrap();
        let b = pool.get_on(0, &1).await.unwrap();
        drop((a, b));
        clock.advance(Duration::from_secs(3));
        // Idle 3 s, under the threshold: reused without `validate`.
        let c = pool.get_on(0, &1).await.unwrap();
        assert!(c.is_reused());
        assert!(
            tally.validated.lock().unwrap().is_empty(),
            "validated too early"
        );
        drop(c);
        clock.advance(Duration::from_secs(10));
        // Both idle connections fail: each is closed, and the checkout creates a third.
        tally.fail_validate.store(true, Ordering::SeqCst);
        let d = pool.get_on(0, &1).await.unwrap();
        assert!(!d.is_reused(), "a failed connection was handed out");
        assert_eq!(d.id, 1_000_002, "created after both idle ones failed");
        let seen = tally.validated.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen.iter()
                .all(|&(_, idle_for)| idle_for >= Duration::from_secs(10)),
            "validate is told how long the connection sat idle: {seen:?}"
        );
        drop(d);
    });
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.validation_failures, 2);
    assert_eq!(stats.total.live, 1);
    assert_eq!(tally.created.load(Ordering::SeqCst), 3);
}

fn async_validation_of_a_handed_off_connection_moves_on<P: ConnectionPool<TestManager>>(
    make: Make<P>,
) {
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .max_size(1)
            .validate_idle_after(Some(Duration::ZERO)),
    );
    let held = block_on(pool.get(&1)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get(&1)).map(|c| (c.id, c.is_reused())))
    };
    // Wait (bounded) until the checkout waits; if the return comes first, the checkout finds the
    // connection idle instead, and it must fail validation all the same.
    for _ in 0..500 {
        if pool.stats().total.waits > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tally.fail_validate.store(true, Ordering::SeqCst);
    drop(held);
    let (id, reused) = waiter
        .join()
        .unwrap()
        .expect("the waiter creates after validation");
    assert_eq!(
        (id, reused),
        (1_000_001, false),
        "a fresh connection, not the failed one"
    );
    let stats = quiescent(&pool, &tally);
    assert_eq!(stats.total.validation_failures, 1);
    assert_eq!(tally.created.load(Ordering::SeqCst), 2);
}

fn a_cancelled_validation_closes_the_connection<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .max_size(1)
            .wait_timeout(None)
            .validate_idle_after(Some(Duration::ZERO)),
    );
    drop(block_on(pool.get_on(0, &1)).unwrap());
    tally.stall_validate.store(true, Ordering::SeqCst);
    {
        let mut fut = std::pin::pin!(pool.get_on(0, &1));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "validate stalls");
    }
    assert_eq!(tally.validated.lock().unwrap().len(), 1);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        0,
        "the connection under validation is closed when its checkout is dropped"
    );
    tally.stall_validate.store(false, Ordering::SeqCst);
    // Its permit was freed: with max_size 1 and no wait timeout, this would hang otherwise.
    let again = block_on(pool.get_on(0, &1)).unwrap();
    assert!(!again.is_reused());
    drop(again);
    quiescent(&pool, &tally);
}

fn max_waiters_fails_fast_with_overloaded<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(m, config().max_size(1).max_waiters(1).wait_timeout(None));
    let held = block_on(pool.get(&1)).unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut first = Box::pin(pool.get(&1));
    assert!(
        first.as_mut().poll(&mut cx).is_pending(),
        "the first checkout waits"
    );
    // The second finds one waiter queued already: it fails at once, it does not wait.
    let mut second = Box::pin(pool.get(&1));
    match second.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(err @ Error::Overloaded { max_waiters: 1 })) => {
            assert!(err.to_string().contains("raise max_waiters"), "{err}");
        }
        std::task::Poll::Ready(other) => panic!("expected Overloaded, got {other:?}"),
        std::task::Poll::Pending => panic!("a checkout beyond max_waiters waited"),
    }
    // Keys are independent: another key still creates.
    drop(block_on(pool.get(&2)).unwrap());
    drop(held);
    let conn = match first.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(conn) => conn.expect("the waiter is handed the connection"),
        std::task::Poll::Pending => panic!("the waiter was not handed the return"),
    };
    assert!(conn.is_reused());
    // The queue has room again.
    let mut third = Box::pin(pool.get(&1));
    assert!(
        third.as_mut().poll(&mut cx).is_pending(),
        "waits again: room in the queue"
    );
    drop(third);
    drop(conn);
    let stats = quiescent(&pool, &tally);
    assert_eq!(
        stats.total.waits, 2,
        "overloaded checkouts are not counted as waits"
    );
}

fn expiry_jitter_spreads_a_burst<P: ConnectionPool<TestManager>>(make: Make<P>) {
    /// Creates 16 connections in one burst, returns them, and advances the clock in 5 s steps
    /// with maintenance after each: how many connections expired by each step.
    fn expiries<P: ConnectionPool<TestManager>>(make: Make<P>, jitter: f64) -> Vec<usize> {
        let (m, tally) = TestManager::new();
        let clock = ManualClock::new();
        let pool = make(
            m,
            config()
                .shards(1)
                .max_size(16)
                .idle_timeout(None)
                .max_lifetime(Some(Duration::from_secs(100)))
                .expiry_jitter(jitter)
                .clock(Clock::Manual(clock.clone())),
        );
        block_on(async {
            let burst: Vec<_> = create_burst(&pool, 16).await;
            drop(burst);
            let mut expired = Vec::new();
            for _ in 0..20 {
                clock.advance(Duration::from_secs(5));
                pool.maintain(0).await;
                expired.push(16 - tally.alive.load(Ordering::SeqCst));
            }
            expired
        })
    }
    async fn create_burst<P: ConnectionPool<TestManager>>(pool: &P, n: usize) -> Vec<P::Guard> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(pool.get_on(0, &1).await.unwrap());
        }
        held
    }
    let without = expiries(make, 0.0);
    assert_eq!(
        without[18], 0,
        "no jitter: all live until 100 s: {without:?}"
    );
    assert_eq!(
        without[19], 16,
        "no jitter: all expire at 100 s: {without:?}"
    );
    let with = expiries(make, 0.5);
    // Steps are 5 s: index 8 is 45 s, under the floor of 100 s × (1 − 0.5).
    assert_eq!(
        with[8], 0,
        "none expires before limit × (1 − jitter): {with:?}"
    );
    assert_eq!(with[19], 16, "all expire by the limit: {with:?}");
    let bursts = with.windows(2).filter(|w| w[1] > w[0]).count() + usize::from(with[0] > 0);
    assert!(
        bursts >= 4,
        "expiry spread over several steps, not one burst: {with:?}"
    );
    assert_eq!(with, expiries(make, 0.5), "deterministic per connection");
}

fn detach_takes_the_connection_and_frees_its_permit<P: ConnectionPool<TestManager>>(make: Make<P>) {
    let (m, tally) = TestManager::new();
    let pool = make(
        m,
        config()
            .max_size(1)
            .wait_timeout(Some(Duration::from_secs(5))),
    );
    let held = block_on(pool.get(&1)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || block_on(pool.get(&1)).map(|c| c.id))
    };
    for _ in 0..500 {
        if pool.stats().total.waits > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let conn = held.detach();
    assert_eq!(conn.id, 1_000_000);
    // The freed permit reaches the waiter, which creates a successor (max_size 1).
    let id = waiter.join().unwrap().expect("the detach freed the permit");
    assert_eq!(id, 1_000_001);
    assert_eq!(
        tally.alive.load(Ordering::SeqCst),
        2,
        "the detached one is the caller's now"
    );
    let stats = pool.stats();
    assert_eq!(
        stats.total.live, 1,
        "the pool counts only its own: {stats:?}"
    );
    assert_eq!(stats.total.idle, 1);
    assert_eq!(stats.total.checked_out, 0);
    drop(conn);
    let stats = quiescent(&pool, &tally);
    assert_eq!(
        stats.total.closes, 0,
        "the pool never closed the detached connection"
    );
}

fn leak_detection_reports_once_and_on_return<P: ConnectionPool<TestManager>>(make: Make<P>) {
    use shardpool::pool::Leak;
    let (m, tally) = TestManager::new();
    let clock = ManualClock::new();
    let reports: std::sync::Arc<std::sync::Mutex<Vec<Leak>>> = Default::default();
    let seen = std::sync::Arc::clone(&reports);
    let pool = make(
        m,
        config()
            .idle_timeout(None)
            .clock(Clock::Manual(clock.clone()))
            .leak_detection(Duration::from_secs(30), move |leak| {
                // Not `unwrap`: a failing assertion poisons the lock, and the guard it unwinds
                // past reports again.
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.push(leak.clone());
            }),
    );
    // Returned in time: never reported.
    drop(block_on(pool.get_on(0, &1)).unwrap());
    // A reuse (the sharded pool's fast path when leak detection is off) is watched too.
    let (line, held) = (line!(), block_on(pool.get_on(0, &1)).unwrap());
    assert!(held.is_reused());
    clock.advance(Duration::from_secs(29));
    block_on(pool.maintain(0));
    assert!(
        reports.lock().unwrap().is_empty(),
        "reported before the threshold"
    );
    clock.advance(Duration::from_secs(2));
    block_on(pool.maintain(0));
    block_on(pool.maintain(1));
    {
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1, "reported once: {reports:?}");
        let leak = &reports[0];
        assert_eq!((leak.key.as_str(), leak.returned), ("1", false));
        assert_eq!(leak.held_for, Duration::from_secs(31));
        assert!(leak.location.file().ends_with("pool_rules.rs"), "{leak}");
        assert_eq!(
            leak.location.line(),
            line,
            "the checkout's own line: {leak}"
        );
    }
    clock.advance(Duration::from_secs(9));
    drop(held);
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 2, "reported again on return: {reports:?}");
    assert!(reports[1].returned);
    assert_eq!(reports[1].held_for, Duration::from_secs(40));
    assert_eq!(reports[1].location, reports[0].location);
    assert!(
        reports[1].to_string().contains("came back after 40s"),
        "{}",
        reports[1]
    );
    quiescent(&pool, &tally);
}

/// Each checkout is reported at its own call site (the sharded pool carries it as a number, not
/// in the checkout future), through `get` and `get_on`, with a shard out of range too, and a call
/// site met twice is reported twice at the same line.
fn leak_detection_names_each_call_site<P: ConnectionPool<TestManager>>(make: Make<P>) {
    use shardpool::pool::Leak;
    let (m, tally) = TestManager::new();
    let clock = ManualClock::new();
    let reports: std::sync::Arc<std::sync::Mutex<Vec<Leak>>> = Default::default();
    let seen = std::sync::Arc::clone(&reports);
    let pool = make(
        m,
        config()
            .max_size(4)
            .idle_timeout(None)
            .clock(Clock::Manual(clock.clone()))
            .leak_detection(Duration::from_secs(30), move |leak| {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.push(leak.clone());
            }),
    );
    // A shard out of range is taken modulo the shard count, with leak detection as without.
    let (line_a, a) = (line!(), block_on(pool.get_on(7, &1)).unwrap());
    assert!(a.shard() < pool.shard_count());
    let (line_b, b) = (line!(), block_on(pool.get(&1)).unwrap());
    let (line_c, c) = (line!(), block_on(pool.get_on(0, &2)).unwrap());
    let looped: Vec<_> = (0..2)
        .map(|_| (line!(), block_on(pool.get_on(1, &3)).unwrap()))
        .collect();
    let line_d = looped[0].0;
    clock.advance(Duration::from_secs(31));
    block_on(pool.maintain(0));
    let mut sites: Vec<(String, u32)> = reports
        .lock()
        .unwrap()
        .iter()
        .inspect(|leak| assert!(leak.location.file().ends_with("pool_rules.rs"), "{leak}"))
        .map(|leak| (leak.key.clone(), leak.location.line()))
        .collect();
    sites.sort();
    let expected = [
        ("1", line_a),
        ("1", line_b),
        ("2", line_c),
        ("3", line_d),
        ("3", line_d),
    ]
    .map(|(key, line)| (key.to_string(), line));
    assert_eq!(sites, expected);
    drop((a, b, c, looped));
    assert_eq!(
        reports.lock().unwrap().len(),
        10,
        "each reported again on return"
    );
    quiescent(&pool, &tally);
}
