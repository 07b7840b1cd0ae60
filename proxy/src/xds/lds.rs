//! LDS: Envoy `Listener` → [`state::Listener`](crate::state::Listener).
//!
//! Only what Keel implements is accepted: the original-destination, TLS and
//! HTTP inspectors, the HTTP connection manager (fault, CORS and router HTTP
//! filters; routes by ADS-delivered RDS or inline) and the TCP proxy to one
//! cluster. Anything else makes the listener unacceptable, with the field
//! named. API listeners (for proxyless gRPC clients) are skipped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use keel_proto::any::unpack;
use keel_proto::envoy::config::core::v3::{
    Address, DataSource, TransportSocket, address, config_source, data_source, socket_address,
    transport_socket,
};
use keel_proto::envoy::config::listener::v3 as pb;
use keel_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use keel_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use keel_proto::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use keel_proto::google::protobuf::Any;

use super::convert::{At, CollectExact, FieldError, Result};
use super::rds::route_table;
use crate::state::listener::{
    ChainAction, ChainMatch, Direction, DownstreamTls, FilterChain, HttpFilters, HttpManager,
    Inspectors, Listener, RouteSource, Source,
};

const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS: &str = "envoy.extensions.filters.http.cors.v3.Cors";
const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
const TLS_SOCKET: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// The well-known filter names Envoy accepts for the same extensions.
fn kind_of<'a>(name: &'a str, typed: Option<&'a Any>) -> &'a str {
    if let Some(any) = typed {
        return any.type_url.rsplit('/').next().unwrap_or_default();
    }
    match name {
        "envoy.filters.listener.original_dst" => ORIGINAL_DST,
        "envoy.filters.listener.tls_inspector" => TLS_INSPECTOR,
        "envoy.filters.listener.http_inspector" => HTTP_INSPECTOR,
        "envoy.filters.http.fault" => FAULT,
        "envoy.filters.http.cors" => CORS,
        "envoy.filters.http.router" => ROUTER,
        other => other,
    }
}

fn display_name<'a>(name: &'a str, typed: Option<&'a Any>) -> &'a str {
    if name.is_empty() {
        typed.map(|a| a.type_url.as_str()).unwrap_or("(unnamed)")
    } else {
        name
    }
}

/// Converts one listener; `Ok(None)` for an API listener, which a proxy ignores.
pub fn listener(l: &pb::Listener) -> Result<Option<Listener>> {
    if l.api_listener.is_some() {
        return Ok(None);
    }
    let address = socket_addr(l.address.as_ref()).at("address")?;
    let mut inspectors = Inspectors::default();
    for (i, f) in l.listener_filters.iter().enumerate() {
        let typed = match &f.config_type {
            Some(pb::listener_filter::ConfigType::TypedConfig(a)) => Some(a),
            Some(pb::listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(FieldError::new(
                    format!("listener_filters[{i}]"),
                    "config_discovery (ECDS) is not supported",
                ));
            }
            None => None,
        };
        match kind_of(&f.name, typed) {
            ORIGINAL_DST => inspectors.original_dst = true,
            TLS_INSPECTOR => inspectors.tls = true,
            HTTP_INSPECTOR => inspectors.http = true,
            _ => {
                return Err(FieldError::new(
                    format!("listener_filters[{i}]"),
                    format!(
                        "unsupported listener filter {:?}",
                        display_name(&f.name, typed)
                    ),
                ));
            }
        }
    }
    if l.filter_chain_matcher.is_some() {
        return Err(FieldError::new(
            "filter_chain_matcher",
            "unified filter chain matchers are not supported; use filter_chain_match",
        ));
    }
    let filter_chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| filter_chain(c).at(format!("filter_chains[{i}]")))
        .collect_exact()?;
    let default_chain = l
        .default_filter_chain
        .as_ref()
        .map(|c| filter_chain(c).at("default_filter_chain"))
        .transpose()?;
    let direction = match l.traffic_direction {
        1 => Direction::Inbound,
        2 => Direction::Outbound,
        _ => Direction::Unspecified,
    };
    Ok(Some(Listener {
        name: l.name.clone(),
        address,
        use_original_dst: l.use_original_dst.is_some_and(|b| b.value),
        bind_to_port: l.bind_to_port.is_none_or(|b| b.value),
        direction,
        inspectors,
        filter_chains,
        default_chain,
    }))
}

