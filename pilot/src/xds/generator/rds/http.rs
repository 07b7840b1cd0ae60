//! VirtualService HTTP routes → Envoy routes: matches, actions (weighted
//! clusters, redirect, direct response, rewrite), timeouts, retries, fault
//! injection, mirroring, CORS, header operations, consistent-hash keys, and
//! delegate expansion.

use keel_proto::envoy::config::core::v3::{DataSource, RuntimeFractionalPercent, data_source};
use keel_proto::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster, header_matcher, query_parameter_matcher,
    redirect_action, retry_policy, route, route_action, route_match, weighted_cluster,
};
use keel_proto::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use keel_proto::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use keel_proto::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use keel_proto::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use keel_proto::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use keel_proto::google::protobuf::Any;

use std::sync::Arc;

use super::{Ctx, DEFAULT_RETRY_ON, prefix_match};
use crate::model::networking::{
    Destination, GRPC_STATUS_CODES, Headers, HttpMatchRequest, HttpRoute, StringMatch,
    VirtualService,
};
use crate::model::registry::ServiceInfo;
use crate::xds::generator::cluster_name;
use crate::xds::generator::scope::{labels_match, ns_of, qualify_gateway};
use crate::xds::generator::util::{
    boolv, duration, fraction, header, map, regex, string_matcher, u32v,
};

/// A VirtualService's HTTP routes, with delegates expanded.
pub(super) fn http_routes(ctx: &Ctx<'_, '_>, vs: &VirtualService) -> Vec<Route> {
    let ns = ns_of(&vs.metadata);
    let mut out = Vec::new();
    for r in &vs.spec.http {
        if let Some(d) = &r.delegate {
            let dns = d.namespace.as_deref().unwrap_or(ns);
            let Some(child) = ctx.scope.delegate(&d.name, dns) else {
                continue; // a missing delegate routes nothing, as in Istio.
            };
            for c in &child.spec.http {
                let merged = merge_delegate(r, c);
                out.extend(translate_route(ctx, &merged, dns));
            }
        } else {
            out.extend(translate_route(ctx, r, ns));
        }
    }
    out
}

/// A delegate's route under its parent's matches: each parent match is
/// combined with each child match (the child's URI and extra conditions win).
fn merge_delegate(parent: &HttpRoute, child: &HttpRoute) -> HttpRoute {
    let mut merged = child.clone();
    if parent.matches.is_empty() {
        return merged;
    }
    let children = if child.matches.is_empty() {
        vec![HttpMatchRequest::default()]
    } else {
        child.matches.clone()
    };
    merged.matches = parent
        .matches
        .iter()
        .flat_map(|p| {
            children.iter().map(move |c| {
                let mut m = p.clone();
                if c.uri.is_some() {
                    m.uri.clone_from(&c.uri);
                }
                for (k, v) in &c.headers {
                    m.headers.insert(k.clone(), v.clone());
                }
                for (k, v) in &c.query_params {
                    m.query_params.insert(k.clone(), v.clone());
                }
                for (k, v) in &c.without_headers {
                    m.without_headers.insert(k.clone(), v.clone());
                }
                m.method = c.method.clone().or(m.method);
                m.authority = c.authority.clone().or(m.authority);
                m.scheme = c.scheme.clone().or(m.scheme);
                m
            })
        })
        .collect();
    merged
}

