//! RDS: Envoy `RouteConfiguration` → [`RouteTable`], compiling every match
//! and rewrite regex once. Used for RDS resources and inline route configs.

use std::collections::BTreeSet;

use keel_proto::any::unpack;
use keel_proto::envoy::config::route::v3 as pb;
use keel_proto::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route, route_action, route_match::PathSpecifier,
};
use keel_proto::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use keel_proto::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use keel_proto::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort::ErrorType};
use keel_proto::envoy::r#type::matcher::v3::StringMatcher as PbStringMatcher;
use keel_proto::google::protobuf::Any;

use super::convert::{
    At, CollectExact, FieldError, Result, duration, fraction_ppm, header_mutation,
    opt_nonzero_duration, regex, string_matcher,
};
use crate::state::route::{
    Abort, AbortStatus, Action, Backoff, Cors, Delay, Domain, Fault, Forward, HashInput,
    HashPolicy, HeaderCondition, HeaderMatcher, HostRewrite, Mirror, PathMatch, QueryMatcher,
    Redirect, RedirectPath, RegexRewrite, RetryOn, RetryPolicy, Route, RouteMatch, RouteTable,
    StringMatch, StringMatcher, VirtualHost, WeightedCluster,
};

const FAULT_FILTER: &str = "envoy.filters.http.fault";
const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Converts a route configuration.
pub fn route_table(rc: &pb::RouteConfiguration) -> Result<RouteTable> {
    let virtual_hosts = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| virtual_host(vh).at(element("virtual_hosts", i, &vh.name)))
        .collect_exact()?;
    if rc.vhds.is_some() {
        return Err(FieldError::new("vhds", "VHDS is not supported"));
    }
    Ok(RouteTable::new(rc.name.clone(), virtual_hosts))
}

/// The path of a list element: its index and, when it has one, its name, so a
/// message points at what the operator wrote (`routes[1 "canary"]`).
fn element(field: &str, i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{field}[{i}]")
    } else {
        format!("{field}[{i} {name:?}]")
    }
}

fn virtual_host(vh: &pb::VirtualHost) -> Result<VirtualHost> {
    if vh.domains.is_empty() {
        return Err(FieldError::new(
            "domains",
            "at least one domain is required",
        ));
    }
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| convert_route(r).at(element("routes", i, &r.name)))
        .collect_exact()?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.iter().map(|d| Domain::parse(d)).collect(),
        routes,
        require_tls: vh.require_tls != 0,
        include_attempt_count: vh.include_request_attempt_count,
        request_headers: header_mutation(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            "request_headers_to_add",
        )?,
        response_headers: header_mutation(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
            "response_headers_to_add",
        )?,
    })
}

fn convert_route(r: &pb::Route) -> Result<Route> {
    let matcher = route_match(r.r#match.as_ref()).at("match")?;
    let action = match &r.action {
        Some(route::Action::Route(a)) => Action::Forward(Box::new(forward(a).at("route")?)),
        Some(route::Action::Redirect(a)) => Action::Redirect(redirect(a).at("redirect")?),
        Some(route::Action::DirectResponse(d)) => Action::Direct {
            status: u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    FieldError::new(
                        "direct_response.status",
                        format!("{} is not an HTTP status", d.status),
                    )
                })?,
            body: match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(
                    keel_proto::envoy::config::core::v3::data_source::Specifier::InlineString(s),
                ) => Some(s.clone()),
                Some(keel_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(
                    b,
                )) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(_) => {
                    return Err(FieldError::new(
                        "direct_response.body",
                        "only inline bodies are supported",
                    ));
                }
            },
        },
        Some(_) => return Err(FieldError::new("action", "unsupported route action")),
        None => return Err(FieldError::new("action", "is required")),
    };
    let mut fault = None;
    let mut cors = None;
    for (key, any) in &r.typed_per_filter_config {
        let path = format!("typed_per_filter_config[{key:?}]");
        match key.as_str() {
            FAULT_FILTER => fault = Some(fault_config(any).at(path)?),
            CORS_FILTER => cors = Some(cors_config(any).at(path)?),
            _ => {
                return Err(FieldError::new(
                    path,
                    "per-route config for an unsupported HTTP filter",
                ));
            }
        }
    }
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        request_headers: header_mutation(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            "request_headers_to_add",
        )?,
        response_headers: header_mutation(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            "response_headers_to_add",
        )?,
        fault,
        cors,
    })
}

