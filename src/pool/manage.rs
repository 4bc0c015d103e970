//! The manager: how a pool creates, checks and recycles connections, and how it sleeps.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

/// Creates and checks the connections a pool holds. Implement it once per kind of connection; the
/// pool knows nothing else about them.
///
/// The futures need not be `Send`: a manager for a thread-per-core runtime (glommio) creates
/// connections with that runtime's `!Send` I/O. A concrete pool's futures are `Send` exactly when
/// the manager's are, so a tokio manager with `Send` futures gives `Send` checkouts; for code
/// generic over the pool type to know that, implement [`SendManage`](crate::SendManage) instead
/// (see [`SendConnectionPool`](crate::SendConnectionPool)).
///
/// # Examples
///
/// ```
/// use shardpool::Manage;
/// use std::convert::Infallible;
///
/// /// A "connection" that is just a number, for illustration.
/// struct Numbers;
///
/// impl Manage for Numbers {
///     type Key = &'static str;
///     type Conn = u64;
///     type Error = Infallible;
///
///     async fn create(&self, _key: &&'static str) -> Result<u64, Infallible> {
///         Ok(42)
///     }
///
///     fn is_valid(&self, conn: &mut u64) -> bool {
///         *conn != 0
///     }
/// }
/// ```
pub trait Manage: Send + Sync + 'static {
    /// What connections are pooled by: a destination such as a backend address.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// The pooled connection. It may move between shards (a steal), so it must be `Send`.
    type Conn: Send + 'static;
    /// Why `create` failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection to `key`.
    fn create(&self, key: &Self::Key) -> impl Future<Output = Result<Self::Conn, Self::Error>>;

    /// A cheap check before an idle connection is handed out (for example: has the peer closed the
    /// socket?). `false` closes the connection and counts a validation failure. Default: `true`.
    fn is_valid(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        true
    }

    /// An asynchronous check before an idle connection is reused (a Redis `PING`, a `SELECT 1`),
    /// told how long the connection sat idle. The pool calls it only when
    /// [`Config::validate_idle_after`](crate::Config::validate_idle_after) is set and the
    /// connection was idle at least that long, after the cheap [`Manage::is_valid`] passed.
    /// `false` closes the connection (its permit is freed, a validation failure is counted) and
    /// the checkout moves on to the next idle connection, or creates one within `max_size`, or
    /// waits. Default: `true` at once.
    ///
    /// If the checkout is cancelled (its future dropped) while this runs, the connection is closed:
    /// a check cut short may have left it mid-exchange.
    ///
    /// ```
    /// use shardpool::{Config, ConnectionPool, Manage, ShardedPool};
    /// use std::time::Duration;
    /// # use std::convert::Infallible;
    /// struct Pinging;
    /// impl Manage for Pinging {
    ///     type Key = u8;
    ///     type Conn = u32;
    ///     type Error = Infallible;
    ///     async fn create(&self, _: &u8) -> Result<u32, Infallible> { Ok(0) }
    ///     async fn validate(&self, conn: &mut u32, idle_for: Duration) -> bool {
    ///         // A real manager sends a PING here and awaits the answer.
    ///         *conn += 1;
    ///         idle_for < Duration::from_secs(3600)
    ///     }
    /// }
    /// let config = Config::default().validate_idle_after(Some(Duration::ZERO));
    /// let pool = ShardedPool::new(Pinging, config).unwrap();
    /// shardpool::pool::block_on(async {
    ///     drop(pool.get(&1).await.unwrap()); // created: not validated
    ///     assert_eq!(*pool.get(&1).await.unwrap(), 1, "validated before reuse");
    /// });
    /// ```
    fn validate(&self, conn: &mut Self::Conn, idle_for: Duration) -> impl Future<Output = bool> {
        let _ = (conn, idle_for);
        std::future::ready(true)
    }

    /// Called when a connection comes back, to reset per-use state. `false` closes it instead of
    /// keeping it idle. Default: `true`.
    fn recycle(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        true
    }

    /// Completes after `duration`; bounds how long a checkout waits. Implement it with your
    /// runtime's timer (`tokio::time::sleep`, `glommio::timer::sleep`), or wrap the manager in
    /// `integrations::tokio::TokioTimer` or `integrations::glommio::GlommioTimer`, which do. The
    /// default uses one small timer thread shared by the process, started the first time a
    /// checkout has to wait.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        super::timer::sleep(duration)
    }
}