/// One Istio HTTP route → zero or more Envoy routes (one per applicable match).
fn translate_route(ctx: &Ctx<'_, '_>, r: &HttpRoute, ns: &str) -> Vec<Route> {
    let node = ctx.scope.node;
    let matches: Vec<Option<&HttpMatchRequest>> = if r.matches.is_empty() {
        vec![None]
    } else {
        r.matches.iter().map(Some).collect()
    };
    let mut out = Vec::new();
    for m in matches {
        if let Some(m) = m {
            if m.port.is_some_and(|p| p != ctx.port) {
                continue;
            }
            if !m.gateways.is_empty()
                && !m
                    .gateways
                    .iter()
                    .any(|g| qualify_gateway(g, ns) == ctx.gateway)
            {
                continue;
            }
            if ctx.gateway == "mesh" && !labels_match(&m.source_labels, &node.labels) {
                continue;
            }
            if m.source_namespace
                .as_ref()
                .is_some_and(|s| *s != node.namespace)
            {
                continue;
            }
        }
        let mut route = Route {
            name: r
                .name
                .clone()
                .or_else(|| m.and_then(|m| m.name.clone()))
                .unwrap_or_default(),
            r#match: Some(route_match(m, ctx.grpc)),
            ..Default::default()
        };
        route.action = Some(action(ctx, r, ns));
        let mut authority = apply_headers(&mut route, r.headers.as_ref());
        if r.route.len() == 1 {
            authority = apply_headers(&mut route, r.route[0].headers.as_ref()).or(authority);
        }
        if let Some(auth) = authority
            && let Some(route::Action::Route(a)) = route.action.as_mut()
            && a.host_rewrite_specifier.is_none()
        {
            a.host_rewrite_specifier =
                Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(auth));
        }
        let mut per_filter: Vec<(String, Any)> = Vec::new();
        if let Some(f) = &r.fault {
            let fault = HttpFault {
                delay: f.delay.as_ref().and_then(|d| {
                    let fixed = d.fixed_delay.as_ref()?;
                    Some(FaultDelay {
                        fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                            duration(fixed.0),
                        )),
                        percentage: Some(fraction(percent(
                            d.percentage.map(|p| p.value),
                            d.percent,
                        ))),
                    })
                }),
                abort: f.abort.as_ref().and_then(|a| {
                    let error = if let Some(code) = a.http_status {
                        fault_abort::ErrorType::HttpStatus(code.clamp(0, 999) as u32)
                    } else {
                        fault_abort::ErrorType::GrpcStatus(grpc_code(a.grpc_status.as_deref()?)?)
                    };
                    Some(FaultAbort {
                        error_type: Some(error),
                        percentage: Some(fraction(percent(a.percentage.map(|p| p.value), None))),
                        ..Default::default()
                    })
                }),
                ..Default::default()
            };
            per_filter.push((
                "envoy.filters.http.fault".into(),
                keel_proto::any::pack(&fault),
            ));
        }
        if let Some(c) = r.cors_policy.as_ref().filter(|_| !ctx.grpc) {
            let mut origins: Vec<_> = c
                .allow_origins
                .iter()
                .map(|m| string_matcher(m, false))
                .collect();
            origins.extend(
                c.allow_origin
                    .iter()
                    .map(|o| string_matcher(&StringMatch::Exact(o.clone()), false)),
            );
            let cors = EnvoyCors {
                allow_origin_string_match: origins,
                allow_methods: c.allow_methods.join(","),
                allow_headers: c.allow_headers.join(","),
                expose_headers: c.expose_headers.join(","),
                max_age: c
                    .max_age
                    .as_ref()
                    .map(|d| d.0.as_secs().to_string())
                    .unwrap_or_default(),
                allow_credentials: c.allow_credentials.and_then(boolv),
                ..Default::default()
            };
            per_filter.push((
                "envoy.filters.http.cors".into(),
                keel_proto::any::pack(&cors),
            ));
        }
        route.typed_per_filter_config = map(per_filter);
        out.push(route);
    }
    out
}

fn percent(value: Option<f64>, legacy: Option<i64>) -> f64 {
    value.or(legacy.map(|p| p as f64)).unwrap_or(100.0)
}

/// gRPC status code for Istio's status names (`UNAVAILABLE`, …) or a number.
pub fn grpc_code(name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| {
        GRPC_STATUS_CODES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| i as u32)
    })
}

fn route_match(m: Option<&HttpMatchRequest>, grpc: bool) -> RouteMatch {
    let Some(m) = m else {
        return prefix_match("/");
    };
    let path = match &m.uri {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(p)) => route_match::PathSpecifier::SafeRegex(regex(p)),
    };
    let mut headers = Vec::new();
    for (name, sm) in [
        (":scheme", &m.scheme),
        (":method", &m.method),
        (":authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(name, Some(sm), false));
        }
    }
    for (name, sm) in &m.headers {
        headers.push(header_matcher(name, sm.0.as_ref(), false));
    }
    for (name, sm) in &m.without_headers {
        headers.push(header_matcher(name, sm.0.as_ref(), true));
    }
    let query_parameters = if grpc {
        Vec::new()
    } else {
        m.query_params
            .iter()
            .map(|(name, sm)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(match &sm.0 {
                    Some(sm) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(sm, false),
                    ),
                    None => {
                        query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
                    }
                }),
            })
            .collect()
    };
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m
            .ignore_uri_case
            .filter(|i| *i)
            .map(|_| keel_proto::google::protobuf::BoolValue { value: false }),
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn header_matcher(name: &str, sm: Option<&StringMatch>, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(match sm {
            Some(sm) => {
                header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(sm, false))
            }
            None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        }),
        invert_match: invert,
        // Istio: `withoutHeaders` also matches requests lacking the header.
        treat_missing_header_as_empty: invert && sm.is_some(),
    }
}

