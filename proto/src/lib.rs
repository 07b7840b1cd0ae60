//! Keel's shared protobuf APIs.
//!
//! This crate owns the wire types every Keel component speaks:
//! - Envoy xDS v3, re-exported from the `envoy-types` crate as [`envoy`] and
//!   [`google`], plus [`any`]: packing and unpacking `google.protobuf.Any` by
//!   type URL, and the xDS type URLs pilot and the proxy exchange.
//! - Keel's own services, compiled from `proto/` at build time with protox
//!   (no system `protoc`): the certificate API ([`istio::v1::auth`]) and the
//!   sample workload's echo API ([`keel::echo::v1`]).
//!
//! It holds no behaviour beyond encoding: no clients, no servers, no config.

pub mod any;
pub mod json;

pub use envoy_types::pb::envoy;
pub use envoy_types::pb::google;
pub use envoy_types::pb::xds;

/// Keel's own protobuf APIs that keep Istio's package names for wire compatibility.
pub mod istio {
    /// Istio's `istio.v1` packages.
    pub mod v1 {
        /// The certificate signing service (`istio.v1.auth.IstioCertificateService`).
        pub mod auth {
            #![allow(clippy::all, missing_docs, unreachable_pub)]
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

/// Keel's own protobuf APIs under the `keel` package.
pub mod keel {
    /// The sample workload's API.
    pub mod echo {
        /// `keel.echo.v1.Echo`, served by `keel-echo` (keel-e2e).
        pub mod v1 {
            #![allow(clippy::all, missing_docs, unreachable_pub)]
            tonic::include_proto!("keel.echo.v1");
        }
    }
}
