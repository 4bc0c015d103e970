//! PostgreSQL through the pool: [`PgManager`] creates `tokio-postgres` connections, checks them
//! before reuse and resets their session state when they come back.
//!
//! Needs a tokio runtime: each connection's socket is driven by a task spawned with
//! `tokio::spawn` (the `Connection` half of `tokio_postgres::connect`).

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls, Statement};

use crate::SendManage;

/// Which PostgreSQL server, database and user a pool key stands for: a parsed connection string.
/// Equal keys share connections; the password takes part in equality but is never printed.
///
/// ```
/// use shardpool::adapters::postgres::PgServer;
///
/// let server = PgServer::new("postgres://app:secret@127.0.0.1:5432/orders").unwrap();
/// assert_eq!(server.to_string(), "127.0.0.1:5432 (database orders, user app)");
/// assert!(!format!("{server:?}").contains("secret"));
/// assert!(PgServer::new("postgres://[broken").is_err());
/// ```
#[derive(Clone)]
pub struct PgServer {
    config: Arc<tokio_postgres::Config>,
    /// The connection string as given: equality and hashing.
    url: Arc<str>,
    /// `host:port (database d, user u)`: every message about this server.
    label: Arc<str>,
}

impl PgServer {
    /// Parses a connection string (`postgres://user:password@host:port/database` or the
    /// `key=value` form `tokio-postgres` accepts). The database defaults to the user name, as in
    /// libpq.
    pub fn new(url: &str) -> Result<Self, PgError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| PgError {
            server: "(unparsed connection string)".into(),
            cause: PgCause::Config(format!("the connection string does not parse: {e}")),
        })?;
        let ports = config.get_ports();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
                }
            })
            .collect();
        let user = config.get_user().unwrap_or("(none)");
        let database = config.get_dbname().unwrap_or(user);
        let label = format!(
            "{} (database {database}, user {user})",
            super::join_hosts(&hosts)
        );
        Ok(PgServer {
            config: Arc::new(config),
            url: url.into(),
            label: label.into(),
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl PartialEq for PgServer {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for PgServer {}

impl Hash for PgServer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.url.hash(state);
    }
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PgServer").field(&&*self.label).finish()
    }
}

impl fmt::Display for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// What a connection's session is reset with when it comes back to the pool.
///
/// The reset is *pipelined*: [`Manage::recycle`] is synchronous, so the reset statements are
/// queued on the connection (ahead of anything the next user sends) and not awaited; the next
/// user's first query waits behind them on the same socket, so a returned connection costs no
/// extra round trip. `ROLLBACK` goes first, alone, so a transaction left open cannot make the
/// rest fail (it only warns when no transaction is open).
///
/// ```
/// use shardpool::adapters::postgres::Reset;
/// assert_eq!(Reset::default(), Reset::DiscardAll);
/// ```
///
/// [`Manage::recycle`]: crate::Manage::recycle
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reset {
    /// `ROLLBACK`, then `DISCARD ALL`: no session state survives (settings, temporary tables,
    /// prepared statements, cursors, `LISTEN`s, advisory locks). Clears the connection's
    /// statement cache too. The default.
    #[default]
    DiscardAll,
    /// `ROLLBACK`, then what `DISCARD ALL` does except dropping prepared statements and cached
    /// plans (`CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *;
    /// SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES`), so
    /// [`PgConn::prepare_cached`] statements stay valid across checkouts. The same list
    /// deadpool-postgres's `RecyclingMethod::Clean` runs.
    KeepStatements,
    /// Nothing: only the closed-flag check. Use it only when no caller ever changes session state
    /// (no `SET`, no temporary tables, every transaction finished).
    None,
}

impl Reset {
    /// The statements sent after `ROLLBACK`, or `None` for no reset.
    fn statements(self) -> Option<&'static str> {
        match self {
            Reset::DiscardAll => Some("DISCARD ALL"),
            Reset::KeepStatements => Some(
                "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
                 SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;",
            ),
            Reset::None => None,
        }
    }
}

