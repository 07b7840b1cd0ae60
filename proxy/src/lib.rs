//! keel-proxy: Keel's sidecar and gateway.
//!
//! This crate owns the proxy's configuration ([`config`]), its state as pilot
//! configured it in Keel's own representation ([`state`]), the ADS client and
//! typed handlers that keep that state current ([`xds`]), and the admin and
//! readiness servers ([`admin`]). It does not yet own a data path: listeners
//! are not bound and nothing is forwarded (that is `inbound`/`outbound`,
//! next).

pub mod admin;
pub mod balance;
pub mod config;
pub mod detect;
pub mod logging;
pub mod metrics;
pub mod orig_dst;
pub mod state;
pub mod xds;
