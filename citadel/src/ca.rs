//! The certificate authority: its signing certificate and key (a root made
//! on first start and kept in the state directory, or a plugged-in
//! intermediate, as Istio's `cacerts`), and the signing of workload
//! certificates.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::state;

/// The root's file in the state directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The root's private key in the state directory (mode 0600).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// How long a generated root lives (Istio's self-signed root: 10 years).
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this much before now, for clocks a little
/// behind the CA's.
const BACKDATE: Duration = Duration::from_secs(60);

/// Where the CA's signing certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A self-signed root, generated into `state_dir` on first start and
    /// loaded from there afterwards.
    SelfSigned {
        /// The state directory.
        state_dir: PathBuf,
        /// Written into a generated root's subject (`O=`).
        trust_domain: String,
    },
    /// An intermediate signed elsewhere (Istio's `cacerts`: `ca-cert.pem`,
    /// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`).
    Plugged {
        /// The signing certificate.
        ca_cert: PathBuf,
        /// Its private key (PKCS#8 PEM).
        ca_key: PathBuf,
        /// The chain from the signing certificate up to the root, root
        /// excluded (the signing certificate alone when absent).
        cert_chain: Option<PathBuf>,
        /// The root.
        root_cert: PathBuf,
    },
}

/// Why the CA could not load, or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Making or signing a certificate failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A certificate the CA issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// PEM certificates: the new leaf first, the root last.
    pub chain: Vec<String>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

/// The loaded certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// PEM: the signing certificate and any intermediates above it, root
    /// excluded; sent after each leaf.
    intermediates: Vec<String>,
    /// PEM of the root, last in every chain.
    root: String,
    root_not_after: SystemTime,
    signing_not_after: SystemTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("intermediates", &self.intermediates.len())
            .field("root_not_after", &self.root_not_after)
            .finish()
    }
}

