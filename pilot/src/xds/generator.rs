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

/// The generator pilot serves with. Stateless: everything comes from the
/// snapshot and the node.
#[derive(Debug, Default)]
pub struct KeelGenerator;

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
        let list = match type_url {
            CLUSTER => cds::clusters(&scope),
            ENDPOINT => eds::load_assignments(&scope, names),
            LISTENER => lds::listeners(&scope, names),
            ROUTE => rds::route_configs(&scope, names),
            _ => Vec::new(),
        };
        list.into_iter().map(|r| (r.name.clone(), r)).collect()
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
