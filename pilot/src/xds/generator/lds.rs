//! Listeners.
//!
//! - Sidecars: `virtualOutbound` (0.0.0.0:15001, original destination) hands
//!   each captured connection to the listener for its original port:
//!   `0.0.0.0_PORT` for HTTP ports (routes from RDS `PORT`), `VIP_PORT` for TCP
//!   services; `virtualInbound` (0.0.0.0:15006) has one filter chain per port
//!   of the workload's own services, then passthrough.
//! - Routers: one bound listener per Gateway server port, HTTP routes from
//!   RDS `http.PORT` (or `https.PORT.NAME.GATEWAY.NAMESPACE` for terminated TLS).
//! - Proxyless gRPC: an API listener per `host:port` asked for.

use std::collections::{BTreeMap, BTreeSet};

use keel_proto::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use keel_proto::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter,
};
use keel_proto::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use keel_proto::envoy::extensions::filters::http::cors::v3::Cors;
use keel_proto::envoy::extensions::filters::http::fault::v3::HttpFault;
use keel_proto::envoy::extensions::filters::http::router::v3::Router;
use keel_proto::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use keel_proto::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use keel_proto::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use keel_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use keel_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use keel_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    common_tls_context,
};
use keel_proto::google::protobuf::Any;

use super::rds::{self, gateway_route_name};
use super::scope::Scope;
use super::util::{ads, boolv, duration, socket};
use super::{BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, cluster_name};
use crate::model::networking::ServerTlsMode;
use crate::model::registry::Protocol;
use crate::xds::Resource;
use crate::xds::node::{ClientFlavor, ProxyType};

/// The outbound capture port.
pub const OUTBOUND_PORT: u32 = 15001;
/// The inbound capture port.
pub const INBOUND_PORT: u32 = 15006;

/// Listeners for the client.
pub fn listeners(scope: &Scope<'_>, names: Option<&BTreeSet<String>>) -> Vec<Resource> {
    match (scope.node.flavor, scope.node.proxy_type) {
        (ClientFlavor::Grpc, _) => grpc_listeners(scope, names),
        (ClientFlavor::Envoy, ProxyType::Router) => gateway_listeners(scope),
        (ClientFlavor::Envoy, ProxyType::Sidecar) => sidecar_listeners(scope),
    }
}

fn typed(name: &str, any: Any) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any)),
    }
}

fn listener_filter(name: &str, any: Any) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// The TLS inspector (SNI for filter-chain matching), when `needed`.
fn tls_inspector(needed: bool) -> Vec<ListenerFilter> {
    needed
        .then(|| {
            listener_filter(
                "envoy.filters.listener.tls_inspector",
                keel_proto::any::pack(&TlsInspector::default()),
            )
        })
        .into_iter()
        .collect()
}

fn http_filter(name: &str, any: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// The HTTP filters of every connection manager: fault injection and CORS
/// (configured per route), then the router.
fn http_filters(grpc: bool) -> Vec<HttpFilter> {
    let mut filters = vec![http_filter(
        "envoy.filters.http.fault",
        keel_proto::any::pack(&HttpFault::default()),
    )];
    if !grpc {
        filters.push(http_filter(
            "envoy.filters.http.cors",
            keel_proto::any::pack(&Cors::default()),
        ));
    }
    filters.push(http_filter(
        "envoy.filters.http.router",
        keel_proto::any::pack(&Router::default()),
    ));
    filters
}

fn hcm(
    stat_prefix: &str,
    routes: http_connection_manager::RouteSpecifier,
    grpc: bool,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(routes),
        http_filters: http_filters(grpc),
        ..Default::default()
    }
}

fn rds_hcm(stat_prefix: &str, route_name: &str, grpc: bool) -> HttpConnectionManager {
    hcm(
        stat_prefix,
        http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_string(),
        }),
        grpc,
    )
}

fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    typed(
        "envoy.filters.network.tcp_proxy",
        keel_proto::any::pack(&TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        }),
    )
}

fn hcm_filter(h: &HttpConnectionManager) -> Filter {
    typed(
        "envoy.filters.network.http_connection_manager",
        keel_proto::any::pack(h),
    )
}