/// An IP socket address.
pub fn socket_addr(a: Option<&Address>) -> Result<SocketAddr> {
    let Some(address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(FieldError::new(
            "",
            "must be a socket address (pipes and internal addresses are not supported)",
        ));
    };
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        FieldError::new(
            "socket_address.address",
            format!("{:?} is not an IP address", sa.address),
        )
    })?;
    Ok(SocketAddr::new(ip, port(sa).at("socket_address")?))
}

/// The numeric port of a socket address.
pub fn port(sa: &keel_proto::envoy::config::core::v3::SocketAddress) -> Result<u16> {
    match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| FieldError::new("port_value", format!("{p} is not a port"))),
        Some(socket_address::PortSpecifier::NamedPort(n)) => Err(FieldError::new(
            "named_port",
            format!("named port {n:?} is not supported"),
        )),
        None => Err(FieldError::new("port_value", "is required")),
    }
}

fn filter_chain(c: &pb::FilterChain) -> Result<FilterChain> {
    let matcher = match &c.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => chain_match(m).at("filter_chain_match")?,
    };
    let tls = c
        .transport_socket
        .as_ref()
        .map(|t| downstream_tls(t).at("transport_socket"))
        .transpose()?
        .flatten();
    let Some((last, rest)) = c.filters.split_last() else {
        return Err(FieldError::new(
            "filters",
            "a chain needs a terminal filter",
        ));
    };
    if let Some((i, f)) = rest.iter().enumerate().next() {
        let typed = network_typed(f).at(format!("filters[{i}]"))?;
        return Err(FieldError::new(
            format!("filters[{i}]"),
            format!(
                "unsupported network filter {:?}",
                display_name(&f.name, typed)
            ),
        ));
    }
    let i = rest.len();
    let typed = network_typed(last).at(format!("filters[{i}]"))?;
    let action = match (kind_of(&last.name, typed), typed) {
        (HCM, Some(any)) => {
            let hcm: HttpConnectionManager = unpack(any)
                .map_err(|e| FieldError::new("typed_config", e.to_string()))
                .at(format!("filters[{i}]"))?;
            ChainAction::Http(http_manager(&hcm).at(format!("filters[{i}].typed_config"))?)
        }
        (TCP_PROXY, Some(any)) => {
            let tcp: TcpProxy = unpack(any)
                .map_err(|e| FieldError::new("typed_config", e.to_string()))
                .at(format!("filters[{i}]"))?;
            let cluster = match tcp.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => c,
                Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
                    return Err(FieldError::new(
                        format!("filters[{i}].typed_config.weighted_clusters"),
                        "weighted TCP routing is not supported yet; use one cluster",
                    ));
                }
                _ => {
                    return Err(FieldError::new(
                        format!("filters[{i}].typed_config.cluster"),
                        "is required",
                    ));
                }
            };
            ChainAction::Tcp {
                cluster,
                stat_prefix: tcp.stat_prefix,
            }
        }
        _ => {
            return Err(FieldError::new(
                format!("filters[{i}]"),
                format!(
                    "unsupported network filter {:?}",
                    display_name(&last.name, typed)
                ),
            ));
        }
    };
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        tls,
        action,
    })
}

fn network_typed(f: &pb::Filter) -> Result<Option<&Any>> {
    match &f.config_type {
        Some(pb::filter::ConfigType::TypedConfig(a)) => Ok(Some(a)),
        Some(pb::filter::ConfigType::ConfigDiscovery(_)) => Err(FieldError::new(
            "config_discovery",
            "filter config discovery (ECDS) is not supported",
        )),
        None => Ok(None),
    }
}

fn chain_match(m: &pb::FilterChainMatch) -> Result<ChainMatch> {
    let unsupported = |field: &str| {
        Err(FieldError::new(
            field,
            "matching on it is not supported yet",
        ))
    };
    if !m.prefix_ranges.is_empty() {
        return unsupported("prefix_ranges");
    }
    if !m.source_prefix_ranges.is_empty() || !m.direct_source_prefix_ranges.is_empty() {
        return unsupported("source_prefix_ranges");
    }
    if !m.source_ports.is_empty() {
        return unsupported("source_ports");
    }
    if m.source_type != 0 {
        return unsupported("source_type");
    }
    let destination_port = m
        .destination_port
        .map(|p| {
            u16::try_from(p.value).map_err(|_| {
                FieldError::new("destination_port", format!("{} is not a port", p.value))
            })
        })
        .transpose()?;
    Ok(ChainMatch {
        destination_port,
        server_names: m
            .server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        application_protocols: m.application_protocols.clone(),
        transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
    })
}

