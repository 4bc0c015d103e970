//! Adapters: [`Manage`](crate::Manage) implementations for real servers, each behind its own
//! opt-in feature. This layer sits on top of the pool core; the core knows nothing of it.
//!
//! * `postgres`: [`PgManager`](postgres::PgManager) over `tokio-postgres`.
//! * `redis`: [`RedisManager`](redis::RedisManager) over the `redis` crate's multiplexed tokio
//!   connection.
//!
//! Both clients drive their sockets from a task on tokio's reactor, so both managers need a tokio
//! runtime (multi-thread or current-thread); neither runs on glommio executors (docs/adapters.md
//! says why and what to do instead). Their futures are `Send`, so both implement
//! [`SendManage`](crate::SendManage) (and so [`Manage`](crate::Manage)): code generic over a
//! [`SendConnectionPool`](crate::SendConnectionPool) of either can `tokio::spawn` its checkouts.

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "redis")]
pub mod redis;

/// `host:port` list of a server, for error messages and `Debug`.
#[cfg(feature = "postgres")]
fn join_hosts(hosts: &[String]) -> String {
    if hosts.is_empty() {
        "(no host)".to_string()
    } else {
        hosts.join(",")
    }
}
