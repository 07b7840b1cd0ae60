//! Behaviour tests of routing: which route a request gets, the split of a
//! weighted forward, header changes, rewrites, redirects and hash keys.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;
use crate::state::route::{
    Action, Domain, HeaderAdd, HeaderMutation, Regex, RegexRewrite, Route, RouteMatch,
};

// ---------------------------------------------------------------------------
// Builders

/// An owned request; `info()` borrows it as routing sees it.
struct Req {
    method: Method,
    scheme: &'static str,
    authority: String,
    path: String,
    headers: HeaderMap,
    ip: IpAddr,
}

impl Req {
    fn get(authority: &str, path: &str) -> Self {
        Self {
            method: Method::GET,
            scheme: "http",
            authority: authority.into(),
            path: path.into(),
            headers: HeaderMap::new(),
            ip: "10.0.0.1".parse().expect("valid IP"),
        }
    }

    fn path(path: &str) -> Self {
        Self::get("example.com", path)
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers
            .append(name, HeaderValue::from_str(value).expect("valid value"));
        self
    }

    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }

    fn scheme(mut self, s: &'static str) -> Self {
        self.scheme = s;
        self
    }

    fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().expect("valid IP");
        self
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            method: &self.method,
            scheme: self.scheme,
            authority: &self.authority,
            path_and_query: &self.path,
            headers: &self.headers,
            source_ip: self.ip,
        }
    }
}

fn re(p: &str) -> Regex {
    Regex::new(p).expect("test regex compiles")
}

fn on(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        case_sensitive: true,
        headers: Vec::new(),
        query: Vec::new(),
    }
}

fn prefix(p: &str) -> RouteMatch {
    on(PathMatch::Prefix(p.into()))
}

fn ci(mut m: RouteMatch) -> RouteMatch {
    m.case_sensitive = false;
    m
}

fn with_header(
    mut m: RouteMatch,
    name: &str,
    condition: HeaderCondition,
    invert: bool,
) -> RouteMatch {
    m.headers.push(HeaderMatcher {
        name: name.into(),
        condition,
        invert,
        treat_missing_as_empty: false,
    });
    m
}

fn with_query(mut m: RouteMatch, name: &str, value: Option<StringMatcher>) -> RouteMatch {
    m.query.push(QueryMatcher {
        name: name.into(),
        value,
    });
    m
}

fn sm(pattern: StringMatch, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        pattern,
        ignore_case,
    }
}

fn value(pattern: StringMatch) -> HeaderCondition {
    HeaderCondition::Value(sm(pattern, false))
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn cluster(name: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        name: name.into(),
        weight,
        request_headers: HeaderMutation::default(),
        response_headers: HeaderMutation::default(),
        host_rewrite: None,
    }
}

fn forward(clusters: &[(&str, u32)]) -> Forward {
    let clusters: Vec<_> = clusters.iter().map(|(n, w)| cluster(n, *w)).collect();
    Forward {
        total_weight: clusters.iter().map(|c| c.weight).sum(),
        clusters,
        timeout: None,
        retry: None,
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: None,
        hash_policies: Vec::new(),
        mirrors: Vec::new(),
        max_stream_duration: None,
    }
}

fn route(name: &str, matcher: RouteMatch) -> Route {
    Route {
        name: name.into(),
        matcher,
        action: Action::Forward(Box::new(forward(&[(name, 1)]))),
        request_headers: HeaderMutation::default(),
        response_headers: HeaderMutation::default(),
        fault: None,
        cors: None,
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| Domain::parse(d)).collect(),
        routes,
        require_tls: false,
        include_attempt_count: false,
        request_headers: HeaderMutation::default(),
        response_headers: HeaderMutation::default(),
    }
}

fn holds(m: &RouteMatch, r: &Req) -> bool {
    matches(m, &r.info())
}

// ---------------------------------------------------------------------------
// Path matching

#[test]
fn exact_path_ignores_the_query_string() {
    let m = on(PathMatch::Exact("/login".into()));
    assert!(holds(&m, &Req::path("/login")));
    assert!(holds(&m, &Req::path("/login?next=/home")));
    assert!(!holds(&m, &Req::path("/login/")));
    assert!(!holds(&m, &Req::path("/LOGIN")));
    assert!(!holds(&m, &Req::path("/log")));

    let m = ci(on(PathMatch::Exact("/login".into())));
    assert!(holds(&m, &Req::path("/LogIn?x=1")));
    assert!(!holds(&m, &Req::path("/LogIn/x")));
}

#[test]
fn prefix_path_matches_the_start_of_the_path() {
    let m = prefix("/api");
    assert!(holds(&m, &Req::path("/api")));
    assert!(holds(&m, &Req::path("/api/v1/users?id=2")));
    assert!(holds(&m, &Req::path("/apiary")));
    assert!(!holds(&m, &Req::path("/ap")));
    assert!(!holds(&m, &Req::path("/API/v1")));
    assert!(!holds(&m, &Req::path("/?x=/api")));
    // The query string is not part of the path.
    assert!(!holds(&prefix("/a?b"), &Req::path("/a?b=1")));
    assert!(holds(&prefix(""), &Req::path("/anything")));

    let m = ci(prefix("/api"));
    assert!(holds(&m, &Req::path("/API/v1")));
    assert!(holds(&m, &Req::path("/Api")));
}

