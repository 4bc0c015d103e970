//! Who may use the admin listeners: the admin token ([`AdminToken`]) and the admin listeners'
//! knobs ([`AdminConfig`]), shared by the server's admin listener and the upstream admin
//! endpoint (`crate::upstream::admin`).
//!
//! The token is read from a file, never logged (its `Debug` is redacted) and compared in time
//! that depends only on the length of what the client sent, never on where the first
//! difference is or on the token's own length.

use super::ConfigError;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line and headers, or HTTP/2 header list) the admin listeners
/// accept, bytes. hyper's HTTP/1 reader cannot go lower, so this is not a knob.
pub const ADMIN_MAX_HEAD: usize = 8 << 10;

/// The bearer token that admin clients send as `authorization: Bearer <token>`.
///
/// ```
/// # use shardpool::server::AdminToken;
/// let t = AdminToken::new("s3cret-token").unwrap();
/// assert!(t.matches(b"s3cret-token"));
/// assert!(!t.matches(b"s3cret-tokeX") && !t.matches(b"s3cret") && !t.matches(b""));
/// assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
/// assert!(AdminToken::new("").is_err());
/// ```
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// A token from its text (surrounding whitespace removed). It must be non-empty visible
    /// ASCII (it travels in an HTTP header).
    pub fn new(text: &str) -> Result<AdminToken, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the admin token is empty".into());
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the admin token must be visible ASCII without spaces (it is sent in an HTTP header)"
                    .into(),
            );
        }
        Ok(AdminToken(Arc::from(t.as_bytes())))
    }

    /// Reads the token from `path`. Unreadable, empty, or readable by every user of the machine
    /// (mode & 0o004) is an error naming the file and the fix.
    pub fn from_file(path: &Path) -> Result<AdminToken, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the admin token file {shown}: {e}"))?;
        let mode = meta.permissions().mode();
        if mode & 0o004 != 0 {
            return Err(format!(
                "the admin token file {shown} is readable by every user (mode {:o}); \
                 restrict it, e.g. `chmod 600 {shown}`",
                mode & 0o777
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the admin token file {shown}: {e}"))?;
        AdminToken::new(&text).map_err(|e| format!("{e} (admin token file {shown})"))
    }

    /// Whether `candidate` is the token. Time depends on `candidate.len()` only: every byte of
    /// the candidate is compared (against the token repeated), and the lengths are compared
    /// without branching.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let token = &self.0[..];
        let mut diff = (candidate.len() ^ token.len()) as u64;
        for (i, &c) in candidate.iter().enumerate() {
            diff |= u64::from(c ^ token[i % token.len()]);
        }
        // An empty candidate is rejected by the length term (the token is never empty).
        std::hint::black_box(diff) == 0
    }

    /// Checks an `authorization` header value: `Bearer <token>` (scheme case-insensitive).
    pub fn check_bearer(&self, header: Option<&[u8]>) -> Result<(), Denied> {
        let Some(value) = header else {
            return Err(Denied::Missing);
        };
        let Some(rest) = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
        else {
            return Err(Denied::Missing);
        };
        let rest = rest.trim_ascii();
        if self.matches(rest) {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &AdminToken) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for AdminToken {}

/// Why an admin request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `authorization: Bearer` credentials (gRPC UNAUTHENTICATED, HTTP 401).
    Missing,
    /// Credentials that are not the token (gRPC PERMISSION_DENIED, HTTP 401).
    Wrong,
}

impl Denied {
    /// The message sent to the client (never the token).
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => {
                "this admin listener requires `authorization: Bearer <token>` (the token in --admin-token-file)"
            }
            Denied::Wrong => "the admin token sent is not the configured one",
        }
    }
}

