//! What one client may see, with Istio's precedence rules.
//!
//! - Services: visible when their `exportTo` admits the client's namespace
//!   and the client's Sidecar resource (if any) lists them as egress hosts.
//! - VirtualServices: `exportTo`, bound to the reserved `mesh` gateway (or,
//!   for routers, to the client's gateways); for one host the one in the
//!   client's namespace wins, then the service's namespace, then name order.
//! - DestinationRules: the same precedence, then the root namespace.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::networking::{DestinationRule, Gateway, Sidecar, VirtualService};
use crate::model::registry::{ExportTo, ServiceInfo, host_matches};
use crate::model::store::Snapshot;
use crate::xds::NodeInfo;
use crate::xds::node::ProxyType;

/// The view of one snapshot from one client.
pub struct Scope<'a> {
    /// The config.
    pub snap: &'a Snapshot,
    /// The client.
    pub node: &'a NodeInfo,
    /// Services the client may call, in hostname order.
    pub services: Vec<&'a Arc<ServiceInfo>>,
    by_host: HashMap<&'a str, &'a Arc<ServiceInfo>>,
    /// Whether traffic to unknown destinations passes through (`ALLOW_ANY`)
    /// or is dropped (`REGISTRY_ONLY`).
    pub allow_any: bool,
    /// Gateways this client serves (`namespace/name`), for routers.
    pub gateways: Vec<&'a Arc<Gateway>>,
}

impl<'a> Scope<'a> {
    /// Computes the client's view.
    pub fn new(snap: &'a Snapshot, node: &'a NodeInfo) -> Self {
        let sidecar = find_sidecar(snap, node);
        let services: Vec<&Arc<ServiceInfo>> = snap
            .registry
            .visible(&node.namespace)
            .filter(|svc| sidecar.is_none_or(|sc| sidecar_admits(sc, node, svc)))
            .collect();
        let by_host = services.iter().map(|s| (s.hostname.as_str(), *s)).collect();
        let allow_any = sidecar
            .and_then(|sc| sc.spec.outbound_traffic_policy.as_ref())
            .is_none_or(|p| {
                p.mode != crate::model::networking::OutboundTrafficPolicyMode::RegistryOnly
            });
        let gateways = if node.proxy_type == ProxyType::Router {
            snap.config
                .gateways
                .iter()
                .filter(|g| labels_match(&g.spec.selector, &node.labels))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            snap,
            node,
            services,
            by_host,
            allow_any,
            gateways,
        }
    }

