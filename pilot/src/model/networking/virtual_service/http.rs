//! VirtualService HTTP routes: matches, weighted destinations and the
//! per-route policies (retries, timeout, fault, mirror, CORS, headers,
//! rewrite, redirect, direct response, delegate), and Istio's defaults for
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    check_cors, check_header_edit, check_match_common, check_opt_duration, check_optional_matches,
    check_percentage, check_string_match, check_weights,
};
use crate::model::duration::Duration;
use crate::model::networking::common::{Destination, OptionalStringMatch, Percent, StringMatch};
use crate::model::validate::{Errors, check_duration, check_percent, check_port, check_regex};

/// Retry attempts when a route sets no `retries`: Istio's mesh default.
pub const DEFAULT_RETRY_ATTEMPTS: i64 = 2;
/// Retry conditions when a route sets no `retries`, or sets `retries`
/// without `retryOn`: Istio's mesh default.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Status codes retried under `retriable-status-codes` by Istio's default
/// policy.
pub const DEFAULT_RETRIABLE_STATUS_CODES: &[u32] = &[503];
/// Whether retries avoid previously tried hosts when
/// `retryIgnorePreviousHosts` is unset (Istio: true).
pub const DEFAULT_RETRY_IGNORE_PREVIOUS_HOSTS: bool = true;
/// Redirect status when `redirectCode` is unset.
pub const DEFAULT_REDIRECT_CODE: u32 = 301;

/// `retryOn` conditions Istio accepts (Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` policies); a numeric HTTP status is also accepted.
pub const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted in `fault.abort.grpcStatus`; the index is the
/// numeric code.
pub const GRPC_STATUS_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// One HTTP rule: conditions and what to do with matching requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name used in logs and stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, any of which selects this rule; empty matches all.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer directly with a fixed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand matching requests to another (delegate) VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Rewrite path/authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout; unset means none (Istio disables route timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy; unset means the mesh default (see [`HttpRetry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Several mirror destinations, each with its own percentage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer mirror percentage (`mirror_percent` accepted).
    #[serde(
        default,
        alias = "mirror_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percent: Option<u32>,
    /// Share of traffic mirrored, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header edits for requests and responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// Conditions on an HTTP request; all that are set must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name, prefixed to the route's name in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// URI scheme match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Method match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Authority (Host) match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Header matches by (lowercase) name; `{}` means "present".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, OptionalStringMatch>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to, overriding the top-level list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Query parameter matches; `{}` means "present".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, OptionalStringMatch>,
    /// Match `uri` case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
    /// Headers that must not match (or, with `{}`, must be absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, OptionalStringMatch>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Stat prefix for this match's route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// A weighted HTTP destination with its own header edits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Share of traffic, 0–100; may be omitted for a single destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Header edits applied only for this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// Request and response header edits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Edits to the request before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Edits to the response before returning it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Set, append and remove header operations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Where a redirect takes its port from when `port` is unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port the request arrived on.
    FromRequestPort,
}

/// An HTTP redirect response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the matched prefix of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replace the authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replace the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Derive the port instead of naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Status code; [`DEFAULT_REDIRECT_CODE`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

/// A fixed response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code, 200–599.
    pub status: u32,
    /// Optional body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// A direct response body: text or base64 bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Body as base64-encoded bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// A reference to a delegate VirtualService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    #[serde(default)]
    pub name: String,
    /// Its namespace; the root's namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Rewrites applied before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched path prefix (or whole path for exact matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority (Host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Regex-based path rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Replace what `match` matches with `rewrite` (RE2 syntax, `\1` groups).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// The regex.
    #[serde(default, rename = "match")]
    pub regex: String,
    /// The replacement.
    #[serde(default)]
    pub rewrite: String,
}

/// Retry policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries; 0 disables retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// Timeout per attempt, at least 1ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions ([`RETRY_ON_POLICIES`] or status codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Retry in other localities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts tried before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

