//! Golden tests of generated xDS: representative configs in
//! `testdata/golden/NAME.yaml`, the resources a given client receives in
//! `testdata/golden/NAME.json` (canonical protobuf JSON, as config dumps show
//! them). `UPDATE_GOLDEN=1 cargo test -p keel-pilot --test golden` rewrites
//! the expectations; review the diff like code.

use std::collections::BTreeSet;
use std::path::Path;

use keel_pilot::model::store::ConfigStore;
use keel_pilot::xds::generator::KeelGenerator;
use keel_pilot::xds::node::metadata;
use keel_pilot::xds::{Generator, NodeInfo};
use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use keel_proto::envoy::config::core::v3::Node;
use serde_json::Value;

fn node(id: &str, meta: &[(&str, &str)], labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo::from_node(Some(&Node {
        id: id.into(),
        metadata: Some(metadata(meta, labels)),
        ..Default::default()
    }))
    .expect("valid node")
}

fn check(case: &str, node: &NodeInfo, names: Option<&BTreeSet<String>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/golden");
    let input = std::fs::read_to_string(dir.join(format!("{case}.yaml"))).expect("input");
    let mut store = ConfigStore::new("cluster.local", "istio-system");
    store.upsert(&format!("{case}.yaml"), &input);
    let snapshot = store.snapshot();
    assert!(store.errors().is_empty(), "{case}: {:?}", store.errors());
    let mut out = serde_json::Map::new();
    for (key, t) in [
        ("clusters", CLUSTER),
        ("endpoints", ENDPOINT),
        ("listeners", LISTENER),
        ("routes", ROUTE),
    ] {
        let resources = KeelGenerator::new().generate(&snapshot, node, t, names);
        let rendered: Vec<Value> = resources.values().map(|r| any_json(&r.any)).collect();
        out.insert(key.into(), Value::Array(rendered));
    }
    // Equal config must give equal versions, or every push would resend it.
    let mut again = ConfigStore::new("cluster.local", "istio-system");
    again.upsert(&format!("{case}.yaml"), &input);
    let snapshot2 = again.snapshot();
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        let a = KeelGenerator::new().generate(&snapshot, node, t, names);
        let b = KeelGenerator::new().generate(&snapshot2, node, t, names);
        assert_eq!(a, b, "{case}: {t} is not deterministic");
    }
    let got = serde_json::to_string_pretty(&Value::Object(out)).expect("json") + "\n";
    let path = dir.join(format!("{case}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    if got != want {
        let diff_at = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{case}: generated xDS differs from {} at line {}:\n  got:  {:?}\n  want: {:?}\n(UPDATE_GOLDEN=1 to accept)",
            path.display(),
            diff_at + 1,
            got.lines().nth(diff_at),
            want.lines().nth(diff_at)
        );
    }
}

fn any_json(any: &keel_proto::google::protobuf::Any) -> Value {
    // Wrap in a config dump so the Any renders with its @type.
    let dump = keel_proto::envoy::admin::v3::ConfigDump {
        configs: vec![any.clone()],
    };
    let v = keel_proto::json::to_json(&dump).expect("renders");
    v["configs"][0].clone()
}

#[test]
fn sidecar_canary() {
    let n = node(
        "sidecar~10.1.0.7~productpage-v1-1.default~default.svc.cluster.local",
        &[("SERVICE_ACCOUNT", "bookinfo-productpage")],
        &[("app", "productpage"), ("version", "v1")],
    );
    check("sidecar-canary", &n, None);
}

#[test]
fn grpc_proxyless() {
    let n = node(
        "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local",
        &[("GENERATOR", "grpc")],
        &[],
    );
    let names: BTreeSet<String> = ["echo.test:7070".to_string()].into();
    check("grpc-proxyless", &n, Some(&names));
}

#[test]
fn gateway() {
    let n = node(
        "router~10.1.0.9~ingress-1.istio-system~istio-system.svc.cluster.local",
        &[],
        &[("istio", "ingressgateway")],
    );
    check("gateway", &n, None);
}

#[test]
fn registry_only_sidecar() {
    let n = node(
        "sidecar~10.1.0.30~ratings-v1-1.default~default.svc.cluster.local",
        &[],
        &[("app", "ratings")],
    );
    check("registry-only", &n, None);
}