fn sidecar_listeners(scope: &Scope<'_>) -> Vec<Resource> {
    let mut out = Vec::new();
    let fallback = if scope.allow_any {
        PASSTHROUGH
    } else {
        BLACKHOLE
    };
    out.push(Resource::new(
        "virtualOutbound",
        &Listener {
            name: "virtualOutbound".into(),
            address: Some(socket("0.0.0.0", OUTBOUND_PORT)),
            use_original_dst: boolv(true),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: vec![listener_filter(
                "envoy.filters.listener.original_dst",
                keel_proto::any::pack(&OriginalDst::default()),
            )],
            filter_chains: vec![FilterChain {
                name: "virtualOutbound-catchall-tcp".into(),
                filters: vec![tcp_proxy_filter(fallback, fallback)],
                ..Default::default()
            }],
            ..Default::default()
        },
    ));

    // Outbound listeners per port: HTTP ports share 0.0.0.0_PORT; TCP
    // services get VIP_PORT (or 0.0.0.0_PORT when they have no VIP and no
    // HTTP service uses the port).
    let mut http_ports: BTreeMap<u32, bool> = BTreeMap::new(); // port → any Auto
    let mut tcp: BTreeMap<String, (String, u32, Protocol)> = BTreeMap::new();
    for svc in &scope.services {
        for port in &svc.ports {
            if port.protocol.is_http() || port.protocol == Protocol::Auto {
                let auto = http_ports.entry(port.number).or_default();
                *auto |= port.protocol == Protocol::Auto;
            } else if port.protocol.is_tcp() {
                let cluster = rds::tcp_cluster(scope, svc, port.number);
                let vips: Vec<&String> =
                    svc.addresses.iter().filter(|a| !a.contains('/')).collect();
                if vips.is_empty() {
                    tcp.entry(format!("0.0.0.0_{}", port.number))
                        .or_insert_with(|| ("0.0.0.0".into(), port.number, port.protocol));
                    let _ = cluster;
                } else {
                    for vip in vips {
                        tcp.insert(
                            format!("{vip}_{}", port.number),
                            (vip.clone(), port.number, port.protocol),
                        );
                    }
                }
            }
        }
    }
    for (port, auto) in &http_ports {
        let name = format!("0.0.0.0_{port}");
        let h = rds_hcm(
            &format!("outbound_0.0.0.0_{port}"),
            &port.to_string(),
            false,
        );
        let mut chains = vec![FilterChain {
            name: format!("0.0.0.0_{port}-http"),
            filter_chain_match: auto.then(|| FilterChainMatch {
                application_protocols: vec!["http/1.0".into(), "http/1.1".into(), "h2c".into()],
                ..Default::default()
            }),
            filters: vec![hcm_filter(&h)],
            ..Default::default()
        }];
        let mut listener_filters = Vec::new();
        if *auto {
            listener_filters.push(listener_filter(
                "envoy.filters.listener.http_inspector",
                keel_proto::any::pack(&HttpInspector::default()),
            ));
            chains.push(FilterChain {
                name: format!("0.0.0.0_{port}-tcp"),
                filters: vec![tcp_proxy_filter(fallback, fallback)],
                ..Default::default()
            });
        }
        out.push(Resource::new(
            name.clone(),
            &Listener {
                name,
                address: Some(socket("0.0.0.0", *port)),
                bind_to_port: boolv(false),
                traffic_direction: TrafficDirection::Outbound as i32,
                listener_filters,
                filter_chains: chains,
                ..Default::default()
            },
        ));
    }
    for (name, (ip, port, _)) in tcp {
        if ip == "0.0.0.0" && http_ports.contains_key(&port) {
            continue; // the HTTP listener owns this port; TCP needs a VIP.
        }
        let chains = tcp_chains(scope, &ip, port);
        if chains.is_empty() {
            continue;
        }
        let tls = chains.iter().any(|c| c.filter_chain_match.is_some());
        out.push(Resource::new(
            name.clone(),
            &Listener {
                name,
                address: Some(socket(&ip, port)),
                bind_to_port: boolv(false),
                traffic_direction: TrafficDirection::Outbound as i32,
                listener_filters: tls_inspector(tls),
                filter_chains: chains,
                ..Default::default()
            },
        ));
    }
    out.push(inbound_listener(scope));
    out
}