impl HttpRetry {
    /// Attempts, or [`DEFAULT_RETRY_ATTEMPTS`] when unset.
    pub fn attempts_or_default(&self) -> i64 {
        self.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS)
    }

    /// `retryOn`, or [`DEFAULT_RETRY_ON`] when unset or empty.
    pub fn retry_on_or_default(&self) -> &str {
        match self.retry_on.as_deref() {
            Some(s) if !s.trim().is_empty() => s,
            _ => DEFAULT_RETRY_ON,
        }
    }

    /// `retryIgnorePreviousHosts`, or [`DEFAULT_RETRY_IGNORE_PREVIOUS_HOSTS`].
    pub fn ignore_previous_hosts_or_default(&self) -> bool {
        self.retry_ignore_previous_hosts
            .unwrap_or(DEFAULT_RETRY_IGNORE_PREVIOUS_HOSTS)
    }

    /// The retry policy Istio applies to a route without `retries`.
    pub fn mesh_default() -> Self {
        Self {
            attempts: Some(DEFAULT_RETRY_ATTEMPTS),
            retry_on: Some(DEFAULT_RETRY_ON.to_string()),
            retry_ignore_previous_hosts: Some(DEFAULT_RETRY_IGNORE_PREVIOUS_HOSTS),
            ..Self::default()
        }
    }

    fn validate(&self, errs: &mut Errors, path: &str) {
        if let Some(a) = self.attempts
            && a < 0
        {
            errs.at(
                format!("{path}.attempts"),
                format!("must not be negative, got {a}"),
            );
        }
        check_opt_duration(
            errs,
            &format!("{path}.perTryTimeout"),
            &self.per_try_timeout,
        );
        check_opt_duration(errs, &format!("{path}.backoff"), &self.backoff);
        if let Some(on) = &self.retry_on {
            for cond in on.split(',').map(str::trim) {
                if cond.is_empty() {
                    continue;
                }
                let ok = RETRY_ON_POLICIES.contains(&cond)
                    || cond.parse::<u32>().is_ok_and(|c| (100..=599).contains(&c));
                if !ok {
                    errs.at(
                        format!("{path}.retryOn"),
                        format!("invalid retryOn value {cond:?}: must be an HTTP status code or one of {}", RETRY_ON_POLICIES.join(", ")),
                    );
                }
            }
        }
    }
}

/// Faults injected into matching requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Abort with an error instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// An injected delay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// Fixed delay, at least 1ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Exponential delay (not supported by Istio; rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
}

/// An injected abort.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// HTTP status to return, 200–599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// gRPC status name to return ([`GRPC_STATUS_CODES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// HTTP/2 error (not supported by Istio; rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// Share of requests aborted, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// One mirror destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where mirrored requests go.
    pub destination: Destination,
    /// Share of traffic mirrored, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// What to do with CORS preflights whose origin does not match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Envoy's default (forward).
    #[default]
    Unspecified,
    /// Forward to the upstream.
    Forward,
    /// Answer without CORS headers.
    Ignore,
}

/// CORS policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Allowed origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers browsers may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Allow credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Handling of unmatched preflights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

fn check_headers(errs: &mut Errors, path: &str, h: &Headers) {
    for (part, ops, allow_authority) in [
        ("request", &h.request, true),
        ("response", &h.response, false),
    ] {
        let Some(ops) = ops else { continue };
        let p = format!("{path}.{part}");
        for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
            for name in map.keys() {
                check_header_edit(errs, &format!("{p}.{field}.{name}"), name, allow_authority);
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            check_header_edit(errs, &format!("{p}.remove[{i}]"), name, false);
        }
    }
}