/// Adds `headers` to `route`, except a request `host` / `:authority`
/// set or add: as Istio does, that is an authority rewrite, returned for
/// the caller to put on the route or the weighted cluster.
fn apply_headers(route: &mut Route, headers: Option<&Headers>) -> Option<String> {
    let h = headers?;
    let is_authority = |k: &String| k.eq_ignore_ascii_case("host") || k == ":authority";
    let mut authority = None;
    if let Some(req) = &h.request {
        for (k, v, append) in req
            .set
            .iter()
            .map(|(k, v)| (k, v, false))
            .chain(req.add.iter().map(|(k, v)| (k, v, true)))
        {
            if is_authority(k) {
                authority = Some(v.clone());
            } else {
                route.request_headers_to_add.push(header(k, v, append));
            }
        }
        route
            .request_headers_to_remove
            .extend(req.remove.iter().cloned());
    }
    if let Some(resp) = &h.response {
        route
            .response_headers_to_add
            .extend(resp.set.iter().map(|(k, v)| header(k, v, false)));
        route
            .response_headers_to_add
            .extend(resp.add.iter().map(|(k, v)| header(k, v, true)));
        route
            .response_headers_to_remove
            .extend(resp.remove.iter().cloned());
    }
    authority
}

/// The cluster a destination names, seen from the context's port.
pub(super) fn destination_cluster(
    ctx: &Ctx<'_, '_>,
    d: &Destination,
    ns: &str,
) -> (String, Option<Arc<ServiceInfo>>) {
    let host = ctx.scope.resolve(&d.host, ns);
    let svc = ctx.scope.service(&host).cloned();
    let port = d
        .port
        .as_ref()
        .map(|p| p.number)
        .or_else(|| {
            svc.as_ref()
                .filter(|s| s.ports.len() == 1)
                .map(|s| s.ports[0].number)
        })
        .unwrap_or(ctx.port);
    (
        cluster_name(
            "outbound",
            port,
            d.subset.as_deref().unwrap_or_default(),
            &host,
        ),
        svc,
    )
}

fn action(ctx: &Ctx<'_, '_>, r: &HttpRoute, ns: &str) -> route::Action {
    if let Some(red) = &r.redirect {
        let code = match red.redirect_code.unwrap_or(301) {
            302 => redirect_action::RedirectResponseCode::Found,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => redirect_action::RedirectResponseCode::MovedPermanently,
        };
        return route::Action::Redirect(RedirectAction {
            host_redirect: red.authority.clone().unwrap_or_default(),
            port_redirect: red.port.unwrap_or(0),
            response_code: code as i32,
            scheme_rewrite_specifier: red
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: red
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect)
                .or_else(|| {
                    red.prefix_rewrite
                        .clone()
                        .map(redirect_action::PathRewriteSpecifier::PrefixRewrite)
                }),
            ..Default::default()
        });
    }
    if let Some(dr) = &r.direct_response {
        let body = dr.body.as_ref().and_then(|b| {
            let specifier = match (&b.string, &b.bytes) {
                (Some(s), _) => data_source::Specifier::InlineString(s.clone()),
                (None, Some(b64)) => data_source::Specifier::InlineBytes(decode_base64(b64)?),
                (None, None) => return None,
            };
            Some(DataSource {
                specifier: Some(specifier),
                ..Default::default()
            })
        });
        return route::Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body,
            ..Default::default()
        });
    }
    let mut a = RouteAction::default();
    let dests: Vec<(String, i64, Option<&Headers>)> = r
        .route
        .iter()
        .map(|d| {
            (
                destination_cluster(ctx, &d.destination, ns).0,
                d.weight.unwrap_or(0),
                d.headers.as_ref(),
            )
        })
        .collect();
    a.cluster_specifier = Some(if dests.len() == 1 {
        route_action::ClusterSpecifier::Cluster(dests[0].0.clone())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: dests
                .iter()
                .filter(|(_, w, _)| *w > 0)
                .map(|(name, w, h)| {
                    let mut cw = weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: u32v(*w as u32),
                        ..Default::default()
                    };
                    if let Some(h) = h {
                        let mut tmp = Route::default();
                        if let Some(auth) = apply_headers(&mut tmp, Some(h)) {
                            cw.host_rewrite_specifier = Some(
                                weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(auth),
                            );
                        }
                        cw.request_headers_to_add = tmp.request_headers_to_add;
                        cw.request_headers_to_remove = tmp.request_headers_to_remove;
                        cw.response_headers_to_add = tmp.response_headers_to_add;
                        cw.response_headers_to_remove = tmp.response_headers_to_remove;
                    }
                    cw
                })
                .collect(),
            ..Default::default()
        })
    });
    if ctx.grpc {
        if let Some(t) = &r.timeout {
            a.max_stream_duration = Some(route_action::MaxStreamDuration {
                max_stream_duration: Some(duration(t.0)),
                grpc_timeout_header_max: Some(duration(t.0)),
                ..Default::default()
            });
        }
    } else {
        a.timeout = Some(duration(
            r.timeout
                .as_ref()
                .map_or(std::time::Duration::ZERO, |t| t.0),
        ));
    }
    a.retry_policy = match &r.retries {
        None if ctx.grpc => None,
        None => Some(retry(None, None, DEFAULT_RETRY_ON, 2, true)),
        Some(rt) if rt.attempts.unwrap_or(2) <= 0 => None,
        Some(rt) => Some(retry(
            rt.per_try_timeout.as_ref().map(|d| d.0),
            rt.backoff.as_ref().map(|d| d.0),
            rt.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON),
            rt.attempts.unwrap_or(2) as u32,
            rt.retry_ignore_previous_hosts.unwrap_or(true) && !ctx.grpc,
        )),
    };
    if let Some(rw) = &r.rewrite {
        if let Some(uri) = &rw.uri {
            a.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            a.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&rr.regex)),
                substitution: rr.rewrite.clone(),
            });
        }
        if let Some(auth) = &rw.authority {
            a.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(auth.clone()),
            );
        }
    }
    let mut mirrors: Vec<(&Destination, f64)> = Vec::new();
    if let Some(m) = &r.mirror {
        mirrors.push((
            m,
            percent(
                r.mirror_percentage.map(|p| p.value),
                r.mirror_percent.map(i64::from),
            ),
        ));
    }
    for m in &r.mirrors {
        mirrors.push((&m.destination, percent(m.percentage.map(|p| p.value), None)));
    }
    a.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, pct)| route_action::RequestMirrorPolicy {
            cluster: destination_cluster(ctx, d, ns).0,
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fraction(pct)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    if let Some(first) = r.route.first() {
        a.hash_policy = hash_policy(ctx, &first.destination, ns);
    }
    route::Action::Route(a)
}

