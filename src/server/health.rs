//! The services this server implements and their health table (`grpc.health.v1`).

use super::proto;
use proto::ServingStatus;
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

/// Service names this server implements (as used by the health service).
pub const SERVICES: [&str; 3] = [
    "helloworld.Greeter",
    "grpc.health.v1.Health",
    "shardpool.v1.Admin",
];

/// The health table behind `grpc.health.v1.Health/Check`, shared by all shards.
///
/// ```
/// # use shardpool::server::Health;
/// # use shardpool::server::proto::ServingStatus;
/// let h = Health::new();
/// assert_eq!(h.check("helloworld.Greeter"), Some(ServingStatus::Serving));
/// h.set_serving("helloworld.Greeter", false);
/// assert_eq!(h.check("helloworld.Greeter"), Some(ServingStatus::NotServing));
/// assert_eq!(h.check(""), Some(ServingStatus::Serving));
/// assert_eq!(h.check("no.such.Service"), None);
/// ```
#[derive(Clone, Debug)]
pub struct Health {
    table: Arc<RwLock<BTreeMap<String, ServingStatus>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Every service of [`SERVICES`], and the server as a whole (`""`), SERVING.
    pub fn new() -> Health {
        let table = std::iter::once("")
            .chain(SERVICES)
            .map(|s| (s.to_string(), ServingStatus::Serving))
            .collect();
        Health {
            table: Arc::new(RwLock::new(table)),
        }
    }

    /// Sets one service (or `""`, the whole server) SERVING or NOT_SERVING; an unknown name is
    /// added.
    pub fn set_serving(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(service.to_string(), status);
    }

    /// Marks every service NOT_SERVING (shutdown).
    pub fn set_all_not_serving(&self) {
        for status in self
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .values_mut()
        {
            *status = ServingStatus::NotServing;
        }
    }

    /// The status of a service, `None` if unknown.
    pub fn check(&self, service: &str) -> Option<ServingStatus> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .copied()
    }
}
