//! Route tables in Keel's representation: virtual hosts chosen by domain with
//! Envoy's precedence, routes with pre-compiled matches, and their actions.
//! Regexes are compiled once, when the resource is accepted.

use std::collections::BTreeSet;
use std::time::Duration;

use super::ser_opt_duration;

/// One route configuration (RDS resource or inline table).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteTable {
    /// The route configuration name (`9080`, `inbound|9080||`, ...).
    pub name: String,
    /// Virtual hosts in configuration order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Domains indexed for lookup (derived from `virtual_hosts`).
    #[serde(skip)]
    index: DomainIndex,
}

/// Where each domain pattern leads: exact domains hashed, wildcards in
/// precedence order, so a lookup costs one hash and a short scan rather
/// than a pass over every domain of every virtual host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DomainIndex {
    exact: crate::FastMap<String, usize>,
    /// `(class, pattern, virtual host)`: suffixes (class 2) then prefixes
    /// (class 1), longest first, configuration order among equals.
    wildcards: Vec<(u8, String, usize)>,
    any: Option<usize>,
}

/// A virtual host: the domains it serves and its routes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VirtualHost {
    /// The virtual host name.
    pub name: String,
    /// The domains it serves.
    pub domains: Vec<Domain>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// Redirect plain-text requests to https.
    pub require_tls: bool,
    /// Add `x-envoy-attempt-count` to upstream requests.
    pub include_attempt_count: bool,
    /// Header changes for every route of the host.
    pub request_headers: HeaderMutation,
    /// Response header changes for every route of the host.
    pub response_headers: HeaderMutation,
}

/// A domain pattern; patterns may carry `:port`, matched literally as Envoy does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// `*`.
    Any,
    /// An exact, lower-cased domain.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Suffix(String),
    /// `example.*`, stored as the prefix `example.`.
    Prefix(String),
}

impl Domain {
    /// Parses an Envoy domain pattern.
    pub fn parse(pattern: &str) -> Self {
        let p = pattern.to_ascii_lowercase();
        if p == "*" {
            Self::Any
        } else if let Some(suffix) = p.strip_prefix('*') {
            Self::Suffix(suffix.to_string())
        } else if let Some(prefix) = p.strip_suffix('*') {
            Self::Prefix(prefix.to_string())
        } else {
            Self::Exact(p)
        }
    }
}

impl RouteTable {
    /// A table of `virtual_hosts`, indexed.
    pub fn new(name: String, virtual_hosts: Vec<VirtualHost>) -> Self {
        let mut index = DomainIndex::default();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    Domain::Exact(e) => {
                        index.exact.entry(e.clone()).or_insert(i);
                    }
                    Domain::Suffix(s) => index.wildcards.push((2, s.clone(), i)),
                    Domain::Prefix(p) => index.wildcards.push((1, p.clone(), i)),
                    Domain::Any => {
                        index.any.get_or_insert(i);
                    }
                }
            }
        }
        // Stable: configuration order among equal ranks.
        index
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse((w.0, w.1.len())));
        Self {
            name,
            virtual_hosts,
            index,
        }
    }

    /// The virtual host for `host` (the `:authority`), with Envoy's precedence:
    /// exact, then the longest suffix wildcard, then the longest prefix
    /// wildcard, then `*`. Wildcards match at least one character.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        let ix = &self.index;
        let found = ix.exact.get(host.as_ref()).copied().or_else(|| {
            ix.wildcards
                .iter()
                .find(|(class, p, _)| {
                    host.len() > p.len()
                        && if *class == 2 {
                            host.ends_with(p.as_str())
                        } else {
                            host.starts_with(p.as_str())
                        }
                })
                .map(|(_, _, i)| *i)
                .or(ix.any)
        });
        found.and_then(|i| self.virtual_hosts.get(i))
    }
}

/// One route.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// The route name (Istio's HTTP route name).
    pub name: String,
    /// When the route applies.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// What it does.
    pub action: Action,
    /// Request header changes.
    pub request_headers: HeaderMutation,
    /// Response header changes.
    pub response_headers: HeaderMutation,
    /// Fault injection for this route.
    pub fault: Option<Fault>,
    /// CORS for this route.
    pub cors: Option<Cors>,
}

