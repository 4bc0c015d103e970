//! Redis through the pool: [`RedisManager`] creates connections with the `redis` crate and checks
//! them before reuse.
//!
//! Why the `redis` crate: it is the most used Redis client for Rust, kept up to date with the
//! server (RESP3, ACL users), and it is what deadpool-redis and bb8-redis build on, so the
//! comparison in benches/real_workloads.rs pools the very same connection type.
//!
//! Needs a tokio runtime: each connection's socket is driven by a task spawned with
//! `tokio::spawn`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::SendManage;

/// Which Redis server (and database, user) a pool key stands for: a parsed `redis://` URL. Equal
/// keys share connections; the password takes part in equality but is never printed.
///
/// ```
/// use shardpool::adapters::redis::RedisServer;
///
/// let server = RedisServer::new("redis://:secret@127.0.0.1:6379/2").unwrap();
/// assert_eq!(server.to_string(), "127.0.0.1:6379 (db 2, user default)");
/// assert!(!format!("{server:?}").contains("secret"));
/// assert!(RedisServer::new("http://nope").is_err());
/// ```
#[derive(Clone)]
pub struct RedisServer {
    info: Arc<ConnectionInfo>,
    url: Arc<str>,
    label: Arc<str>,
}

impl RedisServer {
    /// Parses a `redis://[user][:password@]host[:port][/db]` URL. Only plain TCP is supported.
    pub fn new(url: &str) -> Result<Self, RedisError> {
        let info = url.into_connection_info().map_err(|e| RedisError {
            server: "(unparsed URL)".into(),
            cause: RedisCause::Config(format!("the URL does not parse: {e}")),
        })?;
        let addr = match &info.addr {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => {
                return Err(RedisError {
                    server: format!("{other}"),
                    cause: RedisCause::Config(
                        "only plain TCP (redis://host:port) is supported by this adapter".into(),
                    ),
                });
            }
        };
        let user = info.redis.username.as_deref().unwrap_or("default");
        let label = format!("{addr} (db {}, user {user})", info.redis.db);
        Ok(RedisServer {
            info: Arc::new(info),
            url: url.into(),
            label: label.into(),
        })
    }

    fn host_port(&self) -> (&str, u16) {
        match &self.info.addr {
            ConnectionAddr::Tcp(host, port) => (host, *port),
            // `new` accepts only TCP.
            _ => ("", 0),
        }
    }
}

impl PartialEq for RedisServer {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for RedisServer {}

impl Hash for RedisServer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.url.hash(state);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisServer").field(&&*self.label).finish()
    }
}

impl fmt::Display for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Creates and checks Redis connections for a [`ShardedPool`](crate::ShardedPool) keyed by
/// [`RedisServer`].
///
/// * **Connect timeout** ([`connect_timeout`](Self::connect_timeout), default 5 s): bounds TCP
///   connect and the handshake (`AUTH`, `SELECT`) together.
/// * **Response timeout** ([`response_timeout`](Self::response_timeout), default 5 s): bounds
///   each command's wait for its answer, so a stopped server cannot hold a caller forever.
/// * **Liveness before reuse**: the task driving the socket sets a closed flag when it ends
///   (the server closed the connection, or its socket failed); [`Manage::is_valid`] drops such a
///   connection. With [`Config::validate_idle_after`](crate::Config::validate_idle_after) set, a
///   connection idle that long is also sent a `PING` before reuse; no `PONG` within
///   [`validate_timeout`](Self::validate_timeout) (default 1 s) closes it, and the checkout takes
///   another connection or creates one.
/// * **Reset on return**: none is sent. The multiplexed connection sends a `MULTI`/`EXEC`
///   transaction (`redis::pipe().atomic()`) as one pipeline, so no transaction state outlives a
///   call; commands that change the connection itself (`SELECT`, `CLIENT SETNAME`, `WATCH`,
///   `SUBSCRIBE`) must not be sent through pooled connections (`RESET` would also log the
///   connection out).
/// * **Errors** ([`RedisError`]) name the server, database and user, and the cause.
///
/// ```no_run
/// use redis::AsyncCommands;
/// use shardpool::adapters::redis::{RedisManager, RedisServer};
/// use shardpool::{Config, ConnectionPool, ShardedPool};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = RedisServer::new("redis://127.0.0.1:6379/0")?;
/// let pool = ShardedPool::new(RedisManager::new(), Config::default().max_size(16))?;
/// let mut conn = pool.get(&server).await?;
/// let _: () = conn.set("greeting", "hello").await?;
/// let value: String = conn.get("greeting").await?;
/// assert_eq!(value, "hello");
/// # Ok(()) }
/// ```
///
/// [`Manage::is_valid`]: crate::Manage::is_valid
#[derive(Clone, Debug)]
pub struct RedisManager {
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    validate_timeout: Duration,
}

