//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate
//! the caller, check that the CSR asks for the caller's own identity, sign.

use std::sync::Arc;
use std::time::Duration;

use keel_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use keel_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use rcgen::{CertificateSigningRequestParams, SanType};
use tonic::{Request, Response, Status};

use crate::auth::{self, Authenticator, Caller};
use crate::ca::Ca;
use crate::metrics::Metrics;

/// The certificate service.
pub struct CertificateService {
    /// The CA.
    pub ca: Arc<Ca>,
    /// Tried in order for each caller.
    pub authenticators: Vec<Box<dyn Authenticator>>,
    /// SPIFFE IDs are issued in this trust domain.
    pub trust_domain: String,
    /// The lifetime when a request asks for none.
    pub default_ttl: Duration,
    /// The longest lifetime issued; longer requests are capped.
    pub max_ttl: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertificateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateService")
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

/// The bearer token of an `authorization` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let m = &self.metrics;
        Metrics::inc(&m.csr);
        let peer = request.remote_addr();
        let certs = request.peer_certs();
        let caller = Caller {
            bearer: request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(bearer),
            client_cert: certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref()),
        };
        let identity = auth::authenticate(&self.authenticators, &caller).map_err(|e| {
            Metrics::inc(&m.authentication_failure);
            tracing::warn!(?peer, "certificate request refused: {e}");
            Status::unauthenticated(e.to_string())
        })?;
        let req = request.into_inner();
        let csr = CertificateSigningRequestParams::from_pem(&req.csr).map_err(|e| {
            Metrics::inc(&m.csr_parsing_err);
            tracing::warn!(?peer, %identity, "certificate request refused: csr: {e}");
            Status::invalid_argument(format!("csr: {e}"))
        })?;
        let want = identity.spiffe(&self.trust_domain);
        let asked: Vec<&str> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        if asked != [want.as_str()] {
            Metrics::inc(&m.id_extraction_err);
            let why =
                format!("the CSR asks for {asked:?} but the caller is authenticated as {want:?}");
            tracing::warn!(?peer, "certificate request refused: {why}");
            return Err(Status::permission_denied(why));
        }
        let ttl = match u64::try_from(req.validity_duration) {
            Ok(0) | Err(_) => self.default_ttl,
            Ok(secs) => Duration::from_secs(secs),
        }
        .min(self.max_ttl);
        let issued = self.ca.sign_workload(&csr, &want, ttl).map_err(|e| {
            Metrics::inc(&m.csr_sign_err);
            tracing::error!(%identity, "signing failed: {e}");
            Status::internal(e.to_string())
        })?;
        Metrics::inc(&m.success_cert_issuance);
        tracing::info!(?peer, id = %want, ttl_s = ttl.as_secs(), "issued a workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.chain,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_found_whatever_the_scheme_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }
}