/// Filter chains for TCP/TLS services on `ip:port`: TLS services by SNI,
/// then a TCP service as the default.
fn tcp_chains(scope: &Scope<'_>, ip: &str, port: u32) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    let mut default = None;
    for svc in &scope.services {
        let Some(p) = svc.port(port) else { continue };
        let on_ip = if ip == "0.0.0.0" {
            svc.addresses.iter().all(|a| a.contains('/'))
        } else {
            svc.addresses.iter().any(|a| a == ip)
        };
        if !on_ip || !p.protocol.is_tcp() {
            continue;
        }
        let cluster = rds::tcp_cluster(scope, svc, port);
        let stat = format!("outbound|{port}||{}", svc.hostname);
        if matches!(p.protocol, Protocol::Tls | Protocol::Https) {
            chains.push(FilterChain {
                name: stat.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![svc.hostname.clone()],
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(&stat, &cluster)],
                ..Default::default()
            });
        } else if default.is_none() {
            default = Some(FilterChain {
                name: stat.clone(),
                filters: vec![tcp_proxy_filter(&stat, &cluster)],
                ..Default::default()
            });
        }
    }
    chains.extend(default);
    chains
}

fn inbound_listener(scope: &Scope<'_>) -> Resource {
    let mut chains = Vec::new();
    let mut seen = BTreeSet::new();
    for (svc, svc_port, target) in scope.inbound() {
        if !seen.insert(target) {
            continue;
        }
        let protocol = svc.port(svc_port).map_or(Protocol::Tcp, |p| p.protocol);
        let cluster = cluster_name("inbound", target, "", "");
        let filter = if protocol.is_http() {
            let route_config = RouteConfiguration {
                name: cluster.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|http|{target}"),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        name: "default".into(),
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                cluster.clone(),
                            )),
                            timeout: Some(duration(std::time::Duration::ZERO)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                validate_clusters: boolv(false),
                ..Default::default()
            };
            hcm_filter(&hcm(
                &format!("inbound_0.0.0.0_{target}"),
                http_connection_manager::RouteSpecifier::RouteConfig(route_config),
                false,
            ))
        } else {
            tcp_proxy_filter(&cluster, &cluster)
        };
        chains.push(FilterChain {
            name: cluster.clone(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: super::util::u32v(target),
                ..Default::default()
            }),
            filters: vec![filter],
            ..Default::default()
        });
    }
    chains.push(FilterChain {
        name: "virtualInbound-catchall-tcp".into(),
        filters: vec![tcp_proxy_filter(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH)],
        ..Default::default()
    });
    Resource::new(
        "virtualInbound",
        &Listener {
            name: "virtualInbound".into(),
            address: Some(socket("0.0.0.0", INBOUND_PORT)),
            use_original_dst: boolv(true),
            traffic_direction: TrafficDirection::Inbound as i32,
            listener_filters: vec![listener_filter(
                "envoy.filters.listener.original_dst",
                keel_proto::any::pack(&OriginalDst::default()),
            )],
            filter_chains: chains,
            ..Default::default()
        },
    )
}

