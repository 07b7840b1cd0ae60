//! Who is asking: authenticators turn a caller's credential into the
//! identity it may have a certificate for. Without Kubernetes that is a
//! bootstrap token ([`BootstrapTokens`]) or, for renewals, the caller's
//! current certificate ([`ClientCertificates`]); Kubernetes service-account
//! tokens (TokenReview) are another implementation of [`Authenticator`].

use std::sync::Arc;
use std::time::SystemTime;

use crate::identity::{Identity, IdentityError};
use crate::token::{TokenError, Tokens};

/// What a caller presented.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller<'a> {
    /// The bearer token of the `authorization` metadata.
    pub bearer: Option<&'a str>,
    /// The client certificate (DER) of the TLS connection, already
    /// verified against the CA's root by the TLS handshake.
    pub client_cert: Option<&'a [u8]>,
}

/// Why a caller was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither a token nor a client certificate.
    #[error(
        "no credential: present a bootstrap or service-account token (authorization: Bearer …) or a client certificate"
    )]
    NoCredential,
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The client certificate carries no usable identity.
    #[error("client certificate: {0}")]
    Certificate(String),
}

/// Turns one kind of credential into an identity.
pub trait Authenticator: Send + Sync {
    /// `None` when the caller presented no credential of this kind.
    fn authenticate(&self, caller: &Caller<'_>) -> Option<Result<Identity, AuthError>>;
}

/// Bootstrap tokens signed by this citadel (`keel-citadel token`).
#[derive(Debug)]
pub struct BootstrapTokens(pub Arc<Tokens>);

impl Authenticator for BootstrapTokens {
    fn authenticate(&self, caller: &Caller<'_>) -> Option<Result<Identity, AuthError>> {
        let token = caller.bearer?;
        Some(
            self.0
                .verify(token, SystemTime::now())
                .map_err(AuthError::from),
        )
    }
}

/// The SPIFFE identity of a client certificate this CA issued (renewal
/// over mTLS with the current, still valid certificate).
#[derive(Debug)]
pub struct ClientCertificates {
    /// Only IDs of this trust domain are accepted.
    pub trust_domain: String,
}

impl Authenticator for ClientCertificates {
    fn authenticate(&self, caller: &Caller<'_>) -> Option<Result<Identity, AuthError>> {
        let der = caller.client_cert?;
        Some(spiffe_of(der, &self.trust_domain))
    }
}

fn spiffe_of(der: &[u8], trust_domain: &str) -> Result<Identity, AuthError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthError::Certificate(format!("cannot parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| AuthError::Certificate(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| AuthError::Certificate("no subjectAltName".to_string()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Identity::from_spiffe(one, trust_domain)
            .map_err(|e: IdentityError| AuthError::Certificate(e.to_string())),
        _ => Err(AuthError::Certificate(format!(
            "expected exactly one URI SAN, found {uris:?}"
        ))),
    }
}

/// The identity of `caller` by the first authenticator that accepts its
/// credential; when none does, the first refusal (or no credential).
pub fn authenticate(
    authenticators: &[Box<dyn Authenticator>],
    caller: &Caller<'_>,
) -> Result<Identity, AuthError> {
    let mut refusal = None;
    for a in authenticators {
        match a.authenticate(caller) {
            Some(Ok(id)) => return Ok(id),
            Some(Err(e)) => {
                refusal.get_or_insert(e);
            }
            None => {}
        }
    }
    Err(refusal.unwrap_or(AuthError::NoCredential))
}
