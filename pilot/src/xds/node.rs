//! Who a client is: Istio's node id (`TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`)
//! and node metadata, parsed once per stream.

use std::collections::BTreeMap;
use std::net::IpAddr;

use keel_proto::envoy::config::core::v3::Node;
use keel_proto::google::protobuf::{Struct, Value, value::Kind};

/// What kind of proxy a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    /// A sidecar beside one workload.
    Sidecar,
    /// A gateway (router) serving Gateway resources.
    Router,
}

/// Which resource flavour a client consumes (Istio's `GENERATOR` metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientFlavor {
    /// An Envoy-compatible proxy (Keel's proxy, Envoy).
    Envoy,
    /// A proxyless gRPC client (`GENERATOR: grpc`).
    Grpc,
}

/// A client's identity and the facts that scope its config.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NodeInfo {
    /// The node id as sent.
    pub id: String,
    /// Sidecar or router.
    pub proxy_type: ProxyType,
    /// The workload's IP address, when the id carries one.
    pub ip: Option<IpAddr>,
    /// The pod (or workload instance) name.
    pub pod_name: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The cluster DNS domain suffix the node lives under (`cluster.local`).
    pub dns_domain: String,
    /// The workload's labels (`LABELS` metadata).
    pub labels: BTreeMap<String, String>,
    /// The workload name (`WORKLOAD_NAME` metadata).
    pub workload_name: String,
    /// The service account (`SERVICE_ACCOUNT` metadata).
    pub service_account: String,
    /// Envoy-style proxy or proxyless gRPC.
    pub flavor: ClientFlavor,
}

/// Why a node could not be identified.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NodeError {
    /// The request carried no `node`.
    #[error("the first request on a stream must carry a node")]
    Missing,
    /// The id is not Istio-shaped.
    #[error(
        "node id {id:?} is malformed: expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN (for example sidecar~10.1.1.5~reviews-v1-abc.default~default.svc.cluster.local): {reason}"
    )]
    BadId {
        /// The id as received.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A metadata field has the wrong type.
    #[error("node metadata field {field} must be {expected}")]
    BadMetadata {
        /// The metadata key.
        field: &'static str,
        /// The expected JSON type.
        expected: &'static str,
    },
}

impl NodeInfo {
    /// Parses a node from its id and metadata.
    pub fn from_node(node: Option<&Node>) -> Result<Self, NodeError> {
        let node = node.ok_or(NodeError::Missing)?;
        let id = node.id.clone();
        let bad = |reason| NodeError::BadId {
            id: id.clone(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() != 4 {
            return Err(bad("it must have four '~'-separated parts"));
        }
        let proxy_type = match parts[0] {
            "sidecar" => ProxyType::Sidecar,
            "router" => ProxyType::Router,
            _ => return Err(bad("the type must be 'sidecar' or 'router'")),
        };
        let ip = if parts[1].is_empty() {
            None
        } else {
            Some(
                parts[1]
                    .parse::<IpAddr>()
                    .map_err(|_| bad("the second part must be an IP address"))?,
            )
        };
        let (pod_name, id_ns) = parts[2]
            .rsplit_once('.')
            .ok_or_else(|| bad("the third part must be POD.NAMESPACE"))?;
        if pod_name.is_empty() || id_ns.is_empty() {
            return Err(bad("the third part must be POD.NAMESPACE"));
        }
        let dns_domain = parts[3]
            .split_once(".svc.")
            .map(|(_, d)| d.to_string())
            .unwrap_or_else(|| "cluster.local".to_string());

        let meta = node.metadata.as_ref();
        let namespace = meta_str(meta, "NAMESPACE")?.unwrap_or_else(|| id_ns.to_string());
        let labels = meta_map(meta, "LABELS")?;
        let workload_name = meta_str(meta, "WORKLOAD_NAME")?.unwrap_or_else(|| {
            labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| pod_name.to_string())
        });
        let service_account =
            meta_str(meta, "SERVICE_ACCOUNT")?.unwrap_or_else(|| "default".to_string());
        let flavor = match meta_str(meta, "GENERATOR")?.as_deref() {
            Some("grpc") => ClientFlavor::Grpc,
            _ => ClientFlavor::Envoy,
        };
        Ok(Self {
            id: id.clone(),
            proxy_type,
            ip,
            pod_name: pod_name.to_string(),
            namespace,
            dns_domain,
            labels,
            workload_name,
            service_account,
            flavor,
        })
    }
}

fn field<'a>(meta: Option<&'a Struct>, key: &str) -> Option<&'a Kind> {
    meta?.fields.get(key)?.kind.as_ref()
}

