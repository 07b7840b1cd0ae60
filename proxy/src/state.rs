//! The proxy's state: everything pilot told it, in Keel's own representation
//! (not Envoy protos), shaped for the data path.
//!
//! One immutable [`ProxyState`] is published through an
//! `arc_swap::ArcSwap`: readers (the data path, the admin server) take a
//! snapshot without locking; the xDS handlers are the only writers, and each
//! applies a whole response by building a new state and swapping it in. The
//! state does not know about gRPC or about how resources are converted; see
//! `xds` for that.

pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod route;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use cluster::Cluster;
pub use endpoint::Endpoints;
pub use listener::Listener;
pub use route::RouteTable;

/// The state shared between the xDS client (writer) and everything else.
pub type SharedState = Arc<ArcSwap<ProxyState>>;

/// Creates an empty shared state.
pub fn shared() -> SharedState {
    Arc::new(ArcSwap::from_pointee(ProxyState::default()))
}

/// Everything the proxy currently serves, by resource name.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProxyState {
    /// Listeners (LDS).
    pub listeners: BTreeMap<String, Arc<Listener>>,
    /// Route tables (RDS).
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    /// Clusters (CDS).
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Endpoints (EDS), by cluster (service) name.
    pub endpoints: BTreeMap<String, Arc<Endpoints>>,
    /// Per xDS type (`lds`, `rds`, `cds`, `eds`): what was received and accepted.
    pub xds: BTreeMap<&'static str, TypeStatus>,
}

/// The xDS bookkeeping of one resource type.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypeStatus {
    /// The `version_info` of the last fully accepted (ACKed) response.
    pub version: String,
    /// The nonce of the last response handled.
    pub nonce: String,
    /// Whether at least one response of the type has been handled.
    pub received: bool,
    /// The names requested when the last response arrived (empty for wildcard).
    pub requested: BTreeSet<String>,
    /// The last NACK: the rejected version and the joined messages.
    pub last_nack: Option<Nack>,
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Nack {
    /// The `version_info` that was rejected.
    pub version: String,
    /// Every rejection message, joined with `; `.
    pub message: String,
}

impl ProxyState {
    /// The RDS names the listeners reference.
    pub fn referenced_routes(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.rds_names().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    /// The EDS names the clusters reference.
    pub fn referenced_endpoints(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_name().map(str::to_string))
            .collect()
    }

    /// Drops route tables and endpoints no listener or cluster references.
    pub fn prune(&mut self) {
        let routes = self.referenced_routes();
        self.routes.retain(|name, _| routes.contains(name));
        let endpoints = self.referenced_endpoints();
        self.endpoints.retain(|name, _| endpoints.contains(name));
    }

    /// Ready once CDS and LDS have been applied and every referenced route
    /// table and endpoint set has arrived (or pilot answered a request for
    /// exactly those names without them, so waiting longer would not help).
    pub fn is_ready(&self) -> bool {
        let received = |t: &str| self.xds.get(t).is_some_and(|s| s.received);
        if !received("cds") || !received("lds") {
            return false;
        }
        let covered = |t: &str, wanted: BTreeSet<String>, have: &dyn Fn(&str) -> bool| {
            wanted.iter().all(|n| have(n))
                || self
                    .xds
                    .get(t)
                    .is_some_and(|s| s.received && wanted.is_subset(&s.requested))
        };
        covered("rds", self.referenced_routes(), &|n| {
            self.routes.contains_key(n)
        }) && covered("eds", self.referenced_endpoints(), &|n| {
            self.endpoints.contains_key(n)
        })
    }
}

/// Serializes a duration as Envoy's JSON does (`"3s"`, `"0.250s"`).
pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    if d.subsec_nanos() == 0 {
        s.serialize_str(&format!("{secs}s"))
    } else if d.subsec_nanos() == millis * 1_000_000 {
        s.serialize_str(&format!("{secs}.{millis:03}s"))
    } else {
        s.serialize_str(&format!("{secs}.{:09}s", d.subsec_nanos()))
    }
}

/// [`ser_duration`] for optional durations (`null` when unset).
pub(crate) fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
