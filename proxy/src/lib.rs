//! keel-proxy: Keel's sidecar and gateway.
//!
//! This crate owns the proxy's configuration ([`config`]), its state as pilot
//! configured it in Keel's own representation ([`state`]), the ADS client and
//! typed handlers that keep that state current ([`xds`]), the admin and
//! readiness servers ([`admin`]), and the data path: listeners and filter
//! chain selection ([`listen`]), HTTP forwarding ([`http`]) with routing
//! ([`router`]), TCP proxying ([`tcp`]), and the upstream clusters with their
//! balancers and connection pools ([`upstream`]).

pub mod admin;
pub mod alloc;
pub mod balance;
pub mod config;
pub mod detect;
pub mod drain;
pub mod http;
pub mod http2;
pub mod identity;
pub mod init;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod orig_dst;
pub mod router;
pub mod state;
pub mod tcp;
pub mod upstream;
pub mod xds;

/// The hash map of the data path's lookups (clusters, listeners by port,
/// endpoints, domains): keyed by configuration pilot sent, not by anything
/// a client chooses, so a fast seeded hash serves better than SipHash's
/// flooding resistance (a SipHash lookup was ~1k instructions per request).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
