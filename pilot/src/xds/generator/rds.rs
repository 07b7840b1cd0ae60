//! Route configurations: VirtualService HTTP routes translated to Envoy
//! routes on virtual hosts named `host:port`.
//!
//! Sidecars get one route configuration per HTTP port (named after the port)
//! with a virtual host per visible service listing all its aliases, plus
//! `allow_any` (or `block_all`) for unknown hosts. Routers get one per Gateway
//! server; proxyless gRPC clients one per `host:port` target. A host without a
//! VirtualService gets Istio's default route to `outbound|PORT||HOST`.

mod http;

use http::{destination_cluster, hash_policy, http_routes, retry};

use std::collections::BTreeSet;
use std::sync::Arc;

use keel_proto::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};

use super::cluster_name;
use super::scope::{Scope, labels_match, ns_of};
use super::util::{boolv, duration};
use crate::model::networking::Server;
use crate::model::registry::{Protocol, ServiceInfo, host_matches};
use crate::xds::Resource;
use crate::xds::node::{ClientFlavor, ProxyType};

/// Istio's default retry conditions when a route sets none.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Route configurations for the client (filtered to `names` when given).
pub fn route_configs(scope: &Scope<'_>, names: Option<&BTreeSet<String>>) -> Vec<Resource> {
    let configs = match (scope.node.flavor, scope.node.proxy_type) {
        (ClientFlavor::Grpc, _) => grpc_route_configs(scope, names),
        (ClientFlavor::Envoy, ProxyType::Router) => gateway_route_configs(scope),
        (ClientFlavor::Envoy, ProxyType::Sidecar) => sidecar_route_configs(scope),
    };
    configs
        .into_iter()
        .filter(|c| names.is_none_or(|n| n.contains(&c.name)))
        .map(|c| Resource::new(c.name.clone(), &c))
        .collect()
}

/// How routes are being built: for which port, gateway and client.
pub(crate) struct Ctx<'s, 'a> {
    scope: &'s Scope<'a>,
    port: u32,
    /// `mesh` or `namespace/name` of the gateway.
    gateway: String,
    grpc: bool,
}

fn sidecar_route_configs(scope: &Scope<'_>) -> Vec<RouteConfiguration> {
    let mut ports: BTreeSet<u32> = BTreeSet::new();
    for svc in &scope.services {
        for p in &svc.ports {
            if p.protocol.is_http() || p.protocol == Protocol::Auto {
                ports.insert(p.number);
            }
        }
    }
    ports
        .into_iter()
        .map(|port| {
            let ctx = Ctx {
                scope,
                port,
                gateway: "mesh".into(),
                grpc: false,
            };
            let mut vhosts: Vec<VirtualHost> = scope
                .services
                .iter()
                .filter(|s| {
                    s.port(port)
                        .is_some_and(|p| p.protocol.is_http() || p.protocol == Protocol::Auto)
                })
                .map(|svc| service_vhost(&ctx, svc))
                .collect();
            vhosts.push(catch_all(scope.allow_any));
            RouteConfiguration {
                name: port.to_string(),
                virtual_hosts: vhosts,
                validate_clusters: boolv(false),
                ..Default::default()
            }
        })
        .collect()
}

fn catch_all(allow_any: bool) -> VirtualHost {
    let (name, action) = if allow_any {
        (
            "allow_any",
            route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    super::PASSTHROUGH.into(),
                )),
                timeout: Some(duration(std::time::Duration::ZERO)),
                ..Default::default()
            }),
        )
    } else {
        (
            "block_all",
            route::Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        )
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(prefix_match("/")),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn prefix_match(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(p.to_string())),
        ..Default::default()
    }
}

/// The virtual host of one service on the context's port.
fn service_vhost(ctx: &Ctx<'_, '_>, svc: &ServiceInfo) -> VirtualHost {
    let port = ctx.port;
    let mut domains = Vec::new();
    for alias in svc.aliases(&ctx.scope.node.namespace) {
        domains.push(alias.clone());
        domains.push(format!("{alias}:{port}"));
    }
    for vip in &svc.addresses {
        if !vip.contains('/') {
            domains.push(vip.clone());
            domains.push(format!("{vip}:{port}"));
        }
    }
    let routes = match ctx
        .scope
        .virtual_service(&svc.hostname, &svc.namespace, &ctx.gateway)
    {
        Some(vs) => http_routes(ctx, vs),
        None => vec![default_route(ctx, svc)],
    };
    VirtualHost {
        name: format!("{}:{port}", svc.hostname),
        domains,
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

fn default_route(ctx: &Ctx<'_, '_>, svc: &ServiceInfo) -> Route {
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(
            "outbound",
            ctx.port,
            "",
            &svc.hostname,
        ))),
        ..Default::default()
    };
    if !ctx.grpc {
        action.timeout = Some(duration(std::time::Duration::ZERO));
        action.retry_policy = Some(retry(None, None, DEFAULT_RETRY_ON, 2, true));
    }
    // As Istio: the DestinationRule's consistent hash applies to the
    // default route too, not only to VirtualService routes.
    let whole_service = crate::model::networking::Destination {
        host: svc.hostname.clone(),
        subset: None,
        port: None,
    };
    action.hash_policy = hash_policy(ctx, &whole_service, &svc.namespace);
    Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    }
}

