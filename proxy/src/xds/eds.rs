//! EDS: Envoy `ClusterLoadAssignment` → [`Endpoints`], also used for the
//! load assignments static clusters carry.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use keel_proto::envoy::config::core::v3::{HealthStatus, Metadata, address};
use keel_proto::envoy::config::endpoint::v3 as pb;
use keel_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use keel_proto::google::protobuf::value::Kind;

use super::convert::{At, CollectExact, FieldError, Result};
use super::lds::port;
use crate::state::endpoint::{
    Endpoint, EndpointAddress, Endpoints, Health, Locality, LocalityEndpoints, WorkloadMeta,
};

/// Converts one load assignment.
pub fn load_assignment(la: &pb::ClusterLoadAssignment) -> Result<Endpoints> {
    let localities = la
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, l)| locality(l).at(format!("endpoints[{i}]")))
        .collect_exact()?;
    Ok(Endpoints {
        cluster_name: la.cluster_name.clone(),
        localities,
    })
}

fn locality(l: &pb::LocalityLbEndpoints) -> Result<LocalityEndpoints> {
    let endpoints = l
        .lb_endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(e).at(format!("lb_endpoints[{i}]")))
        .collect_exact()?;
    let loc = l.locality.clone().unwrap_or_default();
    Ok(LocalityEndpoints {
        locality: Locality {
            region: loc.region,
            zone: loc.zone,
            sub_zone: loc.sub_zone,
        },
        weight: l.load_balancing_weight.map_or(0, |w| w.value),
        priority: l.priority,
        endpoints,
    })
}

fn endpoint(e: &pb::LbEndpoint) -> Result<Endpoint> {
    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return Err(FieldError::new(
            "endpoint",
            "is required (named endpoints are not supported)",
        ));
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err(FieldError::new(
            "endpoint.address",
            "must be a socket address",
        ));
    };
    let port = port(sa).at("endpoint.address.socket_address")?;
    let address = match sa.address.parse::<IpAddr>() {
        Ok(ip) => EndpointAddress::Socket(SocketAddr::new(ip, port)),
        Err(_) if !sa.address.is_empty() => EndpointAddress::Host {
            host: sa.address.clone(),
            port,
        },
        Err(_) => {
            return Err(FieldError::new(
                "endpoint.address.socket_address.address",
                "is required",
            ));
        }
    };
    let health = match HealthStatus::try_from(e.health_status) {
        Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => Health::Unhealthy,
        Ok(HealthStatus::Draining) => Health::Draining,
        Ok(HealthStatus::Degraded) => Health::Degraded,
        _ => Health::Healthy,
    };
    let (labels, workload) = metadata(e.metadata.as_ref());
    Ok(Endpoint {
        address,
        weight: e.load_balancing_weight.map_or(1, |w| w.value.max(1)),
        health,
        labels,
        workload,
    })
}

fn metadata(m: Option<&Metadata>) -> (BTreeMap<String, String>, Option<WorkloadMeta>) {
    let Some(m) = m else {
        return (BTreeMap::new(), None);
    };
    let strings = |key: &str| -> BTreeMap<String, String> {
        m.filter_metadata
            .get(key)
            .map(|s| {
                s.fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let labels = strings("envoy.lb");
    let istio = strings("istio");
    let workload = (!istio.is_empty()).then(|| WorkloadMeta {
        workload: istio.get("workload").cloned().unwrap_or_default(),
        service_account: istio.get("service_account").cloned().unwrap_or_default(),
    });
    (labels, workload)
}