fn route_match(m: Option<&pb::RouteMatch>) -> Result<RouteMatch> {
    let Some(m) = m else {
        return Err(FieldError::new("", "is required"));
    };
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::PathSeparatedPrefix(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(regex(&r.regex, "safe_regex")?),
        Some(_) => {
            return Err(FieldError::new(
                "path_specifier",
                "only prefix, path, path_separated_prefix and safe_regex are supported",
            ));
        }
        None => return Err(FieldError::new("path_specifier", "is required")),
    };
    if m.runtime_fraction.is_some() {
        return Err(FieldError::new("runtime_fraction", "is not supported"));
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h).at(format!("headers[{i}]")))
        .collect_exact()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let value = match &q.query_parameter_match_specifier {
                Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                    Some(string_matcher(s, "string_match").at(format!("query_parameters[{i}]"))?)
                }
                Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
            };
            Ok(QueryMatcher {
                name: q.name.clone(),
                value,
            })
        })
        .collect_exact()?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.is_none_or(|b| b.value),
        headers,
        query,
    })
}

// The deprecated matchers are still what older control planes send.
#[allow(deprecated)]
fn header_matcher(h: &pb::HeaderMatcher) -> Result<HeaderMatcher> {
    let exact = |s: &str, pattern: fn(String) -> StringMatch| {
        HeaderCondition::Value(StringMatcher {
            pattern: pattern(s.to_string()),
            ignore_case: false,
        })
    };
    let condition = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::ExactMatch(s)) => exact(s, StringMatch::Exact),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => exact(s, StringMatch::Prefix),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => exact(s, StringMatch::Suffix),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => exact(s, StringMatch::Contains),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderCondition::Value(StringMatcher {
            pattern: StringMatch::Regex(regex(&r.regex, "safe_regex_match")?),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            HeaderCondition::Value(string_matcher(s, "string_match")?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderCondition::Range {
            start: r.start,
            end: r.end,
        },
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderCondition::Present(*p),
        None => HeaderCondition::Present(true),
    };
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        condition,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn forward(a: &pb::RouteAction) -> Result<Forward> {
    let clusters = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) if !c.is_empty() => {
            vec![WeightedCluster {
                name: c.clone(),
                weight: 1,
                request_headers: Default::default(),
                response_headers: Default::default(),
                host_rewrite: None,
            }]
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let path = format!("weighted_clusters.clusters[{i}]");
                if c.name.is_empty() {
                    return Err(FieldError::new(format!("{path}.name"), "is required"));
                }
                Ok(WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight.map_or(0, |w| w.value),
                    request_headers: header_mutation(
                        &c.request_headers_to_add,
                        &c.request_headers_to_remove,
                        "request_headers_to_add",
                    )
                    .at(&path)?,
                    response_headers: header_mutation(
                        &c.response_headers_to_add,
                        &c.response_headers_to_remove,
                        "response_headers_to_add",
                    )
                    .at(&path)?,
                    host_rewrite: match &c.host_rewrite_specifier {
                        Some(
                            keel_proto::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h),
                        ) if !h.is_empty() => Some(h.clone()),
                        _ => None,
                    },
                })
            })
            .collect_exact()?,
        _ => {
            return Err(FieldError::new(
                "cluster_specifier",
                "only cluster and weighted_clusters are supported",
            ));
        }
    };
    let total_weight = clusters
        .iter()
        .try_fold(0u32, |sum, c| sum.checked_add(c.weight))
        .ok_or_else(|| FieldError::new("weighted_clusters", "total weight overflows"))?;
    if total_weight == 0 {
        return Err(FieldError::new(
            "weighted_clusters",
            "total weight is 0: at least one cluster needs a positive weight",
        ));
    }
    let regex_rewrite = match &a.regex_rewrite {
        None => None,
        Some(rr) => {
            let pattern = rr
                .pattern
                .as_ref()
                .map(|p| p.regex.clone())
                .unwrap_or_default();
            Some(RegexRewrite::new(&pattern, &rr.substitution).map_err(|e| {
                FieldError::new(
                    "regex_rewrite.pattern",
                    format!("regex {pattern:?} does not compile: {e}"),
                )
            })?)
        }
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            Some(HostRewrite::Literal(h.clone()))
        }
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) => {
            b.value.then_some(HostRewrite::Auto)
        }
        Some(route_action::HostRewriteSpecifier::HostRewriteHeader(h)) => {
            Some(HostRewrite::Header(h.to_ascii_lowercase()))
        }
        Some(_) => {
            return Err(FieldError::new(
                "host_rewrite_path_regex",
                "is not supported",
            ));
        }
    };
    let hash_policies = a
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash_policy(h).at(format!("hash_policy[{i}]")))
        .collect_exact()?;
    let mirrors = a
        .request_mirror_policies
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.cluster.is_empty() {
                return Err(FieldError::new(
                    format!("request_mirror_policies[{i}].cluster"),
                    "is required",
                ));
            }
            Ok(Mirror {
                cluster: m.cluster.clone(),
                fraction_ppm: m
                    .runtime_fraction
                    .as_ref()
                    .map_or(1_000_000, |f| fraction_ppm(f.default_value.as_ref())),
            })
        })
        .collect_exact()?;
    Ok(Forward {
        clusters,
        total_weight,
        timeout: match &a.timeout {
            // Envoy's default route timeout is 15 s; 0 disables it.
            None => Some(std::time::Duration::from_secs(15)),
            Some(t) => opt_nonzero_duration(Some(t), "timeout")?,
        },
        retry: a
            .retry_policy
            .as_ref()
            .map(|r| retry_policy(r).at("retry_policy"))
            .transpose()?,
        prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite,
        host_rewrite,
        hash_policies,
        mirrors,
        max_stream_duration: opt_nonzero_duration(
            a.max_stream_duration
                .as_ref()
                .and_then(|m| m.max_stream_duration.as_ref()),
            "max_stream_duration.max_stream_duration",
        )?,
    })
}

