//! Keel's xDS generator: a config snapshot plus a client's identity in,
//! Envoy xDS v3 resources out, with Istio's semantics and names so that
//! Envoy-literate users can read a dump.
//!
//! - [`scope`]: what a client may see (exportTo, Sidecar egress, which
//!   VirtualService and DestinationRule apply to a host).
//! - [`cds`] and [`eds`]: clusters `outbound|PORT|SUBSET|FQDN` and
//!   `inbound|PORT||` with DestinationRule policy, and their endpoints.
//! - [`lds`]: sidecar listeners (`virtualOutbound` on 15001,
//!   `virtualInbound` on 15006, one per outbound port), gateway listeners, and
//!   the `host:port` API listeners proxyless gRPC clients ask for.
//! - [`rds`]: route configurations: VirtualService HTTP routes on virtual
//!   hosts named `host:port`.

pub mod cache;
pub mod cds;
pub mod eds;
pub mod lds;
pub mod rds;
pub mod scope;
mod util;

use std::collections::BTreeSet;

use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

use super::{Generator, NodeInfo, Resources};
use crate::model::store::Snapshot;
use scope::Scope;

/// The generator pilot serves with. Everything comes from the snapshot and
/// the node; class-level resources are shared between clients of one class
/// (see [`cache`]).
#[derive(Debug, Default)]
pub struct KeelGenerator {
    cache: cache::ClassCache,
}

impl KeelGenerator {
    /// A generator with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many client classes the current config generation has.
    pub fn cached_classes(&self) -> usize {
        self.cache.len()
    }
}

impl Generator for KeelGenerator {
    type Snapshot = Snapshot;

    fn generate(
        &self,
        snapshot: &Snapshot,
        node: &NodeInfo,
        type_url: &str,
        names: Option<&BTreeSet<String>>,
    ) -> Resources {
        let scope = Scope::new(snapshot, node);
        let collect = |list: Vec<super::Resource>| -> Resources {
            list.into_iter().map(|r| (r.name.clone(), r)).collect()
        };
        let shared = |make: &dyn Fn(Option<&cache::Memo>) -> Vec<super::Resource>| {
            let key = cache::ClassKey::new(snapshot, node, type_url, names);
            self.cache
                .get_or_make(snapshot, key, |memo| collect(make(memo)))
        };
        match type_url {
            CLUSTER => {
                let mut out = Resources::clone(&shared(&|memo| cds::outbound(&scope, memo)));
                out.extend(collect(cds::local(&scope)));
                out
            }
            ENDPOINT => {
                Resources::clone(&shared(&|memo| eds::load_assignments(&scope, names, memo)))
            }
            ROUTE => Resources::clone(&shared(&|_| rds::route_configs(&scope, names))),
            LISTENER => collect(lds::listeners(&scope, names)),
            _ => Resources::new(),
        }
    }
}

/// Istio's cluster name: `DIRECTION|PORT|SUBSET|HOST`.
pub fn cluster_name(direction: &str, port: u32, subset: &str, host: &str) -> String {
    format!("{direction}|{port}|{subset}|{host}")
}

/// Splits an `outbound|PORT|SUBSET|HOST` name.
pub fn parse_cluster_name(name: &str) -> Option<(&str, u32, &str, &str)> {
    let mut it = name.splitn(4, '|');
    let dir = it.next()?;
    let port = it.next()?.parse().ok()?;
    let subset = it.next()?;
    let host = it.next()?;
    Some((dir, port, subset, host))
}

/// The cluster that drops traffic.
pub const BLACKHOLE: &str = "BlackHoleCluster";
/// The cluster that forwards outbound traffic to its original destination.
pub const PASSTHROUGH: &str = "PassthroughCluster";
/// The cluster that forwards inbound traffic to its original destination.
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::store::ConfigStore;
    use crate::xds::node::metadata;
    use keel_proto::envoy::config::core::v3::Node;

    const CONFIG: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, labels: {app: reviews, version: v1}}
status: {podIP: 10.1.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-2, labels: {app: reviews, version: v2}}
status: {podIP: 10.1.0.22}
";

    fn node(ip: &str, app: &str) -> NodeInfo {
        NodeInfo::from_node(Some(&Node {
            id: format!("sidecar~{ip}~{app}-1.default~default.svc.cluster.local"),
            metadata: Some(metadata(&[], &[("app", app)])),
            ..Default::default()
        }))
        .expect("node")
    }

    fn snapshot(extra: &str) -> Snapshot {
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("c.yaml", &format!("{CONFIG}---\n{extra}"));
        let s = store.snapshot();
        assert!(store.errors().is_empty(), "{:?}", store.errors());
        s
    }

    #[test]
    fn clients_of_one_class_share_generation_but_keep_their_own_inbound() {
        let snap = snapshot("");
        let generator = KeelGenerator::new();
        let a = node("10.1.0.21", "reviews"); // a reviews pod: has inbound clusters
        let b = node("10.1.0.99", "productpage");
        for t in [CLUSTER, ENDPOINT, ROUTE] {
            let cached = (
                generator.generate(&snap, &a, t, None),
                generator.generate(&snap, &b, t, None),
            );
            let fresh = (
                KeelGenerator::new().generate(&snap, &a, t, None),
                KeelGenerator::new().generate(&snap, &b, t, None),
            );
            assert_eq!(
                cached, fresh,
                "{t}: the cache changes nothing a client sees"
            );
        }
        assert_eq!(
            generator.cached_classes(),
            3,
            "one class per type for both clients"
        );
        let clusters = generator.generate(&snap, &a, CLUSTER, None);
        assert!(clusters.contains_key("inbound|9080||"));
        assert!(
            !generator
                .generate(&snap, &b, CLUSTER, None)
                .contains_key("inbound|9080||")
        );
    }

    #[test]
    fn label_selecting_config_splits_classes() {
        let snap = snapshot(
            "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews}}]
",
        );
        assert!(snap.label_sensitive);
        let generator = KeelGenerator::new();
        let pp = generator.generate(&snap, &node("10.1.0.98", "productpage"), ROUTE, None);
        let other = generator.generate(&snap, &node("10.1.0.99", "ratings"), ROUTE, None);
        assert_ne!(
            pp, other,
            "only productpage's routes carry the sourceLabels route"
        );
        assert_eq!(generator.cached_classes(), 2);
    }

    #[test]
    fn a_new_generation_replaces_the_cache() {
        let generator = KeelGenerator::new();
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("c.yaml", CONFIG);
        let first = store.snapshot();
        let n = node("10.1.0.99", "productpage");
        let before = generator.generate(&first, &n, ENDPOINT, None);
        store.upsert("c.yaml", &CONFIG.replace("10.1.0.22", "10.1.0.23"));
        let second = store.snapshot();
        let after = generator.generate(&second, &n, ENDPOINT, None);
        assert_ne!(before, after);
        // A stream still answering from the old snapshot gets old content.
        assert_eq!(generator.generate(&first, &n, ENDPOINT, None), before);
    }
}
