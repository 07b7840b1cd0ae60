//! CDS: Envoy `Cluster` → [`state::Cluster`](crate::state::Cluster).
//!
//! Accepts the discovery types Keel implements (EDS over ADS, static,
//! strict and logical DNS, original destination) and the load-balancing
//! policies of Istio's DestinationRule; an upstream TLS transport socket is
//! not implemented yet and makes the cluster unacceptable.

use std::sync::Arc;
use std::time::Duration;

use keel_proto::any::unpack;
use keel_proto::envoy::config::cluster::v3 as pb;
use keel_proto::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy as PbLb,
};
use keel_proto::envoy::config::core::v3::{address, config_source};
use keel_proto::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
};
use keel_proto::google::protobuf::{Struct, value::Kind};

use super::convert::{At, FieldError, Result, duration, opt_nonzero_duration};
use super::eds::load_assignment;
use super::lds::port;
use crate::state::cluster::{
    CircuitBreakers, Cluster, Discovery, IstioClusterMeta, LbPolicy, OutlierDetection, RetryBudget,
    ServiceRef, UpstreamProtocol,
};

/// Envoy's retry budget, with its defaults (20%, at least 3).
fn retry_budget(b: &pb::circuit_breakers::thresholds::RetryBudget) -> Result<RetryBudget> {
    let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
    if !(0.0..=100.0).contains(&percent) {
        return Err(FieldError::new(
            "budget_percent",
            format!("{percent} is not a percentage (0 to 100)"),
        ));
    }
    Ok(RetryBudget {
        percent_hundredths: (percent * 100.0).round() as u32,
        min_retry_concurrency: b.min_retry_concurrency.map_or(3, |v| v.value),
        interval: opt_nonzero_duration(b.budget_interval.as_ref(), "budget_interval")?,
    })
}

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Converts one cluster (the deprecated `http2_protocol_options` is honoured).
#[allow(deprecated)]
pub fn cluster(c: &pb::Cluster) -> Result<Cluster> {
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| FieldError::new("type", format!("unknown cluster type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(FieldError::new(
                "cluster_type",
                format!("unsupported cluster type {:?}", custom.name),
            ));
        }
    };
    let discovery = match kind {
        DiscoveryType::Eds => {
            let eds = c.eds_cluster_config.as_ref();
            match eds
                .and_then(|e| e.eds_config.as_ref())
                .and_then(|s| s.config_source_specifier.as_ref())
            {
                Some(config_source::ConfigSourceSpecifier::Ads(_)) => {}
                _ => {
                    return Err(FieldError::new(
                        "eds_cluster_config.eds_config",
                        "only ADS is supported (eds_config: {ads: {}})",
                    ));
                }
            }
            let service_name = eds
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            Discovery::Eds { service_name }
        }
        DiscoveryType::Static => {
            let mut endpoints = match &c.load_assignment {
                Some(la) => load_assignment(la).at("load_assignment")?,
                None => Default::default(),
            };
            if endpoints.cluster_name.is_empty() {
                endpoints.cluster_name = c.name.clone();
            }
            Discovery::Static(Arc::new(endpoints))
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            let mut hosts = Vec::new();
            for (li, l) in c
                .load_assignment
                .iter()
                .flat_map(|la| la.endpoints.iter())
                .enumerate()
            {
                for (ei, e) in l.lb_endpoints.iter().enumerate() {
                    let path = format!("load_assignment.endpoints[{li}].lb_endpoints[{ei}]");
                    hosts.push(dns_host(e).at(path)?);
                }
            }
            if kind == DiscoveryType::LogicalDns {
                let [(host, port)] = <[_; 1]>::try_from(hosts).map_err(|h: Vec<_>| {
                    FieldError::new(
                        "load_assignment",
                        format!(
                            "a LOGICAL_DNS cluster needs exactly one host, got {}",
                            h.len()
                        ),
                    )
                })?;
                Discovery::LogicalDns { host, port }
            } else {
                Discovery::StrictDns { hosts }
            }
        }
        DiscoveryType::OriginalDst => Discovery::OriginalDst,
    };
    let lb = match PbLb::try_from(c.lb_policy) {
        Ok(PbLb::RoundRobin) => LbPolicy::RoundRobin,
        Ok(PbLb::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => {
                    l.choice_count.map_or(2, |n| n.value.max(2))
                }
                _ => 2,
            },
        },
        Ok(PbLb::Random) => LbPolicy::Random,
        Ok(PbLb::RingHash) => LbPolicy::RingHash {
            min_ring_size: match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => {
                    r.minimum_ring_size.map_or(1024, |n| n.value.max(1))
                }
                _ => 1024,
            },
        },
        Ok(PbLb::Maglev) => LbPolicy::Maglev,
        Ok(PbLb::ClusterProvided) if kind == DiscoveryType::OriginalDst => {
            LbPolicy::ClusterProvided
        }
        Ok(PbLb::ClusterProvided) => {
            return Err(FieldError::new(
                "lb_policy",
                "CLUSTER_PROVIDED is only valid for ORIGINAL_DST clusters",
            ));
        }
        _ => {
            return Err(FieldError::new(
                "lb_policy",
                format!("unsupported load-balancing policy {}", c.lb_policy),
            ));
        }
    };
    // Keel's own balancer, named in Keel's cluster metadata (Envoy reads
    // the least-request policy beside it).
    let keel_lb = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("keel"))
        .and_then(|s| s.fields.get("load_balancer"))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
    let lb = match keel_lb {
        None => lb,
        Some("peak_ewma") if matches!(lb, LbPolicy::LeastRequest { .. }) => LbPolicy::PeakEwma,
        Some(other) => {
            return Err(FieldError::new(
                "metadata.filter_metadata.keel.load_balancer",
                format!(
                    "unknown load balancer {other:?} (Keel knows \"peak_ewma\", over LEAST_REQUEST)"
                ),
            ));
        }
    };
    if let Some(ts) = &c.transport_socket
        && ts.name != "envoy.transport_sockets.raw_buffer"
    {
        return Err(FieldError::new(
            "transport_socket",
            format!(
                "upstream transport socket {:?} is not supported yet",
                ts.name
            ),
        ));
    }
    if !c.transport_socket_matches.is_empty() {
        return Err(FieldError::new(
            "transport_socket_matches",
            "upstream TLS is not supported yet",
        ));
    }
    let connect_timeout = c
        .connect_timeout
        .as_ref()
        .map(|d| duration(d, "connect_timeout"))
        .transpose()?
        .unwrap_or(Duration::from_secs(5));
    let mut circuit_breakers = CircuitBreakers::default();
    if let Some(t) = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0))
    {
        let v =
            |x: Option<keel_proto::google::protobuf::UInt32Value>, d: u32| x.map_or(d, |x| x.value);
        circuit_breakers = CircuitBreakers {
            max_connections: v(t.max_connections, circuit_breakers.max_connections),
            max_pending_requests: v(
                t.max_pending_requests,
                circuit_breakers.max_pending_requests,
            ),
            max_requests: v(t.max_requests, circuit_breakers.max_requests),
            max_retries: v(t.max_retries, circuit_breakers.max_retries),
            retry_budget: t
                .retry_budget
                .as_ref()
                .map(retry_budget)
                .transpose()
                .at("circuit_breakers.thresholds[0].retry_budget")?,
        };
    }
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(|o| -> Result<OutlierDetection> {
            let n = |x: Option<keel_proto::google::protobuf::UInt32Value>, d: u32| {
                x.map_or(d, |x| x.value)
            };
            Ok(OutlierDetection {
                consecutive_5xx: n(o.consecutive_5xx, 5),
                consecutive_gateway_failure: n(o.consecutive_gateway_failure, 5),
                enforcing_consecutive_5xx: n(o.enforcing_consecutive_5xx, 100),
                enforcing_consecutive_gateway_failure: n(
                    o.enforcing_consecutive_gateway_failure,
                    0,
                ),
                interval: o
                    .interval
                    .as_ref()
                    .map(|d| duration(d, "interval"))
                    .transpose()?
                    .unwrap_or(Duration::from_secs(10)),
                base_ejection_time: o
                    .base_ejection_time
                    .as_ref()
                    .map(|d| duration(d, "base_ejection_time"))
                    .transpose()?
                    .unwrap_or(Duration::from_secs(30)),
                max_ejection_percent: n(o.max_ejection_percent, 10),
            })
        })
        .transpose()
        .at("outlier_detection")?;
    let mut protocol = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let mut idle_timeout = None;
    let mut max_requests_per_connection = 0;
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_OPTIONS {
            return Err(FieldError::new(path, "unsupported protocol options"));
        }
        let o: HttpProtocolOptions =
            unpack(any).map_err(|e| FieldError::new(path.clone(), e.to_string()))?;
        protocol = match &o.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                Some(_) => {
                    return Err(FieldError::new(
                        format!("{path}.explicit_http_config"),
                        "HTTP/3 upstreams are not supported",
                    ));
                }
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                UpstreamProtocol::UseDownstream
            }
            Some(_) => {
                return Err(FieldError::new(
                    format!("{path}.auto_config"),
                    "auto protocol selection is not supported",
                ));
            }
            None => protocol,
        };
        if let Some(common) = &o.common_http_protocol_options {
            idle_timeout =
                opt_nonzero_duration(common.idle_timeout.as_ref(), "idle_timeout").at(&path)?;
            max_requests_per_connection = common.max_requests_per_connection.map_or(0, |n| n.value);
        }
    }
    let healthy_panic_threshold_percent = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold)
        .map_or(50.0, |p| p.value);
    Ok(Cluster {
        name: c.name.clone(),
        discovery,
        lb,
        connect_timeout,
        circuit_breakers,
        outlier_detection,
        protocol,
        idle_timeout,
        max_requests_per_connection,
        healthy_panic_threshold_percent,
        istio: c
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get("istio"))
            .map(istio_meta),
    })
}

fn dns_host(e: &keel_proto::envoy::config::endpoint::v3::LbEndpoint) -> Result<(String, u16)> {
    use keel_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return Err(FieldError::new("endpoint", "is required"));
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err(FieldError::new(
            "endpoint.address",
            "must be a socket address",
        ));
    };
    Ok((
        sa.address.clone(),
        port(sa).at("endpoint.address.socket_address")?,
    ))
}

fn istio_meta(s: &Struct) -> IstioClusterMeta {
    let str_of = |s: &Struct, k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => v.clone(),
        _ => String::new(),
    };
    let services = match s.fields.get("services").and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StructValue(svc)) => Some(ServiceRef {
                    host: str_of(svc, "host"),
                    name: str_of(svc, "name"),
                    namespace: str_of(svc, "namespace"),
                }),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    IstioClusterMeta {
        services,
        default_original_port: str_of(s, "default_original_port").parse().ok(),
    }
}