/// Creates, checks and resets PostgreSQL connections for a [`ShardedPool`](crate::ShardedPool)
/// keyed by [`PgServer`].
///
/// * **Connect timeout** ([`connect_timeout`](Self::connect_timeout), default 5 s): bounds the
///   whole connect, TCP and startup/authentication, so a stopped server fails the create instead
///   of hanging it.
/// * **Liveness before reuse**: [`Manage::is_valid`] drops a connection whose client reports
///   `is_closed()` (the server closed it, or its socket failed). With
///   [`Config::validate_idle_after`](crate::Config::validate_idle_after) set, a connection idle
///   that long is also asked an empty query (one round trip, no parse or plan) before reuse; no
///   answer within [`validate_timeout`](Self::validate_timeout) (default 1 s) or an error closes
///   it, and the checkout takes another connection or creates one.
/// * **Reset on return**: see [`Reset`] (default [`Reset::DiscardAll`]).
/// * **Errors** ([`PgError`]) name the server, database and user, and the cause.
///
/// ```no_run
/// use shardpool::adapters::postgres::{PgManager, PgServer};
/// use shardpool::{Config, ConnectionPool, ShardedPool};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = PgServer::new("postgres://app:secret@127.0.0.1:5432/orders")?;
/// let manager = PgManager::new().connect_timeout(Duration::from_secs(2));
/// let pool = ShardedPool::new(
///     manager,
///     Config::default().max_size(16).wait_timeout(Some(Duration::from_secs(1))),
/// )?;
/// let mut conn = pool.get(&server).await?;
/// let row = conn.client().query_one("SELECT $1::int + 1", &[&41i32]).await?;
/// assert_eq!(row.get::<_, i32>(0), 42);
/// # Ok(()) }
/// ```
///
/// [`Manage::is_valid`]: crate::Manage::is_valid
#[derive(Clone, Debug)]
pub struct PgManager {
    connect_timeout: Duration,
    validate_timeout: Duration,
    reset: Reset,
    max_cached_statements: usize,
}

impl Default for PgManager {
    fn default() -> Self {
        PgManager {
            connect_timeout: Duration::from_secs(5),
            validate_timeout: Duration::from_secs(1),
            reset: Reset::default(),
            max_cached_statements: 256,
        }
    }
}

impl PgManager {
    /// A manager with the defaults: connect timeout 5 s, validate timeout 1 s,
    /// [`Reset::DiscardAll`], at most 256 cached statements per connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one connect (TCP, startup and authentication) may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the check before reuse (an empty query, sent only with
    /// [`Config::validate_idle_after`](crate::Config::validate_idle_after)) waits for its answer
    /// before the connection is closed as dead. Default 1 s. The answer also waits behind the
    /// previous user's pipelined [`Reset`], so keep it above the reset's usual time.
    ///
    /// ```
    /// use shardpool::adapters::postgres::PgManager;
    /// use std::time::Duration;
    /// let manager = PgManager::new().validate_timeout(Duration::from_millis(300));
    /// # let _ = manager;
    /// ```
    pub fn validate_timeout(mut self, timeout: Duration) -> Self {
        self.validate_timeout = timeout;
        self
    }

    /// How a returned connection's session is reset. Default [`Reset::DiscardAll`].
    pub fn reset(mut self, reset: Reset) -> Self {
        self.reset = reset;
        self
    }

    /// At most this many statements in each connection's [`PgConn::prepare_cached`] cache; past
    /// it, the cache is emptied before a new statement is added. Default 256.
    pub fn max_cached_statements(mut self, max: usize) -> Self {
        self.max_cached_statements = max;
        self
    }
}

/// A pooled PostgreSQL connection: the `tokio-postgres` client and a cache of prepared
/// statements. Get one from the pool; use [`client`](Self::client) for queries.
///
/// ```no_run
/// # use shardpool::adapters::postgres::{PgManager, PgServer};
/// # use shardpool::{Config, ConnectionPool, ShardedPool};
/// # async fn run(pool: ShardedPool<PgManager>, server: PgServer) -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = pool.get(&server).await?;
/// let lookup = conn.prepare_cached("SELECT name FROM users WHERE id = $1").await?;
/// let rows = conn.client().query(&lookup, &[&7i32]).await?;
/// # Ok(()) }
/// ```
pub struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
    server: PgServer,
}

impl PgConn {
    /// The client, for queries. Session state you change through it (settings, temporary tables,
    /// open transactions) is reset when the connection goes back to the pool (see [`Reset`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The server this connection belongs to.
    pub fn server(&self) -> &PgServer {
        &self.server
    }

