//! Upstream backends for gateway mode: the origin protocol ([`frame`]), the origin server
//! ([`origin`]), pooled upstream connections that move between shards soundly ([`conn`]),
//! load balancing ([`Balance`]) and the [`Gateway`] that sends each `SayHello` to a healthy
//! backend. docs/gateway.md describes the design and its measurements.

pub mod admin;
pub mod allow;
mod balance;
pub mod conn;
pub mod frame;
mod gateway;
pub mod launch;
pub mod origin;

pub use balance::Balance;
pub use conn::{ConnectorConfig, UpstreamConn, UpstreamManager};
pub use gateway::{
    BackendStats, BackendsFull, DEFAULT_MAX_BACKENDS, Gateway, GatewayConfig, GatewayGreeter,
    HealthChecker, HealthConfig,
};
