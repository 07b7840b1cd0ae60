//! PeerAuthentication (which mTLS mode a workload accepts) and
//! RequestAuthentication (which JWTs a workload accepts, and where to find
//! them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LabelSelector, PolicyTargetReference, check_policy_target};
use crate::model::duration::Duration;
use crate::model::validate::{Errors, check_duration, check_header_name, check_port};

/// mTLS mode of a workload's inbound traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent policy (namespace, then mesh; mesh default
    /// PERMISSIVE).
    #[default]
    Unset,
    /// Plain text only.
    Disable,
    /// Both mTLS and plain text.
    Permissive,
    /// mTLS only.
    Strict,
}

/// The mode used when no policy in the chain sets one (Istio's default).
pub const DEFAULT_MTLS_MODE: MtlsMode = MtlsMode::Permissive;

/// mTLS settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationMtls {
    /// Mode; UNSET when absent.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// The mTLS mode workloads accept.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads this applies to; the namespace (or mesh, in the root
    /// namespace) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Mode for all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerAuthenticationMtls>,
    /// Port number (of the workload) → mode; needs a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u32, PeerAuthenticationMtls>,
}

impl PeerAuthenticationSpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        check_policy_target(errs, &self.selector, &None, &[]);
        if !self.port_level_mtls.is_empty()
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        {
            errs.at(
                "spec.portLevelMtls",
                "portLevelMtls needs a selector with matchLabels: port numbers are per workload",
            );
        }
        for port in self.port_level_mtls.keys() {
            check_port(errs, &format!("spec.portLevelMtls.{port}"), *port);
        }
    }
}

/// Whether a request must carry a JWT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JwtPresence {
    /// Requests without a token pass (policy decides).
    #[default]
    Optional,
    /// Requests without a token are rejected.
    Required,
}

/// A header that carries the token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name; required.
    #[serde(default)]
    pub name: String,
    /// Prefix before the token (for example `"Bearer "`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Copy a claim into a request header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header to set.
    #[serde(default)]
    pub header: String,
    /// Claim to copy (string, number or boolean claims).
    #[serde(default)]
    pub claim: String,
}

/// Where JWTs come from and how they are checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Token issuer (`iss`); required.
    #[serde(default)]
    pub issuer: String,
    /// Accepted audiences (`aud`); any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL of the JSON Web Key Set (`jwks_uri` also accepted).
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JSON Web Key Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers carrying the token (default `Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters carrying the token (default `access_token`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header receiving the base64 payload of a valid token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the forwarded request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    /// Claims copied into headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Claims whose string value is a space-separated list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
    /// Timeout fetching the JWKS (Istio's default: 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Whether a token is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<JwtPresence>,
}

/// Default JWKS fetch timeout.
pub const DEFAULT_JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// JWT validation for workloads.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads this applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Attach to a Gateway or Service instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to several targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Accepted token issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

impl RequestAuthenticationSpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        check_policy_target(errs, &self.selector, &self.target_ref, &self.target_refs);
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let p = format!("spec.jwtRules[{i}]");
            if r.issuer.is_empty() {
                errs.at(format!("{p}.issuer"), "issuer is required");
            }
            if self.jwt_rules[..i]
                .iter()
                .any(|o| o.issuer == r.issuer && !r.issuer.is_empty())
            {
                errs.at(
                    format!("{p}.issuer"),
                    format!("issuer {:?} has another rule", r.issuer),
                );
            }
            if r.jwks.is_some() && r.jwks_uri.is_some() {
                errs.at(&p, "only one of jwks or jwksUri may be set");
            }
            if let Some(uri) = &r.jwks_uri
                && let Some(msg) = http_url_error(uri)
            {
                errs.at(format!("{p}.jwksUri"), msg);
            }
            if let Some(jwks) = &r.jwks {
                match serde_json::from_str::<serde_json::Value>(jwks) {
                    Err(e) => errs.at(format!("{p}.jwks"), format!("invalid JWKS: not JSON: {e}")),
                    Ok(v) => {
                        if !v.get("keys").is_some_and(serde_json::Value::is_array) {
                            errs.at(
                                format!("{p}.jwks"),
                                "invalid JWKS: must be an object with a \"keys\" array",
                            );
                        }
                    }
                }
            }
            for (j, a) in r.audiences.iter().enumerate() {
                if a.is_empty() {
                    errs.at(format!("{p}.audiences[{j}]"), "audience must not be empty");
                }
            }
            for (j, h) in r.from_headers.iter().enumerate() {
                let hp = format!("{p}.fromHeaders[{j}].name");
                if h.name.is_empty() {
                    errs.at(hp, "header name is required");
                } else {
                    check_header_name(errs, &hp, &h.name, false);
                }
            }
            for (j, q) in r.from_params.iter().enumerate() {
                if q.is_empty() {
                    errs.at(
                        format!("{p}.fromParams[{j}]"),
                        "parameter name must not be empty",
                    );
                }
            }
            for (j, c) in r.from_cookies.iter().enumerate() {
                if c.is_empty() {
                    errs.at(
                        format!("{p}.fromCookies[{j}]"),
                        "cookie name must not be empty",
                    );
                }
            }
            for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                let cp = format!("{p}.outputClaimToHeaders[{j}]");
                if c.header.is_empty() {
                    errs.at(format!("{cp}.header"), "header name is required");
                } else {
                    check_header_name(errs, &format!("{cp}.header"), &c.header, false);
                }
                if c.claim.is_empty() {
                    errs.at(format!("{cp}.claim"), "claim is required");
                }
            }
            if let Some(h) = &r.output_payload_to_header {
                check_header_name(errs, &format!("{p}.outputPayloadToHeader"), h, false);
            }
            if let Some(t) = &r.timeout {
                check_duration(errs, &format!("{p}.timeout"), t);
            }
        }
    }
}

/// Why `uri` is not an absolute http(s) URL with a host; `None` when it is.
fn http_url_error(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    match rest {
        None => Some(format!(
            "invalid URL {uri:?}: must start with http:// or https://"
        )),
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() || host.contains(char::is_whitespace) || uri.len() > 2048 {
                Some(format!(
                    "invalid URL {uri:?}: must have a host and at most 2048 characters"
                ))
            } else {
                None
            }
        }
    }
}