fn meta_str(meta: Option<&Struct>, key: &'static str) -> Result<Option<String>, NodeError> {
    match field(meta, key) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(NodeError::BadMetadata {
            field: key,
            expected: "a string",
        }),
    }
}

fn meta_map(
    meta: Option<&Struct>,
    key: &'static str,
) -> Result<BTreeMap<String, String>, NodeError> {
    let bad = NodeError::BadMetadata {
        field: key,
        expected: "an object of strings",
    };
    match field(meta, key) {
        None | Some(Kind::NullValue(_)) => Ok(BTreeMap::new()),
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
                _ => Err(bad.clone()),
            })
            .collect(),
        Some(_) => Err(bad),
    }
}

impl Clone for NodeError {
    fn clone(&self) -> Self {
        match self {
            Self::Missing => Self::Missing,
            Self::BadId { id, reason } => Self::BadId {
                id: id.clone(),
                reason,
            },
            Self::BadMetadata { field, expected } => Self::BadMetadata { field, expected },
        }
    }
}

/// Builds node metadata from string pairs (tests and clients use it).
pub fn metadata(pairs: &[(&str, &str)], labels: &[(&str, &str)]) -> Struct {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields: BTreeMap<String, Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), s(v))).collect();
    if !labels.is_empty() {
        let l = Struct {
            fields: labels.iter().map(|(k, v)| (k.to_string(), s(v))).collect(),
        };
        fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(l)),
            },
        );
    }
    Struct {
        fields: fields.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, meta: Struct) -> Node {
        Node {
            id: id.into(),
            metadata: Some(meta),
            ..Default::default()
        }
    }

    #[test]
    fn parses_istio_sidecar_id_and_metadata() {
        let n = node(
            "sidecar~10.1.1.5~reviews-v1-abc.default~default.svc.cluster.local",
            metadata(
                &[
                    ("SERVICE_ACCOUNT", "bookinfo-reviews"),
                    ("GENERATOR", "grpc"),
                ],
                &[("app", "reviews"), ("version", "v1")],
            ),
        );
        let info = NodeInfo::from_node(Some(&n)).expect("valid node");
        assert_eq!(info.proxy_type, ProxyType::Sidecar);
        assert_eq!(info.ip, Some("10.1.1.5".parse().expect("ip")));
        assert_eq!(info.pod_name, "reviews-v1-abc");
        assert_eq!(info.namespace, "default");
        assert_eq!(info.dns_domain, "cluster.local");
        assert_eq!(info.service_account, "bookinfo-reviews");
        assert_eq!(info.workload_name, "reviews");
        assert_eq!(info.labels["version"], "v1");
        assert_eq!(info.flavor, ClientFlavor::Grpc);
    }

    #[test]
    fn rejects_malformed_ids_with_reason() {
        for (id, want) in [
            ("hello", "four"),
            ("gateway~1.2.3.4~a.b~b.svc.cluster.local", "type"),
            ("sidecar~not-an-ip~a.b~b.svc.cluster.local", "IP"),
            ("sidecar~1.2.3.4~nodot~b.svc.cluster.local", "POD.NAMESPACE"),
        ] {
            let err = NodeInfo::from_node(Some(&node(id, Struct::default()))).expect_err(id);
            assert!(err.to_string().contains(want), "{id}: {err}");
        }
        assert_eq!(NodeInfo::from_node(None), Err(NodeError::Missing));
    }
}
