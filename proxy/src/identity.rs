//! The workload's identity: a key generated in memory (never written to
//! disk), certified by keel-citadel for the proxy's SPIFFE ID, renewed at
//! half of its lifetime (jittered) with a new key. Until the first
//! certificate is in, the proxy is not ready.
//!
//! The first request authenticates with the token file (a bootstrap token
//! from `keel-citadel token`, or a service-account token); renewals also
//! present the current certificate over mTLS, so they work once the
//! bootstrap token has expired.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use keel_proto::istio::v1::auth::IstioCertificateRequest;
use keel_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How the proxy gets its certificate.
#[derive(Clone, Debug)]
pub struct Settings {
    /// citadel's `host:port`.
    pub ca_address: String,
    /// The root citadel's serving certificate chains to.
    pub ca_root_cert: PathBuf,
    /// The token presented to citadel.
    pub token_file: Option<PathBuf>,
    /// The SPIFFE ID asked for.
    pub spiffe_id: String,
    /// The lifetime asked for (`None`: citadel's default).
    pub ttl: Option<Duration>,
}

/// A certificate and its key, as issued.
pub struct Certified {
    /// PEM: the leaf and any intermediates (the root excluded).
    pub chain_pem: String,
    /// PEM of the root that ended the issued chain.
    pub root_pem: String,
    /// PEM (PKCS#8) of the private key; it stays in memory.
    pub key_pem: String,
    /// The SPIFFE ID the leaf carries.
    pub spiffe_id: String,
    /// When the leaf became valid.
    pub not_before: SystemTime,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Certified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certified")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certified {
    /// Seconds until the leaf expires at `now` (negative once expired).
    pub fn expiry_seconds(&self, now: SystemTime) -> f64 {
        secs(self.not_after) - secs(now)
    }
}

/// The current certificate, shared with readiness, metrics and (later)
/// the TLS listeners; `None` until the first one is issued.
pub type Current = Arc<ArcSwapOption<Certified>>;

/// Why getting a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A local file (root, token) could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The address is not `host:port`.
    #[error("--ca-address {0:?} is not host:port")]
    Address(String),
    /// Making the key or the CSR failed.
    #[error("making the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// Connecting to citadel failed.
    #[error("connecting to citadel at {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// What failed.
        source: tonic::transport::Error,
    },
    /// Citadel refused or failed the request.
    #[error("citadel: {} ({})", .0.message(), .0.code())]
    Refused(tonic::Status),
    /// The answer is not a chain for the identity asked.
    #[error("citadel's answer: {0}")]
    Answer(String),
}