fn gateway_listeners(scope: &Scope<'_>) -> Vec<Resource> {
    // Servers grouped by port: one bound listener per port.
    let mut by_port: BTreeMap<u32, Vec<FilterChain>> = BTreeMap::new();
    for gw in &scope.gateways {
        let gw_ns = super::scope::ns_of(&gw.metadata);
        let gw_name = gw.metadata.name.clone().unwrap_or_default();
        for server in &gw.spec.servers {
            let port = server.port.number;
            let protocol = Protocol::parse(&server.port.protocol).unwrap_or(Protocol::Tcp);
            let tls_mode = server.tls.as_ref().map(|t| t.mode);
            let chains = by_port.entry(port).or_default();
            let stat = format!("outbound_0.0.0.0_{port}");
            match (protocol, tls_mode) {
                (Protocol::Https, Some(ServerTlsMode::Simple | ServerTlsMode::Mutual))
                | (
                    Protocol::Http | Protocol::Http2 | Protocol::Grpc,
                    Some(ServerTlsMode::Simple | ServerTlsMode::Mutual),
                ) => {
                    let route = gateway_route_name(server, port, &gw_name, gw_ns);
                    chains.push(FilterChain {
                        name: route.clone(),
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: server_sni(&server.hosts),
                            ..Default::default()
                        }),
                        filters: vec![hcm_filter(&rds_hcm(&stat, &route, false))],
                        transport_socket: server.tls.as_ref().map(downstream_tls),
                        ..Default::default()
                    });
                }
                (p, _) if p.is_http() => {
                    if chains.iter().any(|c| c.filter_chain_match.is_none()) {
                        continue; // one plain HTTP chain per port serves every host.
                    }
                    let route = gateway_route_name(server, port, &gw_name, gw_ns);
                    chains.push(FilterChain {
                        name: route.clone(),
                        filters: vec![hcm_filter(&rds_hcm(&stat, &route, false))],
                        ..Default::default()
                    });
                }
                _ => {
                    // TLS passthrough and TCP: forward to the first matching route's destination.
                    for (sni, cluster) in
                        rds::gateway_l4_routes(scope, server, port, &gw_name, gw_ns)
                    {
                        chains.push(FilterChain {
                            name: format!("{port}-{cluster}"),
                            filter_chain_match: sni.map(|s| FilterChainMatch {
                                server_names: vec![s],
                                ..Default::default()
                            }),
                            filters: vec![tcp_proxy_filter(&stat, &cluster)],
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    by_port
        .into_iter()
        .filter(|(_, chains)| !chains.is_empty())
        .map(|(port, chains)| {
            let name = format!("0.0.0.0_{port}");
            let tls = chains.iter().any(|c| {
                c.filter_chain_match
                    .as_ref()
                    .is_some_and(|m| !m.server_names.is_empty())
            });
            Resource::new(
                name.clone(),
                &Listener {
                    name,
                    address: Some(socket("0.0.0.0", port)),
                    traffic_direction: TrafficDirection::Outbound as i32,
                    listener_filters: tls_inspector(tls),
                    filter_chains: chains,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// SNI names for a server's hosts (`ns/host` → `host`; `*` matches all).
fn server_sni(hosts: &[String]) -> Vec<String> {
    let names: Vec<String> = hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_string())
        .filter(|h| h != "*")
        .collect();
    names
}

fn file(path: &Option<String>) -> Option<DataSource> {
    path.as_ref().map(|p| DataSource {
        specifier: Some(data_source::Specifier::Filename(p.clone())),
        ..Default::default()
    })
}

/// TLS termination from file-mounted certificates (enforced by the proxy in
/// the security issue; recorded here so the config is complete).
fn downstream_tls(tls: &crate::model::networking::ServerTlsSettings) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: file(&tls.server_certificate),
                private_key: file(&tls.private_key),
                ..Default::default()
            }],
            validation_context_type: (tls.mode == ServerTlsMode::Mutual).then(|| {
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: file(&tls.ca_certificates),
                        ..Default::default()
                    },
                )
            }),
            ..Default::default()
        }),
        require_client_certificate: boolv(tls.mode == ServerTlsMode::Mutual),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(
            keel_proto::any::pack(&ctx),
        )),
    }
}

/// API listeners for proxyless gRPC: one per `host:port` asked for (or, for
/// a wildcard request, per visible HTTP service port).
fn grpc_listeners(scope: &Scope<'_>, names: Option<&BTreeSet<String>>) -> Vec<Resource> {
    rds::grpc_targets(scope, names)
        .into_iter()
        .filter(|t| rds::grpc_target(scope, t).is_some())
        .map(|target| {
            let h = rds_hcm(&target, &target, true);
            Resource::new(
                target.clone(),
                &Listener {
                    name: target,
                    api_listener: Some(ApiListener {
                        api_listener: Some(keel_proto::any::pack(&h)),
                    }),
                    ..Default::default()
                },
            )
        })
        .collect()
}
