//! keel-pilot: Keel's control plane.
//!
//! Pilot reads Istio routing and security config (a directory of YAML today,
//! Kubernetes later), validates it with Istio's rules, builds a service
//! registry, and serves the result to proxies and proxyless gRPC clients as
//! Envoy xDS v3 over the Aggregated Discovery Service.
//!
//! - [`model`]: the config types (Istio CRDs and the Kubernetes objects that
//!   make up the service registry), parsing, validation and the registry. Pure
//!   data: no gRPC, no I/O beyond reading bytes handed to it.
//! - [`source`]: where config comes from (a watched directory).
//! - [`xds`]: translation of a config snapshot into LDS/RDS/CDS/EDS and the ADS
//!   server that streams it.
//! - [`debug`] and [`metrics`]: the monitoring HTTP endpoints.
//!
//! It does not own certificates (keel-citadel) or telemetry (keel-mixer).

pub mod config;
pub mod debug;
pub mod metrics;
pub mod model;
pub mod source;
pub mod xds;
