//! Istio's own bookinfo samples load, validate and translate without error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keel_pilot::model::store::ConfigStore;
use keel_pilot::xds::generator::KeelGenerator;
use keel_pilot::xds::node::metadata;
use keel_pilot::xds::{Generator, NodeInfo};
use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use keel_proto::envoy::config::core::v3::Node;

fn istio() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio/bookinfo")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(istio().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn node(id: &str, meta: &[(&str, &str)], labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo::from_node(Some(&Node {
        id: id.into(),
        metadata: Some(metadata(meta, labels)),
        ..Default::default()
    }))
    .expect("valid node")
}

#[test]
fn every_networking_sample_validates_and_translates() {
    let platform = read("platform/kube/bookinfo.yaml");
    let rules = read("networking/destination-rule-all.yaml");
    let mut files: Vec<_> = std::fs::read_dir(istio().join("networking"))
        .expect("bookinfo/networking")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 20);
    let sidecar = node(
        "sidecar~10.1.0.7~productpage-v1-1.default~default.svc.cluster.local",
        &[("SERVICE_ACCOUNT", "bookinfo-productpage")],
        &[("app", "productpage"), ("version", "v1")],
    );
    let jason = node(
        "sidecar~10.1.0.8~reviews-v2-1.default~default.svc.cluster.local",
        &[],
        &[("app", "reviews"), ("version", "v2")],
    );
    let router = node(
        "router~10.1.0.9~ingress-1.istio-system~istio-system.svc.cluster.local",
        &[],
        &[("istio", "ingressgateway")],
    );
    let grpc = node(
        "sidecar~10.1.0.10~client-1.default~default.svc.cluster.local",
        &[("GENERATOR", "grpc")],
        &[],
    );
    for file in files {
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("bookinfo.yaml", &platform);
        // Samples that bring their own DestinationRules replace the full set,
        // as `kubectl apply` would; the others rely on it for their subsets.
        let text = read(&format!("networking/{file}"));
        if !text.contains("kind: DestinationRule") {
            store.upsert("destination-rule-all.yaml", &rules);
        }
        store.upsert(&file, &text);
        let snapshot = store.snapshot();
        let errors: Vec<String> = store.errors().iter().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        assert!(
            snapshot
                .registry
                .services
                .contains_key("reviews.default.svc.cluster.local"),
            "{file}: bookinfo services are in the registry"
        );
        for n in [&sidecar, &jason, &router, &grpc] {
            let mut total = 0;
            for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
                total += KeelGenerator::new().generate(&snapshot, n, t, None).len();
            }
            assert!(total > 0, "{file}: nothing generated for {}", n.id);
        }
        // Proxyless gRPC asks for listeners by name.
        let names: BTreeSet<String> = ["reviews.default.svc.cluster.local:9080".to_string()].into();
        let l = KeelGenerator::new().generate(&snapshot, &grpc, LISTENER, Some(&names));
        assert_eq!(l.len(), 1, "{file}");
        let r = KeelGenerator::new().generate(&snapshot, &grpc, ROUTE, Some(&names));
        assert_eq!(r.len(), 1, "{file}");
    }
}

#[test]
fn gateway_api_samples_are_skipped_with_warnings_not_errors() {
    for entry in std::fs::read_dir(istio().join("gateway-api")).expect("gateway-api") {
        let path = entry.expect("entry").path();
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("x.yaml", &std::fs::read_to_string(&path).expect("readable"));
        store.snapshot();
        assert!(
            store.errors().is_empty(),
            "{}: {:?}",
            path.display(),
            store.errors()
        );
        assert!(!store.status()[0].warnings.is_empty(), "{}", path.display());
    }
}

#[test]
fn keel_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let mut source = keel_pilot::source::file::FileSource::new(&dir);
    let mut store = ConfigStore::new("cluster.local", "istio-system");
    assert!(source.sync(&mut store).expect("examples readable"));
    let snapshot = store.snapshot();
    assert!(store.errors().is_empty(), "{:?}", store.errors());
    assert!(store.status().iter().all(|f| f.warnings.is_empty()));
    let reviews = &snapshot.registry.services["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.endpoints.len(), 3);
}