#[test]
fn path_separated_prefix_stops_at_a_segment_boundary() {
    let m = on(PathMatch::PathSeparatedPrefix("/api".into()));
    assert!(holds(&m, &Req::path("/api")));
    assert!(holds(&m, &Req::path("/api/")));
    assert!(holds(&m, &Req::path("/api/v1")));
    assert!(holds(&m, &Req::path("/api?x=1")));
    assert!(!holds(&m, &Req::path("/apiary")));
    assert!(!holds(&m, &Req::path("/API/v1")));

    let m = ci(on(PathMatch::PathSeparatedPrefix("/api".into())));
    assert!(holds(&m, &Req::path("/API/v1")));
    assert!(!holds(&m, &Req::path("/APIary")));
}

#[test]
fn regex_path_matches_the_whole_path_without_query() {
    let m = on(PathMatch::Regex(re(r"/v[0-9]+/[a-z]+")));
    assert!(holds(&m, &Req::path("/v1/users")));
    assert!(holds(&m, &Req::path("/v12/users?limit=10")));
    assert!(!holds(&m, &Req::path("/v1/users/2")));
    assert!(!holds(&m, &Req::path("/x/v1/users")));
    // case_sensitive does not apply to regexes.
    let m = ci(on(PathMatch::Regex(re("/abc"))));
    assert!(!holds(&m, &Req::path("/ABC")));
}

// ---------------------------------------------------------------------------
// Header matching

#[test]
fn header_string_matchers() {
    let r = Req::path("/").header("x-user", "Jason-Smith");
    let check = |p: StringMatch, ignore_case: bool| {
        holds(
            &with_header(
                prefix("/"),
                "x-user",
                HeaderCondition::Value(sm(p, ignore_case)),
                false,
            ),
            &r,
        )
    };
    assert!(check(exact("Jason-Smith"), false));
    assert!(!check(exact("jason-smith"), false));
    assert!(check(exact("jason-smith"), true));
    assert!(check(StringMatch::Prefix("Jason".into()), false));
    assert!(check(StringMatch::Prefix("JASON".into()), true));
    assert!(!check(StringMatch::Prefix("Smith".into()), false));
    assert!(check(StringMatch::Suffix("Smith".into()), false));
    assert!(check(StringMatch::Suffix("SMITH".into()), true));
    assert!(!check(StringMatch::Suffix("Jason-Smith-Jr".into()), false));
    assert!(check(StringMatch::Contains("n-S".into()), false));
    assert!(check(StringMatch::Contains("N-s".into()), true));
    assert!(!check(StringMatch::Contains("N-s".into()), false));
    assert!(check(StringMatch::Regex(re("J[a-z]+-S.*")), false));
    assert!(!check(StringMatch::Regex(re("Jason")), false));
}

#[test]
fn multi_valued_header_is_matched_joined_with_commas() {
    let r = Req::path("/").header("x-tag", "a").header("x-tag", "b");
    assert!(holds(
        &with_header(prefix("/"), "x-tag", value(exact("a,b")), false),
        &r
    ));
    assert!(!holds(
        &with_header(prefix("/"), "x-tag", value(exact("a")), false),
        &r
    ));
}

#[test]
fn pseudo_headers_are_read_from_the_request() {
    let r = Req::get("reviews:9080", "/r/1?x=2").method(Method::POST);
    let m = |name: &str, c: HeaderCondition| with_header(prefix("/"), name, c, false);
    assert!(holds(&m(":method", value(exact("POST"))), &r));
    assert!(!holds(&m(":method", value(exact("GET"))), &r));
    assert!(holds(&m(":authority", value(exact("reviews:9080"))), &r));
    assert!(holds(
        &m(
            ":authority",
            value(StringMatch::Regex(re("reviews(:[0-9]+)?")))
        ),
        &r
    ));
    assert!(holds(&m(":path", value(exact("/r/1?x=2"))), &r));
    assert!(holds(&m(":scheme", value(exact("http"))), &r));
    assert!(holds(&m(":method", HeaderCondition::Present(true)), &r));
    assert!(!holds(&m(":status", HeaderCondition::Present(true)), &r));
}

#[test]
fn inverted_header_match() {
    let m = with_header(prefix("/"), "x-version", value(exact("v1")), true);
    assert!(holds(&m, &Req::path("/").header("x-version", "v2")));
    assert!(!holds(&m, &Req::path("/").header("x-version", "v1")));
    // As Envoy without treat_missing_header_as_empty: an absent header
    // fails a value condition, inverted or not.
    assert!(!holds(&m, &Req::path("/")));
}

#[test]
fn present_and_absent_headers() {
    let with = Req::path("/").header("x-debug", "");
    let without = Req::path("/");
    let present = with_header(
        prefix("/"),
        "x-debug",
        HeaderCondition::Present(true),
        false,
    );
    let absent = with_header(
        prefix("/"),
        "x-debug",
        HeaderCondition::Present(false),
        false,
    );
    let not_present = with_header(prefix("/"), "x-debug", HeaderCondition::Present(true), true);
    assert!(holds(&present, &with));
    assert!(!holds(&present, &without));
    assert!(holds(&absent, &without));
    assert!(!holds(&absent, &with));
    assert!(holds(&not_present, &without));
    assert!(!holds(&not_present, &with));
}

