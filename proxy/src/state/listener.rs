//! Listeners in Keel's representation: where to accept connections, how to
//! pick a filter chain, and what the chosen chain does (HTTP routing or TCP
//! proxying). API listeners (proxyless gRPC) never reach this type.

use std::net::SocketAddr;
use std::sync::Arc;

use super::route::RouteTable;

/// A listener pilot configured.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Listener {
    /// The listener name (`0.0.0.0_9080`, `virtualInbound`, ...).
    pub name: String,
    /// Where it listens (or, with `bind_to_port: false`, which original
    /// destination it serves when a capture listener hands a connection over).
    pub address: SocketAddr,
    /// Hand connections to the listener matching their original destination.
    pub use_original_dst: bool,
    /// Whether to bind `address` itself.
    pub bind_to_port: bool,
    /// Inbound or outbound, for telemetry.
    pub direction: Direction,
    /// What to sniff before choosing a chain.
    pub inspectors: Inspectors,
    /// The chains, in order; the most specific match wins as in Envoy.
    pub filter_chains: Vec<FilterChain>,
    /// The chain used when none matches.
    pub default_chain: Option<FilterChain>,
}

/// Traffic direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Not set.
    Unspecified,
    /// Into the workload.
    Inbound,
    /// Out of the workload.
    Outbound,
}

/// Listener filters, reduced to what they make the proxy inspect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inspectors {
    /// Restore the original destination (`envoy.filters.listener.original_dst`).
    pub original_dst: bool,
    /// Read SNI and ALPN (`envoy.filters.listener.tls_inspector`).
    pub tls: bool,
    /// Detect HTTP/1 and h2c (`envoy.filters.listener.http_inspector`).
    pub http: bool,
}

/// One filter chain: a match and a terminal action.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FilterChain {
    /// The chain name.
    pub name: String,
    /// When the chain applies.
    #[serde(rename = "match")]
    pub matcher: ChainMatch,
    /// TLS termination, when the chain has a downstream TLS context.
    pub tls: Option<DownstreamTls>,
    /// What the chain does with the connection.
    pub action: ChainAction,
}

/// Envoy's `FilterChainMatch`, the subset pilot uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainMatch {
    /// The original destination port.
    pub destination_port: Option<u16>,
    /// SNI names (`*.example.com` wildcards allowed); empty matches any.
    pub server_names: Vec<String>,
    /// ALPN protocols; empty matches any.
    pub application_protocols: Vec<String>,
    /// `tls` or `raw_buffer`; `None` matches any.
    pub transport_protocol: Option<String>,
}

/// Certificates for terminating TLS, as file paths or inline PEM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DownstreamTls {
    /// The certificate chain.
    pub cert_chain: Source,
    /// The private key.
    #[serde(skip)]
    pub private_key: Source,
    /// Whether clients must present a certificate.
    pub require_client_certificate: bool,
}

/// Where bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A file path.
    File(String),
    /// Inline content.
    Inline(String),
}

/// The terminal action of a chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainAction {
    /// HTTP connection manager.
    Http(HttpManager),
    /// TCP proxy to one cluster.
    Tcp {
        /// The upstream cluster.
        cluster: String,
        /// The stats prefix.
        stat_prefix: String,
    },
}

/// An HTTP connection manager.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HttpManager {
    /// The stats prefix.
    pub stat_prefix: String,
    /// Where the routes come from.
    pub routes: RouteSource,
    /// Which HTTP filters run.
    pub filters: HttpFilters,
}

/// An HTTP manager's route table: by RDS name or inline.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSource {
    /// A route configuration delivered by RDS under this name.
    Rds(String),
    /// A route table carried inside the listener.
    Inline(Arc<RouteTable>),
}

/// The HTTP filters Keel implements, in Envoy's fixed order fault → cors → router.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HttpFilters {
    /// `envoy.filters.http.fault`: per-route delays and aborts.
    pub fault: bool,
    /// `envoy.filters.http.cors`: per-route CORS.
    pub cors: bool,
    /// `envoy.filters.http.router`: forwarding (always last).
    pub router: bool,
}

impl Listener {
    /// The RDS route name every HTTP chain references.
    pub fn rds_names(&self) -> impl Iterator<Item = &str> {
        self.filter_chains
            .iter()
            .chain(self.default_chain.iter())
            .filter_map(|c| match &c.action {
                ChainAction::Http(HttpManager {
                    routes: RouteSource::Rds(name),
                    ..
                }) => Some(name.as_str()),
                _ => None,
            })
    }
}
