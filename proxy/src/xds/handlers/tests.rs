//! Handler tests on resources produced by pilot's real generator, plus one
//! case per rejection rule.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use keel_pilot::model::store::ConfigStore;
use keel_pilot::xds::generator::KeelGenerator;
use keel_pilot::xds::node::metadata;
use keel_pilot::xds::{Generator, NodeInfo};
use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE, pack};
use keel_proto::envoy::config::core::v3::Node;
use keel_proto::envoy::config::listener::v3::{
    Filter, FilterChain, Listener as PbListener, filter,
};
use keel_proto::envoy::config::route::v3 as pbr;
use keel_proto::envoy::service::discovery::v3::DiscoveryResponse;
use keel_proto::google::protobuf::{Any, UInt32Value};

use super::*;
use crate::state::listener::{ChainAction, RouteSource};
use crate::state::route::{Action, HeaderCondition, PathMatch, StringMatch};

fn generate(case: &str, type_url: &str, names: Option<&BTreeSet<String>>) -> Vec<Any> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pilot/tests/testdata/golden");
    let input = std::fs::read_to_string(dir.join(format!("{case}.yaml"))).expect("input");
    let mut store = ConfigStore::new("cluster.local", "istio-system");
    store.upsert(&format!("{case}.yaml"), &input);
    assert!(store.errors().is_empty(), "{:?}", store.errors());
    let (id, labels): (&str, &[(&str, &str)]) = match case {
        "gateway" => (
            "router~10.1.0.100~ingress-1.istio-system~istio-system.svc.cluster.local",
            &[("istio", "ingressgateway")],
        ),
        _ => (
            "sidecar~10.1.0.7~productpage-v1-1.default~default.svc.cluster.local",
            &[("app", "productpage"), ("version", "v1")],
        ),
    };
    let node = NodeInfo::from_node(Some(&Node {
        id: id.into(),
        metadata: Some(metadata(&[], labels)),
        ..Default::default()
    }))
    .expect("node");
    KeelGenerator::new()
        .generate(&store.snapshot(), &node, type_url, names)
        .values()
        .map(|r| (*r.any).clone())
        .collect()
}

fn response(type_url: &str, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: type_url.into(),
        nonce: format!("n-{version}"),
        resources,
        ..Default::default()
    }
}

/// Applies CDS, LDS, then EDS and RDS for what they reference, as the client does.
fn load(case: &str) -> ProxyState {
    push_all(ProxyState::default(), case, "1")
}

/// Pushes every type of `case` onto `state` under `version`, in the client's order.
fn push_all(mut state: ProxyState, case: &str, version: &str) -> ProxyState {
    let none = BTreeSet::new();
    for t in [CLUSTER, LISTENER] {
        let a = apply(
            &state,
            &response(t, version, generate(case, t, None)),
            &none,
        );
        assert!(a.errors.is_empty(), "{case} {t}: {:?}", a.errors);
        state = a.state;
    }
    let eds = state.referenced_endpoints();
    let a = apply(
        &state,
        &response(ENDPOINT, version, generate(case, ENDPOINT, Some(&eds))),
        &eds,
    );
    assert!(a.errors.is_empty(), "{case} eds: {:?}", a.errors);
    state = a.state;
    let rds = state.referenced_routes();
    let a = apply(
        &state,
        &response(ROUTE, version, generate(case, ROUTE, Some(&rds))),
        &rds,
    );
    assert!(a.errors.is_empty(), "{case} rds: {:?}", a.errors);
    a.state
}

#[test]
fn everything_pilot_emits_is_accepted() {
    for case in [
        "sidecar-canary",
        "gateway",
        "registry-only",
        "grpc-proxyless",
    ] {
        let state = load(case);
        assert!(!state.clusters.is_empty(), "{case}");
        assert!(state.is_ready(), "{case} not ready: {:?}", state.xds);
    }
}

