//! xDS: the ADS client that keeps [`ProxyState`](crate::state::ProxyState)
//! in step with pilot, and the typed handlers that convert Envoy resources
//! into Keel's representation.
//!
//! [`client`] owns the gRPC stream (subscriptions, ACK/NACK, reconnecting
//! with backoff); [`handlers`] decides, per resource, whether it can be
//! honoured and writes the state; `lds`/`rds`/`cds`/`eds` hold the
//! per-type conversions. Nothing here serves traffic.

pub mod cds;
pub mod client;
pub mod convert;
pub mod eds;
pub mod handlers;
pub mod lds;
pub mod rds;

pub use client::{XdsClient, XdsError};
pub use handlers::{Applied, apply};
