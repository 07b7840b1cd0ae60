//! The typed per-resource handlers: the only code that writes [`ProxyState`].
//!
//! A response is applied as a whole to a copy of the current state: every
//! resource is unpacked and converted by its type's handler; a resource that
//! cannot be honoured is rejected alone (its previous version, if any, keeps
//! serving) while the others apply. The caller swaps the result in and ACKs,
//! or NACKs with the joined messages when anything was rejected.
//!
//! A resource that converts to what the state already holds under its name
//! keeps its previous `Arc`: state-of-the-world responses resend everything,
//! and the data path keys per-resource caches (balancers, connection pools)
//! on `Arc::ptr_eq`, so only what actually changed gets a new `Arc`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE, UnpackError, unpack};
use keel_proto::envoy::config::cluster::v3::Cluster as PbCluster;
use keel_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use keel_proto::envoy::config::listener::v3::Listener as PbListener;
use keel_proto::envoy::config::route::v3::RouteConfiguration;
use keel_proto::envoy::service::discovery::v3::DiscoveryResponse;
use prost::{Message, Name};

use super::convert;
use super::{cds, eds, lds, rds};
use crate::state::{Cluster, Endpoints, Listener, Nack, ProxyState, RouteTable};

/// The outcome of applying one response.
#[derive(Debug)]
pub struct Applied {
    /// The state to publish.
    pub state: ProxyState,
    /// One message per rejected resource; empty means ACK.
    pub errors: Vec<String>,
    /// How many resources were accepted.
    pub accepted: usize,
}

/// One xDS resource type: its proto, its state type, and its removal rule.
trait Handler {
    /// Short name (`lds`, ...), the key in [`ProxyState::xds`].
    const SHORT: &'static str;
    /// The noun in messages (`listener`, ...).
    const KIND: &'static str;
    /// SotW: resources absent from a response are removed (LDS, CDS).
    const REPLACE_ALL: bool;
    type Proto: Message + Name + Default;
    /// Compared with the previous version to keep its `Arc` when unchanged.
    type Item: PartialEq;
    fn name(p: &Self::Proto) -> &str;
    fn convert(p: &Self::Proto) -> convert::Result<Option<Self::Item>>;
    fn map(s: &mut ProxyState) -> &mut BTreeMap<String, Arc<Self::Item>>;
}

struct Lds;
impl Handler for Lds {
    const SHORT: &'static str = "lds";
    const KIND: &'static str = "listener";
    const REPLACE_ALL: bool = true;
    type Proto = PbListener;
    type Item = Listener;
    fn name(p: &PbListener) -> &str {
        &p.name
    }
    fn convert(p: &PbListener) -> convert::Result<Option<Listener>> {
        lds::listener(p)
    }
    fn map(s: &mut ProxyState) -> &mut BTreeMap<String, Arc<Listener>> {
        &mut s.listeners
    }
}

struct Rds;
impl Handler for Rds {
    const SHORT: &'static str = "rds";
    const KIND: &'static str = "route";
    const REPLACE_ALL: bool = false;
    type Proto = RouteConfiguration;
    type Item = RouteTable;
    fn name(p: &RouteConfiguration) -> &str {
        &p.name
    }
    fn convert(p: &RouteConfiguration) -> convert::Result<Option<RouteTable>> {
        rds::route_table(p).map(Some)
    }
    fn map(s: &mut ProxyState) -> &mut BTreeMap<String, Arc<RouteTable>> {
        &mut s.routes
    }
}

struct Cds;
impl Handler for Cds {
    const SHORT: &'static str = "cds";
    const KIND: &'static str = "cluster";
    const REPLACE_ALL: bool = true;
    type Proto = PbCluster;
    type Item = Cluster;
    fn name(p: &PbCluster) -> &str {
        &p.name
    }
    fn convert(p: &PbCluster) -> convert::Result<Option<Cluster>> {
        cds::cluster(p).map(Some)
    }
    fn map(s: &mut ProxyState) -> &mut BTreeMap<String, Arc<Cluster>> {
        &mut s.clusters
    }
}

struct Eds;
impl Handler for Eds {
    const SHORT: &'static str = "eds";
    const KIND: &'static str = "endpoints";
    const REPLACE_ALL: bool = false;
    type Proto = ClusterLoadAssignment;
    type Item = Endpoints;
    fn name(p: &ClusterLoadAssignment) -> &str {
        &p.cluster_name
    }
    fn convert(p: &ClusterLoadAssignment) -> convert::Result<Option<Endpoints>> {
        eds::load_assignment(p).map(Some)
    }
    fn map(s: &mut ProxyState) -> &mut BTreeMap<String, Arc<Endpoints>> {
        &mut s.endpoints
    }
}

