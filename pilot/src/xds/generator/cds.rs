//! Clusters: one `outbound|PORT||HOST` per visible service port, one
//! `outbound|PORT|SUBSET|HOST` per DestinationRule subset, `inbound|PORT||`
//! for the client's own workload, and Istio's BlackHole/Passthrough clusters.
//! DestinationRule traffic policy (load balancer, connection pool, outlier
//! detection; subset and port-level overrides merged over the top level) is
//! applied here.

use keel_proto::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, circuit_breakers, cluster,
};
use keel_proto::envoy::config::core::v3::{HealthStatus, Http2ProtocolOptions, Metadata};
use keel_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use keel_proto::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use keel_proto::envoy::r#type::v3::Percent as EnvoyPercent;
use keel_proto::google::protobuf::{ListValue, Struct, UInt64Value, Value, value::Kind};

use super::cache::{Memo, MemoKey};
use super::scope::{Scope, ns_of};
use super::util::{ads, duration, map, socket, string_struct, string_value, u32v};
use super::{BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, cluster_name};
use crate::model::networking::{
    ConnectionPoolSettings, DestinationRule, KEEL_LB_ANNOTATION, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, Resolution, RetryBudget, SimpleLb, TrafficPolicy,
};
use crate::model::registry::{Protocol, ServiceInfo, ServiceSource};
use crate::xds::Resource;
use crate::xds::node::ClientFlavor;

/// Istio's default connect timeout (mesh config `connectTimeout`).
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every cluster the client may use.
pub fn clusters(scope: &Scope<'_>) -> Vec<Resource> {
    let mut out = outbound(scope, None);
    out.extend(local(scope));
    out
}

/// The clusters of the services the client may call. They depend on the
/// client's namespace and (for label-sensitive config) labels, not on which
/// instance it is, so clients of one class share them.
pub fn outbound(scope: &Scope<'_>, memo: Option<&Memo>) -> Vec<Resource> {
    let grpc = scope.node.flavor == ClientFlavor::Grpc;
    let mut out = Vec::new();
    let mut push = |name: String, rule: usize, make: &dyn Fn(&str) -> Resource| {
        let r = match memo {
            Some(m) => m.get_or_make(
                MemoKey {
                    kind: "cds",
                    name: name.clone(),
                    rule,
                    flavor: scope.node.flavor,
                },
                || make(&name),
            ),
            None => make(&name),
        };
        out.push(r);
    };
    for svc in &scope.services {
        let dr = scope.destination_rule(&svc.hostname, &svc.namespace);
        let rule = dr.map_or(0, |d| std::sync::Arc::as_ptr(d) as usize);
        for port in &svc.ports {
            if port.protocol == Protocol::Udp
                || (grpc && !port.protocol.is_http() && port.protocol != Protocol::Auto)
            {
                continue;
            }
            let base = dr.and_then(|d| d.spec.traffic_policy.as_ref());
            let peak_ewma = dr
                .and_then(|d| d.metadata.annotations.as_ref())
                .and_then(|a| a.get(KEEL_LB_ANNOTATION))
                .is_some_and(|v| v == "peak-ewma");
            let name = cluster_name("outbound", port.number, "", &svc.hostname);
            let lb = LbChoice { peak_ewma };
            push(name, rule, &|name| {
                outbound_cluster(scope, svc, port.number, port.protocol, name, base, None, lb)
            });
            for subset in dr.iter().flat_map(|d| &d.spec.subsets) {
                let name = cluster_name("outbound", port.number, &subset.name, &svc.hostname);
                let policy = subset.traffic_policy.as_ref();
                push(name, rule, &|name| {
                    outbound_cluster(
                        scope,
                        svc,
                        port.number,
                        port.protocol,
                        name,
                        base,
                        policy,
                        lb,
                    )
                });
            }
        }
    }
    out
}