#[test]
fn range_header_match() {
    let m = with_header(
        prefix("/"),
        "x-minor",
        HeaderCondition::Range { start: 10, end: 20 },
        false,
    );
    let r = |v: &str| holds(&m, &Req::path("/").header("x-minor", v));
    assert!(r("10"));
    assert!(r("19"));
    assert!(r(" 15 "));
    assert!(r("+12"));
    assert!(!r("20"));
    assert!(!r("9"));
    assert!(!r("-15"));
    assert!(!r("1x"));
    assert!(!r("15.5"));
    assert!(!holds(&m, &Req::path("/")));

    let negative = with_header(
        prefix("/"),
        "x-n",
        HeaderCondition::Range { start: -10, end: 0 },
        false,
    );
    assert!(holds(&negative, &Req::path("/").header("x-n", "-1")));
    assert!(!holds(&negative, &Req::path("/").header("x-n", "0")));
}

#[test]
fn every_condition_must_hold() {
    let m = with_header(
        with_header(prefix("/api"), "x-a", value(exact("1")), false),
        "x-b",
        HeaderCondition::Present(true),
        false,
    );
    assert!(holds(
        &m,
        &Req::path("/api").header("x-a", "1").header("x-b", "z")
    ));
    assert!(!holds(&m, &Req::path("/api").header("x-a", "1")));
    assert!(!holds(
        &m,
        &Req::path("/web").header("x-a", "1").header("x-b", "z")
    ));
}

// ---------------------------------------------------------------------------
// Query parameter matching

#[test]
fn query_parameter_present() {
    let m = with_query(prefix("/"), "debug", None);
    assert!(holds(&m, &Req::path("/?debug")));
    assert!(holds(&m, &Req::path("/?debug=1")));
    assert!(holds(&m, &Req::path("/x?a=1&debug=&b=2")));
    assert!(!holds(&m, &Req::path("/")));
    assert!(!holds(&m, &Req::path("/?debugger=1")));
    assert!(!holds(&m, &Req::path("/?x=debug")));
}

#[test]
fn query_parameter_value_uses_the_first_value() {
    let m = with_query(prefix("/"), "v", Some(sm(exact("1"), false)));
    assert!(holds(&m, &Req::path("/?v=1")));
    assert!(holds(&m, &Req::path("/?a=b&v=1&v=2")));
    assert!(!holds(&m, &Req::path("/?v=2&v=1")));
    assert!(!holds(&m, &Req::path("/?v=10")));
    assert!(!holds(&m, &Req::path("/")));
    // Not percent-decoded.
    assert!(!holds(&m, &Req::path("/?v=%31")));

    let m = with_query(
        prefix("/"),
        "user",
        Some(sm(StringMatch::Regex(re("[a-z]+[0-9]")), false)),
    );
    assert!(holds(&m, &Req::path("/?user=bob7")));
    assert!(!holds(&m, &Req::path("/?user=bob")));

    let m = with_query(prefix("/"), "env", Some(sm(exact("prod"), true)));
    assert!(holds(&m, &Req::path("/?env=PROD")));
}

// ---------------------------------------------------------------------------
// Virtual host and route selection

fn table() -> RouteTable {
    RouteTable::new(
        "80".into(),
        vec![
            vhost(
                "reviews",
                &["reviews", "reviews.default.svc.cluster.local:9080"],
                vec![
                    route(
                        "reviews-v2",
                        with_header(prefix("/"), "end-user", value(exact("jason")), false),
                    ),
                    route("reviews-api", prefix("/api")),
                    route("reviews-default", prefix("/")),
                ],
            ),
            vhost(
                "ratings",
                &["ratings:9080"],
                vec![route(
                    "ratings-exact",
                    on(PathMatch::Exact("/ratings".into())),
                )],
            ),
        ],
    )
}

fn selected(table: &RouteTable, r: &Req) -> Option<(String, String)> {
    select_route(table, &r.info()).map(|(vh, rt)| (vh.name.clone(), rt.name.clone()))
}

fn pair(vh: &str, rt: &str) -> Option<(String, String)> {
    Some((vh.into(), rt.into()))
}

#[test]
fn selects_the_first_matching_route_of_the_virtual_host() {
    let t = table();
    assert_eq!(
        selected(&t, &Req::get("reviews", "/api/x")),
        pair("reviews", "reviews-api")
    );
    assert_eq!(
        selected(&t, &Req::get("reviews", "/")),
        pair("reviews", "reviews-default")
    );
    assert_eq!(
        selected(
            &t,
            &Req::get("reviews", "/api/x").header("end-user", "jason")
        ),
        pair("reviews", "reviews-v2")
    );
    assert_eq!(
        selected(&t, &Req::get("ratings:9080", "/ratings?x=1")),
        pair("ratings", "ratings-exact")
    );
    // The virtual host matched but none of its routes: no route.
    assert_eq!(selected(&t, &Req::get("ratings:9080", "/other")), None);
    // No virtual host.
    assert_eq!(selected(&t, &Req::get("details", "/")), None);
}