/// A compiled route match.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// Whether path matching is case sensitive (Envoy's default: yes).
    pub case_sensitive: bool,
    /// Header conditions, all must hold.
    pub headers: Vec<HeaderMatcher>,
    /// Query parameter conditions, all must hold.
    pub query: Vec<QueryMatcher>,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Equals, or starts with followed by `/`.
    PathSeparatedPrefix(String),
    /// Matches the whole path.
    Regex(Regex),
}

/// The most memory a compiled regex may take, in bytes. Like the
/// `max_program_size` guard Envoy puts on RE2, it stops a pathological
/// pattern from the control plane (`(?:a|b){100000}`) from bloating the proxy:
/// such a regex is rejected and its resource NACKed instead.
pub const REGEX_SIZE_LIMIT: usize = 1024 * 1024;

/// Why a regex from the control plane was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    /// Not valid syntax (the regex crate's message, which points at the spot).
    #[error("{0}")]
    Syntax(String),
    /// Valid, but compiles to more than [`REGEX_SIZE_LIMIT`].
    #[error(
        r"regex program is too large: it compiles to more than {limit} bytes; use fewer or smaller counted repetitions, and ASCII classes ([0-9], [a-zA-Z0-9_]) rather than Unicode ones (\d, \w), which compile to far more"
    )]
    TooLarge {
        /// The limit it exceeds, in bytes.
        limit: usize,
    },
}

/// Compiles `pattern` as given (unanchored), within [`REGEX_SIZE_LIMIT`].
pub fn compile(pattern: &str) -> Result<regex::Regex, RegexError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => RegexError::TooLarge { limit },
            other => RegexError::Syntax(other.to_string()),
        })
}

/// A compiled regular expression (anchored: it must match the whole input,
/// as Envoy's `safe_regex` does). Equal when the patterns are.
#[derive(Clone, Debug)]
pub struct Regex {
    /// The pattern as configured.
    pub pattern: String,
    /// `^(?:pattern)$`, compiled.
    pub compiled: regex::Regex,
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Regex {}

impl serde::Serialize for Regex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

impl Regex {
    /// Compiles `pattern` anchored at both ends, within [`REGEX_SIZE_LIMIT`].
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        // Alone first: `a)|(b` is unbalanced by itself yet balanced inside
        // the anchoring group, where it would silently lose its anchors.
        compile(pattern)?;
        Ok(Self {
            pattern: pattern.to_string(),
            compiled: compile(&format!("^(?:{pattern})$"))?,
        })
    }

    /// Whether the whole input matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.compiled.is_match(s)
    }
}

/// A string condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Matches the whole value.
    Regex(Regex),
}

/// A string matcher with its case handling.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StringMatcher {
    /// The condition.
    #[serde(flatten)]
    pub pattern: StringMatch,
    /// Compare ASCII case-insensitively (not for regexes).
    pub ignore_case: bool,
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeaderMatcher {
    /// The header name, lower case.
    pub name: String,
    /// The condition on its value.
    pub condition: HeaderCondition,
    /// Negate the result.
    pub invert: bool,
    /// Match an absent header as if its value were empty (Envoy's
    /// `treat_missing_header_as_empty`; Istio sets it for `withoutHeaders`).
    pub treat_missing_as_empty: bool,
}

/// What a header must satisfy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderCondition {
    /// Present (true) or absent (false).
    Present(bool),
    /// Its value matches.
    Value(StringMatcher),
    /// Its value is an integer in `[start, end)`.
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
}

/// A query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueryMatcher {
    /// The parameter name.
    pub name: String,
    /// The value condition; `None` means "present".
    pub value: Option<StringMatcher>,
}

/// What a route does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward upstream.
    Forward(Box<Forward>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct {
        /// The status code.
        status: u16,
        /// The body, if any.
        body: Option<String>,
    },
}

/// Forwarding to one or more weighted clusters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Forward {
    /// The target clusters; one entry with weight 1 for a single cluster.
    pub clusters: Vec<WeightedCluster>,
    /// The sum of the weights (never 0).
    pub total_weight: u32,
    /// The whole-request timeout; `None` means no timeout (Envoy's `0s`).
    #[serde(serialize_with = "ser_opt_duration")]
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Replace the matched path prefix.
    pub prefix_rewrite: Option<String>,
    /// Replace regex matches in the path.
    pub regex_rewrite: Option<RegexRewrite>,
    /// How to rewrite `Host`.
    pub host_rewrite: Option<HostRewrite>,
    /// Consistent-hash inputs for ring-hash / Maglev clusters.
    pub hash_policies: Vec<HashPolicy>,
    /// Shadow traffic.
    pub mirrors: Vec<Mirror>,
    /// Cap on a stream's total duration.
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_stream_duration: Option<Duration>,
}