impl Ca {
    /// Loads the CA from `source`; a self-signed root is generated (and
    /// persisted) when the state directory has none yet.
    pub fn load(source: &Source) -> Result<Self, CaError> {
        match source {
            Source::SelfSigned {
                state_dir,
                trust_domain,
            } => {
                let cert_path = state_dir.join(ROOT_CERT_FILE);
                let key_path = state_dir.join(ROOT_KEY_FILE);
                if !cert_path.exists() && !key_path.exists() {
                    generate_root(state_dir, trust_domain)?;
                }
                let cert = read(&cert_path)?;
                let key = read_key(&key_path)?;
                check_pair(&cert_path, &cert, &key)?;
                let not_after = not_after(&cert_path, &cert)?;
                let issuer =
                    Issuer::from_ca_cert_pem(&cert, key).map_err(|e| CaError::Invalid {
                        path: cert_path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Self {
                    issuer,
                    intermediates: Vec::new(),
                    root: cert,
                    root_not_after: not_after,
                    signing_not_after: not_after,
                })
            }
            Source::Plugged {
                ca_cert,
                ca_key,
                cert_chain,
                root_cert,
            } => {
                let cert = read(ca_cert)?;
                let key = read_key(ca_key)?;
                check_pair(ca_cert, &cert, &key)?;
                let signing_not_after = not_after(ca_cert, &cert)?;
                let root = read(root_cert)?;
                let root_not_after = not_after(root_cert, &root)?;
                let mut intermediates = match cert_chain {
                    Some(path) => split_pem(path, &read(path)?)?,
                    None => vec![first_pem(ca_cert, &cert)?],
                };
                // The chain starts with the signing certificate; tolerate a
                // `cert-chain.pem` that ends with the root as well.
                let root_pem = first_pem(root_cert, &root)?;
                if intermediates.last() == Some(&root_pem) {
                    intermediates.pop();
                }
                let issuer =
                    Issuer::from_ca_cert_pem(&cert, key).map_err(|e| CaError::Invalid {
                        path: ca_cert.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Self {
                    issuer,
                    intermediates,
                    root: root_pem,
                    root_not_after,
                    signing_not_after,
                })
            }
        }
    }

    /// The root certificate (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root
    }

    /// The signing certificate and the intermediates above it (PEM, root
    /// excluded; empty for a self-signed root): what a certificate this CA
    /// signs is sent with.
    pub fn intermediates_pem(&self) -> String {
        self.intermediates.concat()
    }

    /// When the root expires.
    pub fn root_not_after(&self) -> SystemTime {
        self.root_not_after
    }

    /// When the signing certificate (the root itself, or the plugged-in
    /// intermediate) expires.
    pub fn signing_not_after(&self) -> SystemTime {
        self.signing_not_after
    }

    /// Signs a workload certificate for `identity` with the key of `csr`
    /// (whose signature the parser has checked), valid for `ttl` but never
    /// beyond the signing certificate.
    pub fn sign_workload(
        &self,
        csr: &CertificateSigningRequestParams,
        identity_uri: &str,
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let mut params = leaf_params(ttl, self.signing_not_after)?;
        params.subject_alt_names = vec![SanType::URI(identity_uri.try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(csr, params)
    }

    /// Signs a serving certificate (for citadel's own gRPC listener) for
    /// `dns` names and `ips`, with `key`.
    pub fn sign_server(
        &self,
        key: &KeyPair,
        dns: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<String, CaError> {
        let mut params = leaf_params(ttl, self.signing_not_after)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "keel-citadel");
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(cert.pem())
    }

    fn sign(
        &self,
        csr: &CertificateSigningRequestParams,
        params: CertificateParams,
    ) -> Result<Issued, CaError> {
        let not_after = to_system(params.not_after);
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key.clone(),
        };
        let leaf = request.signed_by(&self.issuer)?;
        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(leaf.pem());
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root.clone());
        Ok(Issued { chain, not_after })
    }
}

/// The common parameters of an issued leaf: a random serial, backdated a
/// minute, valid for `ttl` but not past `ceiling`.
fn leaf_params(ttl: Duration, ceiling: SystemTime) -> Result<CertificateParams, CaError> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
    params.not_after = to_offset((now + ttl).min(ceiling));
    params.serial_number = Some(serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A positive random 128-bit serial number.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // The OS random source failed: unique is what a serial must be.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_be_bytes();
    }
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Generates a self-signed ECDSA P-256 root into `dir` (the key written
/// with mode 0600, both files atomically).
fn generate_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "Keel Root CA");
    params.distinguished_name = dn;
    params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now));
    params.not_after = to_offset(now + ROOT_TTL);
    params.serial_number = Some(serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    state::write_private(&dir.join(ROOT_KEY_FILE), key.serialize_pem().as_bytes())?;
    state::write_public(&dir.join(ROOT_CERT_FILE), cert.pem().as_bytes())?;
    tracing::info!(dir = %dir.display(), "generated a new root certificate");
    Ok(())
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(&read(path)?).map_err(|e| CaError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not a PKCS#8 PEM private key rcgen can sign with: {e}"),
    })
}

/// The certificates of a PEM file, each re-encoded on its own.
fn split_pem(path: &Path, text: &str) -> Result<Vec<String>, CaError> {
    let blocks = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .map(|p| {
            p.map_err(|e| CaError::Invalid {
                path: path.to_path_buf(),
                reason: format!("bad PEM: {e}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let certs: Vec<String> = blocks
        .iter()
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| pem_encode(&p.contents))
        .collect();
    if certs.is_empty() {
        return Err(CaError::Invalid {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".to_string(),
        });
    }
    Ok(certs)
}

fn first_pem(path: &Path, text: &str) -> Result<String, CaError> {
    split_pem(path, text).map(|mut v| v.swap_remove(0))
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The DER of the first certificate in `text`.
fn first_der(path: &Path, text: &str) -> Result<Vec<u8>, CaError> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .ok_or_else(|| CaError::Invalid {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".to_string(),
        })
}

/// When the first certificate of `text` expires.
fn not_after(path: &Path, text: &str) -> Result<SystemTime, CaError> {
    let der = first_der(path, text)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    let secs = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The certificate is a CA and carries `key`'s public key.
fn check_pair(path: &Path, cert_pem: &str, key: &KeyPair) -> Result<(), CaError> {
    let der = first_der(path, cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    if !cert.is_ca() {
        return Err(CaError::Invalid {
            path: path.to_path_buf(),
            reason: "not a CA certificate (basicConstraints CA:TRUE is missing)".to_string(),
        });
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::Invalid {
            path: path.to_path_buf(),
            reason: "the certificate's public key does not match the private key".to_string(),
        });
    }
    Ok(())
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_system(t: OffsetDateTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0))
}