#[test]
fn virtual_host_lookup_retries_without_the_port() {
    let t = table();
    // Exact with port.
    assert_eq!(
        selected(&t, &Req::get("reviews.default.svc.cluster.local:9080", "/")),
        pair("reviews", "reviews-default")
    );
    // Not configured with this port: found without it.
    assert_eq!(
        selected(&t, &Req::get("reviews:80", "/")),
        pair("reviews", "reviews-default")
    );
    assert_eq!(
        selected(&t, &Req::get("REVIEWS:8080", "/")),
        pair("reviews", "reviews-default")
    );
    // Configured only with a port: another port does not match.
    assert_eq!(selected(&t, &Req::get("ratings:80", "/ratings")), None);
    assert_eq!(selected(&t, &Req::get("ratings", "/ratings")), None);

    let v6 = RouteTable::new(
        "v6".into(),
        vec![vhost("v6", &["[::1]"], vec![route("any", prefix("/"))])],
    );
    assert_eq!(
        selected(&v6, &Req::get("[::1]:8080", "/")),
        pair("v6", "any")
    );
}

#[test]
fn split_port_handles_ipv6() {
    assert_eq!(split_port("a:80"), ("a", Some("80")));
    assert_eq!(split_port("a"), ("a", None));
    assert_eq!(split_port("[::1]:443"), ("[::1]", Some("443")));
    assert_eq!(split_port("[::1]"), ("[::1]", None));
    assert_eq!(split_port("::1"), ("::1", None));
    assert_eq!(split_port("a:b"), ("a:b", None));
}

// ---------------------------------------------------------------------------
// Weighted clusters

#[test]
fn pick_cluster_splits_draws_by_weight() {
    let fwd = forward(&[("v1", 1), ("v2", 3), ("off", 0), ("v3", 6)]);
    let mut counts = [0u32; 4];
    for draw in 0..fwd.total_weight {
        let picked = pick_cluster(&fwd, draw);
        let i = fwd
            .clusters
            .iter()
            .position(|c| std::ptr::eq(c, picked))
            .expect("picked one of the clusters");
        counts[i] += 1;
    }
    assert_eq!(counts, [1, 3, 0, 6]);
    // Draws are taken modulo the total, as Envoy does.
    assert_eq!(pick_cluster(&fwd, 10).name, "v1");
    assert_eq!(pick_cluster(&fwd, 13).name, "v2");
}

#[test]
fn pick_cluster_percentages() {
    let fwd = forward(&[("stable", 90), ("canary", 10)]);
    let canary = (0..100)
        .filter(|d| pick_cluster(&fwd, *d).name == "canary")
        .count();
    assert_eq!(canary, 10);
}

#[test]
fn random_pick_never_chooses_a_zero_weight_cluster() {
    let fwd = forward(&[("off", 0), ("on", 1), ("off2", 0)]);
    for _ in 0..200 {
        assert_eq!(pick_cluster_random(&fwd).name, "on");
    }
}

// ---------------------------------------------------------------------------
// Header mutations

fn add(name: &str, value: &str, action: AppendAction) -> HeaderAdd {
    HeaderAdd {
        name: name.into(),
        value: value.into(),
        action,
    }
}

fn mutation(add: Vec<HeaderAdd>, remove: &[&str]) -> HeaderMutation {
    HeaderMutation {
        add,
        remove: remove.iter().map(|s| s.to_string()).collect(),
    }
}

fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("text").to_string())
        .collect()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).expect("valid"));
    }
    h
}

#[test]
fn append_adds_a_value() {
    let mut h = headers(&[("x-a", "1")]);
    apply_headers(
        &mut h,
        &[&mutation(
            vec![
                add("x-a", "2", AppendAction::Append),
                add("x-b", "3", AppendAction::Append),
            ],
            &[],
        )],
    );
    assert_eq!(values(&h, "x-a"), ["1", "2"]);
    assert_eq!(values(&h, "x-b"), ["3"]);
}

#[test]
fn add_if_absent_only_adds_missing_headers() {
    let mut h = headers(&[("x-a", "1")]);
    let m = mutation(
        vec![
            add("x-a", "2", AppendAction::AddIfAbsent),
            add("x-b", "3", AppendAction::AddIfAbsent),
        ],
        &[],
    );
    apply_headers(&mut h, &[&m]);
    assert_eq!(values(&h, "x-a"), ["1"]);
    assert_eq!(values(&h, "x-b"), ["3"]);
}

#[test]
fn overwrite_replaces_all_values_or_adds() {
    let mut h = headers(&[("x-a", "1"), ("x-a", "2")]);
    let m = mutation(
        vec![
            add("x-a", "3", AppendAction::Overwrite),
            add("x-b", "4", AppendAction::Overwrite),
        ],
        &[],
    );
    apply_headers(&mut h, &[&m]);
    assert_eq!(values(&h, "x-a"), ["3"]);
    assert_eq!(values(&h, "x-b"), ["4"]);
}