fn downstream_tls(t: &TransportSocket) -> Result<Option<DownstreamTls>> {
    let typed = match &t.config_type {
        Some(transport_socket::ConfigType::TypedConfig(a)) => a,
        None if t.name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => return Err(FieldError::new("typed_config", "is required")),
    };
    let kind = typed.type_url.rsplit('/').next().unwrap_or_default();
    if kind == "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" {
        return Ok(None);
    }
    if kind != TLS_SOCKET {
        return Err(FieldError::new(
            "",
            format!(
                "unsupported transport socket {:?}",
                display_name(&t.name, Some(typed))
            ),
        ));
    }
    let ctx: DownstreamTlsContext =
        unpack(typed).map_err(|e| FieldError::new("typed_config", e.to_string()))?;
    let common = ctx.common_tls_context.unwrap_or_default();
    if !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(FieldError::new(
            "typed_config.common_tls_context.tls_certificate_sds_secret_configs",
            "SDS is not supported yet; give certificate files",
        ));
    }
    let [cert] = common.tls_certificates.as_slice() else {
        return Err(FieldError::new(
            "typed_config.common_tls_context.tls_certificates",
            format!(
                "exactly one certificate is supported, got {}",
                common.tls_certificates.len()
            ),
        ));
    };
    let path = "typed_config.common_tls_context.tls_certificates[0]";
    Ok(Some(DownstreamTls {
        cert_chain: data_source(cert.certificate_chain.as_ref())
            .at(format!("{path}.certificate_chain"))?,
        private_key: data_source(cert.private_key.as_ref()).at(format!("{path}.private_key"))?,
        require_client_certificate: ctx.require_client_certificate.is_some_and(|b| b.value),
    }))
}

fn data_source(d: Option<&DataSource>) -> Result<Source> {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::Filename(f)) => Ok(Source::File(f.clone())),
        Some(data_source::Specifier::InlineString(s)) => Ok(Source::Inline(s.clone())),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map(Source::Inline)
            .map_err(|_| FieldError::new("inline_bytes", "must be UTF-8 PEM")),
        Some(data_source::Specifier::EnvironmentVariable(_)) => Err(FieldError::new(
            "environment_variable",
            "is not supported; use a file",
        )),
        None => Err(FieldError::new("", "is required")),
    }
}

fn http_manager(hcm: &HttpConnectionManager) -> Result<HttpManager> {
    let mut filters = HttpFilters::default();
    let count = hcm.http_filters.len();
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let path = format!("http_filters[{i}]");
        let typed = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(FieldError::new(
                    path,
                    "filter config discovery (ECDS) is not supported",
                ));
            }
            None => None,
        };
        if f.disabled {
            continue;
        }
        match kind_of(&f.name, typed) {
            FAULT => filters.fault = true,
            CORS => filters.cors = true,
            ROUTER if i + 1 == count => filters.router = true,
            ROUTER => {
                return Err(FieldError::new(
                    path,
                    "the router filter must be the last HTTP filter",
                ));
            }
            _ if f.is_optional => {}
            _ => {
                return Err(FieldError::new(
                    path,
                    format!("unsupported HTTP filter {:?}", display_name(&f.name, typed)),
                ));
            }
        }
    }
    if !filters.router {
        return Err(FieldError::new(
            "http_filters",
            "the last HTTP filter must be envoy.filters.http.router",
        ));
    }
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            match rds
                .config_source
                .as_ref()
                .and_then(|c| c.config_source_specifier.as_ref())
            {
                Some(config_source::ConfigSourceSpecifier::Ads(_)) => {}
                _ => {
                    return Err(FieldError::new(
                        "rds.config_source",
                        "only ADS is supported (config_source: {ads: {}})",
                    ));
                }
            }
            if rds.route_config_name.is_empty() {
                return Err(FieldError::new("rds.route_config_name", "is required"));
            }
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(route_table(rc).at("route_config")?))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(FieldError::new(
                "scoped_routes",
                "scoped routes are not supported",
            ));
        }
        None => return Err(FieldError::new("", "rds or route_config is required")),
    };
    Ok(HttpManager {
        stat_prefix: hcm.stat_prefix.clone(),
        routes,
        filters,
    })
}
