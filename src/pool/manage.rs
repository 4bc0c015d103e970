//! The manager: how a pool creates, checks and recycles connections, and how it sleeps.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

/// Creates and checks the connections a pool holds. Implement it once per kind of connection; the
/// pool knows nothing else about them.
///
/// The futures need not be `Send`: a manager for a thread-per-core runtime (glommio) creates
/// connections with that runtime's `!Send` I/O. The pool's own futures are `Send` exactly when the
/// manager's are, so a tokio manager with `Send` futures gives `Send` checkouts.
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

    /// Called when a connection comes back, to reset per-use state. `false` closes it instead of
    /// keeping it idle. Default: `true`.
    fn recycle(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        true
    }

    /// Completes after `duration`; bounds how long a checkout waits. Implement it with your
    /// runtime's timer (`tokio::time::sleep`, `glommio::timer::sleep`). The default uses one small
    /// timer thread shared by the process, started the first time a checkout has to wait.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        super::timer::sleep(duration)
    }
}
