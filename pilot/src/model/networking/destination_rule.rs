//! DestinationRule: policies for traffic to a service after routing (load
//! balancing, connection pools, outlier detection, upstream TLS, tunnels)
//! and the subsets (label selections) that routes refer to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{ClientTlsSettings, ConnectionPoolSettings, PortSelector};
use crate::model::duration::Duration;
use crate::model::validate::{
    Errors, check_duration, check_export_to, check_labels, check_percent, check_percent_int,
    check_port, is_dns1123_label, wildcard_host_error,
};

/// The DestinationRule annotation choosing one of Keel's own load balancers
/// (`peak-ewma`: Linkerd's latency-aware balancer) in place of least
/// request; other proxies keep least request.
pub const KEEL_LB_ANNOTATION: &str = "keel.dev/load-balancer";

/// Traffic policy for one host.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// Service the rule applies to (short name, FQDN, may start with `*.`).
    pub host: String,
    /// Policy for all traffic to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named label selections, each with an optional policy override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces that may see this rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Workloads the rule applies to (as clients); all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
}

/// `matchLabels` selector (DestinationRule, security kinds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A named subset of a service's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name, a DNS-1123 label, unique in the rule.
    pub name: String,
    /// Endpoint labels selecting the subset.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Policy overriding the rule's for this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing, connection pool, outlier detection, TLS and more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides per destination port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel (HTTP CONNECT/POST) to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol towards the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Limit on concurrent retries as a share of active requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Per-port policy inside a [`TrafficPolicy`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    /// Load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Simple load balancing algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Let the proxy choose (Istio: LEAST_REQUEST).
    #[default]
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Random endpoint.
    Random,
    /// Forward to the original destination address.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Fewest outstanding requests of two random choices.
    LeastRequest,
}

/// The algorithm used when `simple` is UNSPECIFIED or no load balancer is
/// set (Istio's default).
pub const DEFAULT_SIMPLE_LB: SimpleLb = SimpleLb::LeastRequest;

/// Load balancer settings: one of `simple`, `consistentHash` or
/// `backendUtilization`, plus locality settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Session affinity by hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Weighting by reported backend utilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_utilization: Option<BackendUtilization>,
    /// Locality-aware load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Zone-aware load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Slow start window for new endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// Consistent hashing: exactly one hash key plus ring settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash on this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash on this cookie (generated when absent if a ttl is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Ring hash settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Maglev settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,
    /// Deprecated: use ringHash.minimumRingSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Cookie used as a hash key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name; required.
    pub name: String,
    /// Cookie path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Extra attributes of a generated cookie.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// A cookie attribute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name.
    #[serde(default)]
    pub name: String,
    /// Attribute value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Ring hash settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size (Envoy default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Table size, a prime (Envoy default 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Backend-utilization-weighted round robin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendUtilization {
    /// Blackout period after a weight first arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_stabilization_period: Option<Duration>,
    /// Weights older than this are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_expiration_period: Option<Duration>,
    /// How often weights are recomputed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_update_period: Option<Duration>,
    /// Penalty for error rate, as a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_utilization_penalty_percent: Option<u32>,
    /// ORCA metric names used as utilization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_names_for_computing_utilization: Vec<String>,
}

/// Slow start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Warmup window; required.
    pub duration: Duration,
    /// Starting share of traffic, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    /// Curve shape, ≥ 0 (1 is linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Locality-aware load balancing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Explicit traffic split by locality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Failover order by region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels to order failover by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Enable locality load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Zone-aware load balancing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    /// Enable zone-aware routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failover order by region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels to order failover by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Minimum cluster size for zone-aware routing, ≥ 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u32>,
}

/// Traffic from one locality split across others by weight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Originating locality (`region/zone/subzone`, `*` allowed).
    #[serde(default)]
    pub from: String,
    /// Destination locality → weight; weights sum to 100.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Failover from one region to another.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Originating region.
    #[serde(default)]
    pub from: String,
    /// Region to fail over to.
    #[serde(default)]
    pub to: String,
}

/// Outlier detection (passive health checking).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: use consecutive5xxErrors / consecutiveGatewayErrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i64>,
    /// Eject after this many gateway errors (502, 503, 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Eject after this many 5xx errors (Envoy default 5).
    #[serde(
        rename = "consecutive5xxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Eject after this many local-origin failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Treat local-origin failures separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// Time between analysis sweeps (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Minimum ejection duration (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected, 0–100 (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
    /// Outlier detection stops below this share of healthy endpoints, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i64>,
    /// HTTP status codes counted as errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// Tunnel settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// CONNECT (default) or POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host the tunnel targets; required.
    pub target_host: String,
    /// Port the tunnel targets; required.
    pub target_port: u32,
}