#[test]
fn reviews_routes_keep_order_weights_and_policies() {
    let state = load("sidecar-canary");
    let table = &state.routes["9080"];
    let vh = table.virtual_host("reviews:9080").expect("reviews vhost");
    assert_eq!(vh.name, "reviews.default.svc.cluster.local:9080");
    let jason = &vh.routes[0];
    assert_eq!(jason.name, "jason");
    assert!(!jason.matcher.case_sensitive);
    assert!(matches!(&jason.matcher.path, PathMatch::Prefix(p) if p == "/reviews"));
    let h = &jason.matcher.headers[0];
    assert_eq!(h.name, "end-user");
    assert!(
        matches!(&h.condition, HeaderCondition::Value(m) if matches!(&m.pattern, StringMatch::Exact(v) if v == "jason"))
    );
    let Action::Forward(f) = &jason.action else {
        panic!("jason forwards")
    };
    assert_eq!(
        f.clusters[0].name,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    let delay = jason
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!(delay.fraction_ppm, 500_000);
    assert_eq!(delay.duration.as_secs(), 2);

    let canary = &vh.routes[1];
    let Action::Forward(f) = &canary.action else {
        panic!("canary forwards")
    };
    let weights: Vec<(&str, u32)> = f
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 80),
            ("outbound|9080|v3|reviews.default.svc.cluster.local", 20)
        ]
    );
    assert_eq!(f.total_weight, 100);
    assert_eq!(f.timeout.map(|t| t.as_secs()), Some(3));
    let retry = f.retry.as_ref().expect("retry");
    assert_eq!(retry.num_retries, 3);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(f.mirrors[0].fraction_ppm, 100_000);
    assert!(canary.cors.is_some());
    assert_eq!(canary.request_headers.remove, ["x-debug"]);

    // Listeners point at the route table; endpoints carry labels and workload.
    let outbound = &state.listeners["0.0.0.0_9080"];
    assert!(!outbound.bind_to_port);
    assert!(
        matches!(&outbound.filter_chains[0].action, ChainAction::Http(h) if matches!(&h.routes, RouteSource::Rds(n) if n == "9080"))
    );
    let v1 = &state.endpoints["outbound|9080|v1|reviews.default.svc.cluster.local"];
    let ep = &v1.localities[0].endpoints[0];
    assert_eq!(ep.labels["version"], "v1");
    assert_eq!(
        ep.workload.as_ref().map(|w| w.workload.as_str()),
        Some("reviews-v1-1")
    );
    assert_eq!(v1.localities[0].locality.zone, "zone-a");
}

