//! Packing and unpacking `google.protobuf.Any` by type URL, and the xDS type
//! URLs of the resources pilot serves.

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// `type.googleapis.com/envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `type.googleapis.com/envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `type.googleapis.com/envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The four xDS resource types, in the order a server should push them
/// (clusters before the endpoints they use, listeners before their routes).
pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Why an `Any` could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds a different message type than the one asked for.
    #[error("expected a {expected} but the Any holds {found:?}")]
    WrongType {
        /// The type URL that was asked for.
        expected: String,
        /// The type URL the `Any` carries.
        found: String,
    },
    /// The bytes do not decode as the message type.
    #[error("malformed {type_url}: {source}")]
    Decode {
        /// The type URL being decoded.
        type_url: String,
        /// The protobuf decoding error.
        #[source]
        source: prost::DecodeError,
    },
}

/// Packs `msg` into an `Any` carrying its canonical type URL.
pub fn pack<T: Message + Name>(msg: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Unpacks an `Any` into `T`, checking the type URL first.
///
/// The check accepts any URL prefix before the last `/`, as protobuf does
/// (`type.googleapis.com/` is the usual one).
pub fn unpack<T: Message + Name + Default>(any: &Any) -> Result<T, UnpackError> {
    let found = any.type_url.rsplit('/').next().unwrap_or_default();
    if found != T::full_name() {
        return Err(UnpackError::WrongType {
            expected: T::type_url(),
            found: any.type_url.clone(),
        });
    }
    T::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// The short name of an xDS type URL (`LDS`, `RDS`, `CDS`, `EDS`) for logs and
/// metric labels; other URLs come back unchanged.
pub fn short_name(type_url: &str) -> &str {
    match type_url {
        LISTENER => "lds",
        ROUTE => "rds",
        CLUSTER => "cds",
        ENDPOINT => "eds",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    #[test]
    fn round_trip_and_type_check() {
        let l = Listener {
            name: "virtualOutbound".into(),
            ..Default::default()
        };
        let any = pack(&l);
        assert_eq!(any.type_url, LISTENER);
        assert_eq!(
            unpack::<Listener>(&any).expect("same type").name,
            "virtualOutbound"
        );
        let err = unpack::<Cluster>(&any).expect_err("wrong type");
        assert!(
            err.to_string()
                .contains("envoy.config.listener.v3.Listener"),
            "{err}"
        );
    }

    #[test]
    fn malformed_bytes_are_an_error() {
        let any = Any {
            type_url: LISTENER.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(matches!(
            unpack::<Listener>(&any),
            Err(UnpackError::Decode { .. })
        ));
    }
}
