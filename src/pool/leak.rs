//! Leak detection: connections checked out for longer than a threshold, reported with the source
//! location of their checkout. Off unless [`Config::leak_detection`](super::Config::leak_detection)
//! is set; then each checkout is recorded in one map per pool (a lock and an insert: a diagnostic
//! mode, not for the hottest paths), maintenance reports the overdue ones once, and their return
//! reports them again. A checkout in progress carries its call site as a number (`Sites`), so
//! with leak detection off the checkout path holds no `Location` at all.

use super::clock::Clock;
use super::sync::{Mutex, lock};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::panic::Location;
// The callback is no protocol state, so a `std` `Arc` (which holds a `dyn Fn`) also under loom.
use std::sync::Arc;
use std::time::Duration;

/// A connection held longer than the leak threshold, as given to the
/// [`Config::leak_detection`](super::Config::leak_detection) callback.
///
/// ```
/// use shardpool::pool::Leak;
/// use shardpool::{Config, ConnectionPool, ManualClock, Manage, ShardedPool};
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// # struct M;
/// # impl Manage for M { type Key = &'static str; type Conn = (); type Error = std::io::Error;
/// #     async fn create(&self, _: &&'static str) -> std::io::Result<()> { Ok(()) } }
/// let reports: Arc<Mutex<Vec<Leak>>> = Arc::default();
/// let seen = Arc::clone(&reports);
/// let clock = ManualClock::new();
/// let config = Config::default()
///     .clock(shardpool::Clock::Manual(clock.clone()))
///     .leak_detection(Duration::from_secs(30), move |leak| seen.lock().unwrap().push(leak.clone()));
/// let pool = ShardedPool::new(M, config).unwrap();
/// let conn = shardpool::pool::block_on(pool.get(&"db")).unwrap(); // this line is reported
/// clock.advance(Duration::from_secs(31));
/// shardpool::pool::block_on(pool.maintain(0)); // finds it overdue: reported once
/// drop(conn); // reported again, as returned
/// let reports = reports.lock().unwrap();
/// assert_eq!(reports.len(), 2);
/// assert_eq!((reports[0].key.as_str(), reports[0].returned), ("\"db\"", false));
/// assert_eq!(reports[0].location.line(), reports[1].location.line());
/// assert!(reports[1].returned && reports[1].held_for >= Duration::from_secs(31));
/// ```
#[derive(Clone, Debug)]
pub struct Leak {
    /// The connection's key, in its `Debug` form.
    pub key: String,
    /// Where the connection was checked out (the caller of `get` or `get_on`).
    pub location: &'static Location<'static>,
    /// How long it had been checked out when reported.
    pub held_for: Duration,
    /// `false`: reported while still checked out (by maintenance, once); `true`: it came back.
    pub returned: bool,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.returned {
            "came back after"
        } else {
            "has been checked out for"
        };
        write!(
            f,
            "a connection for key {} checked out at {} {state} {:?}",
            self.key, self.location, self.held_for
        )
    }
}

/// The callback and threshold of `Config::leak_detection`.
#[derive(Clone)]
pub(crate) struct LeakDetection {
    pub(crate) threshold: Duration,
    pub(crate) on_leak: Arc<dyn Fn(&Leak) + Send + Sync>,
}

impl fmt::Debug for LeakDetection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakDetection")
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

/// One checkout being watched.
struct Out<K> {
    key: K,
    location: &'static Location<'static>,
    /// Clock reading at checkout.
    since: u64,
    reported: bool,
}

/// The checked-out connections of one pool, by an id unique among them (`I`).
pub(crate) struct LeakTracker<I, K> {
    threshold: u64,
    on_leak: Arc<dyn Fn(&Leak) + Send + Sync>,
    clock: Clock,
    out: Mutex<HashMap<I, Out<K>>>,
    sites: Mutex<Sites>,
}

/// The call sites of checkouts, numbered from 1 in the order they were first seen, so a checkout
/// in progress carries a small number instead of a `&Location` (see `LeakTracker::site`).
#[derive(Default)]
struct Sites {
    numbers: HashMap<&'static Location<'static>, usize>,
    locations: Vec<&'static Location<'static>>,
}