/// The clusters of this client instance: `inbound|PORT||` for its own
/// workload's ports, and the BlackHole/Passthrough clusters.
pub fn local(scope: &Scope<'_>) -> Vec<Resource> {
    let grpc = scope.node.flavor == ClientFlavor::Grpc;
    let mut out = Vec::new();
    if !grpc {
        for (svc, svc_port, target) in scope.inbound() {
            let name = cluster_name("inbound", target, "", "");
            if out.iter().any(|r: &Resource| r.name == name) {
                continue;
            }
            let protocol = svc.port(svc_port).map_or(Protocol::Tcp, |p| p.protocol);
            let ip = scope
                .node
                .ip
                .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
            let mut c = Cluster {
                name: name.clone(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
                load_assignment: Some(static_assignment(&name, &ip, target)),
                metadata: Some(istio_metadata(svc, svc_port)),
                ..Default::default()
            };
            if matches!(protocol, Protocol::Http2 | Protocol::Grpc) {
                set_http2(&mut c);
            }
            out.push(Resource::new(name, &c));
        }
        out.push(Resource::new(
            BLACKHOLE,
            &Cluster {
                name: BLACKHOLE.into(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
                ..Default::default()
            },
        ));
        for name in [PASSTHROUGH, INBOUND_PASSTHROUGH] {
            out.push(Resource::new(
                name,
                &Cluster {
                    name: name.into(),
                    cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::OriginalDst as i32,
                    )),
                    connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
                    lb_policy: cluster::LbPolicy::ClusterProvided as i32,
                    ..Default::default()
                },
            ));
        }
    }
    out
}

/// Keel's own balancer choice from the DestinationRule's annotation.
#[derive(Clone, Copy)]
struct LbChoice {
    /// `keel.dev/load-balancer: peak-ewma`.
    peak_ewma: bool,
}

#[allow(clippy::too_many_arguments)]
fn outbound_cluster(
    scope: &Scope<'_>,
    svc: &ServiceInfo,
    port: u32,
    protocol: Protocol,
    name: &str,
    base: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    choice: LbChoice,
) -> Resource {
    let grpc = scope.node.flavor == ClientFlavor::Grpc;
    let mut c = Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        metadata: Some(istio_metadata(svc, port)),
        ..Default::default()
    };
    let resolution = match &svc.source {
        ServiceSource::ServiceEntry { resolution, .. } => *resolution,
        ServiceSource::Kubernetes => Resolution::Static,
    };
    match resolution {
        Resolution::Dns | Resolution::DnsRoundRobin if !grpc => {
            let kind = if resolution == Resolution::Dns {
                cluster::DiscoveryType::StrictDns
            } else {
                cluster::DiscoveryType::LogicalDns
            };
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
            c.load_assignment = Some(dns_assignment(name, svc, port));
        }
        Resolution::None if !grpc => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
        }
        _ => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name.to_string(),
            });
        }
    }
    if !grpc
        && matches!(
            protocol,
            Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    {
        set_http2(&mut c);
    }
    // Port-level settings override the top level; a subset's policy
    // (and its own port-level settings) override both.
    let policies: Vec<&TrafficPolicy> = [base, subset].into_iter().flatten().collect();
    let lb = pick(
        &policies,
        port,
        |p| p.load_balancer.as_ref(),
        |p| p.load_balancer.as_ref(),
    );
    let pool = pick(
        &policies,
        port,
        |p| p.connection_pool.as_ref(),
        |p| p.connection_pool.as_ref(),
    );
    let outlier = pick(
        &policies,
        port,
        |p| p.outlier_detection.as_ref(),
        |p| p.outlier_detection.as_ref(),
    );
    if c.lb_policy != cluster::LbPolicy::ClusterProvided as i32 {
        apply_lb(&mut c, lb, grpc);
    }
    // Peak EWMA replaces least request (not an explicit other algorithm)
    // for Keel's proxies; Envoy ignores Keel's metadata.
    if choice.peak_ewma && c.lb_policy == cluster::LbPolicy::LeastRequest as i32 {
        let keel = Struct {
            fields: [(
                "load_balancer".to_string(),
                Value {
                    kind: Some(Kind::StringValue("peak_ewma".into())),
                },
            )]
            .into(),
        };
        c.metadata
            .get_or_insert_default()
            .filter_metadata
            .insert("keel".into(), keel);
    }
    let budget = policies.iter().rev().find_map(|p| p.retry_budget.as_ref());
    apply_pool(&mut c, pool, budget, grpc);
    if let Some(od) = outlier {
        apply_outlier(&mut c, od);
    }
    Resource::new(name, &c)
}

