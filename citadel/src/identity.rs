//! Workload identities: a namespace and a service account, written as a
//! SPIFFE ID (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), Istio's format.

use std::fmt;

/// A workload identity: who a certificate is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The service account in it.
    pub service_account: String,
}

/// Why a SPIFFE ID or an identity's parts were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[error(
        "{0:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Malformed(String),
    /// The ID belongs to another trust domain.
    #[error("{id:?} is not in the trust domain {trust_domain:?}")]
    TrustDomain {
        /// The ID.
        id: String,
        /// The trust domain expected.
        trust_domain: String,
    },
    /// A namespace or service account that is not a Kubernetes name.
    #[error(
        "{what} {value:?} is not a valid name (lowercase letters, digits, '-' and '.', 1 to 253 characters)"
    )]
    Name {
        /// `namespace` or `service account`.
        what: &'static str,
        /// The value.
        value: String,
    },
}

impl Identity {
    /// An identity, its parts checked as Kubernetes names.
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        Ok(Self {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`.
    pub fn from_spiffe(id: &str, trust_domain: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(id.to_string());
        let rest = id.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let (domain, path) = rest.split_once('/').ok_or_else(malformed)?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        if !domain.eq_ignore_ascii_case(trust_domain) {
            return Err(IdentityError::TrustDomain {
                id: id.to_string(),
                trust_domain: trust_domain.to_string(),
            });
        }
        Self::new(ns, sa)
    }

    /// The SPIFFE ID in `trust_domain`.
    pub fn spiffe(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// A DNS-subdomain-like Kubernetes name (namespaces are stricter labels,
/// service accounts subdomains; one rule for both keeps IDs unambiguous).
fn check_name(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Name {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_bad_ones_say_why() {
        let id = Identity::new("default", "bookinfo-reviews").expect("valid");
        let s = id.spiffe("cluster.local");
        assert_eq!(s, "spiffe://cluster.local/ns/default/sa/bookinfo-reviews");
        assert_eq!(Identity::from_spiffe(&s, "cluster.local"), Ok(id));

        let other = Identity::from_spiffe(&s, "example.org").expect_err("other domain");
        assert!(
            other.to_string().contains("not in the trust domain"),
            "{other}"
        );
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/x/extra",
            "https://cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/sa/x/ns/default",
        ] {
            assert!(
                matches!(
                    Identity::from_spiffe(bad, "cluster.local"),
                    Err(IdentityError::Malformed(_))
                ),
                "{bad}"
            );
        }
        let upper = Identity::new("Default", "x").expect_err("uppercase");
        assert!(
            upper.to_string().contains("namespace \"Default\""),
            "{upper}"
        );
        assert!(Identity::new("ns", "").is_err());
        assert!(Identity::new("ns", "-a").is_err());
    }
}
