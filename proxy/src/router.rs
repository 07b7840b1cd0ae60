//! Request routing: evaluates a [`RouteTable`] against one HTTP request.
//!
//! This module owns the per-request decisions a route table makes: which
//! virtual host and route apply ([`select_route`], [`matches()`]), which
//! weighted cluster is picked ([`pick_cluster`]), the header mutations
//! ([`apply_headers`]), path and authority rewrites ([`rewrite_path`],
//! [`rewrite_authority`]), redirect responses ([`redirect`]) and the
//! consistent-hash key for ring hash and Maglev ([`request_hash`]). It does
//! no I/O, holds no lock, and allocates only where it must produce a new
//! value (a rewritten path, a joined multi-valued header). It does not own
//! the tables (see [`crate::state::route`], compiled once when accepted),
//! forwarding, retries, timeouts, faults or CORS.
//!
//! Semantics follow Envoy's `route.v3` API, with these choices:
//! - Paths: every path condition (prefix, exact, separated prefix, regex) is
//!   evaluated on the path with the query string and fragment removed, as
//!   Envoy's `PathMatcher` does; `case_sensitive = false` applies to all but
//!   regexes.
//! - Headers: a header with several values is matched against the values
//!   joined with `,`. A value or range condition on an absent header does not
//!   hold, inverted or not (Envoy without `treat_missing_header_as_empty`);
//!   only `Present` conditions are satisfied by an absent header.
//! - Header mutations: within one [`HeaderMutation`] the removals run first,
//!   then the additions, whose conditions (`AddIfAbsent`,
//!   `OverwriteIfExists`) are evaluated against the headers before any of
//!   them is applied; overwrites are applied before appends; empty values are
//!   not added (Envoy's `HeaderParser` with `keep_empty_value` unset).
//! - Rewrites: `prefix_rewrite` replaces the matched prefix of a prefix or
//!   separated-prefix route, the whole path of an exact or regex route, and
//!   keeps the query string; `regex_rewrite` substitutes every match in the
//!   path only.
//! - Redirects: see [`redirect`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::balance::hash_key;
use crate::state::route::{
    AppendAction, Forward, HashInput, HashPolicy, HeaderAdd, HeaderCondition, HeaderMatcher,
    HeaderMutation, HostRewrite, PathMatch, QueryMatcher, Redirect, RedirectPath, Route,
    RouteMatch, RouteTable, StringMatch, StringMatcher, VirtualHost, WeightedCluster,
};

#[cfg(test)]
mod tests;

/// What routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The request method (`:method`).
    pub method: &'a Method,
    /// `http` or `https` (`:scheme`).
    pub scheme: &'a str,
    /// `host[:port]` exactly as received: the URI authority or the `Host`
    /// header (`:authority`).
    pub authority: &'a str,
    /// The path and query string, `/a/b?x=1` (`:path`).
    pub path_and_query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub source_ip: IpAddr,
}

/// The virtual host and the first route of it whose match holds.
///
/// The virtual host is chosen by [`RouteTable::virtual_host`] (Envoy's
/// domain precedence) on the authority as given; if none matches and the
/// authority carries a port, the lookup is retried without it, so
/// `reviews:80` finds a host serving `reviews`. `None` means no route: the
/// caller answers 404 (`no_route`).
pub fn select_route<'t>(
    table: &'t RouteTable,
    req: &RequestInfo<'_>,
) -> Option<(&'t VirtualHost, &'t Route)> {
    let vh = match table.virtual_host(req.authority) {
        Some(vh) => vh,
        None => match split_port(req.authority) {
            (host, Some(_)) => table.virtual_host(host)?,
            (_, None) => return None,
        },
    };
    let route = vh.routes.iter().find(|r| matches(&r.matcher, req))?;
    Some((vh, route))
}

