//! The hooks an embedder plugs into the server: the per-shard greeter and the pool statistics.

use super::Status;
use crate::pool::Stats;
use std::future::Future;
use std::sync::Arc;

/// Produces the reply of `helloworld.Greeter/SayHello` on one shard.
///
/// One handler is built per shard (see [`Server::greeter`](super::Server::greeter)); its future runs on that shard's
/// executor and need not be `Send`.
///
/// ```
/// use shardpool::server::{Code, GreetHandler, Status};
///
/// struct Polite;
/// impl GreetHandler for Polite {
///     async fn say_hello(&self, name: String) -> Result<String, Status> {
///         if name.is_empty() {
///             return Err(Status::new(Code::InvalidArgument, "name is empty"));
///         }
///         Ok(format!("Good day, {name}."))
///     }
/// }
/// let reply = futures_lite::future::block_on(Polite.say_hello("Ada".into())).unwrap();
/// assert_eq!(reply, "Good day, Ada.");
/// ```
pub trait GreetHandler: 'static {
    /// The greeting for `name`, or the status to answer with.
    fn say_hello(&self, name: String) -> impl Future<Output = Result<String, Status>>;
}

/// The default greeter: `"Hello, <name>!"`, computed on the shard (no upstream).
///
/// ```
/// # use shardpool::server::{DirectGreeter, GreetHandler};
/// let reply = futures_lite::future::block_on(DirectGreeter.say_hello("Bob".into()));
/// assert_eq!(reply.unwrap(), "Hello, Bob!");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectGreeter;

impl GreetHandler for DirectGreeter {
    async fn say_hello(&self, name: String) -> Result<String, Status> {
        let mut s = String::with_capacity(name.len() + 8);
        s.push_str("Hello, ");
        s.push_str(&name);
        s.push('!');
        Ok(s)
    }
}

/// A source of pool statistics for the metrics RPC and `/metrics`.
pub type StatsSource = Arc<dyn Fn() -> Stats + Send + Sync>;

/// The [`StatsSource`] of any [`ConnectionPool`](crate::pool::ConnectionPool).
///
/// ```
/// use shardpool::pool::{Config, Manage, ShardedPool};
/// use shardpool::server::pool_stats_source;
///
/// struct Sessions;
/// impl Manage for Sessions {
///     type Key = ();
///     type Conn = u64;
///     type Error = std::io::Error;
///     async fn create(&self, _key: &()) -> Result<u64, std::io::Error> { Ok(1) }
/// }
/// let pool = ShardedPool::new(Sessions, Config::default().shards(2)).unwrap();
/// let source = pool_stats_source(pool);
/// assert_eq!(source().shards.len(), 2);
/// ```
pub fn pool_stats_source<M, P>(pool: P) -> StatsSource
where
    M: crate::pool::Manage,
    P: crate::pool::ConnectionPool<M>,
{
    Arc::new(move || pool.stats())
}