/// The short name of a type URL the proxy handles.
pub fn short_name(type_url: &str) -> Option<&'static str> {
    match type_url {
        LISTENER => Some(Lds::SHORT),
        ROUTE => Some(Rds::SHORT),
        CLUSTER => Some(Cds::SHORT),
        ENDPOINT => Some(Eds::SHORT),
        _ => None,
    }
}

/// Applies `resp` to a copy of `current`. `requested` is the subscription the
/// response answers (empty for wildcard types).
///
/// A response of a type the proxy does not handle changes nothing and yields
/// one error (so the caller NACKs it).
pub fn apply(
    current: &ProxyState,
    resp: &DiscoveryResponse,
    requested: &BTreeSet<String>,
) -> Applied {
    match resp.type_url.as_str() {
        LISTENER => apply_typed::<Lds>(current, resp, requested),
        ROUTE => apply_typed::<Rds>(current, resp, requested),
        CLUSTER => apply_typed::<Cds>(current, resp, requested),
        ENDPOINT => apply_typed::<Eds>(current, resp, requested),
        other => Applied {
            state: current.clone(),
            errors: vec![format!("unsupported resource type {other:?}")],
            accepted: 0,
        },
    }
}

fn apply_typed<H: Handler>(
    current: &ProxyState,
    resp: &DiscoveryResponse,
    requested: &BTreeSet<String>,
) -> Applied {
    let mut state = current.clone();
    let previous = H::map(&mut state).clone();
    let mut next = if H::REPLACE_ALL {
        BTreeMap::new()
    } else {
        previous.clone()
    };
    let mut errors = Vec::new();
    let mut accepted = 0;
    // A resource whose name is unknown (bad bytes, wrong type) may be any of
    // the previous ones: then nothing absent is removed.
    let mut lost_name = false;
    let mut seen = BTreeSet::new();
    for (i, any) in resp.resources.iter().enumerate() {
        let proto = match unpack::<H::Proto>(any) {
            Ok(p) => p,
            Err(UnpackError::WrongType { expected, found }) => {
                errors.push(format!(
                    "{} resources[{i}]: type URL {found:?} is not {expected:?}",
                    H::KIND
                ));
                lost_name = true;
                continue;
            }
            Err(UnpackError::Decode { source, .. }) => {
                errors.push(format!(
                    "{} resources[{i}]: malformed protobuf: {source}",
                    H::KIND
                ));
                lost_name = true;
                continue;
            }
        };
        let name = H::name(&proto).to_string();
        if name.is_empty() {
            errors.push(format!("{} resources[{i}]: name is empty", H::KIND));
            lost_name = true;
            continue;
        }
        if !seen.insert(name.clone()) {
            errors.push(format!("{} {name}: sent twice in one response", H::KIND));
            continue;
        }
        match H::convert(&proto) {
            Ok(Some(item)) => {
                let item = match previous.get(&name) {
                    Some(prev) if **prev == item => Arc::clone(prev),
                    _ => Arc::new(item),
                };
                next.insert(name, item);
                accepted += 1;
            }
            Ok(None) => accepted += 1,
            Err(e) => {
                errors.push(format!("{} {name}: {e}", H::KIND));
                match previous.get(&name) {
                    Some(prev) => {
                        next.insert(name, Arc::clone(prev));
                    }
                    None => {
                        next.remove(&name);
                    }
                }
            }
        }
    }
    if H::REPLACE_ALL && lost_name {
        for (name, item) in &previous {
            next.entry(name.clone()).or_insert_with(|| Arc::clone(item));
        }
    }
    *H::map(&mut state) = next;
    state.prune();
    let status = state.xds.entry(H::SHORT).or_default();
    status.nonce = resp.nonce.clone();
    status.received = true;
    status.requested = requested.clone();
    if errors.is_empty() {
        status.version = resp.version_info.clone();
    } else {
        status.last_nack = Some(Nack {
            version: resp.version_info.clone(),
            message: errors.join("; "),
        });
    }
    Applied {
        state,
        errors,
        accepted,
    }
}

#[cfg(test)]
#[path = "handlers/tests.rs"]
mod tests;
