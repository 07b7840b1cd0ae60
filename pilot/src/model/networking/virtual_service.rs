//! VirtualService: how requests for a set of hosts are routed (HTTP, TLS by
//! SNI, TCP), with retries, timeouts, fault injection, mirroring, CORS,
//! header edits, rewrites, redirects and direct responses.
//!
//! Checks that need other objects (does the subset exist, does the gateway
//! exist) are the store's; this module checks one spec on its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Destination, OptionalStringMatch, Percent, StringMatch};
use crate::model::duration::Duration;
use crate::model::validate::{
    Errors, check_duration, check_export_to, check_gateway_name, check_header_name, check_labels,
    check_percent, check_port, is_dns1123_label, is_header_token, is_ip_or_cidr,
    wildcard_host_error,
};

mod http;
pub use http::*;

/// Routing rules for a set of hosts.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts this applies to. Empty only for a delegate
    /// VirtualService, one referenced from another's `http[].delegate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Gateways (`name`, `namespace/name`, or `mesh` for sidecars) the rules
    /// apply to. Empty means `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// HTTP rules, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// TLS passthrough rules, matched by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Opaque TCP rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that may see this VirtualService (`.`, `*`, `~`, names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// Match attributes of a TLS route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match; may start with `*.`. Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to, overriding the top-level list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// A TLS passthrough route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions, any of which selects this route. Required.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Match attributes of a TCP route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Source IP or CIDR (deprecated in Istio, still accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// An opaque TCP route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions, any of which selects this route; empty matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// A weighted L4 destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Share of traffic, 0–100; may be omitted for a single destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

impl VirtualServiceSpec {
    /// True when this is a delegate VirtualService (no hosts): its routes are
    /// spliced into a root VirtualService's `http[].delegate` route.
    pub fn is_delegate(&self) -> bool {
        self.hosts.is_empty()
    }

    /// True when the rules apply to sidecars (no gateways, or `mesh` listed).
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }

    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        let delegate = self.is_delegate();
        if delegate {
            if !self.gateways.is_empty() {
                errs.at(
                    "spec.gateways",
                    "a delegate VirtualService (one without hosts) must not set gateways; set them on the root VirtualService",
                );
            }
            if !self.tls.is_empty() || !self.tcp.is_empty() {
                errs.at(
                    "spec",
                    "a delegate VirtualService (one without hosts) may only have http routes; add hosts to route tls or tcp",
                );
            }
            if self.http.is_empty() {
                errs.at(
                    "spec.hosts",
                    "at least one host is required (only a delegate VirtualService with http routes may omit hosts)",
                );
            }
        }
        let mesh = self.applies_to_mesh();
        for (i, host) in self.hosts.iter().enumerate() {
            let p = format!("spec.hosts[{i}]");
            if host == "*" && mesh {
                errs.at(
                    &p,
                    "host \"*\" is not allowed for a VirtualService that applies to the mesh; bind it to a gateway or name the hosts",
                );
            } else if let Some(msg) = wildcard_host_error(host) {
                errs.at(&p, msg);
            }
            if self.hosts[..i].contains(host) {
                errs.at(&p, format!("host {host:?} is listed twice"));
            }
        }
        for (i, gw) in self.gateways.iter().enumerate() {
            check_gateway_name(errs, &format!("spec.gateways[{i}]"), gw);
        }
        check_export_to(errs, "spec.exportTo", &self.export_to);
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() && !delegate {
            errs.at(
                "spec",
                "at least one of http, tls or tcp routes is required",
            );
        }
        for (i, route) in self.http.iter().enumerate() {
            route.validate(errs, &format!("spec.http[{i}]"), delegate);
        }
        for (i, route) in self.tls.iter().enumerate() {
            let p = format!("spec.tls[{i}]");
            if route.matches.is_empty() {
                errs.at(
                    format!("{p}.match"),
                    "a TLS route needs at least one match with sniHosts",
                );
            }
            for (j, m) in route.matches.iter().enumerate() {
                let mp = format!("{p}.match[{j}]");
                if m.sni_hosts.is_empty() {
                    errs.at(
                        format!("{mp}.sniHosts"),
                        "at least one SNI host is required",
                    );
                }
                for (k, sni) in m.sni_hosts.iter().enumerate() {
                    let sp = format!("{mp}.sniHosts[{k}]");
                    if let Some(msg) = wildcard_host_error(sni) {
                        errs.at(&sp, msg);
                    } else if !self.hosts.iter().any(|h| hosts_overlap(h, sni)) {
                        errs.at(
                            &sp,
                            format!(
                                "SNI host {sni:?} does not match any of the VirtualService's hosts"
                            ),
                        );
                    }
                }
                check_l4_match(
                    errs,
                    &mp,
                    &m.destination_subnets,
                    m.port,
                    &m.source_labels,
                    &m.gateways,
                    m.source_namespace.as_deref(),
                );
            }
            check_route_destinations(errs, &format!("{p}.route"), &route.route);
        }
        for (i, route) in self.tcp.iter().enumerate() {
            let p = format!("spec.tcp[{i}]");
            for (j, m) in route.matches.iter().enumerate() {
                let mp = format!("{p}.match[{j}]");
                check_l4_match(
                    errs,
                    &mp,
                    &m.destination_subnets,
                    m.port,
                    &m.source_labels,
                    &m.gateways,
                    m.source_namespace.as_deref(),
                );
                if let Some(s) = &m.source_subnet
                    && !is_ip_or_cidr(s)
                {
                    errs.at(
                        format!("{mp}.sourceSubnet"),
                        format!("invalid subnet {s:?}: must be an IP address or CIDR"),
                    );
                }
            }
            check_route_destinations(errs, &format!("{p}.route"), &route.route);
        }
    }
}