/// Whether a route match holds: its path condition, every header condition
/// and every query parameter condition.
///
/// Pseudo-headers `:method`, `:authority`, `:path` (with its query) and
/// `:scheme` are read from `req`; other names from `req.headers`. Query
/// conditions look at the first value of the parameter, not percent-decoded;
/// a parameter without `=` has the empty value.
pub fn matches(m: &RouteMatch, req: &RequestInfo<'_>) -> bool {
    path_matches(&m.path, m.case_sensitive, req.path_and_query)
        && m.headers.iter().all(|h| header_matches(h, req))
        && m.query.iter().all(|q| query_matches(q, req.path_and_query))
}

/// The weighted target for `draw` in `[0, fwd.total_weight)` (larger draws
/// are taken modulo the total, as Envoy does): the targets own consecutive
/// intervals of the size of their weight, in configuration order.
pub fn pick_cluster(fwd: &Forward, draw: u32) -> &WeightedCluster {
    let draw = u64::from(draw.checked_rem(fwd.total_weight).unwrap_or(0));
    let mut end = 0u64;
    for c in &fwd.clusters {
        end += u64::from(c.weight);
        if draw < end {
            return c;
        }
    }
    // Only reachable when the weights do not add up to `total_weight`.
    fwd.clusters
        .iter()
        .rev()
        .find(|c| c.weight > 0)
        .or(fwd.clusters.last())
        .expect("a forward has at least one cluster (its total weight is positive)")
}

/// [`pick_cluster`] with a random draw.
pub fn pick_cluster_random(fwd: &Forward) -> &WeightedCluster {
    pick_cluster(fwd, fastrand::u32(0..fwd.total_weight.max(1)))
}

/// Applies header mutations in the order given; callers pass the most
/// specific first (weighted cluster, route, virtual host), so, as in Envoy by
/// default, the least specific wins.
///
/// For each mutation, as Envoy's `HeaderParser`: the `remove` names are
/// removed first; then each [`HeaderAdd`]
/// with a non-empty value is decided against the headers as they are at that
/// point (`AddIfAbsent` only if absent, `OverwriteIfExists` only if present);
/// the overwrites (`Overwrite`, `OverwriteIfExists`) are applied, replacing
/// all values, then the appends (`Append`, `AddIfAbsent`). Names or values
/// that cannot be represented are skipped silently. Pseudo-headers (`:…`)
/// and `host` are never modified.
pub fn apply_headers(headers: &mut HeaderMap, mutations: &[&HeaderMutation]) {
    for m in mutations {
        apply_mutation(headers, m);
    }
}

fn apply_mutation(headers: &mut HeaderMap, m: &HeaderMutation) {
    for name in m.remove.iter().filter(|n| modifiable(n)) {
        headers.remove(name.as_str());
    }
    // Every addition is decided against the headers as they are now, before
    // any of them is applied. Only conditional actions need that snapshot, so
    // only mutations that have one allocate it.
    let conditional = |a: &HeaderAdd| {
        matches!(
            a.action,
            AppendAction::AddIfAbsent | AppendAction::OverwriteIfExists
        )
    };
    let decided: Vec<bool> = if m.add.iter().any(conditional) {
        m.add
            .iter()
            .map(|a| {
                !conditional(a)
                    || headers.contains_key(a.name.as_str())
                        == (a.action == AppendAction::OverwriteIfExists)
            })
            .collect()
    } else {
        Vec::new()
    };
    let applies = |i: usize| decided.get(i).copied().unwrap_or(true);
    let overwrites = |a: &HeaderAdd| {
        matches!(
            a.action,
            AppendAction::Overwrite | AppendAction::OverwriteIfExists
        )
    };
    for (i, a) in m.add.iter().enumerate() {
        if overwrites(a)
            && applies(i)
            && let Some((name, value)) = header_pair(&a.name, &a.value)
        {
            headers.insert(name, value);
        }
    }
    for (i, a) in m.add.iter().enumerate() {
        if !overwrites(a)
            && applies(i)
            && let Some((name, value)) = header_pair(&a.name, &a.value)
        {
            headers.append(name, value);
        }
    }
}

