//! Endpoints: one ClusterLoadAssignment per EDS cluster, endpoints grouped by
//! locality with locality weights (proxyless gRPC ignores localities without
//! one), endpoint weights, health, and the workload's labels as metadata.

use std::collections::{BTreeMap, BTreeSet};

use keel_proto::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality, Metadata};
use keel_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};

use super::cache::{Memo, MemoKey};
use super::scope::{Scope, labels_match};
use super::util::{map, socket, string_struct, u32v};
use super::{cluster_name, parse_cluster_name};
use crate::model::networking::Resolution;
use crate::model::registry::{Locality, ServiceInfo, ServiceSource};
use crate::xds::Resource;

/// Load assignments for the EDS clusters the client asked for (or all).
pub fn load_assignments(
    scope: &Scope<'_>,
    names: Option<&BTreeSet<String>>,
    memo: Option<&Memo>,
) -> Vec<Resource> {
    let mut out = Vec::new();
    let wanted = |n: &str| names.is_none_or(|set| set.contains(n));
    for svc in &scope.services {
        if let ServiceSource::ServiceEntry { resolution, .. } = &svc.source
            && !matches!(resolution, Resolution::Static)
            && scope.node.flavor != crate::xds::node::ClientFlavor::Grpc
        {
            continue; // DNS and passthrough clusters carry no EDS.
        }
        let dr = scope.destination_rule(&svc.hostname, &svc.namespace);
        let rule = dr.map_or(0, |d| std::sync::Arc::as_ptr(d) as usize);
        let make = |name: String, port: u32, subset: Option<&BTreeMap<String, String>>| {
            let build = || Resource::new(name.clone(), &assignment(&name, svc, port, subset));
            match memo {
                Some(m) => m.get_or_make(
                    MemoKey {
                        kind: "eds",
                        name: name.clone(),
                        rule,
                        flavor: scope.node.flavor,
                    },
                    build,
                ),
                None => build(),
            }
        };
        for port in &svc.ports {
            let name = cluster_name("outbound", port.number, "", &svc.hostname);
            if wanted(&name) {
                out.push(make(name, port.number, None));
            }
            for subset in dr.iter().flat_map(|d| &d.spec.subsets) {
                let name = cluster_name("outbound", port.number, &subset.name, &svc.hostname);
                if wanted(&name) {
                    out.push(make(name, port.number, Some(&subset.labels)));
                }
            }
        }
    }
    // A client may ask for a cluster that is gone: it simply gets nothing.
    out.retain(|r| parse_cluster_name(&r.name).is_some());
    out
}

/// The load assignment of `svc`'s endpoints on `port`, optionally only those
/// carrying every label in `subset`.
pub fn assignment(
    name: &str,
    svc: &ServiceInfo,
    port: u32,
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&Locality, Vec<LbEndpoint>> = BTreeMap::new();
    for ep in &svc.endpoints {
        if subset.is_some_and(|sel| !labels_match(sel, &ep.labels)) {
            continue;
        }
        let Some(target) = ep.ports.get(&port) else {
            continue;
        };
        let meta = Metadata {
            filter_metadata: map([
                (
                    "istio".to_string(),
                    string_struct([
                        ("workload", ep.workload.clone()),
                        ("service_account", ep.service_account.clone()),
                    ]),
                ),
                (
                    "envoy.lb".to_string(),
                    string_struct(ep.labels.iter().map(|(k, v)| (k.as_str(), v.clone()))),
                ),
            ]),
            ..Default::default()
        };
        by_locality
            .entry(&ep.locality)
            .or_default()
            .push(LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket(&ep.address, *target)),
                    ..Default::default()
                })),
                health_status: if ep.healthy {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                } as i32,
                load_balancing_weight: u32v(ep.weight.max(1)),
                metadata: Some(meta),
            });
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(loc, eps)| {
                let weight: u32 = eps
                    .iter()
                    .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                    .sum();
                LocalityLbEndpoints {
                    locality: Some(EnvoyLocality {
                        region: loc.region.clone(),
                        zone: loc.zone.clone(),
                        sub_zone: loc.subzone.clone(),
                    }),
                    lb_endpoints: eps,
                    load_balancing_weight: u32v(weight.max(1)),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}