/// Keeps the workload certificate current until `shutdown`.
pub async fn run(settings: Settings, current: Current, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let wait = match fetch(&settings, &current).await {
            Ok(c) => {
                failures = 0;
                let wait = renew_after(&c, SystemTime::now());
                tracing::info!(
                    id = %c.spiffe_id,
                    expires_in_s = c.expiry_seconds(SystemTime::now()) as i64,
                    renew_in_s = wait.as_secs(),
                    "workload certificate issued"
                );
                current.store(Some(Arc::new(c)));
                wait
            }
            Err(e) => {
                failures += 1;
                let wait = retry_after(failures);
                tracing::warn!(ca = %settings.ca_address, retry_in_ms = wait.as_millis() as u64, "no workload certificate: {e}");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Half of the lifetime left at `now` (when it was received), ±5%, so a
/// fleet started together spreads out. (Not from `not_before`: citadel
/// backdates it a minute for slow clocks.)
fn renew_after(c: &Certified, now: SystemTime) -> Duration {
    let left = c.not_after.duration_since(now).unwrap_or_default();
    left.mul_f64(0.45 + fastrand::f64() * 0.1)
}

/// Exponential back-off from 500 ms to 30 s, fully jittered above 500 ms.
fn retry_after(failures: u32) -> Duration {
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(Duration::from_secs(30));
    Duration::from_millis(500).max(ceiling.mul_f64(fastrand::f64()))
}

/// Asks citadel for a certificate for a new key.
async fn fetch(settings: &Settings, current: &Current) -> Result<Certified, IdentityError> {
    let root = read(&settings.ca_root_cert)?;
    let host = settings
        .ca_address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| IdentityError::Address(settings.ca_address.clone()))?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root))
        .domain_name(host);
    // A renewal presents the current certificate, while it is valid.
    let now = SystemTime::now();
    if let Some(c) = current.load_full().filter(|c| c.not_after > now) {
        tls = tls.identity(Identity::from_pem(&c.chain_pem, &c.key_pem));
    }
    let connect = |source| IdentityError::Connect {
        address: settings.ca_address.clone(),
        source,
    };
    let channel = Channel::from_shared(format!("https://{}", settings.ca_address))
        .map_err(|_| IdentityError::Address(settings.ca_address.clone()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .tls_config(tls)
        .map_err(connect)?
        .connect()
        .await
        .map_err(connect)?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(settings.spiffe_id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: settings
            .ttl
            .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX)),
        metadata: None,
    });
    if let Some(path) = &settings.token_file {
        // Required for the first certificate; a renewal can do without.
        match std::fs::read_to_string(path) {
            Ok(token) => {
                if let Ok(v) = format!("Bearer {}", token.trim()).parse() {
                    req.metadata_mut().insert("authorization", v);
                }
            }
            Err(source) if current.load().is_none() => {
                return Err(IdentityError::File {
                    path: path.clone(),
                    source,
                });
            }
            Err(_) => {}
        }
    }
    let chain = IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await
        .map_err(IdentityError::Refused)?
        .into_inner()
        .cert_chain;
    certified(chain, key.serialize_pem(), &settings.spiffe_id)
}

/// Checks an issued chain: at least a leaf and a root, the leaf for
/// `spiffe_id`.
fn certified(
    chain: Vec<String>,
    key_pem: String,
    spiffe_id: &str,
) -> Result<Certified, IdentityError> {
    let (Some(leaf), Some(root)) = (chain.first(), chain.last()) else {
        return Err(IdentityError::Answer("an empty chain".into()));
    };
    if chain.len() < 2 {
        return Err(IdentityError::Answer("no root after the leaf".into()));
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.as_bytes())
        .map_err(|e| IdentityError::Answer(format!("leaf is not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| IdentityError::Answer(format!("leaf is not X.509: {e}")))?;
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if uris != [spiffe_id] {
        return Err(IdentityError::Answer(format!(
            "the leaf is for {uris:?}, not {spiffe_id:?}"
        )));
    }
    let v = cert.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok(Certified {
        chain_pem: chain[..chain.len() - 1].concat(),
        root_pem: root.clone(),
        key_pem,
        spiffe_id: spiffe_id.to_string(),
        not_before: at(v.not_before.timestamp()),
        not_after: at(v.not_after.timestamp()),
    })
}

fn read(path: &PathBuf) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::File {
        path: path.clone(),
        source,
    })
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_half_the_lifetime_and_retries_back_off() {
        let now = SystemTime::now();
        let c = Certified {
            chain_pem: String::new(),
            root_pem: String::new(),
            key_pem: String::new(),
            spiffe_id: String::new(),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(100),
        };
        for _ in 0..100 {
            let w = renew_after(&c, now);
            assert!(
                (Duration::from_secs(45)..=Duration::from_secs(55)).contains(&w),
                "{w:?}"
            );
        }
        assert_eq!(
            renew_after(&c, now + Duration::from_secs(200)),
            Duration::ZERO
        );
        for n in 1..20 {
            let w = retry_after(n);
            assert!(
                (Duration::from_millis(500)..=Duration::from_secs(30)).contains(&w),
                "{n}: {w:?}"
            );
        }
    }
}