fn listener_with_filter(name: &str, filter_name: &str) -> Any {
    pack(&PbListener {
        name: name.into(),
        address: Some(keel_proto::envoy::config::core::v3::Address {
            address: Some(keel_proto::envoy::config::core::v3::address::Address::SocketAddress(
                keel_proto::envoy::config::core::v3::SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(
                        keel_proto::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(9080),
                    ),
                    ..Default::default()
                },
            )),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: filter_name.into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: format!("type.googleapis.com/{filter_name}.Config"),
                    value: Vec::new(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[test]
fn rejected_listener_keeps_its_previous_version_and_others_apply() {
    let state = load("sidecar-canary");
    let mut resources: Vec<Any> = generate("sidecar-canary", LISTENER, None)
        .into_iter()
        .filter(|a| {
            keel_proto::any::unpack::<PbListener>(a)
                .map(|l| l.name)
                .ok()
                .as_deref()
                != Some("0.0.0.0_9080")
        })
        .collect();
    resources.push(listener_with_filter(
        "0.0.0.0_9080",
        "envoy.filters.network.redis_proxy",
    ));
    resources.push(listener_with_filter(
        "0.0.0.0_6379",
        "envoy.filters.network.redis_proxy",
    ));
    let a = apply(
        &state,
        &response(LISTENER, "2", resources),
        &BTreeSet::new(),
    );
    assert_eq!(
        a.errors,
        [
            "listener 0.0.0.0_9080: filter_chains[0].filters[0]: unsupported network filter \"envoy.filters.network.redis_proxy\"",
            "listener 0.0.0.0_6379: filter_chains[0].filters[0]: unsupported network filter \"envoy.filters.network.redis_proxy\"",
        ]
    );
    // The old 9080 listener still serves (same Arc); the new one never appears.
    assert!(std::sync::Arc::ptr_eq(
        &a.state.listeners["0.0.0.0_9080"],
        &state.listeners["0.0.0.0_9080"]
    ));
    assert!(!a.state.listeners.contains_key("0.0.0.0_6379"));
    assert!(a.state.listeners.contains_key("virtualInbound"));
    let lds = &a.state.xds["lds"];
    assert_eq!(lds.version, "1", "a NACK keeps the last accepted version");
    assert_eq!(
        lds.last_nack.as_ref().map(|n| n.version.as_str()),
        Some("2")
    );
}

fn route_config(name: &str, route: pbr::Route) -> Any {
    pack(&pbr::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![pbr::VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn safe_regex_route(name: &str, pattern: &str) -> pbr::Route {
    pbr::Route {
        name: name.into(),
        r#match: Some(pbr::RouteMatch {
            path_specifier: Some(pbr::route_match::PathSpecifier::SafeRegex(
                keel_proto::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: pattern.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        action: Some(pbr::route::Action::Route(pbr::RouteAction {
            cluster_specifier: Some(pbr::route_action::ClusterSpecifier::Cluster("c".into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn bad_regex_and_zero_weight_are_rejected_alone() {
    let state = load("sidecar-canary");
    let bad_regex = safe_regex_route("", "/api/(");
    let zero = pbr::Route {
        r#match: Some(pbr::RouteMatch {
            path_specifier: Some(pbr::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(pbr::route::Action::Route(pbr::RouteAction {
            cluster_specifier: Some(pbr::route_action::ClusterSpecifier::WeightedClusters(
                pbr::WeightedCluster {
                    clusters: vec![pbr::weighted_cluster::ClusterWeight {
                        name: "a".into(),
                        weight: Some(UInt32Value { value: 0 }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let names: BTreeSet<String> = ["9080".to_string()].into();
    let a = apply(
        &state,
        &response(ROUTE, "2", vec![route_config("9080", bad_regex)]),
        &names,
    );
    assert_eq!(a.errors.len(), 1);
    assert!(
        a.errors[0].starts_with(
            "route 9080: virtual_hosts[0 \"vh\"].routes[0].match.safe_regex: regex \"/api/(\" does not compile"
        ),
        "{}",
        a.errors[0]
    );
    assert!(std::sync::Arc::ptr_eq(
        &a.state.routes["9080"],
        &state.routes["9080"]
    ));

    let a = apply(
        &state,
        &response(ROUTE, "3", vec![route_config("9080", zero)]),
        &names,
    );
    assert_eq!(
        a.errors,
        [
            "route 9080: virtual_hosts[0 \"vh\"].routes[0].route.weighted_clusters: total weight is 0: at least one cluster needs a positive weight"
        ]
    );
}

#[test]
fn oversized_regex_is_rejected_naming_its_route() {
    // Valid, and within the regex crate's default 10 MiB (so only the
    // proxy's 1 MiB program limit refuses it): about 1.4 MiB compiled.
    let pattern = "(?:a|b|c|d|e|f|g|h){20000}";
    assert!(regex::Regex::new(&format!("^(?:{pattern})$")).is_ok());
    let names: BTreeSet<String> = ["big".to_string()].into();
    let a = apply(
        &ProxyState::default(),
        &response(
            ROUTE,
            "1",
            vec![route_config("big", safe_regex_route("huge", pattern))],
        ),
        &names,
    );
    assert_eq!(
        a.errors,
        [format!(
            "route big: virtual_hosts[0 \"vh\"].routes[0 \"huge\"].match.safe_regex: \
             regex \"{pattern}\" does not compile: regex program is too large: it compiles to \
             more than 1048576 bytes; use fewer or smaller counted repetitions, and ASCII classes \
             ([0-9], [a-zA-Z0-9_]) rather than Unicode ones (\\d, \\w), which compile to far more"
        )]
    );
    assert!(a.state.routes.is_empty());
    assert_eq!(
        a.state.xds["rds"]
            .last_nack
            .as_ref()
            .map(|n| n.message.as_str()),
        Some(a.errors[0].as_str())
    );
}

/// Whether two maps hold the same names, each with the very same `Arc`.
fn same_arcs<T>(
    a: &std::collections::BTreeMap<String, Arc<T>>,
    b: &std::collections::BTreeMap<String, Arc<T>>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, ra), (nb, rb))| na == nb && Arc::ptr_eq(ra, rb))
}

#[test]
fn unchanged_resources_keep_their_arc_across_pushes() {
    let first = load("sidecar-canary");
    assert!(!first.listeners.is_empty() && !first.routes.is_empty());
    assert!(!first.clusters.is_empty() && !first.endpoints.is_empty());

    // Pilot resends everything (state of the world): nothing is new.
    let second = push_all(first.clone(), "sidecar-canary", "2");
    assert_eq!(second.xds["rds"].version, "2");
    assert!(same_arcs(&first.listeners, &second.listeners));
    assert!(same_arcs(&first.routes, &second.routes));
    assert!(same_arcs(&first.clusters, &second.clusters));
    assert!(same_arcs(&first.endpoints, &second.endpoints));

    // One cluster changes: it alone gets a new Arc.
    use keel_proto::envoy::config::cluster::v3::Cluster as PbCluster;
    let mut clusters = generate("sidecar-canary", CLUSTER, None);
    let mut changed = keel_proto::any::unpack::<PbCluster>(&clusters[0]).expect("cluster");
    changed.connect_timeout = Some(keel_proto::google::protobuf::Duration {
        seconds: 42,
        nanos: 0,
    });
    clusters[0] = pack(&changed);
    let a = apply(&second, &response(CLUSTER, "3", clusters), &BTreeSet::new());
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(a.state.clusters.len(), second.clusters.len());
    for (name, cluster) in &a.state.clusters {
        let kept = Arc::ptr_eq(cluster, &second.clusters[name]);
        assert_eq!(kept, *name != changed.name, "{name}");
    }
    assert_eq!(
        a.state.clusters[&changed.name].connect_timeout.as_secs(),
        42
    );

    // One route table changes (RDS keeps what a response omits): the same.
    let rds = second.referenced_routes();
    let mut tables = generate("sidecar-canary", ROUTE, Some(&rds));
    let mut table = keel_proto::any::unpack::<pbr::RouteConfiguration>(&tables[0]).expect("rc");
    table.virtual_hosts[0]
        .domains
        .push("changed.example.com".into());
    tables[0] = pack(&table);
    let a = apply(&second, &response(ROUTE, "3", tables), &rds);
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    for (name, rt) in &a.state.routes {
        let kept = Arc::ptr_eq(rt, &second.routes[name]);
        assert_eq!(kept, *name != table.name, "{name}");
    }
}

#[test]
fn wrong_type_and_garbage_are_rejected_without_removing_anything() {
    let state = load("sidecar-canary");
    let mut clusters = generate("sidecar-canary", CLUSTER, None);
    let dropped = clusters.remove(0);
    let dropped_name =
        keel_proto::any::unpack::<keel_proto::envoy::config::cluster::v3::Cluster>(&dropped)
            .expect("cluster")
            .name;
    clusters.push(Any {
        type_url: CLUSTER.into(),
        value: vec![0xff, 0xff, 0xff],
    });
    clusters.push(pack(&PbListener::default()));
    let a = apply(&state, &response(CLUSTER, "2", clusters), &BTreeSet::new());
    assert_eq!(a.errors.len(), 2, "{:?}", a.errors);
    assert!(
        a.errors[0].starts_with("cluster resources[") && a.errors[0].contains("malformed protobuf"),
        "{}",
        a.errors[0]
    );
    assert!(
        a.errors[1].contains("type URL \"type.googleapis.com/envoy.config.listener.v3.Listener\" is not \"type.googleapis.com/envoy.config.cluster.v3.Cluster\""),
        "{}",
        a.errors[1]
    );
    // The undecodable resource might have been the missing one: keep it.
    assert!(a.state.clusters.contains_key(&dropped_name));

    // A clean response does remove what it no longer lists.
    let mut clusters = generate("sidecar-canary", CLUSTER, None);
    clusters.remove(0);
    let a = apply(&state, &response(CLUSTER, "3", clusters), &BTreeSet::new());
    assert!(a.errors.is_empty());
    assert!(!a.state.clusters.contains_key(&dropped_name));
}

#[test]
fn unsupported_cluster_type_and_non_ads_rds_are_rejected() {
    use keel_proto::envoy::config::cluster::v3::{Cluster as PbCluster, cluster};
    let custom = pack(&PbCluster {
        name: "redis".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
            cluster::CustomClusterType {
                name: "envoy.clusters.redis".into(),
                typed_config: None,
            },
        )),
        ..Default::default()
    });
    let a = apply(
        &ProxyState::default(),
        &response(CLUSTER, "1", vec![custom]),
        &BTreeSet::new(),
    );
    assert_eq!(
        a.errors,
        ["cluster redis: cluster_type: unsupported cluster type \"envoy.clusters.redis\""]
    );
}

#[test]
fn retry_budgets_arrive_and_a_bad_one_is_rejected_alone() {
    use crate::state::cluster::RetryBudget;
    use keel_proto::envoy::config::cluster::v3 as pbc;
    let state = load("registry-only");
    let name = "outbound|9080||ratings.default.svc.cluster.local";
    assert_eq!(
        state.clusters[name].circuit_breakers.retry_budget,
        Some(RetryBudget {
            percent_hundredths: 2500,
            min_retry_concurrency: 2,
            interval: Some(std::time::Duration::from_secs(10)),
        })
    );
    // Over 100%: that cluster alone is refused, naming the field.
    let mut clusters: Vec<pbc::Cluster> = generate("registry-only", CLUSTER, None)
        .iter()
        .map(|a| keel_proto::any::unpack(a).expect("a cluster"))
        .collect();
    let ratings = clusters
        .iter_mut()
        .find(|c| c.name == name)
        .expect("the ratings cluster");
    let t = &mut ratings
        .circuit_breakers
        .as_mut()
        .expect("circuit breakers")
        .thresholds[0];
    t.retry_budget
        .as_mut()
        .expect("a retry budget")
        .budget_percent = Some(keel_proto::envoy::r#type::v3::Percent { value: 150.0 });
    let resources = clusters.iter().map(pack).collect();
    let a = apply(&state, &response(CLUSTER, "2", resources), &BTreeSet::new());
    assert_eq!(a.errors.len(), 1, "{:?}", a.errors);
    assert!(
        a.errors[0].contains(
            "circuit_breakers.thresholds[0].retry_budget.budget_percent: 150 is not a percentage"
        ),
        "{}",
        a.errors[0]
    );
    assert!(Arc::ptr_eq(&a.state.clusters[name], &state.clusters[name]));
}