#[test]
fn overwrite_if_exists_only_replaces_present_headers() {
    let mut h = headers(&[("x-a", "1"), ("x-a", "2")]);
    let m = mutation(
        vec![
            add("x-a", "3", AppendAction::OverwriteIfExists),
            add("x-b", "4", AppendAction::OverwriteIfExists),
        ],
        &[],
    );
    apply_headers(&mut h, &[&m]);
    assert_eq!(values(&h, "x-a"), ["3"]);
    assert!(values(&h, "x-b").is_empty());
}

#[test]
fn removals_run_before_additions_of_the_same_mutation() {
    let mut h = headers(&[("x-a", "old"), ("x-gone", "1")]);
    let m = mutation(
        vec![add("x-a", "new", AppendAction::Append)],
        &["x-a", "x-gone", "x-absent"],
    );
    apply_headers(&mut h, &[&m]);
    assert_eq!(values(&h, "x-a"), ["new"]);
    assert!(!h.contains_key("x-gone"));
}

#[test]
fn conditions_see_the_headers_before_the_mutation() {
    // Envoy decides every addition first, then overwrites, then appends.
    let mut h = HeaderMap::new();
    let m = mutation(
        vec![
            add("x-a", "1", AppendAction::Append),
            add("x-a", "2", AppendAction::AddIfAbsent),
            add("x-b", "1", AppendAction::Append),
            add("x-b", "2", AppendAction::Overwrite),
            add("x-c", "1", AppendAction::Overwrite),
            add("x-c", "2", AppendAction::OverwriteIfExists),
        ],
        &[],
    );
    apply_headers(&mut h, &[&m]);
    assert_eq!(values(&h, "x-a"), ["1", "2"]);
    assert_eq!(values(&h, "x-b"), ["2", "1"]);
    assert_eq!(values(&h, "x-c"), ["1"]);
}

#[test]
fn later_mutations_win() {
    // Callers pass weighted cluster, route, virtual host: the least specific wins.
    let cluster = mutation(vec![add("x-env", "canary", AppendAction::Overwrite)], &[]);
    let route = mutation(vec![add("x-env", "route", AppendAction::AddIfAbsent)], &[]);
    let vhost = mutation(vec![add("x-env", "vhost", AppendAction::Overwrite)], &[]);
    let mut h = HeaderMap::new();
    apply_headers(&mut h, &[&cluster, &route, &vhost]);
    assert_eq!(values(&h, "x-env"), ["vhost"]);
}

#[test]
fn protected_invalid_and_empty_headers_are_skipped() {
    let mut h = headers(&[("host", "a.example")]);
    let m = mutation(
        vec![
            add(":path", "/evil", AppendAction::Overwrite),
            add("host", "evil", AppendAction::Overwrite),
            add("Host", "evil", AppendAction::Append),
            add("bad name", "v", AppendAction::Append),
            add("x-bad-value", "a\nb", AppendAction::Append),
            add("x-empty", "", AppendAction::Append),
            add("x-ok", "yes", AppendAction::Append),
        ],
        &[":authority", "host", "HOST"],
    );
    apply_headers(&mut h, &[&m]);
    assert_eq!(values(&h, "host"), ["a.example"]);
    assert!(!h.contains_key("x-bad-value"));
    assert!(!h.contains_key("x-empty"));
    assert_eq!(values(&h, "x-ok"), ["yes"]);
    assert_eq!(h.len(), 2);
}

// ---------------------------------------------------------------------------
// Path and authority rewrites

fn with_prefix_rewrite(m: RouteMatch, to: &str) -> (Route, Forward) {
    let mut fwd = forward(&[("c", 1)]);
    fwd.prefix_rewrite = Some(to.into());
    (route("r", m), fwd)
}

#[test]
fn prefix_rewrite_replaces_the_matched_prefix() {
    let (r, f) = with_prefix_rewrite(prefix("/api/"), "/");
    assert_eq!(
        rewrite_path(&r, &f, "/api/v1/users?id=2").as_deref(),
        Some("/v1/users?id=2")
    );
    // Envoy's trailing-slash caveat.
    let (r, f) = with_prefix_rewrite(prefix("/api"), "/");
    assert_eq!(rewrite_path(&r, &f, "/api/x").as_deref(), Some("//x"));
    // Case-insensitive: the request's bytes of the prefix length are replaced.
    let (r, f) = with_prefix_rewrite(ci(prefix("/api/")), "/backend/");
    assert_eq!(
        rewrite_path(&r, &f, "/API/x?q").as_deref(),
        Some("/backend/x?q")
    );
    // Separated prefix.
    let (r, f) = with_prefix_rewrite(
        on(PathMatch::PathSeparatedPrefix("/api".into())),
        "/backend",
    );
    assert_eq!(
        rewrite_path(&r, &f, "/api/x").as_deref(),
        Some("/backend/x")
    );
    assert_eq!(
        rewrite_path(&r, &f, "/api?x=1").as_deref(),
        Some("/backend?x=1")
    );
    // Exact: the whole path, query kept.
    let (r, f) = with_prefix_rewrite(on(PathMatch::Exact("/login".into())), "/auth/login");
    assert_eq!(
        rewrite_path(&r, &f, "/login?next=/").as_deref(),
        Some("/auth/login?next=/")
    );
    // A path the route does not match is not rewritten.
    let (r, f) = with_prefix_rewrite(prefix("/api/"), "/");
    assert_eq!(rewrite_path(&r, &f, "/web/x"), None);
}