/// PROXY protocol versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyProtocolVersion {
    /// Human readable v1.
    #[default]
    V1,
    /// Binary v2.
    V2,
}

/// PROXY protocol towards the upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Version; V1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

/// Retry budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of active requests that may be retries, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Concurrent retries always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
    /// Window over which the budget is computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<Duration>,
}

impl DestinationRuleSpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        if self.host.is_empty() {
            errs.at("spec.host", "host is required");
        } else if let Some(msg) = wildcard_host_error(&self.host) {
            errs.at("spec.host", msg);
        }
        check_export_to(errs, "spec.exportTo", &self.export_to);
        if let Some(sel) = &self.workload_selector {
            check_labels(errs, "spec.workloadSelector.matchLabels", &sel.match_labels);
        }
        if let Some(tp) = &self.traffic_policy {
            tp.validate(errs, "spec.trafficPolicy");
        }
        for (i, s) in self.subsets.iter().enumerate() {
            let p = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                errs.at(format!("{p}.name"), "subset name is required");
            } else if !is_dns1123_label(&s.name) {
                errs.at(
                    format!("{p}.name"),
                    format!("invalid subset name {:?}: must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", s.name),
                );
            }
            if self.subsets[..i].iter().any(|o| o.name == s.name) {
                errs.at(
                    format!("{p}.name"),
                    format!("subset name {:?} is defined twice", s.name),
                );
            }
            check_labels(errs, &format!("{p}.labels"), &s.labels);
            if let Some(tp) = &s.traffic_policy {
                tp.validate(errs, &format!("{p}.trafficPolicy"));
            }
        }
    }
}

impl TrafficPolicy {
    fn validate(&self, errs: &mut Errors, path: &str) {
        if let Some(lb) = &self.load_balancer {
            lb.validate(errs, &format!("{path}.loadBalancer"));
        }
        if let Some(cp) = &self.connection_pool {
            cp.validate(errs, &format!("{path}.connectionPool"));
        }
        if let Some(od) = &self.outlier_detection {
            od.validate(errs, &format!("{path}.outlierDetection"));
        }
        if let Some(tls) = &self.tls {
            tls.validate(errs, &format!("{path}.tls"));
        }
        let mut seen = Vec::new();
        for (i, pl) in self.port_level_settings.iter().enumerate() {
            let p = format!("{path}.portLevelSettings[{i}]");
            match &pl.port {
                None => errs.at(format!("{p}.port"), "port is required in portLevelSettings"),
                Some(port) => {
                    check_port(errs, &format!("{p}.port.number"), port.number);
                    if seen.contains(&port.number) {
                        errs.at(
                            format!("{p}.port.number"),
                            format!("port {} appears twice in portLevelSettings", port.number),
                        );
                    }
                    seen.push(port.number);
                }
            }
            if let Some(lb) = &pl.load_balancer {
                lb.validate(errs, &format!("{p}.loadBalancer"));
            }
            if let Some(cp) = &pl.connection_pool {
                cp.validate(errs, &format!("{p}.connectionPool"));
            }
            if let Some(od) = &pl.outlier_detection {
                od.validate(errs, &format!("{p}.outlierDetection"));
            }
            if let Some(tls) = &pl.tls {
                tls.validate(errs, &format!("{p}.tls"));
            }
        }
        if let Some(t) = &self.tunnel {
            let p = format!("{path}.tunnel");
            if let Some(proto) = &t.protocol
                && !matches!(proto.as_str(), "CONNECT" | "POST")
            {
                errs.at(
                    format!("{p}.protocol"),
                    format!("invalid tunnel protocol {proto:?}: must be CONNECT or POST"),
                );
            }
            if t.target_host.is_empty() {
                errs.at(format!("{p}.targetHost"), "targetHost is required");
            }
            check_port(errs, &format!("{p}.targetPort"), t.target_port);
        }
        if let Some(rb) = &self.retry_budget {
            if let Some(pct) = rb.percent {
                check_percent(errs, &format!("{path}.retryBudget.percent"), pct);
            }
            if let Some(d) = &rb.budget_interval {
                check_duration(errs, &format!("{path}.retryBudget.budgetInterval"), d);
            }
        }
    }
}