/// The route name of a gateway server: `http.PORT` for plaintext,
/// `https.PORT.PORTNAME.GATEWAY.NAMESPACE` for terminated TLS.
pub fn gateway_route_name(server: &Server, port: u32, gw: &str, ns: &str) -> String {
    if server.tls.is_some() {
        format!("https.{port}.{}.{gw}.{ns}", server.port.name)
    } else {
        format!("http.{port}")
    }
}

fn gateway_route_configs(scope: &Scope<'_>) -> Vec<RouteConfiguration> {
    let mut out: Vec<RouteConfiguration> = Vec::new();
    for gw in &scope.gateways {
        let gw_ns = ns_of(&gw.metadata);
        let gw_name = gw.metadata.name.clone().unwrap_or_default();
        let qualified = format!("{gw_ns}/{gw_name}");
        for server in &gw.spec.servers {
            let protocol = Protocol::parse(&server.port.protocol).unwrap_or(Protocol::Tcp);
            if !(protocol.is_http() || protocol == Protocol::Https) {
                continue;
            }
            let port = server.port.number;
            let name = gateway_route_name(server, port, &gw_name, gw_ns);
            let ctx = Ctx {
                scope,
                port,
                gateway: qualified.clone(),
                grpc: false,
            };
            let config = match out.iter_mut().find(|c| c.name == name) {
                Some(c) => c,
                None => {
                    out.push(RouteConfiguration {
                        name: name.clone(),
                        validate_clusters: boolv(false),
                        ..Default::default()
                    });
                    let last = out.len() - 1;
                    &mut out[last]
                }
            };
            if server.tls.as_ref().and_then(|t| t.https_redirect) == Some(true) {
                for host in server_hosts(server) {
                    config.virtual_hosts.push(VirtualHost {
                        name: format!("{host}:{port}"),
                        domains: vec![host.clone(), format!("{host}:{port}")],
                        require_tls: 1, // ALL: redirect plaintext to https.
                        routes: vec![default_404()],
                        ..Default::default()
                    });
                }
                continue;
            }
            for vs in scope.virtual_services_for_gateway(&qualified) {
                let vs_ns = ns_of(&vs.metadata);
                for h in &vs.spec.hosts {
                    let vs_host = scope.resolve(h, vs_ns);
                    // The virtual host is the intersection of the VirtualService
                    // host and the server host: the more specific of the two.
                    let host = server.hosts.iter().find_map(|sh| {
                        let (sns, shost) = sh.split_once('/').unwrap_or(("*", sh));
                        let ns_ok = sns == "*" || (sns == "." && vs_ns == gw_ns) || sns == vs_ns;
                        if !ns_ok {
                            None
                        } else if host_matches(shost, &vs_host) {
                            Some(vs_host.clone())
                        } else if host_matches(&vs_host, shost) {
                            Some(shost.to_string())
                        } else {
                            None
                        }
                    });
                    let Some(host) = host else { continue };
                    let vh_name = format!("{host}:{port}");
                    if config.virtual_hosts.iter().any(|v| v.name == vh_name) {
                        continue;
                    }
                    config.virtual_hosts.push(VirtualHost {
                        name: vh_name,
                        domains: vec![host.clone(), format!("{host}:{port}")],
                        routes: http_routes(&ctx, vs),
                        include_request_attempt_count: true,
                        ..Default::default()
                    });
                }
            }
        }
    }
    for c in &mut out {
        if c.virtual_hosts.is_empty() {
            c.virtual_hosts.push(VirtualHost {
                name: "blackhole:80".into(),
                domains: vec!["*".into()],
                routes: vec![default_404()],
                ..Default::default()
            });
        }
    }
    out
}