fn sets_authority(h: &Option<Headers>) -> bool {
    h.as_ref()
        .and_then(|h| h.request.as_ref())
        .is_some_and(|r| {
            r.set
                .keys()
                .chain(r.add.keys())
                .any(|k| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host"))
        })
}

impl HttpRoute {
    /// Records errors in this route at `path` (`spec.http[i]`). `delegate`
    /// says the route belongs to a delegate VirtualService.
    pub fn validate(&self, errs: &mut Errors, path: &str, delegate: bool) {
        let has_route = !self.route.is_empty();
        if let Some(d) = &self.delegate {
            if delegate {
                errs.at(
                    format!("{path}.delegate"),
                    "a delegate VirtualService cannot delegate again",
                );
            }
            if d.name.is_empty() {
                errs.at(format!("{path}.delegate.name"), "delegate name is required");
            }
            if has_route || self.redirect.is_some() || self.direct_response.is_some() {
                errs.at(
                    path,
                    "a route with delegate must not also set route, redirect or directResponse",
                );
            }
        } else if self.redirect.is_some() {
            if has_route {
                errs.at(path, "route and redirect cannot both be set");
            }
            if self.fault.is_some() {
                errs.at(path, "fault and redirect cannot both be set");
            }
            if self.rewrite.is_some() {
                errs.at(path, "rewrite and redirect cannot both be set");
            }
            if self.direct_response.is_some() {
                errs.at(path, "redirect and directResponse cannot both be set");
            }
        } else if self.direct_response.is_some() {
            if has_route {
                errs.at(path, "route and directResponse cannot both be set");
            }
        } else if !has_route {
            errs.at(
                path,
                "one of route, redirect, directResponse or delegate is required",
            );
        }

        for (j, m) in self.matches.iter().enumerate() {
            let mp = format!("{path}.match[{j}]");
            check_string_match(errs, &format!("{mp}.uri"), &m.uri, delegate);
            check_string_match(errs, &format!("{mp}.scheme"), &m.scheme, delegate);
            check_string_match(errs, &format!("{mp}.method"), &m.method, delegate);
            check_string_match(errs, &format!("{mp}.authority"), &m.authority, delegate);
            check_optional_matches(errs, &format!("{mp}.headers"), &m.headers, delegate, true);
            check_optional_matches(
                errs,
                &format!("{mp}.withoutHeaders"),
                &m.without_headers,
                delegate,
                true,
            );
            check_optional_matches(
                errs,
                &format!("{mp}.queryParams"),
                &m.query_params,
                delegate,
                false,
            );
            check_match_common(
                errs,
                &mp,
                m.port,
                &m.source_labels,
                &m.gateways,
                m.source_namespace.as_deref(),
            );
        }

        for (i, r) in self.route.iter().enumerate() {
            let rp = format!("{path}.route[{i}]");
            r.destination.validate(errs, &format!("{rp}.destination"));
            if let Some(h) = &r.headers {
                check_headers(errs, &format!("{rp}.headers"), h);
            }
        }
        let weights: Vec<Option<i64>> = self.route.iter().map(|r| r.weight).collect();
        check_weights(errs, &format!("{path}.route"), &weights);

        if let Some(h) = &self.headers {
            check_headers(errs, &format!("{path}.headers"), h);
        }
        if let Some(c) = &self.cors_policy {
            check_cors(errs, &format!("{path}.corsPolicy"), c);
        }
        if let Some(f) = &self.fault {
            f.validate(errs, &format!("{path}.fault"));
        }
        if let Some(m) = &self.mirror {
            m.validate(errs, &format!("{path}.mirror"));
            if !self.mirrors.is_empty() {
                errs.at(path, "mirror and mirrors cannot both be set; use mirrors");
            }
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            let mp = format!("{path}.mirrors[{i}]");
            m.destination.validate(errs, &format!("{mp}.destination"));
            check_percentage(errs, &format!("{mp}.percentage"), &m.percentage);
        }
        if let Some(p) = self.mirror_percent
            && p > 100
        {
            errs.at(
                format!("{path}.mirrorPercent"),
                format!("must be between 0 and 100, got {p}"),
            );
        }
        check_percentage(
            errs,
            &format!("{path}.mirrorPercentage"),
            &self.mirror_percentage,
        );
        if let Some(r) = &self.redirect {
            r.validate(errs, &format!("{path}.redirect"));
        }
        if let Some(d) = &self.direct_response {
            let dp = format!("{path}.directResponse");
            if !(200..=599).contains(&d.status) {
                errs.at(
                    format!("{dp}.status"),
                    format!("must be between 200 and 599, got {}", d.status),
                );
            }
            if let Some(b) = &d.body
                && b.string.is_some()
                && b.bytes.is_some()
            {
                errs.at(
                    format!("{dp}.body"),
                    "only one of string or bytes may be set",
                );
            }
        }
        if let Some(rw) = &self.rewrite {
            let rp = format!("{path}.rewrite");
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                errs.at(&rp, "only one of uri or uriRegexRewrite may be set");
            }
            if rw.uri.is_none() && rw.authority.is_none() && rw.uri_regex_rewrite.is_none() {
                errs.at(&rp, "rewrite must set uri, authority or uriRegexRewrite");
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                if rr.regex.is_empty() {
                    errs.at(format!("{rp}.uriRegexRewrite.match"), "a regex is required");
                } else {
                    check_regex(errs, &format!("{rp}.uriRegexRewrite.match"), &rr.regex);
                }
            }
            if rw.authority.is_some() && sets_authority(&self.headers) {
                errs.at(
                    format!("{rp}.authority"),
                    "the authority is rewritten twice: drop it from rewrite or from headers.request",
                );
            }
        }
        if let Some(r) = &self.retries {
            r.validate(errs, &format!("{path}.retries"));
        }
        check_opt_duration(errs, &format!("{path}.timeout"), &self.timeout);
    }
}