/// [`Manage`] for managers whose futures are all `Send` (a tokio manager, say), so that code
/// generic over a pool can spawn its checkouts on a multi-threaded runtime (see
/// [`SendConnectionPool`](crate::SendConnectionPool)).
///
/// It has the same associated types and methods as [`Manage`], with every future `+ Send`. Every
/// `SendManage` is a [`Manage`] (a blanket implementation forwards each method), so every pool
/// accepts it unchanged. Implement one or the other, not both: a manager whose futures are
/// `!Send` (glommio I/O) implements [`Manage`].
///
/// This is the `trait-variant` crate's pattern written out by hand: a plain `Manage` bound cannot
/// say "and its futures are `Send`" on stable Rust (return-type notation is unstable), a
/// `SendManage` bound can.
///
/// Wrapping managers: a generic wrapper (`Logged<M>`, say) cannot implement `Manage` for every
/// `M: Manage` and `SendManage` for every `M: SendManage`, because the blanket implementation
/// already makes the second a `Manage` (E0119). Write the wrapper for one of the two, or two
/// wrappers. With both traits in scope, call a method as `Manage::create(&m, key)` or
/// `SendManage::create(&m, key)` where a plain `m.create(key)` would be ambiguous.
///
/// # Examples
///
/// ```
/// use shardpool::{Config, Manage, SendManage, ShardedPool};
/// use std::convert::Infallible;
///
/// /// A "connection" that is just a number, for illustration.
/// struct Numbers;
///
/// impl SendManage for Numbers {
///     type Key = &'static str;
///     type Conn = u64;
///     type Error = Infallible;
///
///     async fn create(&self, _key: &&'static str) -> Result<u64, Infallible> {
///         Ok(42)
///     }
/// }
///
/// // The blanket implementation makes it a `Manage`: any pool takes it.
/// fn is_manage<M: Manage>(_: &M) {}
/// is_manage(&Numbers);
/// let pool = ShardedPool::new(Numbers, Config::default()).unwrap();
/// # drop(pool);
/// ```
pub trait SendManage: Send + Sync + 'static {
    /// As [`Manage::Key`].
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// As [`Manage::Conn`].
    type Conn: Send + 'static;
    /// As [`Manage::Error`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// As [`Manage::create`], with a `Send` future.
    fn create(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;

    /// As [`Manage::is_valid`]. Default: `true`.
    fn is_valid(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        true
    }

    /// As [`Manage::validate`], with a `Send` future. Default: `true` at once.
    fn validate(
        &self,
        conn: &mut Self::Conn,
        idle_for: Duration,
    ) -> impl Future<Output = bool> + Send {
        let _ = (conn, idle_for);
        std::future::ready(true)
    }

    /// As [`Manage::recycle`]. Default: `true`.
    fn recycle(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        true
    }

    /// As [`Manage::sleep`], with a `Send` future. Default: the same shared timer thread as
    /// [`Manage::sleep`]'s.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        super::timer::sleep(duration)
    }
}

/// Every [`SendManage`] is a [`Manage`]: each method forwards, and each future stays `Send`.
// The `+ Send` on the futures refines `Manage`'s signatures on purpose: it is the point of the
// trait, and part of the public API (a caller naming a concrete `SendManage` sees `Send` futures).
#[allow(refining_impl_trait)]
impl<T: SendManage> Manage for T {
    type Key = <T as SendManage>::Key;
    type Conn = <T as SendManage>::Conn;
    type Error = <T as SendManage>::Error;

    #[inline]
    fn create(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send {
        <T as SendManage>::create(self, key)
    }

    #[inline]
    fn is_valid(&self, conn: &mut Self::Conn) -> bool {
        <T as SendManage>::is_valid(self, conn)
    }

    #[inline]
    fn validate(
        &self,
        conn: &mut Self::Conn,
        idle_for: Duration,
    ) -> impl Future<Output = bool> + Send {
        <T as SendManage>::validate(self, conn, idle_for)
    }

    #[inline]
    fn recycle(&self, conn: &mut Self::Conn) -> bool {
        <T as SendManage>::recycle(self, conn)
    }

    #[inline]
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        <T as SendManage>::sleep(self, duration)
    }
}