/// The rewritten path and query when `fwd` rewrites the path, `None` when no
/// rewrite applies (none configured, or `path_and_query` is not one the
/// route matches).
///
/// `prefix_rewrite` replaces the part of the path the route matched: the
/// prefix of a `Prefix` or `PathSeparatedPrefix` route (the request's bytes
/// of that length when matched case-insensitively), the whole path of an
/// `Exact` or `Regex` route; the rest, query included, is kept. As in Envoy,
/// mind trailing slashes: `/api` → `/` turns `/api/x` into `//x`.
/// `regex_rewrite` substitutes every match in the path (query kept);
/// `\N` in the substitution is capture group N (0–9), `\\` a backslash.
pub fn rewrite_path(route: &Route, fwd: &Forward, path_and_query: &str) -> Option<String> {
    if let Some(prefix) = &fwd.prefix_rewrite {
        return replace_matched(&route.matcher, prefix, path_and_query);
    }
    let rr = fwd.regex_rewrite.as_ref()?;
    let path = path_only(path_and_query);
    let mut out = String::with_capacity(path_and_query.len() + rr.substitution.len());
    let mut last = 0;
    if rr.substitution.contains('\\') {
        for caps in rr.compiled.captures_iter(path) {
            let Some(m) = caps.get(0) else { continue };
            out.push_str(&path[last..m.start()]);
            expand_substitution(&rr.substitution, &caps, &mut out);
            last = m.end();
        }
    } else {
        for m in rr.compiled.find_iter(path) {
            out.push_str(&path[last..m.start()]);
            out.push_str(&rr.substitution);
            last = m.end();
        }
    }
    out.push_str(&path[last..]);
    out.push_str(&path_and_query[path.len()..]);
    Some(out)
}

/// The new authority under `fwd.host_rewrite`, `None` to keep it.
///
/// `Literal(v)` gives `v`; `Header(name)` the first value of that request
/// header when present, non-empty and text; `Auto` gives `upstream_host`
/// (the picked endpoint's host name, when known).
pub fn rewrite_authority(
    fwd: &Forward,
    headers: &HeaderMap,
    upstream_host: Option<&str>,
) -> Option<String> {
    match fwd.host_rewrite.as_ref()? {
        HostRewrite::Literal(v) => Some(v.clone()),
        HostRewrite::Header(name) => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        HostRewrite::Auto => upstream_host.map(str::to_string),
    }
}

/// A redirect response: its status and `Location`, built from the request
/// as Envoy's `RedirectAction` does.
///
/// - Scheme: `r.scheme`, else the request's.
/// - Host: `r.host` verbatim (the request's port is then dropped), else the
///   request's authority, whose port is dropped when `r.port` is set, or
///   when the scheme changes and the port is the default one of the old
///   scheme (`http://a:80` → `https://a`); any other explicit port is kept
///   (`http://a:8080` → `https://a:8080`).
/// - Port: `:r.port` appended when set, even if it is the scheme's default.
/// - Path: `Path(p)` replaces the path; when `p` has a query string it
///   replaces the request's and is never stripped, else the request's query
///   is kept. `Prefix(p)` replaces the matched part as
///   [`rewrite_path`]'s `prefix_rewrite`. A path not starting with `/` gets
///   one.
/// - `strip_query` then drops the query string (not one from `Path(p)`).
///
/// A status that is not a redirection (3xx) is answered as 301.
pub fn redirect(r: &Redirect, route: &Route, req: &RequestInfo<'_>) -> (StatusCode, String) {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(StatusCode::is_redirection)
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);

    let mut location =
        String::with_capacity(scheme.len() + req.authority.len() + req.path_and_query.len() + 16);
    location.push_str(scheme);
    location.push_str("://");
    match &r.host {
        Some(host) => location.push_str(host),
        None => {
            let (host, port) = split_port(req.authority);
            let default_port_of_old = match port {
                Some(p) if req.scheme.eq_ignore_ascii_case("http") => p == "80",
                Some(p) if req.scheme.eq_ignore_ascii_case("https") => p == "443",
                _ => false,
            };
            let drop_port = r.port.is_some()
                || (!scheme.eq_ignore_ascii_case(req.scheme) && default_port_of_old);
            location.push_str(if drop_port { host } else { req.authority });
        }
    }
    if let Some(port) = r.port {
        // Writing to a String cannot fail.
        let _ = write!(location, ":{port}");
    }

    let path_start = location.len();
    let mut strip_query = r.strip_query;
    match &r.path {
        Some(RedirectPath::Path(p)) => {
            location.push_str(p);
            if p.contains('?') {
                strip_query = false;
            } else if let Some(q) = req.path_and_query.find('?') {
                location.push_str(&req.path_and_query[q..]);
            }
        }
        Some(RedirectPath::Prefix(p)) => {
            match replace_matched(&route.matcher, p, req.path_and_query) {
                Some(rewritten) => location.push_str(&rewritten),
                None => location.push_str(req.path_and_query),
            }
        }
        None => location.push_str(req.path_and_query),
    }
    if !location[path_start..].starts_with('/') {
        location.insert(path_start, '/');
    }
    if strip_query && let Some(q) = location[path_start..].find('?') {
        location.truncate(path_start + q);
    }
    (status, location)
}

