//! Bootstrap tokens: without Kubernetes, citadel vouches for a namespace and
//! service account itself. A token is a compact JWS (ES256) signed with a
//! key kept in the state directory; a proxy presents it as a bearer token
//! to get its first certificate.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};

use crate::ca::CaError;
use crate::identity::Identity;
use crate::state;

/// The token key's file in the state directory (mode 0600).
pub const TOKEN_KEY_FILE: &str = "token-key.pem";
/// The `iss` of every bootstrap token.
pub const ISSUER: &str = "keel-citadel";
/// Tolerated clock difference for `iat`.
const SKEW: Duration = Duration::from_secs(60);

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or claims missing.
    #[error("malformed bootstrap token: {0}")]
    Malformed(String),
    /// The signature does not verify with this citadel's token key.
    #[error("bootstrap token signature does not verify (forged, or issued by another citadel)")]
    BadSignature,
    /// Past its `exp`.
    #[error("bootstrap token expired {0} s ago")]
    Expired(u64),
    /// Its `iat` is in the future.
    #[error("bootstrap token is not valid yet (issued {0} s in the future)")]
    NotYetValid(u64),
    /// Another issuer.
    #[error("bootstrap token issuer {0:?} is not {ISSUER:?}")]
    Issuer(String),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    ns: String,
    sa: String,
    iat: u64,
    exp: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    alg: String,
    typ: String,
}

/// Issues and verifies bootstrap tokens.
pub struct Tokens {
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    /// The token key of `state_dir`, generated there on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        let path = state_dir.join(TOKEN_KEY_FILE);
        if !path.exists() {
            std::fs::create_dir_all(state_dir).map_err(|source| CaError::Io {
                path: state_dir.to_path_buf(),
                source,
            })?;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            state::write_private(&path, key.serialize_pem().as_bytes())?;
        }
        let invalid = |reason: String| CaError::Invalid {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read_to_string(&path).map_err(|source| CaError::Io {
            path: path.clone(),
            source,
        })?;
        let der = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| invalid(format!("not a PKCS#8 PEM key: {e}")))?
            .serialize_der();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| invalid(format!("not an ECDSA P-256 key: {e}")))?;
        Ok(Self { key })
    }

    /// A token for `identity`, valid for `ttl` from `now`.
    pub fn issue(&self, identity: &Identity, ttl: Duration, now: SystemTime) -> String {
        let iat = unix(now);
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                identity.namespace, identity.service_account
            ),
            ns: identity.namespace.clone(),
            sa: identity.service_account.clone(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
        };
        let header = Header {
            alg: "ES256".to_string(),
            typ: "JWT".to_string(),
        };
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap_or_default()),
            B64.encode(serde_json::to_vec(&claims).unwrap_or_default())
        );
        // Signing with a valid key only fails if the OS random source
        // does; the token then fails verification, saying so.
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map(|s| B64.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{signing_input}.{sig}")
    }

    /// The identity `token` vouches for, if this citadel signed it and it
    /// is within its validity at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "not three dot-separated parts".into(),
            ));
        };
        let decode = |what: &str, part: &str| {
            B64.decode(part)
                .map_err(|e| TokenError::Malformed(format!("{what}: {e}")))
        };
        let header: Header = serde_json::from_slice(&decode("header", h)?)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        if header.alg != "ES256" {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?}, expected ES256",
                header.alg
            )));
        }
        let sig = decode("signature", s)?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        let signed = &token.trim()[..h.len() + 1 + c.len()];
        public
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&decode("claims", c)?)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer(claims.iss));
        }
        let now = unix(now);
        if now >= claims.exp {
            return Err(TokenError::Expired(now - claims.exp));
        }
        if claims.iat > now + SKEW.as_secs() {
            return Err(TokenError::NotYetValid(claims.iat - now));
        }
        Identity::new(&claims.ns, &claims.sa)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_forgeries_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::load_or_create(dir.path()).expect("key");
        let id = Identity::new("default", "reviews").expect("id");
        let now = SystemTime::now();
        let t = tokens.issue(&id, Duration::from_secs(3600), now);
        assert_eq!(tokens.verify(&t, now), Ok(id.clone()));
        // The same key is loaded again from the state directory.
        let again = Tokens::load_or_create(dir.path()).expect("key");
        assert_eq!(again.verify(&t, now), Ok(id.clone()));

        assert_eq!(
            tokens.verify(&t, now + Duration::from_secs(3601)),
            Err(TokenError::Expired(1))
        );
        // Claims changed after signing (another service account).
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("json");
        claims["sa"] = "admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&claims).expect("json")),
            parts[2]
        );
        assert_eq!(tokens.verify(&forged, now), Err(TokenError::BadSignature));
        // Signed by another citadel's key.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = Tokens::load_or_create(other_dir.path()).expect("key");
        let foreign = other.issue(&id, Duration::from_secs(3600), now);
        assert_eq!(tokens.verify(&foreign, now), Err(TokenError::BadSignature));
        assert!(matches!(
            tokens.verify("abc", now),
            Err(TokenError::Malformed(_))
        ));
    }
}