#[test]
fn no_rewrite_configured() {
    let r = route("r", prefix("/"));
    assert_eq!(rewrite_path(&r, &forward(&[("c", 1)]), "/a?b"), None);
}

fn regex_rewrite(pattern: &str, substitution: &str) -> Forward {
    let mut fwd = forward(&[("c", 1)]);
    fwd.regex_rewrite = Some(RegexRewrite {
        pattern: pattern.into(),
        compiled: regex::Regex::new(pattern).expect("test regex compiles"),
        substitution: substitution.into(),
    });
    fwd
}

#[test]
fn regex_rewrite_substitutes_in_the_path_only() {
    let r = route("r", prefix("/"));
    // Envoy's documented examples.
    let f = regex_rewrite(r"^/service/([^/]+)(/.*)$", r"\2/instance/\1");
    assert_eq!(
        rewrite_path(&r, &f, "/service/foo/v1/api?x=1").as_deref(),
        Some("/v1/api/instance/foo?x=1")
    );
    let f = regex_rewrite("one", "two");
    assert_eq!(
        rewrite_path(&r, &f, "/xxx/one/yyy/one/zzz?one=1").as_deref(),
        Some("/xxx/two/yyy/two/zzz?one=1")
    );
    // `$` is literal, `\\` a backslash, a missing group empty.
    let f = regex_rewrite("/(a)", r"/$1\\\1\5");
    assert_eq!(rewrite_path(&r, &f, "/a").as_deref(), Some(r"/$1\a"));
    // No match: the path is unchanged.
    let f = regex_rewrite("nomatch", "x");
    assert_eq!(rewrite_path(&r, &f, "/a?b").as_deref(), Some("/a?b"));
}

#[test]
fn host_rewrite() {
    let h = headers(&[("x-host", "api.internal"), ("x-empty", "")]);
    let mut f = forward(&[("c", 1)]);
    assert_eq!(rewrite_authority(&f, &h, Some("up")), None);

    f.host_rewrite = Some(HostRewrite::Literal("new.example".into()));
    assert_eq!(
        rewrite_authority(&f, &h, None).as_deref(),
        Some("new.example")
    );

    f.host_rewrite = Some(HostRewrite::Header("x-host".into()));
    assert_eq!(
        rewrite_authority(&f, &h, None).as_deref(),
        Some("api.internal")
    );
    f.host_rewrite = Some(HostRewrite::Header("x-missing".into()));
    assert_eq!(rewrite_authority(&f, &h, None), None);
    f.host_rewrite = Some(HostRewrite::Header("x-empty".into()));
    assert_eq!(rewrite_authority(&f, &h, None), None);

    f.host_rewrite = Some(HostRewrite::Auto);
    assert_eq!(
        rewrite_authority(&f, &h, Some("db.example.com")).as_deref(),
        Some("db.example.com")
    );
    assert_eq!(rewrite_authority(&f, &h, None), None);
}

// ---------------------------------------------------------------------------
// Redirects

fn redir() -> Redirect {
    Redirect {
        scheme: None,
        host: None,
        port: None,
        path: None,
        status: 301,
        strip_query: false,
    }
}

fn https() -> Redirect {
    Redirect {
        scheme: Some("https".into()),
        ..redir()
    }
}

fn location(r: &Redirect, m: RouteMatch, req: &Req) -> (StatusCode, String) {
    redirect(r, &route("r", m), &req.info())
}

#[test]
fn https_upgrade_drops_only_the_old_default_port() {
    let l = |authority: &str| location(&https(), prefix("/"), &Req::get(authority, "/a?b=1")).1;
    assert_eq!(l("example.com"), "https://example.com/a?b=1");
    assert_eq!(l("example.com:80"), "https://example.com/a?b=1");
    assert_eq!(l("example.com:8080"), "https://example.com:8080/a?b=1");
    assert_eq!(l("[::1]:80"), "https://[::1]/a?b=1");
    assert_eq!(
        location(&https(), prefix("/"), &Req::get("example.com", "/")).0,
        StatusCode::MOVED_PERMANENTLY
    );
    // https → http drops :443.
    let to_http = Redirect {
        scheme: Some("http".into()),
        ..redir()
    };
    let req = Req::get("example.com:443", "/").scheme("https");
    assert_eq!(
        location(&to_http, prefix("/"), &req).1,
        "http://example.com/"
    );
}

#[test]
fn redirect_keeps_the_port_when_the_scheme_does_not_change() {
    let r = Redirect {
        path: Some(RedirectPath::Path("/new".into())),
        ..redir()
    };
    assert_eq!(
        location(&r, prefix("/"), &Req::get("a.com:80", "/old")).1,
        "http://a.com:80/new"
    );
}