/// The most specific setting: the port-level entry for this port, else the
/// top level, walking from the subset's policy back to the rule's.
fn pick<'p, T>(
    policies: &[&'p TrafficPolicy],
    port: u32,
    top: impl Fn(&'p TrafficPolicy) -> Option<&'p T>,
    port_level: impl Fn(&'p PortTrafficPolicy) -> Option<&'p T>,
) -> Option<&'p T> {
    policies.iter().rev().find_map(|p| {
        p.port_level_settings
            .iter()
            .filter(|pl| pl.port.as_ref().is_some_and(|s| s.number == port))
            .find_map(&port_level)
            .or_else(|| top(p))
    })
}

fn apply_lb(c: &mut Cluster, lb: Option<&LoadBalancerSettings>, grpc: bool) {
    // Istio's default algorithm is least request (only an explicit
    // `simple: ROUND_ROBIN` gets round robin) — except for proxyless gRPC,
    // whose xDS clients support only round robin and ring hash in
    // `lb_policy`, so Istio leaves them on round robin.
    let default = if grpc {
        cluster::LbPolicy::RoundRobin
    } else {
        cluster::LbPolicy::LeastRequest
    };
    let Some(lb) = lb else {
        c.lb_policy = default as i32;
        return;
    };
    if let Some(hash) = &lb.consistent_hash {
        let min = hash
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(hash.minimum_ring_size);
        if hash.maglev.is_some() {
            c.lb_policy = cluster::LbPolicy::Maglev as i32;
        } else {
            c.lb_policy = cluster::LbPolicy::RingHash as i32;
            c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                cluster::RingHashLbConfig {
                    minimum_ring_size: min.map(|value| UInt64Value { value }),
                    ..Default::default()
                },
            ));
        }
        return;
    }
    c.lb_policy = match lb.simple {
        Some(SimpleLb::Random) => cluster::LbPolicy::Random,
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) if !grpc => {
            cluster::LbPolicy::LeastRequest
        }
        Some(SimpleLb::Passthrough) => cluster::LbPolicy::ClusterProvided,
        Some(SimpleLb::RoundRobin) => cluster::LbPolicy::RoundRobin,
        _ => default,
    } as i32;
}

fn apply_pool(
    c: &mut Cluster,
    pool: Option<&ConnectionPoolSettings>,
    budget: Option<&RetryBudget>,
    grpc: bool,
) {
    // Istio's defaults: effectively unlimited, so only the rule's limits bite.
    const MAX: u32 = u32::MAX;
    let clamp = |v: Option<i64>| v.map(|v| v.clamp(0, i64::from(MAX)) as u32);
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let thresholds = circuit_breakers::Thresholds {
        max_connections: u32v(clamp(tcp.and_then(|t| t.max_connections)).unwrap_or(MAX)),
        max_pending_requests: u32v(
            clamp(http.and_then(|h| h.http1_max_pending_requests)).unwrap_or(MAX),
        ),
        max_requests: u32v(clamp(http.and_then(|h| h.http2_max_requests)).unwrap_or(MAX)),
        max_retries: u32v(clamp(http.and_then(|h| h.max_retries)).unwrap_or(MAX)),
        retry_budget: budget.map(|b| circuit_breakers::thresholds::RetryBudget {
            budget_percent: b.percent.map(|value| EnvoyPercent { value }),
            min_retry_concurrency: b.min_retry_concurrency.and_then(u32v),
            budget_interval: b.budget_interval.as_ref().map(|d| duration(d.0)),
        }),
        track_remaining: true,
        ..Default::default()
    };
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
    if grpc {
        return;
    }
    if let Some(t) = tcp.and_then(|t| t.connect_timeout.as_ref()) {
        c.connect_timeout = Some(duration(t.0));
    }
    let idle = http.and_then(|h| h.idle_timeout.as_ref());
    let per_conn = clamp(http.and_then(|h| h.max_requests_per_connection)).filter(|n| *n > 0);
    let client_protocol = http.and_then(|h| h.use_client_protocol) == Some(true);
    if idle.is_some() || per_conn.is_some() || client_protocol {
        let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
        // The protocol stays what the port says (HTTP/1.1 unless the port
        // set HTTP/2 already); only `useClientProtocol` follows the client.
        let mut opts = c
            .typed_extension_protocol_options
            .get(key)
            .and_then(|a| keel_proto::any::unpack::<HttpProtocolOptions>(a).ok())
            .unwrap_or_else(|| HttpProtocolOptions {
                upstream_protocol_options: Some(
                    http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                        http_protocol_options::ExplicitHttpConfig {
                            protocol_config: Some(
                                http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                                    Default::default(),
                                ),
                            ),
                        },
                    ),
                ),
                ..Default::default()
            });
        if client_protocol {
            opts.upstream_protocol_options = Some(
                http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                    Default::default(),
                ),
            );
        }
        let common = opts.common_http_protocol_options.get_or_insert_default();
        common.idle_timeout = idle.map(|d| duration(d.0));
        common.max_requests_per_connection = per_conn.and_then(u32v);
        c.typed_extension_protocol_options
            .insert(key.into(), keel_proto::any::pack(&opts));
    }
}

