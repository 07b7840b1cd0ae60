//! Endpoints in Keel's representation: a cluster's hosts grouped by
//! locality, with weights, health and the labels subset routing needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The endpoints of one cluster (a ClusterLoadAssignment).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Endpoints {
    /// The cluster (EDS service) name.
    pub cluster_name: String,
    /// Endpoints grouped by locality and priority.
    pub localities: Vec<LocalityEndpoints>,
}

/// The endpoints of one locality.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocalityEndpoints {
    /// Where they run.
    pub locality: Locality,
    /// The locality's weight (0 when unset).
    pub weight: u32,
    /// The priority (0 is highest).
    pub priority: u32,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A region / zone / sub-zone triple.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One upstream host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// Where to connect.
    pub address: EndpointAddress,
    /// Its weight within the locality (at least 1).
    pub weight: u32,
    /// Its health as EDS reports it.
    pub health: Health,
    /// `filter_metadata["envoy.lb"]`: the labels subset routing matches.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `filter_metadata["istio"]`: the workload behind it, for telemetry.
    pub workload: Option<WorkloadMeta>,
}

/// An endpoint address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAddress {
    /// An IP and port.
    Socket(SocketAddr),
    /// A DNS name and port (resolved at connect time).
    Host {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Envoy's health status, reduced to what balancing needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Healthy (or unknown, which Envoy treats as healthy).
    Healthy,
    /// Draining: keep existing connections, pick it last.
    Draining,
    /// Degraded: used only when healthy hosts are short.
    Degraded,
    /// Unhealthy, timed out: never picked unless in panic mode.
    Unhealthy,
}

/// Istio's per-endpoint workload metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkloadMeta {
    /// The workload (pod) name.
    pub workload: String,
    /// Its service account.
    pub service_account: String,
}