/// True when the host patterns `a` and `b` (either may start with `*`) can
/// match a common name.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    fn suffix_match(wild: &str, other: &str) -> bool {
        let suffix = &wild[1..];
        other.ends_with(suffix)
            || other
                .strip_prefix('*')
                .is_some_and(|o| o.ends_with(suffix) || suffix.ends_with(o))
    }
    a == b
        || a == "*"
        || b == "*"
        || (a.starts_with('*') && suffix_match(a, b))
        || (b.starts_with('*') && suffix_match(b, a))
}

fn check_l4_match(
    errs: &mut Errors,
    path: &str,
    subnets: &[String],
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: Option<&str>,
) {
    for (k, s) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            errs.at(
                format!("{path}.destinationSubnets[{k}]"),
                format!("invalid subnet {s:?}: must be an IP address or CIDR"),
            );
        }
    }
    check_match_common(errs, path, port, source_labels, gateways, source_namespace);
}

fn check_match_common(
    errs: &mut Errors,
    path: &str,
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: Option<&str>,
) {
    if let Some(port) = port {
        check_port(errs, &format!("{path}.port"), port);
    }
    check_labels(errs, &format!("{path}.sourceLabels"), source_labels);
    for (k, gw) in gateways.iter().enumerate() {
        check_gateway_name(errs, &format!("{path}.gateways[{k}]"), gw);
    }
    if let Some(ns) = source_namespace
        && !is_dns1123_label(ns)
    {
        errs.at(
            format!("{path}.sourceNamespace"),
            format!("invalid namespace {ns:?}: must be a lowercase DNS-1123 label"),
        );
    }
}

/// Records weight errors for a list of destinations at `path` (the list):
/// each weight 0–100, and when there is more than one destination the
/// weights (unset counts as 0) must sum to 100.
pub fn check_weights(errs: &mut Errors, path: &str, weights: &[Option<i64>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = *w
            && !(0..=100).contains(&w)
        {
            errs.at(
                format!("{path}[{i}].weight"),
                format!("must be between 0 and 100, got {w}"),
            );
        }
    }
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| w.unwrap_or(0)).sum();
        if sum != 100 {
            errs.at(path, format!("weights must sum to 100, got {sum}"));
        }
    }
}

fn check_route_destinations(errs: &mut Errors, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        errs.at(path, "at least one destination is required");
    }
    for (i, r) in route.iter().enumerate() {
        r.destination
            .validate(errs, &format!("{path}[{i}].destination"));
    }
    let weights: Vec<Option<i64>> = route.iter().map(|r| r.weight).collect();
    check_weights(errs, path, &weights);
}

/// Records an error for a header name used in `headers` edits. Pseudo-headers
/// and `host` cannot be edited, except `:authority`/`host` in request
/// `set`/`add` when `allow_authority`.
fn check_header_edit(errs: &mut Errors, path: &str, name: &str, allow_authority: bool) {
    let lower = name.to_ascii_lowercase();
    let authority = lower == ":authority" || lower == "host";
    if authority && allow_authority {
        return;
    }
    if lower.starts_with(':') || lower == "host" {
        errs.at(
            path,
            format!("header {name:?} cannot be modified: pseudo-headers and host are managed by the proxy (use rewrite.authority for the host)"),
        );
        return;
    }
    check_header_name(errs, path, name, false);
}

/// HTTP methods accepted in CORS `allowMethods`.
pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

fn check_cors(errs: &mut Errors, path: &str, cors: &CorsPolicy) {
    for (i, o) in cors.allow_origins.iter().enumerate() {
        o.validate(errs, &format!("{path}.allowOrigins[{i}]"));
    }
    for (i, m) in cors.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&m.as_str()) {
            errs.at(
                format!("{path}.allowMethods[{i}]"),
                format!(
                    "invalid method {m:?}: must be one of {}",
                    HTTP_METHODS.join(", ")
                ),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && !is_header_token(h) {
                errs.at(
                    format!("{path}.{field}[{i}]"),
                    format!("invalid header name {h:?}: only letters, digits and !#$%&'*+-.^_`|~ are allowed"),
                );
            }
        }
    }
    if let Some(d) = &cors.max_age {
        if d.as_std().subsec_nanos() != 0 {
            errs.at(
                format!("{path}.maxAge"),
                format!("maxAge is in whole seconds, got {d}"),
            );
        } else {
            check_duration(errs, &format!("{path}.maxAge"), d);
        }
    }
}

fn check_percentage(errs: &mut Errors, path: &str, p: &Option<Percent>) {
    if let Some(p) = p {
        check_percent(errs, &format!("{path}.value"), p.value);
    }
}

fn check_string_match(errs: &mut Errors, path: &str, m: &Option<StringMatch>, delegate: bool) {
    if let Some(m) = m {
        if delegate && m.is_regex() {
            errs.at(
                path,
                "regex matches are not supported in a delegate VirtualService",
            );
        } else {
            m.validate(errs, path);
        }
    }
}

fn check_optional_matches(
    errs: &mut Errors,
    path: &str,
    map: &BTreeMap<String, OptionalStringMatch>,
    delegate: bool,
    header_names: bool,
) {
    for (name, m) in map {
        let p = format!("{path}.{name}");
        if header_names {
            check_header_name(errs, &p, name, true);
        } else if name.is_empty() {
            errs.at(&p, "query parameter name must not be empty");
        }
        check_string_match(errs, &p, &m.0, delegate);
    }
}

fn check_opt_duration(errs: &mut Errors, path: &str, d: &Option<Duration>) {
    if let Some(d) = d {
        check_duration(errs, path, d);
    }
}
