//! Why a checkout failed ([`Error`]), and the name of the key it failed for ([`KeyName`]).

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

/// Why a checkout failed. Each variant's message says what happened and what to change.
///
/// ```
/// use shardpool::{Config, ConnectionPool, Error, Manage, ShardedPool};
/// use std::time::Duration;
/// # struct M;
/// # impl Manage for M { type Key = u8; type Conn = (); type Error = std::io::Error;
/// #     async fn create(&self, _: &u8) -> std::io::Result<()> { Ok(()) } }
/// let config = Config::default().max_size(1).wait_timeout(Some(Duration::from_millis(5)));
/// let pool = ShardedPool::new(M, config).unwrap();
/// let _held = shardpool::pool::block_on(pool.get(&0)).unwrap();
/// match shardpool::pool::block_on(pool.get(&0)) {
///     Err(Error::Timeout { waited }) => assert!(waited >= Duration::from_millis(5)),
///     other => panic!("expected a timeout, got {other:?}"),
/// }
/// ```
#[derive(Debug)]
pub enum Error<E> {
    /// The key stayed exhausted for the whole wait timeout.
    Timeout {
        /// How long the checkout waited.
        waited: Duration,
    },
    /// Creating a connection failed.
    Create {
        /// The key the connection was for, as its `Debug` form.
        key: KeyName,
        /// Why the manager's `create` failed.
        error: E,
    },
    /// The pool (or the key) was closed.
    Closed,
    /// The key was exhausted and [`Config::max_waiters`](crate::Config::max_waiters) checkouts already waited for it: this
    /// one failed at once instead of queueing. Shed the request (answer "busy"), or raise
    /// `max_waiters` or `max_size`.
    Overloaded {
        /// The limit that was reached.
        max_waiters: usize,
    },
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout { waited } => write!(
                f,
                "no connection became available within {waited:?}: every allowed connection \
                 (max_size) was in use; raise max_size or wait_timeout, or reduce load"
            ),
            Error::Create { key, error } => {
                write!(f, "creating a connection for key {key} failed: {error}")
            }
            Error::Closed => write!(f, "the pool or this key was closed"),
            Error::Overloaded { max_waiters } => write!(
                f,
                "overloaded: every allowed connection (max_size) was in use and {max_waiters} \
                 checkouts already waited (max_waiters); shed this request, or raise max_waiters \
                 or max_size"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Create { error, .. } => Some(error),
            Error::Timeout { .. } | Error::Closed | Error::Overloaded { .. } => None,
        }
    }
}

/// The name of a key in an error: its `Debug` form, as text. It reads as a `str` (`Deref`,
/// `as_str`, `==` with `&str`) and prints as that text.
///
/// It is one pointer wide, not a `String`'s three words, and that is why it is its own type: with
/// a zero-sized manager error (`Infallible`) [`Error`] is then 16 bytes and a checkout's
/// `Result<Pooled, Error>` no larger than the guard, 24 (tagged by the guard's pointer niche). At
/// 32 bytes the checkout future's fast path passed its result through the stack: 13 more
/// instructions per checkout+return pair (callgrind, `examples/hot_path.rs`; docs/benchmarks.md).
/// A test holds both sizes.
///
/// ```
/// use shardpool::pool::KeyName;
/// let name = KeyName::from(format!("{:?}", "db"));
/// assert_eq!(name, "\"db\"");
/// assert_eq!(name.len(), 4);
/// assert_eq!(name.to_string(), "\"db\"");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
#[expect(
    clippy::box_collection,
    reason = "the box is the point: one pointer wide, not three words (see above)"
)]
pub struct KeyName(Box<String>);

impl KeyName {
    /// The `Debug` form of `key`.
    pub(crate) fn of(key: &impl fmt::Debug) -> KeyName {
        KeyName(Box::new(format!("{key:?}")))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for KeyName {
    fn from(name: String) -> KeyName {
        KeyName(Box::new(name))
    }
}

impl From<&str> for KeyName {
    fn from(name: &str) -> KeyName {
        KeyName(Box::new(name.to_owned()))
    }
}

impl Deref for KeyName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for KeyName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for KeyName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::mem::size_of;

    /// The sizes [`KeyName`]'s docs promise: the checkout's result is no larger than its guard.
    /// Widening the key (a `String`, a `Box<str>`) breaks this test before it slows the hot path.
    #[test]
    fn a_checkout_result_is_no_larger_than_its_guard() {
        assert_eq!(size_of::<KeyName>(), size_of::<usize>());
        assert_eq!(size_of::<Error<Infallible>>(), 16);
        struct Unit;
        impl crate::pool::Manage for Unit {
            type Key = u8;
            type Conn = ();
            type Error = Infallible;
            async fn create(&self, _: &u8) -> Result<(), Infallible> {
                Ok(())
            }
        }
        type Guard = crate::pool::Pooled<Unit>;
        assert_eq!(
            size_of::<Result<Guard, Error<Infallible>>>(),
            size_of::<Guard>()
        );
    }
}