    /// The visible service with this hostname.
    pub fn service(&self, hostname: &str) -> Option<&'a Arc<ServiceInfo>> {
        self.by_host.get(hostname).copied()
    }

    /// Resolves a host written in an object in namespace `ns`.
    pub fn resolve(&self, host: &str, ns: &str) -> String {
        self.snap.resolve(host, ns)
    }

    /// The VirtualService bound to `gateway` (`mesh`, or `namespace/name`)
    /// that routes `hostname`, by Istio's precedence.
    pub fn virtual_service(
        &self,
        hostname: &str,
        service_ns: &str,
        gateway: &str,
    ) -> Option<&'a Arc<VirtualService>> {
        let all = &self.snap.config.virtual_services;
        let mut candidates: Vec<&Arc<VirtualService>> = self
            .snap
            .vs_hosts
            .candidates(hostname)
            .into_iter()
            .map(|i| &all[i])
            .filter(|vs| self.vs_visible(vs) && self.vs_bound_to(vs, gateway))
            .collect();
        candidates.sort_by_key(|vs| {
            let ns = ns_of(&vs.metadata);
            let exact = vs
                .spec
                .hosts
                .iter()
                .any(|h| self.resolve(h, ns) == hostname);
            (
                !exact,
                ns != self.node.namespace,
                ns != service_ns,
                ns.to_string(),
                vs.metadata.name.clone().unwrap_or_default(),
            )
        });
        candidates.first().copied()
    }

    /// VirtualServices bound to `gateway`, visible to the client.
    pub fn virtual_services_for_gateway(&self, gateway: &str) -> Vec<&'a Arc<VirtualService>> {
        self.snap
            .config
            .virtual_services
            .iter()
            .filter(|vs| self.vs_visible(vs) && self.vs_bound_to(vs, gateway))
            .collect()
    }

    /// The delegate VirtualService `namespace/name` (it has no hosts).
    pub fn delegate(&self, name: &str, namespace: &str) -> Option<&'a Arc<VirtualService>> {
        self.snap.config.virtual_services.iter().find(|vs| {
            vs.metadata.name.as_deref() == Some(name) && ns_of(&vs.metadata) == namespace
        })
    }

    fn vs_visible(&self, vs: &VirtualService) -> bool {
        ExportTo::parse(&vs.spec.export_to, ns_of(&vs.metadata)).allows(&self.node.namespace)
    }

    fn vs_bound_to(&self, vs: &VirtualService, gateway: &str) -> bool {
        let ns = ns_of(&vs.metadata);
        if vs.spec.gateways.is_empty() {
            return gateway == "mesh";
        }
        vs.spec
            .gateways
            .iter()
            .any(|g| qualify_gateway(g, ns) == gateway)
    }

    /// The DestinationRule for `hostname`, by Istio's precedence: the
    /// client's namespace, the service's namespace, then the root namespace.
    pub fn destination_rule(
        &self,
        hostname: &str,
        service_ns: &str,
    ) -> Option<&'a Arc<DestinationRule>> {
        let root = self.snap.root_namespace.as_str();
        let all = &self.snap.config.destination_rules;
        let mut candidates: Vec<&Arc<DestinationRule>> = self
            .snap
            .dr_hosts
            .candidates(hostname)
            .into_iter()
            .map(|i| &all[i])
            .filter(|dr| {
                let ns = ns_of(&dr.metadata);
                ExportTo::parse(&dr.spec.export_to, ns).allows(&self.node.namespace)
                    && dr.spec.workload_selector.as_ref().is_none_or(|sel| {
                        ns == self.node.namespace
                            && labels_match(&sel.match_labels, &self.node.labels)
                    })
            })
            .collect();
        candidates.sort_by_key(|dr| {
            let ns = ns_of(&dr.metadata);
            let exact = self.resolve(&dr.spec.host, ns) == hostname;
            let rank = if ns == self.node.namespace {
                0
            } else if ns == service_ns {
                1
            } else if ns == root {
                2
            } else {
                3
            };
            (
                rank,
                !exact,
                ns.to_string(),
                dr.metadata.name.clone().unwrap_or_default(),
            )
        });
        candidates.first().copied()
    }

    /// Services this client's workload implements, with the port mapping of
    /// its own endpoint: (service, service port, workload port).
    pub fn inbound(&self) -> Vec<(&'a Arc<ServiceInfo>, u32, u32)> {
        let mut out = Vec::new();
        let ip = self.node.ip.map(|ip| ip.to_string());
        for svc in self.snap.registry.services.values() {
            for ep in &svc.endpoints {
                let mine = ip.as_ref().is_some_and(|ip| ep.address == *ip)
                    || (!ep.workload.is_empty() && ep.workload == self.node.pod_name);
                if !mine {
                    continue;
                }
                for (svc_port, target) in &ep.ports {
                    out.push((svc, *svc_port, *target));
                }
            }
        }
        out.sort_by(|a, b| (a.2, &a.0.hostname).cmp(&(b.2, &b.0.hostname)));
        out.dedup_by(|a, b| a.2 == b.2 && a.0.hostname == b.0.hostname);
        out
    }
}

/// `namespace/name` for a gateway reference written in namespace `ns`.
pub fn qualify_gateway(g: &str, ns: &str) -> String {
    if g == "mesh" || g.contains('/') {
        g.to_string()
    } else {
        format!("{ns}/{g}")
    }
}

/// An object's namespace, `default` when unset.
pub fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// True when every selector label is on the workload.
pub fn labels_match(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn find_sidecar<'a>(snap: &'a Snapshot, node: &'a NodeInfo) -> Option<&'a Sidecar> {
    let sidecars = &snap.config.sidecars;
    let in_ns = |ns: &'a str| sidecars.iter().filter(move |s| ns_of(&s.metadata) == ns);
    in_ns(&node.namespace)
        .find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| labels_match(&sel.labels, &node.labels))
        })
        .or_else(|| in_ns(&node.namespace).find(|s| s.spec.workload_selector.is_none()))
        .or_else(|| in_ns(&snap.root_namespace).find(|s| s.spec.workload_selector.is_none()))
        .map(AsRef::as_ref)
}

fn sidecar_admits(sc: &Sidecar, node: &NodeInfo, svc: &ServiceInfo) -> bool {
    if sc.spec.egress.is_empty() {
        return true;
    }
    sc.spec.egress.iter().any(|eg| {
        eg.hosts.iter().any(|h| {
            let (ns, host) = h.split_once('/').unwrap_or(("*", h.as_str()));
            let ns_ok = match ns {
                "*" => true,
                "." => svc.namespace == node.namespace,
                "~" => false,
                other => svc.namespace == other,
            };
            ns_ok && (host == "*" || host_matches(host, &svc.hostname))
        })
    })
}