fn hash_policy(h: &route_action::HashPolicy) -> Result<HashPolicy> {
    use route_action::hash_policy::PolicySpecifier as P;
    let input = match &h.policy_specifier {
        Some(P::Header(hd)) => HashInput::Header(hd.header_name.to_ascii_lowercase()),
        Some(P::Cookie(c)) => HashInput::Cookie {
            name: c.name.clone(),
            ttl: c
                .ttl
                .as_ref()
                .map(|t| duration(t, "cookie.ttl"))
                .transpose()?,
            path: c.path.clone(),
        },
        Some(P::ConnectionProperties(c)) if c.source_ip => HashInput::SourceIp,
        Some(P::QueryParameter(q)) => HashInput::QueryParameter(q.name.clone()),
        _ => {
            return Err(FieldError::new(
                "policy_specifier",
                "only header, cookie, source_ip and query_parameter hashing are supported",
            ));
        }
    };
    Ok(HashPolicy {
        input,
        terminal: h.terminal,
    })
}

fn retry_policy(r: &pb::RetryPolicy) -> Result<RetryPolicy> {
    let mut retry_on = BTreeSet::new();
    for cond in r
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        retry_on.insert(RetryOn::parse(cond).ok_or_else(|| {
            FieldError::new("retry_on", format!("unknown retry condition {cond:?}"))
        })?);
    }
    let retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    FieldError::new(
                        "retriable_status_codes",
                        format!("{c} is not an HTTP status"),
                    )
                })
        })
        .collect_exact()?;
    let mut avoid_previous_hosts = false;
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        if p.name == "envoy.retry_host_predicates.previous_hosts" {
            avoid_previous_hosts = true;
        } else {
            return Err(FieldError::new(
                format!("retry_host_predicate[{i}]"),
                format!("unsupported retry host predicate {:?}", p.name),
            ));
        }
    }
    let backoff = match &r.retry_back_off {
        None => None,
        Some(b) => {
            let base = b
                .base_interval
                .as_ref()
                .map(|d| duration(d, "retry_back_off.base_interval"))
                .transpose()?
                .ok_or_else(|| FieldError::new("retry_back_off.base_interval", "is required"))?;
            let max = b
                .max_interval
                .as_ref()
                .map(|d| duration(d, "retry_back_off.max_interval"))
                .transpose()?
                .unwrap_or(base * 10);
            Some(Backoff { base, max })
        }
    };
    Ok(RetryPolicy {
        retry_on,
        num_retries: r.num_retries.map_or(1, |n| n.value),
        per_try_timeout: opt_nonzero_duration(r.per_try_timeout.as_ref(), "per_try_timeout")?,
        retriable_status_codes,
        backoff,
        avoid_previous_hosts,
        host_selection_max_attempts: u32::try_from(r.host_selection_retry_max_attempts.max(1))
            .unwrap_or(u32::MAX),
    })
}