    /// A prepared statement for `sql`, prepared on this connection the first time and cached
    /// after (until the connection is reset with [`Reset::DiscardAll`], or the cache is full).
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, PgError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| PgError::new(&self.server, "preparing a statement failed", e))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Cached statements now.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("server", &self.server)
            .field("closed", &self.client.is_closed())
            .field("cached_statements", &self.statements.len())
            .finish()
    }
}

/// Why a PostgreSQL connection could not be made or used. The message names the server
/// (`host:port`, database, user) and the cause, such as the server's own error text.
///
/// ```
/// use shardpool::adapters::postgres::PgServer;
///
/// let err = PgServer::new("host=/x port=notanumber").unwrap_err();
/// assert!(err.to_string().contains("does not parse"), "{err}");
/// ```
#[derive(Debug)]
pub struct PgError {
    server: String,
    cause: PgCause,
}

#[derive(Debug)]
enum PgCause {
    Config(String),
    Timeout(Duration),
    Postgres {
        what: &'static str,
        code: Option<String>,
        error: tokio_postgres::Error,
    },
}

impl PgError {
    /// The SQLSTATE code the server sent (`28P01`: wrong password, `3D000`: no such database,
    /// `53300`: too many connections), if the cause was a server error.
    pub fn code(&self) -> Option<&str> {
        match &self.cause {
            PgCause::Postgres { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the connect timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.cause, PgCause::Timeout(_))
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}: ", self.server)?;
        match &self.cause {
            PgCause::Config(msg) => f.write_str(msg),
            PgCause::Timeout(t) => write!(
                f,
                "connecting timed out after {t:?} (is the server up and answering? raise the \
                 manager's connect_timeout if it is just slow)"
            ),
            PgCause::Postgres { what, error, .. } => match error.as_db_error() {
                Some(db) => write!(
                    f,
                    "{what}: {} {}: {}",
                    db.severity(),
                    db.code().code(),
                    db.message()
                ),
                None => {
                    write!(f, "{what}: {error}")?;
                    let mut source = std::error::Error::source(error);
                    while let Some(s) = source {
                        write!(f, ": {s}")?;
                        source = s.source();
                    }
                    Ok(())
                }
            },
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            PgCause::Postgres { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl SendManage for PgManager {
    type Key = PgServer;
    type Conn = PgConn;
    type Error = PgError;

    async fn create(&self, server: &PgServer) -> Result<PgConn, PgError> {
        let connect = server.config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(PgError::new(server, "connecting failed", e)),
            Err(_) => {
                return Err(PgError {
                    server: server.label.to_string(),
                    cause: PgCause::Timeout(self.connect_timeout),
                });
            }
        };
        // The connection task ends when the socket closes or the client is dropped; the client's
        // `is_closed()` turns true then.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(PgConn {
            client,
            statements: HashMap::new(),
            server: server.clone(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> bool {
        !conn.client.is_closed()
    }

    /// An empty query: the server answers `EmptyQueryResponse` without parsing or planning, so
    /// this measures only that the session still answers (behind any pipelined reset).
    async fn validate(&self, conn: &mut PgConn, _idle_for: Duration) -> bool {
        let check = conn.client.batch_execute("");
        matches!(
            tokio::time::timeout(self.validate_timeout, check).await,
            Ok(Ok(()))
        )
    }

    fn recycle(&self, conn: &mut PgConn) -> bool {
        if conn.client.is_closed() {
            return false;
        }
        if conn.statements.len() > self.max_cached_statements {
            conn.statements.clear();
        }
        let Some(statements) = self.reset.statements() else {
            return true;
        };
        if self.reset == Reset::DiscardAll {
            // Dropping the statements queues their `Close` ahead of the reset.
            conn.statements.clear();
        }
        // Queue `ROLLBACK` and the reset on the connection without waiting for the answers: the
        // first poll of `batch_execute` hands its message to the connection task, which sends it
        // and discards the answer once the future is gone. The next user's queries are queued
        // after it on the same socket, so they run on the reset session.
        send_without_waiting(conn.client.batch_execute("ROLLBACK"));
        send_without_waiting(conn.client.batch_execute(statements));
        true
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// Polls `future` once, so it queues its request, then drops it.
fn send_without_waiting<F: Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _: Poll<_> = future.as_mut().poll(&mut cx);
}

impl PgError {
    fn new(server: &PgServer, what: &'static str, error: tokio_postgres::Error) -> Self {
        let code = error.code().map(|c| c.code().to_string());
        PgError {
            server: server.label.to_string(),
            cause: PgCause::Postgres { what, code, error },
        }
    }
}