/// The knobs of both admin listeners (the server's `--admin-listen` and the gateway's
/// `--upstream-admin-listen`); each is a flag, a `SHARDPOOL_*` variable and a TOML key of
/// `shardpool serve`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// The token every admin request must carry (`--admin-token-file`; default `None`: no
    /// token, allowed only on loopback unless `allow_insecure`).
    pub token: Option<AdminToken>,
    /// Serve admin listeners on non-loopback addresses without a token (default false).
    pub allow_insecure: bool,
    /// Admin connections open at once per admin listener; more are closed at once (default 64).
    pub max_connections: usize,
    /// Time a client has to send its first bytes and each complete request head; also the
    /// write timeout and the limit of one admin call (default 5 s).
    pub read_timeout: Duration,
    /// An admin connection that sends nothing for this long is closed (default 60 s).
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: None,
            allow_insecure: false,
            max_connections: 64,
            read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl AdminConfig {
    /// Checks the knobs, and that an admin listener on `listen` (named `flag` in messages) is
    /// not open to the network without a token.
    ///
    /// ```
    /// # use shardpool::server::{AdminConfig, AdminToken};
    /// let open = AdminConfig::default();
    /// assert!(open.check("admin_listen", "127.0.0.1:9100".parse().unwrap()).is_ok());
    /// let e = open.check("admin_listen", "0.0.0.0:9100".parse().unwrap()).unwrap_err();
    /// assert_eq!(e.field, "admin_listen");
    /// assert!(e.message.contains("--admin-token-file") && e.message.contains("--admin-allow-insecure"));
    /// let with_token = AdminConfig { token: Some(AdminToken::new("t0ken").unwrap()), ..open };
    /// assert!(with_token.check("admin_listen", "0.0.0.0:9100".parse().unwrap()).is_ok());
    /// ```
    pub fn check(&self, flag: &'static str, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "admin_max_connections",
                "admin_max_connections must be at least 1",
            ));
        }
        for (field, t) in [
            ("admin_read_timeout", self.read_timeout),
            ("admin_idle_timeout", self.idle_timeout),
        ] {
            if t.is_zero() {
                return Err(ConfigError::new(
                    field,
                    format!("{field} must be longer than 0"),
                ));
            }
        }
        if !listen.ip().is_loopback() && self.token.is_none() && !self.allow_insecure {
            return Err(ConfigError::new(
                flag,
                format!(
                    "{flag} {listen} is not a loopback address and no admin token is configured, so \
                 anyone who can reach it could change the backends: give --admin-token-file PATH \
                 (SHARDPOOL_ADMIN_TOKEN_FILE, config key admin_token_file), or \
                 --admin-allow-insecure to accept that risk (or listen on 127.0.0.1)"
                ),
            ));
        }
        Ok(())
    }

    /// Checks an `authorization` header against the token (anything passes without one).
    pub fn authorize(&self, header: Option<&[u8]>) -> Result<(), Denied> {
        match &self.token {
            None => Ok(()),
            Some(t) => t.check_bearer(header),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_missing_wrong_right() {
        let cfg = AdminConfig {
            token: Some(AdminToken::new(" abc123\n").unwrap()),
            ..AdminConfig::default()
        };
        assert_eq!(cfg.authorize(None), Err(Denied::Missing));
        assert_eq!(cfg.authorize(Some(b"Basic abc123")), Err(Denied::Missing));
        assert_eq!(cfg.authorize(Some(b"Bear")), Err(Denied::Missing));
        assert_eq!(cfg.authorize(Some(b"Bearer abc124")), Err(Denied::Wrong));
        assert_eq!(cfg.authorize(Some(b"Bearer abc1234")), Err(Denied::Wrong));
        assert_eq!(cfg.authorize(Some(b"Bearer ")), Err(Denied::Wrong));
        assert_eq!(cfg.authorize(Some(b"Bearer abc123")), Ok(()));
        assert_eq!(cfg.authorize(Some(b"bearer  abc123 ")), Ok(()));
        assert_eq!(AdminConfig::default().authorize(None), Ok(()));
        // A token that is a repetition of a shorter candidate's bytes still needs the length.
        let t = AdminToken::new("aaaa").unwrap();
        assert!(!t.matches(b"aa") && !t.matches(b"aaaaaaaa") && t.matches(b"aaaa"));
    }

    #[test]
    fn token_file_must_be_private_non_empty_and_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shardpool-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "tok-en_1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AdminToken::from_file(&f).unwrap().matches(b"tok-en_1"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AdminToken::from_file(&f).unwrap_err();
        assert!(
            e.contains("readable by every user") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&f, "  \n").unwrap();
        assert!(AdminToken::from_file(&f).unwrap_err().contains("empty"));
        std::fs::write(&f, "two words").unwrap();
        assert!(
            AdminToken::from_file(&f)
                .unwrap_err()
                .contains("visible ASCII")
        );
        let e = AdminToken::from_file(&dir.join("missing")).unwrap_err();
        assert!(e.contains("cannot read the admin token file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
