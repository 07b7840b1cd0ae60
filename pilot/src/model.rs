//! Keel's config model: Istio's custom resources and the Kubernetes objects
//! that make up the service registry, with parsing and validation.
//!
//! - [`networking`] and [`security`]: one Rust type per Istio kind, with
//!   Istio's exact field names, enums and defaults (the CRD schemas in
//!   `crd-all.gen.yaml`), derived as kube `CustomResource`s so the same types
//!   serve Kubernetes watches later. Each spec validates itself with Istio's
//!   semantic rules.
//! - [`load`]: multi-document YAML/JSON in, typed [`load::Object`]s or
//!   precise errors (file, document, `kind namespace/name`, field path) out.
//! - [`store`]: the validated config of many files, keeping each file's last
//!   good version, and the cross-object checks.
//! - [`registry`]: services, ports and endpoints from Service/Pod/EndpointSlice
//!   and ServiceEntry/WorkloadEntry.
//!
//! Nothing here does I/O beyond what it is handed, or knows about xDS.

pub mod duration;
pub mod load;
pub mod networking;
pub mod registry;
pub mod security;
pub mod store;
pub mod validate;