impl<I: Hash + Eq, K: fmt::Debug> LeakTracker<I, K> {
    pub(crate) fn new(detection: &LeakDetection, clock: &Clock) -> Self {
        LeakTracker {
            threshold: u64::try_from(detection.threshold.as_nanos()).unwrap_or(u64::MAX),
            on_leak: Arc::clone(&detection.on_leak),
            clock: clock.clone(),
            out: Mutex::new(HashMap::new()),
            sites: Mutex::new(Sites::default()),
        }
    }

    /// The number of the call site `location`, from 1 to `max`, numbering it if new; 0 if
    /// `max` sites are numbered already (only reachable on 32-bit targets, with 65 535 sites).
    pub(crate) fn site(&self, location: &'static Location<'static>, max: usize) -> usize {
        let mut sites = lock(&self.sites);
        if let Some(&number) = sites.numbers.get(location) {
            return number;
        }
        if sites.locations.len() >= max {
            return 0;
        }
        sites.locations.push(location);
        let number = sites.locations.len();
        sites.numbers.insert(location, number);
        number
    }

    /// The call site numbered `number` by [`LeakTracker::site`]. For 0 (no number: more call
    /// sites than `max`), this function's own location, which names no caller.
    pub(crate) fn location(&self, number: usize) -> &'static Location<'static> {
        let numbered = number
            .checked_sub(1)
            .and_then(|index| lock(&self.sites).locations.get(index).copied());
        match numbered {
            Some(location) => location,
            None => Location::caller(),
        }
    }

    /// Records a checkout.
    pub(crate) fn checked_out(&self, id: I, key: K, location: &'static Location<'static>) {
        let since = self.clock.now();
        lock(&self.out).insert(
            id,
            Out {
                key,
                location,
                since,
                reported: false,
            },
        );
    }

    /// Forgets a checkout that ended (return, discard or detach); a report if it had been
    /// reported as overdue. The caller calls [`LeakTracker::report`] once its return is done.
    pub(crate) fn returned(&self, id: &I) -> Option<Leak> {
        let out = lock(&self.out).remove(id)?;
        out.reported.then(|| Leak {
            key: format!("{:?}", out.key),
            location: out.location,
            held_for: Duration::from_nanos(self.clock.now().saturating_sub(out.since)),
            returned: true,
        })
    }

    /// Reports every checkout overdue and not yet reported (maintenance calls it).
    pub(crate) fn scan(&self) {
        let now = self.clock.now();
        let overdue: Vec<Leak> = lock(&self.out)
            .values_mut()
            .filter(|out| !out.reported && now.saturating_sub(out.since) >= self.threshold)
            .map(|out| {
                out.reported = true;
                Leak {
                    key: format!("{:?}", out.key),
                    location: out.location,
                    held_for: Duration::from_nanos(now - out.since),
                    returned: false,
                }
            })
            .collect();
        // Outside the lock: the callback may check connections out or return them.
        for leak in &overdue {
            self.report(leak);
        }
    }

    /// Calls the callback.
    pub(crate) fn report(&self, leak: &Leak) {
        (self.on_leak)(leak);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_sites_are_numbered_once_and_a_full_table_names_no_caller() {
        let detection = LeakDetection {
            threshold: Duration::from_secs(1),
            on_leak: Arc::new(|_| {}),
        };
        let tracker: LeakTracker<u8, u8> = LeakTracker::new(&detection, &Clock::Coarse);
        let (here, there, third) = (Location::caller(), Location::caller(), Location::caller());
        assert_eq!(tracker.site(here, 2), 1);
        assert_eq!(tracker.site(there, 2), 2);
        assert_eq!(tracker.site(here, 2), 1, "a known site keeps its number");
        assert_eq!(tracker.site(third, 2), 0, "the table is full");
        assert_eq!((tracker.location(1), tracker.location(2)), (here, there));
        for unnumbered in [0, 3] {
            assert!(tracker.location(unnumbered).file().ends_with("leak.rs"));
        }
    }
}