#[test]
fn redirect_port_and_host() {
    let port = Redirect {
        port: Some(8443),
        ..https()
    };
    assert_eq!(
        location(&port, prefix("/"), &Req::get("a.com:8080", "/x")).1,
        "https://a.com:8443/x"
    );
    let default_port = Redirect {
        port: Some(443),
        ..https()
    };
    assert_eq!(
        location(&default_port, prefix("/"), &Req::get("a.com", "/")).1,
        "https://a.com:443/"
    );
    let host = Redirect {
        host: Some("b.com".into()),
        ..redir()
    };
    assert_eq!(
        location(&host, prefix("/"), &Req::get("a.com:8080", "/x?y")).1,
        "http://b.com/x?y"
    );
    let both = Redirect {
        host: Some("b.com".into()),
        port: Some(9000),
        ..redir()
    };
    assert_eq!(
        location(&both, prefix("/"), &Req::get("a.com", "/")).1,
        "http://b.com:9000/"
    );
}

#[test]
fn path_redirect() {
    let r = Redirect {
        path: Some(RedirectPath::Path("/new/place".into())),
        status: 302,
        ..redir()
    };
    let (status, loc) = location(&r, prefix("/"), &Req::get("a.com", "/old?x=1"));
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(loc, "http://a.com/new/place?x=1");

    // A query in the path redirect replaces the request's, even with strip_query.
    let r = Redirect {
        path: Some(RedirectPath::Path("/new?from=old".into())),
        strip_query: true,
        status: 307,
        ..redir()
    };
    let (status, loc) = location(&r, prefix("/"), &Req::get("a.com", "/old?x=1"));
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(loc, "http://a.com/new?from=old");

    // A path without a leading slash gets one.
    let r = Redirect {
        path: Some(RedirectPath::Path("new".into())),
        status: 308,
        ..redir()
    };
    let (status, loc) = location(&r, prefix("/"), &Req::get("a.com", "/old"));
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(loc, "http://a.com/new");
}

#[test]
fn prefix_redirect_replaces_the_matched_prefix() {
    let r = Redirect {
        path: Some(RedirectPath::Prefix("/v2/".into())),
        ..redir()
    };
    assert_eq!(
        location(&r, prefix("/v1/"), &Req::get("a.com", "/v1/users?id=3")).1,
        "http://a.com/v2/users?id=3"
    );
    assert_eq!(
        location(&r, ci(prefix("/v1/")), &Req::get("a.com", "/V1/users")).1,
        "http://a.com/v2/users"
    );
    assert_eq!(
        location(
            &r,
            on(PathMatch::Exact("/old".into())),
            &Req::get("a.com", "/old?q")
        )
        .1,
        "http://a.com/v2/?q"
    );
}

#[test]
fn strip_query() {
    let r = Redirect {
        strip_query: true,
        ..https()
    };
    assert_eq!(
        location(&r, prefix("/"), &Req::get("a.com", "/a?b=1&c")).1,
        "https://a.com/a"
    );
    let r = Redirect {
        strip_query: true,
        path: Some(RedirectPath::Prefix("/new".into())),
        ..redir()
    };
    assert_eq!(
        location(&r, prefix("/old"), &Req::get("a.com", "/old/x?y")).1,
        "http://a.com/new/x"
    );
    let r = Redirect {
        strip_query: true,
        path: Some(RedirectPath::Path("/p".into())),
        ..redir()
    };
    assert_eq!(
        location(&r, prefix("/"), &Req::get("a.com", "/q?y")).1,
        "http://a.com/p"
    );
}

// ---------------------------------------------------------------------------
// Hash policies

fn policy(input: HashInput, terminal: bool) -> HashPolicy {
    HashPolicy { input, terminal }
}

fn cookie(name: &str, ttl: Option<Duration>, path: &str) -> HashInput {
    HashInput::Cookie {
        name: name.into(),
        ttl,
        path: path.into(),
    }
}

fn hash_of(policies: &[HashPolicy], r: &Req) -> HashOutcome {
    request_hash(policies, &r.info())
}

#[test]
fn header_hash() {
    let p = [policy(HashInput::Header("x-user".into()), false)];
    let out = hash_of(&p, &Req::path("/").header("x-user", "alice"));
    assert_eq!(
        out,
        HashOutcome {
            hash: Some(hash_key(b"alice")),
            set_cookie: None
        }
    );
    assert_eq!(hash_of(&p, &Req::path("/")).hash, None);
    // Several values: sorted, so their order does not matter.
    let ab = hash_of(
        &p,
        &Req::path("/").header("x-user", "a").header("x-user", "b"),
    );
    let ba = hash_of(
        &p,
        &Req::path("/").header("x-user", "b").header("x-user", "a"),
    );
    assert_eq!(ab.hash, Some(hash_key(b"ab")));
    assert_eq!(ab, ba);
}