fn apply_outlier(c: &mut Cluster, od: &OutlierDetection) {
    let consecutive_5xx = od.consecutive_5xx_errors.or(od
        .consecutive_errors
        .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32));
    let mut e = EnvoyOutlier {
        interval: od.interval.as_ref().map(|d| duration(d.0)),
        base_ejection_time: od.base_ejection_time.as_ref().map(|d| duration(d.0)),
        max_ejection_percent: od
            .max_ejection_percent
            .map(|v| v.clamp(0, 100) as u32)
            .and_then(u32v),
        // Istio disables the enforcement of checks the rule does not ask for.
        enforcing_consecutive_5xx: u32v(if consecutive_5xx.is_some_and(|n| n > 0) {
            100
        } else {
            0
        }),
        enforcing_consecutive_gateway_failure: u32v(
            if od.consecutive_gateway_errors.is_some_and(|n| n > 0) {
                100
            } else {
                0
            },
        ),
        enforcing_success_rate: u32v(0),
        ..Default::default()
    };
    if let Some(n) = consecutive_5xx.filter(|n| *n > 0) {
        e.consecutive_5xx = u32v(n);
    }
    if let Some(n) = od.consecutive_gateway_errors.filter(|n| *n > 0) {
        e.consecutive_gateway_failure = u32v(n);
    }
    if od.split_external_local_origin_errors == Some(true) {
        e.split_external_local_origin_errors = true;
        e.consecutive_local_origin_failure = od.consecutive_local_origin_failures.and_then(u32v);
    }
    c.outlier_detection = Some(e);
    if let Some(min) = od.min_health_percent {
        c.common_lb_config
            .get_or_insert_default()
            .healthy_panic_threshold = Some(EnvoyPercent {
            value: min.clamp(0, 100) as f64,
        });
    }
}

fn set_http2(c: &mut Cluster) {
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        keel_proto::any::pack(&opts),
    );
}

/// `filter_metadata.istio.services`: which service a cluster belongs to, for telemetry.
fn istio_metadata(svc: &ServiceInfo, port: u32) -> Metadata {
    let service = string_struct([
        ("host", svc.hostname.clone()),
        ("name", svc.name.clone()),
        ("namespace", svc.namespace.clone()),
    ]);
    let services = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![Value {
                kind: Some(Kind::StructValue(service)),
            }],
        })),
    };
    let istio = Struct {
        fields: map([
            ("services".to_string(), services),
            (
                "default_original_port".to_string(),
                string_value(port.to_string()),
            ),
        ]),
    };
    Metadata {
        filter_metadata: map([("istio".to_string(), istio)]),
        ..Default::default()
    }
}

fn static_assignment(name: &str, ip: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                    keel_proto::envoy::config::endpoint::v3::Endpoint {
                        address: Some(socket(ip, port)),
                        ..Default::default()
                    },
                )),
                health_status: HealthStatus::Healthy as i32,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn dns_assignment(name: &str, svc: &ServiceInfo, port: u32) -> ClusterLoadAssignment {
    let mut cla = super::eds::assignment(name, svc, port, None);
    cla.cluster_name = name.to_string();
    cla
}

/// The namespace a DestinationRule lives in (used by callers for precedence).
pub fn rule_namespace(dr: &DestinationRule) -> &str {
    ns_of(&dr.metadata)
}