/// The result of [`request_hash`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashOutcome {
    /// The request's hash, `None` when no policy produced one (the balancer
    /// then picks at random).
    pub hash: Option<u64>,
    /// A `Set-Cookie` value the caller adds to the response, when a cookie
    /// policy generated the cookie.
    pub set_cookie: Option<String>,
}

/// The consistent hash of a request for ring hash and Maglev, as Envoy's
/// `HashPolicyImpl`.
///
/// Policies are walked in order; each that produces a hash is combined as
/// `previous.rotate_left(1) ^ new` (the first one as is); after a `terminal`
/// policy, the walk stops if a hash has been produced so far. Inputs, hashed
/// with [`hash_key`]:
/// - `Header`: the header's value; several values are sorted and
///   concatenated (so their order does not matter).
/// - `Cookie`: the cookie's value (surrounding quotes removed) when present
///   and non-empty; otherwise, with a ttl set, a random 16-hex-digit value,
///   returned as `name=value; Max-Age=N; Path=p; HttpOnly` in
///   [`HashOutcome::set_cookie`] (`Max-Age` omitted for a zero ttl, making a
///   session cookie; `Path` omitted when empty). Only the first generated
///   cookie is returned.
/// - `SourceIp`: the textual form of the client address (`10.0.0.1`, `::1`).
/// - `QueryParameter`: the first value of the parameter (empty when it has
///   no `=`).
pub fn request_hash(policies: &[HashPolicy], req: &RequestInfo<'_>) -> HashOutcome {
    let mut out = HashOutcome::default();
    for policy in policies {
        let new = match &policy.input {
            HashInput::Header(name) => header_hash(req.headers, name),
            HashInput::Cookie { name, ttl, path } => match cookie_value(req.headers, name) {
                Some(value) => Some(hash_key(value)),
                None => ttl.map(|ttl| {
                    let value = format!("{:016x}", fastrand::u64(..));
                    let hash = hash_key(value.as_bytes());
                    if out.set_cookie.is_none() {
                        out.set_cookie = Some(set_cookie(name, &value, ttl.as_secs(), path));
                    }
                    hash
                }),
            },
            HashInput::SourceIp => {
                let mut buf = StackStr::new();
                write!(buf, "{}", req.source_ip)
                    .ok()
                    .map(|()| hash_key(buf.as_bytes()))
            }
            HashInput::QueryParameter(name) => {
                query_value(req.path_and_query, name).map(|v| hash_key(v.as_bytes()))
            }
        };
        if let Some(new) = new {
            out.hash = Some(out.hash.map_or(new, |old| old.rotate_left(1) ^ new));
        }
        if policy.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Paths

/// The path without its query string and fragment.
fn path_only(path_and_query: &str) -> &str {
    path_and_query
        .find(['?', '#'])
        .map_or(path_and_query, |i| &path_and_query[..i])
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    match s.as_bytes().get(..prefix.len()) {
        Some(head) if case_sensitive => head == prefix.as_bytes(),
        Some(head) => head.eq_ignore_ascii_case(prefix.as_bytes()),
        None => false,
    }
}

fn equals(a: &str, b: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        a == b
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

fn path_matches(m: &PathMatch, case_sensitive: bool, path_and_query: &str) -> bool {
    let path = path_only(path_and_query);
    match m {
        PathMatch::Prefix(p) => starts_with(path, p, case_sensitive),
        PathMatch::Exact(p) => equals(path, p, case_sensitive),
        PathMatch::PathSeparatedPrefix(p) => {
            starts_with(path, p, case_sensitive)
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        }
        PathMatch::Regex(re) => re.is_match(path),
    }
}

/// `path_and_query` with the part the route matched replaced by
/// `replacement`; `None` when the route does not match that path.
fn replace_matched(m: &RouteMatch, replacement: &str, path_and_query: &str) -> Option<String> {
    let path = path_only(path_and_query);
    let matched = match &m.path {
        PathMatch::Prefix(p) | PathMatch::PathSeparatedPrefix(p)
            if path_matches(&m.path, m.case_sensitive, path) =>
        {
            p.len()
        }
        PathMatch::Exact(_) | PathMatch::Regex(_)
            if path_matches(&m.path, m.case_sensitive, path) =>
        {
            path.len()
        }
        _ => return None,
    };
    let rest = path_and_query.get(matched..)?;
    let mut out = String::with_capacity(replacement.len() + rest.len());
    out.push_str(replacement);
    out.push_str(rest);
    Some(out)
}

/// Appends RE2-style substitution `sub` for one match: `\0`–`\9` are capture
/// groups (empty when the group did not participate or does not exist),
/// `\\` is a backslash, any other backslash is kept literally.
fn expand_substitution(sub: &str, caps: &regex::Captures<'_>, out: &mut String) {
    let mut rest = sub;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.as_bytes().first() {
            Some(&d) if d.is_ascii_digit() => {
                if let Some(g) = caps.get(usize::from(d - b'0')) {
                    out.push_str(g.as_str());
                }
                rest = &after[1..];
            }
            Some(b'\\') => {
                out.push('\\');
                rest = &after[1..];
            }
            _ => {
                out.push('\\');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// Splits `host[:port]` into the host and the port digits, if any. IPv6
/// literals carry a port only after their brackets (`[::1]:80`); a bare
/// IPv6 address has none.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let Some(colon) = authority.rfind(':') else {
        return (authority, None);
    };
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    let bracketed_or_plain = if host.starts_with('[') {
        host.ends_with(']')
    } else {
        !host.contains(':')
    };
    if bracketed_or_plain && port.bytes().all(|b| b.is_ascii_digit()) {
        (host, Some(port))
    } else {
        (authority, None)
    }
}

// ---------------------------------------------------------------------------
// Headers and query parameters

/// The value a header condition looks at: pseudo-headers from `req`, other
/// headers from the map, several values joined with `,`. `None` if absent.
fn header_value<'a>(name: &str, req: &RequestInfo<'a>) -> Option<Cow<'a, [u8]>> {
    if name.starts_with(':') {
        let v = match name {
            ":method" => req.method.as_str(),
            ":authority" => req.authority,
            ":path" => req.path_and_query,
            ":scheme" => req.scheme,
            _ => return None,
        };
        return Some(Cow::Borrowed(v.as_bytes()));
    }
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = Vec::with_capacity(first.len() + second.len() + 16);
    joined.extend_from_slice(first.as_bytes());
    for v in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    Some(Cow::Owned(joined))
}

fn header_matches(h: &HeaderMatcher, req: &RequestInfo<'_>) -> bool {
    let mut value = header_value(&h.name, req);
    if value.is_none()
        && h.treat_missing_as_empty
        && !matches!(h.condition, HeaderCondition::Present(_))
    {
        value = Some(Cow::Borrowed(&[]));
    }
    let held = match (&h.condition, value) {
        (HeaderCondition::Present(want), value) => value.is_some() == *want,
        // Envoy (unless `treat_missing_header_as_empty`): a value or range
        // condition on an absent header fails, whether inverted or not.
        (_, None) => return false,
        (HeaderCondition::Value(sm), Some(v)) => string_matches(sm, &v),
        (HeaderCondition::Range { start, end }, Some(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim_ascii().parse::<i64>().ok())
            .is_some_and(|n| *start <= n && n < *end),
    };
    held != h.invert
}

fn query_matches(q: &QueryMatcher, path_and_query: &str) -> bool {
    match (query_value(path_and_query, &q.name), &q.value) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(v), Some(sm)) => string_matches(sm, v.as_bytes()),
    }
}

/// The first value of query parameter `name` (not decoded; empty for a
/// parameter without `=`).
fn query_value<'p>(path_and_query: &'p str, name: &str) -> Option<&'p str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.find('#').map_or(query, |i| &query[..i]);
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// Envoy's `StringMatcher` on raw bytes; `ignore_case` is ASCII-only and
/// does not apply to regexes, which need the value to be UTF-8.
pub fn string_matches(sm: &StringMatcher, value: &[u8]) -> bool {
    let eq = |a: &[u8], b: &[u8]| {
        if sm.ignore_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    match &sm.pattern {
        StringMatch::Exact(p) => eq(value, p.as_bytes()),
        StringMatch::Prefix(p) => value.get(..p.len()).is_some_and(|h| eq(h, p.as_bytes())),
        StringMatch::Suffix(p) => value
            .len()
            .checked_sub(p.len())
            .is_some_and(|i| eq(&value[i..], p.as_bytes())),
        StringMatch::Contains(p) => {
            p.is_empty() || value.windows(p.len()).any(|w| eq(w, p.as_bytes()))
        }
        StringMatch::Regex(re) => std::str::from_utf8(value).is_ok_and(|s| re.is_match(s)),
    }
}

/// Whether a mutation may touch this header: never pseudo-headers or `host`.
fn modifiable(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(':') && !name.eq_ignore_ascii_case("host")
}

/// The typed header for an addition, `None` when it must be skipped
/// (not modifiable, empty value, or not representable).
fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    if value.is_empty() || !modifiable(name) {
        return None;
    }
    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let value = HeaderValue::from_bytes(value.as_bytes()).ok()?;
    Some((name, value))
}

// ---------------------------------------------------------------------------
// Hashing

fn header_hash(headers: &HeaderMap, name: &str) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(hash_key(first.as_bytes()));
    };
    let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
    all.extend(values.map(HeaderValue::as_bytes));
    all.sort_unstable();
    Some(hash_key(&all.concat()))
}

/// The value of cookie `name` in the `cookie` headers, surrounding quotes
/// removed; `None` when absent or empty.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            let key = pair[..eq].trim_ascii_start();
            if key != name.as_bytes() {
                return None;
            }
            let v = &pair[eq + 1..];
            Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            })
        })
        .filter(|v| !v.is_empty())
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64, path: &str) -> String {
    let mut s = String::with_capacity(name.len() + value.len() + path.len() + 40);
    s.push_str(name);
    s.push('=');
    s.push_str(value);
    // Writing to a String cannot fail.
    if max_age_secs > 0 {
        let _ = write!(s, "; Max-Age={max_age_secs}");
    }
    if !path.is_empty() {
        s.push_str("; Path=");
        s.push_str(path);
    }
    s.push_str("; HttpOnly");
    s
}

/// A fixed buffer for an IP address's text (at most 45 bytes for IPv6), so
/// hashing the source IP does not allocate.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl StackStr {
    fn new() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