#[test]
fn cookie_hash_when_present() {
    let p = [policy(
        cookie("session", Some(Duration::from_secs(60)), "/"),
        false,
    )];
    let r = Req::path("/").header("cookie", "theme=dark; session=abc123; x=1");
    assert_eq!(
        hash_of(&p, &r),
        HashOutcome {
            hash: Some(hash_key(b"abc123")),
            set_cookie: None
        }
    );
    let quoted = Req::path("/").header("cookie", "session=\"abc123\"");
    assert_eq!(hash_of(&p, &quoted).hash, Some(hash_key(b"abc123")));
    let second_header = Req::path("/")
        .header("cookie", "a=1")
        .header("cookie", "session=abc123");
    assert_eq!(hash_of(&p, &second_header).hash, Some(hash_key(b"abc123")));
    // Without a ttl, an absent cookie gives no hash and no cookie.
    let p = [policy(cookie("session", None, "/"), false)];
    assert_eq!(
        hash_of(&p, &Req::path("/").header("cookie", "other=1")),
        HashOutcome::default()
    );
}

#[test]
fn cookie_is_generated_when_absent_with_a_ttl() {
    let p = [policy(
        cookie("sticky", Some(Duration::from_secs(3600)), "/shop"),
        false,
    )];
    let out = hash_of(&p, &Req::path("/shop").header("cookie", "sticky="));
    let set = out.set_cookie.expect("a cookie is generated");
    let (pair, attrs) = set.split_once("; ").expect("attributes follow");
    assert_eq!(attrs, "Max-Age=3600; Path=/shop; HttpOnly");
    let value = pair.strip_prefix("sticky=").expect("named sticky");
    assert_eq!(value.len(), 16);
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(out.hash, Some(hash_key(value.as_bytes())));

    // The client sends it back: same hash, no new cookie.
    let back = Req::path("/shop").header("cookie", &format!("sticky={value}"));
    assert_eq!(
        hash_of(&p, &back),
        HashOutcome {
            hash: out.hash,
            set_cookie: None
        }
    );

    // A zero ttl makes a session cookie; an empty path is left out.
    let p = [policy(cookie("s", Some(Duration::ZERO), ""), false)];
    let set = hash_of(&p, &Req::path("/"))
        .set_cookie
        .expect("a cookie is generated");
    assert!(set.starts_with("s="));
    assert!(set.ends_with("; HttpOnly"));
    assert!(!set.contains("Max-Age"));
    assert!(!set.contains("Path"));
}

#[test]
fn source_ip_and_query_parameter_hash() {
    let p = [policy(HashInput::SourceIp, false)];
    assert_eq!(
        hash_of(&p, &Req::path("/").ip("192.168.1.20")).hash,
        Some(hash_key(b"192.168.1.20"))
    );
    assert_eq!(
        hash_of(&p, &Req::path("/").ip("2001:db8::1")).hash,
        Some(hash_key(b"2001:db8::1"))
    );

    let p = [policy(HashInput::QueryParameter("user".into()), false)];
    assert_eq!(
        hash_of(&p, &Req::path("/?a=1&user=bob&user=eve")).hash,
        Some(hash_key(b"bob"))
    );
    assert_eq!(hash_of(&p, &Req::path("/?user")).hash, Some(hash_key(b"")));
    assert_eq!(hash_of(&p, &Req::path("/?users=1")).hash, None);
}

#[test]
fn several_policies_combine_and_terminal_stops() {
    let r = Req::path("/?q=v").header("x-a", "a").ip("10.1.2.3");
    let a = hash_key(b"a");
    let ip = hash_key(b"10.1.2.3");
    let q = hash_key(b"v");

    let combined = [
        policy(HashInput::Header("x-a".into()), false),
        policy(HashInput::Header("x-missing".into()), false),
        policy(HashInput::SourceIp, false),
    ];
    assert_eq!(hash_of(&combined, &r).hash, Some(a.rotate_left(1) ^ ip));

    // A terminal policy that produced a hash stops the walk.
    let terminal = [
        policy(HashInput::Header("x-a".into()), true),
        policy(HashInput::SourceIp, false),
    ];
    assert_eq!(hash_of(&terminal, &r).hash, Some(a));

    // One that did not lets the walk go on ("fallback" configuration).
    let fallback = [
        policy(HashInput::Header("x-missing".into()), true),
        policy(HashInput::QueryParameter("q".into()), true),
        policy(HashInput::SourceIp, false),
    ];
    assert_eq!(hash_of(&fallback, &r).hash, Some(q));

    // As Envoy: a terminal policy stops once any hash exists, even if it
    // produced none itself.
    let after = [
        policy(HashInput::SourceIp, false),
        policy(HashInput::Header("x-missing".into()), true),
        policy(HashInput::Header("x-a".into()), false),
    ];
    assert_eq!(hash_of(&after, &r).hash, Some(ip));

    assert_eq!(hash_of(&[], &r), HashOutcome::default());
}

#[test]
fn without_headers_matches_requests_lacking_the_header() {
    let mut m = prefix("/");
    m.headers.push(HeaderMatcher {
        name: "end-user".into(),
        condition: value(exact("jason")),
        invert: true,
        treat_missing_as_empty: true,
    });
    assert!(holds(&m, &Req::path("/")));
    assert!(holds(&m, &Req::path("/").header("end-user", "maria")));
    assert!(!holds(&m, &Req::path("/").header("end-user", "jason")));
}
