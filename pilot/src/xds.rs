//! Envoy xDS v3: translation of a config snapshot into resources, and the ADS
//! server that streams them to clients.
//!
//! The server ([`ads`]) knows nothing of Istio: it is generic over a
//! [`Generator`], which turns a snapshot plus a client's identity into named
//! resources of one type. Keel's generator lives in [`generator`].

pub mod ads;
pub mod generator;
pub mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel_proto::google::protobuf::Any;

pub use node::NodeInfo;

/// One generated xDS resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The resource name (listener, route config, cluster or cluster-load-assignment name).
    pub name: String,
    /// A content hash of the encoded resource: equal versions mean equal bytes.
    pub version: String,
    /// The packed resource, shared: clients of one class hold the same
    /// bytes until a response is built for them.
    pub any: Arc<Any>,
}

impl Resource {
    /// Packs `msg` under `name`, computing its version from the encoded bytes.
    pub fn new<T: prost::Message + prost::Name>(name: impl Into<String>, msg: &T) -> Self {
        let any = keel_proto::any::pack(msg);
        let version = content_version(&any.value);
        Self {
            name: name.into(),
            version,
            any: Arc::new(any),
        }
    }
}

/// All resources of one type for one client, by name.
pub type Resources = BTreeMap<String, Resource>;

/// A stable hash of bytes, rendered as 16 hex digits.
pub fn content_version(bytes: &[u8]) -> String {
    // FNV-1a: stable across runs and platforms, unlike std's randomised hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Turns a config snapshot and a client's identity into xDS resources.
///
/// Implementations must be pure: the same snapshot, node and names give the
/// same resources, so the server can diff by version.
pub trait Generator: Send + Sync + 'static {
    /// The immutable config snapshot the generator reads.
    type Snapshot: Send + Sync + 'static;

    /// Generates every resource of `type_url` that `node` may see.
    ///
    /// `names` is `None` for a wildcard subscription, or the names the client
    /// asked for. A generator may use the names to build resources on demand
    /// (proxyless gRPC clients ask for listeners named `host:port`); the
    /// server filters the result to the names asked for either way.
    fn generate(
        &self,
        snapshot: &Self::Snapshot,
        node: &NodeInfo,
        type_url: &str,
        names: Option<&BTreeSet<String>>,
    ) -> Resources;
}