fn redirect(a: &pb::RedirectAction) -> Result<Redirect> {
    use redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let status = match C::try_from(a.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => {
            return Err(FieldError::new(
                "response_code",
                format!("unknown redirect code {}", a.response_code),
            ));
        }
    };
    let scheme = match &a.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let path = match &a.path_rewrite_specifier {
        None => None,
        Some(P::PathRedirect(p)) => Some(RedirectPath::Path(p.clone())),
        Some(P::PrefixRewrite(p)) => Some(RedirectPath::Prefix(p.clone())),
        Some(_) => {
            return Err(FieldError::new(
                "path_rewrite_specifier",
                "only path_redirect and prefix_rewrite are supported",
            ));
        }
    };
    Ok(Redirect {
        scheme,
        host: Some(a.host_redirect.clone()).filter(|h| !h.is_empty()),
        port: match a.port_redirect {
            0 => None,
            p => Some(
                u16::try_from(p)
                    .map_err(|_| FieldError::new("port_redirect", format!("{p} is not a port")))?,
            ),
        },
        path,
        status,
        strip_query: a.strip_query,
    })
}

fn fault_config(any: &Any) -> Result<Fault> {
    let f: HttpFault = unpack(any).map_err(|e| FieldError::new("", e.to_string()))?;
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(t)) => Some(Delay {
                duration: duration(t, "delay.fixed_delay")?,
                fraction_ppm: fraction_ppm(d.percentage.as_ref()),
            }),
            _ => {
                return Err(FieldError::new("delay", "only fixed_delay is supported"));
            }
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let status = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => AbortStatus::Http(
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            FieldError::new(
                                "abort.http_status",
                                format!("{s} is not an HTTP status"),
                            )
                        })?,
                ),
                Some(ErrorType::GrpcStatus(s)) => AbortStatus::Grpc(*s),
                _ => {
                    return Err(FieldError::new(
                        "abort",
                        "only http_status and grpc_status are supported",
                    ));
                }
            };
            Some(Abort {
                status,
                fraction_ppm: fraction_ppm(a.percentage.as_ref()),
            })
        }
    };
    Ok(Fault { delay, abort })
}

fn cors_config(any: &Any) -> Result<Cors> {
    let c: CorsPolicy = unpack(any).map_err(|e| FieldError::new("", e.to_string()))?;
    let allow_origins = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m): (usize, &PbStringMatcher)| {
            string_matcher(m, &format!("allow_origin_string_match[{i}]"))
        })
        .collect_exact()?;
    Ok(Cors {
        allow_origins,
        allow_methods: c.allow_methods,
        allow_headers: c.allow_headers,
        expose_headers: c.expose_headers,
        max_age: c.max_age,
        allow_credentials: c.allow_credentials.is_some_and(|b| b.value),
    })
}