fn server_hosts(server: &Server) -> Vec<String> {
    server
        .hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_string())
        .collect()
}

fn default_404() -> Route {
    Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 404,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The `host:port` targets a proxyless gRPC client gets: the names it asked
/// for, or (for a wildcard request) every visible HTTP service port.
pub fn grpc_targets(scope: &Scope<'_>, names: Option<&BTreeSet<String>>) -> Vec<String> {
    match names {
        Some(set) => set.iter().cloned().collect(),
        None => scope
            .services
            .iter()
            .flat_map(|s| {
                s.ports
                    .iter()
                    .filter(|p| p.protocol.is_http() || p.protocol == Protocol::Auto)
                    .map(move |p| format!("{}:{}", s.hostname, p.number))
            })
            .collect(),
    }
}

/// Resolves a proxyless gRPC target `host:port` to a visible service port.
pub fn grpc_target<'a>(scope: &Scope<'a>, target: &str) -> Option<(&'a Arc<ServiceInfo>, u32)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u32 = port.parse().ok()?;
    let ns = &scope.node.namespace;
    let host = host.strip_prefix("xds:///").unwrap_or(host);
    scope
        .services
        .iter()
        .copied()
        .find(|s| s.aliases(ns).iter().any(|a| a == host) && s.port(port).is_some())
        .map(|s| (s, port))
}

fn grpc_route_configs(
    scope: &Scope<'_>,
    names: Option<&BTreeSet<String>>,
) -> Vec<RouteConfiguration> {
    grpc_targets(scope, names)
        .into_iter()
        .filter_map(|target| {
            let (svc, port) = grpc_target(scope, &target)?;
            let ctx = Ctx {
                scope,
                port,
                gateway: "mesh".into(),
                grpc: true,
            };
            let mut vh = service_vhost(&ctx, svc);
            let (host, _) = target.rsplit_once(':')?;
            for d in [host.to_string(), target.clone()] {
                if !vh.domains.contains(&d) {
                    vh.domains.push(d);
                }
            }
            vh.include_request_attempt_count = false;
            Some(RouteConfiguration {
                name: target,
                virtual_hosts: vec![vh],
                ..Default::default()
            })
        })
        .collect()
}

/// The cluster a TCP service port forwards to: the first destination of the
/// first matching VirtualService TCP route, or the service's own cluster.
pub fn tcp_cluster(scope: &Scope<'_>, svc: &ServiceInfo, port: u32) -> String {
    let ctx = Ctx {
        scope,
        port,
        gateway: "mesh".into(),
        grpc: false,
    };
    if let Some(vs) = scope.virtual_service(&svc.hostname, &svc.namespace, "mesh") {
        let ns = ns_of(&vs.metadata);
        for r in &vs.spec.tcp {
            let applies = r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == port)
                        && labels_match(&m.source_labels, &scope.node.labels)
                });
            if let Some(d) = r.route.first().filter(|_| applies) {
                return destination_cluster(&ctx, &d.destination, ns).0;
            }
        }
    }
    cluster_name("outbound", port, "", &svc.hostname)
}

/// TLS-passthrough and TCP routes of a gateway server: (SNI, cluster) pairs.
pub fn gateway_l4_routes(
    scope: &Scope<'_>,
    server: &Server,
    port: u32,
    gw: &str,
    gw_ns: &str,
) -> Vec<(Option<String>, String)> {
    let qualified = format!("{gw_ns}/{gw}");
    let ctx = Ctx {
        scope,
        port,
        gateway: qualified.clone(),
        grpc: false,
    };
    let hosts = server_hosts(server);
    let mut out = Vec::new();
    for vs in scope.virtual_services_for_gateway(&qualified) {
        let ns = ns_of(&vs.metadata);
        for r in &vs.spec.tls {
            for m in &r.matches {
                if m.port.is_some_and(|p| p != port) {
                    continue;
                }
                if let Some(d) = r.route.first() {
                    for sni in &m.sni_hosts {
                        if hosts.iter().any(|h| host_matches(h, sni) || h == "*") {
                            out.push((
                                Some(sni.clone()),
                                destination_cluster(&ctx, &d.destination, ns).0,
                            ));
                        }
                    }
                }
            }
        }
        for r in &vs.spec.tcp {
            let applies =
                r.matches.is_empty() || r.matches.iter().any(|m| m.port.is_none_or(|p| p == port));
            if let Some(d) = r.route.first().filter(|_| applies) {
                out.push((None, destination_cluster(&ctx, &d.destination, ns).0));
                break;
            }
        }
    }
    out
}