impl HttpRedirect {
    fn validate(&self, errs: &mut Errors, path: &str) {
        if self.uri.is_none()
            && self.prefix_rewrite.is_none()
            && self.authority.is_none()
            && self.scheme.is_none()
            && self.port.is_none()
            && self.derive_port.is_none()
        {
            errs.at(
                path,
                "redirect must set at least one of uri, prefixRewrite, authority, scheme, port or derivePort",
            );
        }
        if self.uri.is_some() && self.prefix_rewrite.is_some() {
            errs.at(path, "only one of uri or prefixRewrite may be set");
        }
        if self.port.is_some() && self.derive_port.is_some() {
            errs.at(path, "only one of port or derivePort may be set");
        }
        if let Some(p) = self.port {
            check_port(errs, &format!("{path}.port"), p);
        }
        if let Some(c) = self.redirect_code
            && !matches!(c, 301 | 302 | 303 | 307 | 308)
        {
            errs.at(
                format!("{path}.redirectCode"),
                format!("invalid redirect code {c}: must be 301, 302, 303, 307 or 308"),
            );
        }
    }
}

impl HttpFaultInjection {
    fn validate(&self, errs: &mut Errors, path: &str) {
        if self.delay.is_none() && self.abort.is_none() {
            errs.at(path, "fault must set delay, abort or both");
        }
        if let Some(a) = &self.abort {
            let ap = format!("{path}.abort");
            check_percentage(errs, &format!("{ap}.percentage"), &a.percentage);
            let set = [
                a.http_status.is_some(),
                a.grpc_status.is_some(),
                a.http2_error.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                errs.at(
                    &ap,
                    "abort must set exactly one of httpStatus or grpcStatus",
                );
            }
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                errs.at(
                    format!("{ap}.httpStatus"),
                    format!("must be between 200 and 599, got {s}"),
                );
            }
            if let Some(g) = &a.grpc_status
                && !GRPC_STATUS_CODES.contains(&g.as_str())
            {
                errs.at(
                    format!("{ap}.grpcStatus"),
                    format!(
                        "invalid gRPC status {g:?}: must be one of {}",
                        GRPC_STATUS_CODES.join(", ")
                    ),
                );
            }
            if a.http2_error.is_some() {
                errs.at(
                    format!("{ap}.http2Error"),
                    "http2Error aborts are not supported; use httpStatus or grpcStatus",
                );
            }
        }
        if let Some(d) = &self.delay {
            let dp = format!("{path}.delay");
            check_percentage(errs, &format!("{dp}.percentage"), &d.percentage);
            if let Some(p) = d.percent {
                check_percent(errs, &format!("{dp}.percent"), p as f64);
            }
            if d.exponential_delay.is_some() {
                errs.at(
                    format!("{dp}.exponentialDelay"),
                    "exponentialDelay is not supported; use fixedDelay",
                );
            }
            match &d.fixed_delay {
                Some(fd) => check_duration(errs, &format!("{dp}.fixedDelay"), fd),
                None if d.exponential_delay.is_none() => {
                    errs.at(format!("{dp}.fixedDelay"), "fixedDelay is required");
                }
                None => {}
            }
        }
    }
}
