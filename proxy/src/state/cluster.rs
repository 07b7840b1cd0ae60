//! Clusters in Keel's representation: how endpoints are discovered, how one
//! is picked, and the connection limits and ejection rules that apply.

use std::sync::Arc;
use std::time::Duration;

use super::endpoint::Endpoints;
use super::{ser_duration, ser_opt_duration};

/// An upstream cluster.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Cluster {
    /// The cluster name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub name: String,
    /// Where its endpoints come from.
    pub discovery: Discovery,
    /// How an endpoint is picked.
    pub lb: LbPolicy,
    /// TCP connect timeout.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Connection and request limits.
    pub circuit_breakers: CircuitBreakers,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// The HTTP protocol spoken upstream.
    pub protocol: UpstreamProtocol,
    /// Idle timeout of upstream HTTP connections.
    #[serde(serialize_with = "ser_opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Requests per upstream connection (0 = unlimited).
    pub max_requests_per_connection: u32,
    /// Below this healthy percentage, balance across all hosts (Envoy: 50).
    pub healthy_panic_threshold_percent: f64,
    /// Istio's service metadata, for telemetry.
    pub istio: Option<IstioClusterMeta>,
}

/// How a cluster's endpoints are found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// EDS, under `service_name`.
    Eds {
        /// The ClusterLoadAssignment name to subscribe to.
        service_name: String,
    },
    /// Fixed endpoints carried in the cluster.
    Static(Arc<Endpoints>),
    /// Resolve every host, use all addresses.
    StrictDns {
        /// `(host, port)` pairs.
        hosts: Vec<(String, u16)>,
    },
    /// Resolve one host, use the first address per connection.
    LogicalDns {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
    /// Connect to the connection's original destination.
    OriginalDst,
}

/// A load-balancing policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of `choice_count` choices by active requests.
    LeastRequest {
        /// Candidates compared per pick (Envoy: 2).
        choice_count: u32,
    },
    /// Uniformly random.
    Random,
    /// Ketama ring.
    RingHash {
        /// Minimum ring entries (Envoy: 1024).
        min_ring_size: u64,
    },
    /// Maglev table.
    Maglev,
    /// Chosen by the discovery type (original destination).
    ClusterProvided,
    /// Power of two choices by peak-EWMA latency × (active requests + 1),
    /// as Linkerd balances (Keel's `keel.dev/load-balancer: peak-ewma`
    /// DestinationRule annotation; Envoy sees least request).
    PeakEwma,
}

/// Envoy's circuit-breaker thresholds (default priority).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CircuitBreakers {
    /// Upstream connections.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Concurrent requests.
    pub max_requests: u32,
    /// Concurrent retries.
    pub max_retries: u32,
    /// Concurrent retries as a share of the requests (DestinationRule
    /// `connectionPool.http.retryBudget`).
    pub retry_budget: Option<RetryBudget>,
}

impl Default for CircuitBreakers {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// Envoy's retry budget: active retries are limited to a share of the
/// active requests, or with an interval of the requests started within it,
/// and never below a floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetryBudget {
    /// The share, in hundredths of a percent (2000 = 20%).
    pub percent_hundredths: u32,
    /// Active retries always allowed.
    pub min_retry_concurrency: u32,
    /// Count the requests started within this window rather than those in
    /// flight.
    #[serde(serialize_with = "ser_opt_duration")]
    pub interval: Option<Duration>,
}

impl RetryBudget {
    /// Active retries allowed when `requests` count.
    pub fn allowed(&self, requests: u64) -> u64 {
        let share = requests.saturating_mul(u64::from(self.percent_hundredths)) / 10_000;
        share.max(u64::from(self.min_retry_concurrency))
    }
}

/// Outlier detection (passive health checking).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection (Envoy: 5).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 before ejection (Envoy: 5).
    pub consecutive_gateway_failure: u32,
    /// Percent chance a 5xx streak ejects (Envoy: 100).
    pub enforcing_consecutive_5xx: u32,
    /// Percent chance a gateway-failure streak ejects (Envoy: 0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// Sweep interval (Envoy: 10 s).
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Base ejection time (Envoy: 30 s).
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection_time: Duration,
    /// Maximum percent of hosts ejected (Envoy: 10).
    pub max_ejection_percent: u32,
}

/// The upstream HTTP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
    /// Whatever the downstream spoke.
    UseDownstream,
}

/// `filter_metadata.istio` of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IstioClusterMeta {
    /// The services the cluster belongs to.
    pub services: Vec<ServiceRef>,
    /// The service port the cluster was generated for.
    pub default_original_port: Option<u16>,
}

/// One Istio service.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceRef {
    /// The FQDN.
    pub host: String,
    /// The short name.
    pub name: String,
    /// The namespace.
    pub namespace: String,
}

impl Cluster {
    /// The EDS resource name the cluster needs, if it is an EDS cluster.
    pub fn eds_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_budget_is_a_share_with_a_floor() {
        let b = RetryBudget {
            percent_hundredths: 2000,
            min_retry_concurrency: 3,
            interval: None,
        };
        assert_eq!(b.allowed(0), 3);
        assert_eq!(b.allowed(10), 3);
        assert_eq!(b.allowed(40), 8);
        assert_eq!(b.allowed(1001), 200);
        let quarter = RetryBudget {
            percent_hundredths: 2500,
            min_retry_concurrency: 0,
            interval: None,
        };
        assert_eq!(quarter.allowed(3), 0);
        assert_eq!(quarter.allowed(4), 1);
    }
}