impl LoadBalancerSettings {
    fn validate(&self, errs: &mut Errors, path: &str) {
        let kinds = [
            self.simple.is_some(),
            self.consistent_hash.is_some(),
            self.backend_utilization.is_some(),
        ];
        if kinds.iter().filter(|b| **b).count() > 1 {
            errs.at(
                path,
                "only one of simple, consistentHash or backendUtilization may be set",
            );
        }
        if let Some(ch) = &self.consistent_hash {
            let p = format!("{path}.consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if keys != 1 {
                errs.at(
                    &p,
                    format!("exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName must be set, got {keys}"),
                );
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    errs.at(format!("{p}.httpCookie.name"), "cookie name is required");
                }
                if let Some(ttl) = &c.ttl
                    && !ttl.as_std().subsec_nanos().is_multiple_of(1_000_000)
                {
                    errs.at(
                        format!("{p}.httpCookie.ttl"),
                        format!("only millisecond precision is supported, got {ttl}"),
                    );
                }
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                errs.at(&p, "only one of ringHash or maglev may be set");
            }
            if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
                errs.at(
                    format!("{p}.minimumRingSize"),
                    "minimumRingSize is deprecated and cannot be combined with ringHash or maglev; use ringHash.minimumRingSize",
                );
            }
        }
        if let Some(l) = &self.locality_lb_setting {
            let p = format!("{path}.localityLbSetting");
            if !l.distribute.is_empty()
                && (!l.failover.is_empty() || !l.failover_priority.is_empty())
            {
                errs.at(
                    &p,
                    "distribute cannot be combined with failover or failoverPriority",
                );
            }
            for (i, d) in l.distribute.iter().enumerate() {
                let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
                if sum != 100 {
                    errs.at(
                        format!("{p}.distribute[{i}].to"),
                        format!("weights must sum to 100, got {sum}"),
                    );
                }
                if d.from.is_empty() {
                    errs.at(
                        format!("{p}.distribute[{i}].from"),
                        "from locality is required",
                    );
                }
            }
            for (i, f) in l.failover.iter().enumerate() {
                if f.from.is_empty() || f.to.is_empty() {
                    errs.at(
                        format!("{p}.failover[{i}]"),
                        "failover needs both from and to regions",
                    );
                } else if f.from == f.to {
                    errs.at(
                        format!("{p}.failover[{i}]"),
                        format!("failover from {:?} to itself", f.from),
                    );
                }
            }
        }
        if let Some(z) = &self.zone_aware_lb_setting
            && z.min_cluster_size == Some(0)
        {
            errs.at(
                format!("{path}.zoneAwareLbSetting.minClusterSize"),
                "must be at least 1, got 0",
            );
        }
        if let Some(d) = &self.warmup_duration_secs {
            check_duration(errs, &format!("{path}.warmupDurationSecs"), d);
        }
        if let Some(w) = &self.warmup {
            let p = format!("{path}.warmup");
            check_duration(errs, &format!("{p}.duration"), &w.duration);
            if let Some(m) = w.minimum_percent {
                check_percent(errs, &format!("{p}.minimumPercent"), m);
            }
            if let Some(a) = w.aggression
                && a < 0.0
            {
                errs.at(
                    format!("{p}.aggression"),
                    format!("must not be negative, got {a}"),
                );
            }
            if self.warmup_duration_secs.is_some() {
                errs.at(&p, "only one of warmup or warmupDurationSecs may be set");
            }
        }
    }
}

impl OutlierDetection {
    fn validate(&self, errs: &mut Errors, path: &str) {
        if let Some(c) = self.consecutive_errors
            && c < 0
        {
            errs.at(
                format!("{path}.consecutiveErrors"),
                format!("must not be negative, got {c}"),
            );
        }
        if let Some(v) = self.max_ejection_percent {
            check_percent_int(errs, &format!("{path}.maxEjectionPercent"), v);
        }
        if let Some(v) = self.min_health_percent {
            check_percent_int(errs, &format!("{path}.minHealthPercent"), v);
        }
        if let Some(d) = &self.interval {
            check_duration(errs, &format!("{path}.interval"), d);
        }
        if let Some(d) = &self.base_ejection_time {
            check_duration(errs, &format!("{path}.baseEjectionTime"), d);
        }
        for (i, c) in self.outlier_detection_http_error_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                errs.at(
                    format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                    format!("must be an HTTP status code between 100 and 599, got {c}"),
                );
            }
        }
    }
}