pub(super) fn retry(
    per_try: Option<std::time::Duration>,
    backoff: Option<std::time::Duration>,
    on: &str,
    attempts: u32,
    previous_hosts: bool,
) -> RetryPolicy {
    let mut conditions: Vec<String> = Vec::new();
    let mut codes: Vec<u32> = Vec::new();
    for c in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match c.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) => conditions.push(c.to_string()),
        }
    }
    if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
        conditions.push("retriable-status-codes".into());
    }
    if conditions.iter().any(|c| c == "retriable-status-codes") && codes.is_empty() {
        codes.push(503);
    }
    RetryPolicy {
        retry_on: conditions.join(","),
        num_retries: u32v(attempts),
        per_try_timeout: per_try.map(duration),
        retry_back_off: backoff.map(|b| retry_policy::RetryBackOff {
            base_interval: Some(duration(b)),
            ..Default::default()
        }),
        retry_host_predicate: if previous_hosts {
            vec![retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    keel_proto::any::pack(&PreviousHostsPredicate::default()),
                )),
            }]
        } else {
            Vec::new()
        },
        host_selection_retry_max_attempts: if previous_hosts { 5 } else { 0 },
        retriable_status_codes: codes,
        ..Default::default()
    }
}

/// Consistent-hash keys from the destination's DestinationRule.
pub(super) fn hash_policy(
    ctx: &Ctx<'_, '_>,
    d: &Destination,
    ns: &str,
) -> Vec<route_action::HashPolicy> {
    use route_action::hash_policy::{
        ConnectionProperties, Cookie, FilterState, Header, PolicySpecifier, QueryParameter,
    };
    let host = ctx.scope.resolve(&d.host, ns);
    let svc_ns = ctx
        .scope
        .service(&host)
        .map(|s| s.namespace.clone())
        .unwrap_or_default();
    let Some(dr) = ctx.scope.destination_rule(&host, &svc_ns) else {
        return Vec::new();
    };
    let subset_policy = d
        .subset
        .as_ref()
        .and_then(|s| dr.spec.subsets.iter().find(|x| &x.name == s))
        .and_then(|s| s.traffic_policy.as_ref());
    let lb = subset_policy
        .and_then(|p| p.load_balancer.as_ref())
        .or_else(|| {
            dr.spec
                .traffic_policy
                .as_ref()
                .and_then(|p| p.load_balancer.as_ref())
        });
    let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return Vec::new();
    };
    let spec = if let Some(h) = &hash.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            ttl: c.ttl.as_ref().map(|t| duration(t.0)),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        if ctx.grpc {
            PolicySpecifier::FilterState(FilterState {
                key: "io.grpc.channel_id".into(),
            })
        } else {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
    } else if let Some(q) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return Vec::new();
    };
    vec![route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    }]
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}