impl Default for RedisManager {
    fn default() -> Self {
        RedisManager {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Some(Duration::from_secs(5)),
            validate_timeout: Duration::from_secs(1),
        }
    }
}

impl RedisManager {
    /// A manager with the defaults: connect timeout 5 s, response timeout 5 s, validate timeout
    /// 1 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one connect (TCP and handshake) may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command waits for its answer; `None`: forever. Default 5 s.
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long the check before reuse (a `PING`, sent only with
    /// [`Config::validate_idle_after`](crate::Config::validate_idle_after)) waits for its `PONG`
    /// before the connection is closed as dead. Default 1 s; it applies even when
    /// [`response_timeout`](Self::response_timeout) is `None`.
    ///
    /// ```
    /// use shardpool::adapters::redis::RedisManager;
    /// use std::time::Duration;
    /// let manager = RedisManager::new().validate_timeout(Duration::from_millis(300));
    /// # let _ = manager;
    /// ```
    pub fn validate_timeout(mut self, timeout: Duration) -> Self {
        self.validate_timeout = timeout;
        self
    }
}

/// A pooled Redis connection: implements the `redis` crate's `aio::ConnectionLike` (and
/// dereferences to its [`MultiplexedConnection`]), so every `AsyncCommands` method works on it.
///
/// ```no_run
/// # use shardpool::adapters::redis::{RedisManager, RedisServer};
/// # use shardpool::{ConnectionPool, ShardedPool};
/// # async fn run(pool: ShardedPool<RedisManager>, server: RedisServer) -> Result<(), Box<dyn std::error::Error>> {
/// use redis::AsyncCommands;
/// let mut conn = pool.get(&server).await?;
/// let n: i64 = conn.incr("visits", 1).await?;
/// assert!(!conn.is_closed());
/// # Ok(()) }
/// ```
pub struct RedisConn {
    conn: MultiplexedConnection,
    closed: Arc<AtomicBool>,
    server: RedisServer,
}

impl RedisConn {
    /// Whether the socket is known to be closed (the driving task has ended).
    pub fn is_closed(&self) -> bool {
        // Ordering: Acquire pairs with the driver task's Release store; nothing else is published
        // through the flag, so this only needs to see the store eventually and in order.
        self.closed.load(Ordering::Acquire)
    }