/// One target of a weighted forward.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WeightedCluster {
    /// The cluster name.
    pub name: String,
    /// Its weight.
    pub weight: u32,
    /// Request header changes when this target is chosen.
    pub request_headers: HeaderMutation,
    /// Response header changes when this target is chosen.
    pub response_headers: HeaderMutation,
    /// Rewrite the authority to this when this target is chosen.
    pub host_rewrite: Option<String>,
}

/// A regex path rewrite. Equal when pattern and substitution are.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegexRewrite {
    /// What to find (unanchored).
    pub pattern: String,
    /// The compiled pattern.
    #[serde(skip)]
    pub compiled: regex::Regex,
    /// The replacement (`\1` style groups).
    pub substitution: String,
}

impl PartialEq for RegexRewrite {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.substitution == other.substitution
    }
}

impl Eq for RegexRewrite {}

impl RegexRewrite {
    /// Compiles `pattern` (unanchored), within [`REGEX_SIZE_LIMIT`].
    pub fn new(pattern: &str, substitution: &str) -> Result<Self, RegexError> {
        Ok(Self {
            pattern: pattern.to_string(),
            compiled: compile(pattern)?,
            substitution: substitution.to_string(),
        })
    }
}

/// How to rewrite the `Host` header.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRewrite {
    /// To this value.
    Literal(String),
    /// To the chosen upstream host's name.
    Auto,
    /// To the value of this request header.
    Header(String),
}

/// One consistent-hash input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HashPolicy {
    /// What to hash.
    pub input: HashInput,
    /// Stop at this policy if it produced a hash.
    pub terminal: bool,
}

/// A consistent-hash source.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashInput {
    /// A request header.
    Header(String),
    /// A cookie, generated with `ttl` when absent and a ttl is set.
    Cookie {
        /// The cookie name.
        name: String,
        /// The generated cookie's lifetime.
        #[serde(serialize_with = "ser_opt_duration")]
        ttl: Option<Duration>,
        /// The generated cookie's path.
        path: String,
    },
    /// The client address.
    SourceIp,
    /// A query parameter.
    QueryParameter(String),
}

/// Shadow a fraction of requests to a cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mirror {
    /// The shadow cluster.
    pub cluster: String,
    /// Parts per million of requests mirrored.
    pub fraction_ppm: u32,
}

/// A retry policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// The conditions that trigger a retry.
    pub retry_on: BTreeSet<RetryOn>,
    /// How many retries (not counting the first attempt).
    pub num_retries: u32,
    /// Timeout of each attempt.
    #[serde(serialize_with = "ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Status codes retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Back-off between attempts (Envoy's default 25 ms base, 10x max when unset).
    pub backoff: Option<Backoff>,
    /// Avoid hosts already tried (`previous_hosts` predicate).
    pub avoid_previous_hosts: bool,
    /// How many times to re-pick a host to satisfy that.
    pub host_selection_max_attempts: u32,
}

/// Retry back-off.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Backoff {
    /// The base interval.
    #[serde(serialize_with = "super::ser_duration")]
    pub base: Duration,
    /// The cap.
    #[serde(serialize_with = "super::ser_duration")]
    pub max: Duration,
}

/// A retry condition (Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504.
    GatewayError,
    /// Reset, disconnect, timeout before response headers.
    Reset,
    /// Reset before request headers were sent.
    ResetBeforeRequest,
    /// Connection failure.
    ConnectFailure,
    /// Upstream answered `x-envoy-ratelimited`.
    EnvoyRatelimited,
    /// 409.
    Retriable4xx,
    /// REFUSED_STREAM.
    RefusedStream,
    /// Listed status codes.
    RetriableStatusCodes,
    /// Configured response headers.
    RetriableHeaders,
    /// HTTP/3 post-connect failure.
    Http3PostConnectFailure,
    /// gRPC CANCELLED.
    Cancelled,
    /// gRPC DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC INTERNAL.
    Internal,
    /// gRPC RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC UNAVAILABLE.
    Unavailable,
}

