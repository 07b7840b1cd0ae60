//! keel-citadel: the mesh's certificate authority.
//!
//! It issues X.509 workload certificates carrying SPIFFE identities
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) over Istio's certificate API
//! (`istio.v1.auth.IstioCertificateService/CreateCertificate`), to callers
//! that prove they are that identity ([`auth`]): with a bootstrap token it
//! signed ([`token`]) or, for renewals, their current certificate. The
//! signing certificate is a root kept in a state directory, or a plugged-in
//! intermediate ([`ca`]).

pub mod auth;
pub mod ca;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod state;
pub mod token;
