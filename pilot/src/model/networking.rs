//! Istio's `networking.istio.io/v1` kinds: VirtualService, DestinationRule,
//! Gateway, ServiceEntry, WorkloadEntry and Sidecar, with Istio's field names,
//! enums and defaults, and each spec's semantic validation (`validate`).
//!
//! Types only: no I/O, no knowledge of xDS. Checks across objects (does a
//! referenced subset exist) belong to the store.

pub mod common;
pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