impl RetryOn {
    /// Parses one condition name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "5xx" => Self::FiveXx,
            "gateway-error" => Self::GatewayError,
            "reset" => Self::Reset,
            "reset-before-request" => Self::ResetBeforeRequest,
            "connect-failure" => Self::ConnectFailure,
            "envoy-ratelimited" => Self::EnvoyRatelimited,
            "retriable-4xx" => Self::Retriable4xx,
            "refused-stream" => Self::RefusedStream,
            "retriable-status-codes" => Self::RetriableStatusCodes,
            "retriable-headers" => Self::RetriableHeaders,
            "http3-post-connect-failure" => Self::Http3PostConnectFailure,
            "cancelled" => Self::Cancelled,
            "deadline-exceeded" => Self::DeadlineExceeded,
            "internal" => Self::Internal,
            "resource-exhausted" => Self::ResourceExhausted,
            "unavailable" => Self::Unavailable,
            _ => return None,
        })
    }
}

/// A redirect response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Redirect {
    /// New scheme, if changed.
    pub scheme: Option<String>,
    /// New host, if changed.
    pub host: Option<String>,
    /// New port, if changed.
    pub port: Option<u16>,
    /// New path or prefix, if changed.
    pub path: Option<RedirectPath>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// Drop the query string.
    pub strip_query: bool,
}

/// How a redirect changes the path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPath {
    /// Replace the whole path.
    Path(String),
    /// Replace the matched prefix.
    Prefix(String),
}

/// Header changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderMutation {
    /// Headers to add or set, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderAdd>,
    /// Header names to remove (lower case).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// One header to add.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeaderAdd {
    /// The header name (lower case).
    pub name: String,
    /// The value.
    pub value: String,
    /// What to do when the header exists.
    pub action: AppendAction,
}

/// Envoy's `HeaderAppendAction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendAction {
    /// Append a value (Envoy's default).
    Append,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace or add.
    Overwrite,
    /// Replace only when present.
    OverwriteIfExists,
}

/// Per-route fault injection.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fault {
    /// Delay a fraction of requests.
    pub delay: Option<Delay>,
    /// Abort a fraction of requests.
    pub abort: Option<Abort>,
}

/// A fixed delay.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Delay {
    /// How long.
    #[serde(serialize_with = "super::ser_duration")]
    pub duration: Duration,
    /// Parts per million of requests delayed.
    pub fraction_ppm: u32,
}

/// An injected error.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Abort {
    /// What to answer.
    pub status: AbortStatus,
    /// Parts per million of requests aborted.
    pub fraction_ppm: u32,
}

/// The injected error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    /// An HTTP status code.
    Http(u16),
    /// A gRPC status code.
    Grpc(u32),
}

/// Per-route CORS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cors {
    /// Allowed origins.
    pub allow_origins: Vec<StringMatcher>,
    /// `access-control-allow-methods`.
    pub allow_methods: String,
    /// `access-control-allow-headers`.
    pub allow_headers: String,
    /// `access-control-expose-headers`.
    pub expose_headers: String,
    /// `access-control-max-age`.
    pub max_age: String,
    /// `access-control-allow-credentials`.
    pub allow_credentials: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| Domain::parse(d)).collect(),
            routes: Vec::new(),
            require_tls: false,
            include_attempt_count: false,
            request_headers: HeaderMutation::default(),
            response_headers: HeaderMutation::default(),
        }
    }

    #[test]
    fn virtual_host_precedence_follows_envoy() {
        let table = RouteTable::new(
            "t".into(),
            vec![
                vh("any", &["*"]),
                vh("prefix", &["api.*"]),
                vh("suffix", &["*.example.com"]),
                vh("longer-suffix", &["*.api.example.com"]),
                vh("exact", &["reviews", "reviews:9080"]),
            ],
        );
        let pick = |h: &str| table.virtual_host(h).map(|v| v.name.as_str());
        assert_eq!(pick("reviews"), Some("exact"));
        assert_eq!(pick("REVIEWS:9080"), Some("exact"));
        assert_eq!(pick("reviews:80"), Some("any"));
        assert_eq!(pick("v1.api.example.com"), Some("longer-suffix"));
        assert_eq!(pick("www.example.com"), Some("suffix"));
        assert_eq!(pick(".example.com"), Some("any"));
        assert_eq!(pick("api.internal"), Some("prefix"));
        assert_eq!(pick("other"), Some("any"));
    }
}