    /// The server this connection belongs to.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}

impl Deref for RedisConn {
    type Target = MultiplexedConnection;
    fn deref(&self) -> &MultiplexedConnection {
        &self.conn
    }
}

impl DerefMut for RedisConn {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }
}

/// Commands go straight to the multiplexed connection, so `redis::AsyncCommands` and
/// `Cmd::query_async` work on a checked-out connection as they do on the client's own.
impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("server", &self.server)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Why a Redis connection could not be made. The message names the server (`host:port`,
/// database, user) and the cause, such as the server's own error text.
///
/// ```
/// use shardpool::adapters::redis::RedisServer;
///
/// let err = RedisServer::new("unix:///tmp/redis.sock").unwrap_err();
/// assert!(err.to_string().contains("only plain TCP"), "{err}");
/// ```
#[derive(Debug)]
pub struct RedisError {
    server: String,
    cause: RedisCause,
}

#[derive(Debug)]
enum RedisCause {
    Config(String),
    Timeout(Duration),
    Io(std::io::Error),
    Redis(redis::RedisError),
    /// The server refused the client before the handshake, with this reason.
    Refused(String),
}

impl RedisError {
    /// Whether the connect timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.cause, RedisCause::Timeout(_))
    }

    /// The server's error code (`WRONGPASS`, `NOAUTH`, `ERR`, ...), if the server refused.
    pub fn code(&self) -> Option<&str> {
        match &self.cause {
            RedisCause::Redis(e) => e.code(),
            _ => None,
        }
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis {}: ", self.server)?;
        match &self.cause {
            RedisCause::Config(msg) => f.write_str(msg),
            RedisCause::Timeout(t) => write!(
                f,
                "connecting timed out after {t:?} (is the server up and answering? raise the \
                 manager's connect_timeout if it is just slow)"
            ),
            RedisCause::Io(e) => write!(f, "connecting failed: {e}"),
            RedisCause::Redis(e) => write!(f, "the handshake failed: {e}"),
            RedisCause::Refused(reason) => write!(
                f,
                "the server refused the connection: {reason} (the server's maxclients is \
                 reached: lower max_size across pools, or raise maxclients)"
            ),
        }
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            RedisCause::Io(e) => Some(e),
            RedisCause::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl RedisManager {
    async fn connect(&self, server: &RedisServer) -> Result<RedisConn, RedisCause> {
        let (host, port) = server.host_port();
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(RedisCause::Io)?;
        let _ = stream.set_nodelay(true);
        let mut config = AsyncConnectionConfig::new();
        if let Some(t) = self.response_timeout {
            config = config.set_response_timeout(t);
        }
        let (conn, driver) = match MultiplexedConnection::new_with_config(
            &server.info.redis,
            stream,
            config,
        )
        .await
        {
            Ok(pair) => pair,
            // A server that refuses a client (`maxclients` reached) writes its reason and
            // closes at once, so the handshake sees only a broken pipe or a reset. Ask again
            // on a fresh socket, briefly, to report the server's own words.
            Err(e) if e.is_io_error() => {
                return Err(match refusal(host, port).await {
                    Some(reason) => RedisCause::Refused(reason),
                    None => RedisCause::Redis(e),
                });
            }
            Err(e) => return Err(RedisCause::Redis(e)),
        };
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        tokio::spawn(async move {
            driver.await;
            // Ordering: Release pairs with `is_closed`'s Acquire (see there).
            flag.store(true, Ordering::Release);
        });
        Ok(RedisConn {
            conn,
            closed,
            server: server.clone(),
        })
    }
}

/// What a server that refuses new clients says on a fresh connection, read within 250 ms: the
/// first line of an unsolicited `-ERR ...` reply, or `None`.
async fn refusal(host: &str, port: u16) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let line = text.lines().next()?.strip_prefix('-')?;
        Some(line.trim().to_string())
    };
    tokio::time::timeout(Duration::from_millis(250), probe)
        .await
        .ok()
        .flatten()
}

impl SendManage for RedisManager {
    type Key = RedisServer;
    type Conn = RedisConn;
    type Error = RedisError;

    async fn create(&self, server: &RedisServer) -> Result<RedisConn, RedisError> {
        match tokio::time::timeout(self.connect_timeout, self.connect(server)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(cause)) => Err(RedisError {
                server: server.label.to_string(),
                cause,
            }),
            Err(_) => Err(RedisError {
                server: server.label.to_string(),
                cause: RedisCause::Timeout(self.connect_timeout),
            }),
        }
    }

    fn is_valid(&self, conn: &mut RedisConn) -> bool {
        !conn.is_closed()
    }

    /// `PING`, answered `PONG` by a live server. (No pooled connection is inside `MULTI`, where a
    /// `PING` would be queued instead: see "Reset on return".)
    async fn validate(&self, conn: &mut RedisConn, _idle_for: Duration) -> bool {
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn.conn);
        matches!(
            tokio::time::timeout(self.validate_timeout, ping).await,
            Ok(Ok(pong)) if pong == "PONG"
        )
    }

    fn recycle(&self, conn: &mut RedisConn) -> bool {
        !conn.is_closed()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}
