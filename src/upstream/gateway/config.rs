//! The gateway's knobs: health checking and ejection, the backend cap, and the error of a full
//! backend set.

use crate::upstream::balance::Balance;
use crate::upstream::conn::ConnectorConfig;
use std::time::Duration;

/// Health checking and ejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active check period (`None`: no active checks).
    pub interval: Option<Duration>,
    /// Active check timeout (connect, PING, answer).
    pub timeout: Duration,
    /// Consecutive backend-caused failures that eject a backend (0: never eject). Failures of
    /// calls that were in flight when it was ejected do not count again (one ejection per
    /// failure episode).
    pub eject_after: u32,
    /// First ejection length; doubled per further episode in a row (an episode that starts
    /// after the backend stayed in rotation at least as long as its last ejection starts over
    /// at this length). A passing active check ends an ejection early.
    pub backoff_base: Duration,
    /// Longest ejection.
    pub backoff_max: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Some(Duration::from_secs(1)),
            timeout: Duration::from_millis(500),
            eject_after: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Gateway settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// How backends are chosen.
    pub balance: Balance,
    /// Health checks and ejection.
    pub health: HealthConfig,
    /// Longest time one upstream attempt may take (checkout + exchange).
    pub request_timeout: Duration,
    /// How connections are made.
    pub connector: ConnectorConfig,
    /// The most backends the gateway may have at once ([`DEFAULT_MAX_BACKENDS`]). Each backend
    /// may hold up to the pool's `max_size` upstream connections and runs its own health
    /// checks, so this bounds what anyone who may add backends at run time (the admin RPCs,
    /// SIGHUP) can make the gateway open; the binary reserves descriptors for this many.
    pub max_backends: usize,
}

/// [`GatewayConfig::max_backends`] by default.
pub const DEFAULT_MAX_BACKENDS: usize = 64;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            balance: Balance::RoundRobin,
            health: HealthConfig::default(),
            request_timeout: Duration::from_secs(2),
            connector: ConnectorConfig::default(),
            max_backends: DEFAULT_MAX_BACKENDS,
        }
    }
}

/// A backend could not be added: the gateway has [`GatewayConfig::max_backends`] already.
///
/// ```
/// use shardpool::upstream::BackendsFull;
/// let e = BackendsFull { max: 2 };
/// assert!(e.to_string().contains("--max-backends"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendsFull {
    /// The limit that was reached.
    pub max: usize,
}

impl std::fmt::Display for BackendsFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} backends are allowed (--max-backends, SHARDPOOL_MAX_BACKENDS, \
             upstream.max_backends): remove one before adding another, list no more in a reload, \
             or restart with a higher limit",
            self.max
        )
    }
}

impl std::error::Error for BackendsFull {}
