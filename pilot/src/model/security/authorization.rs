//! AuthorizationPolicy: ALLOW/DENY/AUDIT/CUSTOM rules over who calls
//! (`from`), what is called (`to`) and extra conditions (`when`).

use serde::{Deserialize, Serialize};

use super::{LabelSelector, PolicyTargetReference, check_policy_target};
use crate::model::validate::{Errors, is_ip_or_cidr};

/// What a matching policy does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests (the default).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Log matching requests.
    Audit,
    /// Ask an external authorizer (`provider`).
    Custom,
}

/// Access control for workloads.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads this applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Attach to a Gateway or Service instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to several targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules, any of which matches. No rules: ALLOW matches nothing, DENY
    /// nothing; `rules: [{}]` matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What to do on a match.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// External authorizer for CUSTOM (a mesh config extension provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// Reference to a mesh extension provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Provider name in mesh config.
    #[serde(default)]
    pub name: String,
}

/// One rule: all of `from`, `to` and `when` must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources, any of which matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations, any of which matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// A `from` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// A `to` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Caller attributes; every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`cluster.local/ns/NS/sa/SA`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Negated principals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT principals (`iss/sub`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Negated request principals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Negated namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Peer service accounts (`ns/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Negated service accounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Peer trust domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    /// Negated trust domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    /// Peer IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Negated peer IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs (X-Forwarded-For / PROXY protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Negated remote IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// Request attributes; every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Host (authority) values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Negated hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Negated ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods (or gRPC: always POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Negated methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths; `*` as prefix/suffix, or `{*}`/`{**}` path templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Negated paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// An extra condition on a request attribute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute name (see [`WHEN_KEYS`]).
    #[serde(default)]
    pub key: String,
    /// Accepted values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Rejected values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// `when` keys without a bracketed argument.
pub const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

fn when_key_ok(key: &str) -> bool {
    if WHEN_KEYS.contains(&key) {
        return true;
    }
    if key.starts_with("experimental.envoy.filters.")
        && key.len() > "experimental.envoy.filters.".len()
    {
        return true;
    }
    // request.headers[name] and request.auth.claims[a][b]...
    let bracketed = |prefix: &str, nested: bool| {
        key.strip_prefix(prefix).is_some_and(|rest| {
            let mut parts = 0;
            let mut r = rest;
            while let Some(inner) = r.strip_prefix('[') {
                let Some(end) = inner.find(']') else {
                    return false;
                };
                if end == 0 {
                    return false;
                }
                parts += 1;
                r = &inner[end + 1..];
            }
            r.is_empty() && (parts == 1 || (nested && parts > 1))
        })
    };
    bracketed("request.headers", false) || bracketed("request.auth.claims", true)
}

/// Why `v` misuses `*`: it is allowed alone, as a prefix or as a suffix.
fn wildcard_error(v: &str) -> Option<String> {
    if v.is_empty() {
        return Some("value must not be empty".to_string());
    }
    let stars = v.matches('*').count();
    if stars == 0 || v == "*" {
        return None;
    }
    if stars == 1 && (v.starts_with('*') || v.ends_with('*')) {
        return None;
    }
    Some(format!(
        "invalid value {v:?}: \"*\" may only be the whole value, a prefix (\"*foo\") or a suffix (\"foo*\")"
    ))
}

/// Why path `v` is invalid: plain wildcard rules, or a path template where
/// each segment is literal, `{*}` or (last only) `{**}`.
fn path_error(v: &str) -> Option<String> {
    if !v.contains('{') && !v.contains('}') {
        return wildcard_error(v);
    }
    if !v.starts_with('/') {
        return Some(format!("invalid path template {v:?}: must start with '/'"));
    }
    let segs: Vec<&str> = v[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        let ok = match *s {
            "{*}" => true,
            "{**}" => i == segs.len() - 1,
            s => !s.contains(['{', '}', '*']),
        };
        if !ok {
            return Some(format!(
                "invalid path template {v:?}: each segment must be literal, {{*}} or (last only) {{**}}"
            ));
        }
    }
    None
}

fn check_values(
    errs: &mut Errors,
    path: &str,
    field: &str,
    values: &[String],
    check: fn(&str) -> Option<String>,
) {
    for (i, v) in values.iter().enumerate() {
        if let Some(msg) = check(v) {
            errs.at(format!("{path}.{field}[{i}]"), msg);
        }
    }
}

fn ip_error(v: &str) -> Option<String> {
    (!is_ip_or_cidr(v)).then(|| format!("invalid IP block {v:?}: must be an IP address or CIDR"))
}

fn port_error(v: &str) -> Option<String> {
    match v.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => None,
        _ => Some(format!(
            "invalid port {v:?}: must be a number between 1 and 65535"
        )),
    }
}

fn non_empty(v: &str) -> Option<String> {
    v.is_empty().then(|| "value must not be empty".to_string())
}

impl AuthorizationPolicySpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        check_policy_target(errs, &self.selector, &self.target_ref, &self.target_refs);
        match (&self.action, &self.provider) {
            (AuthorizationAction::Custom, None) => {
                errs.at("spec.provider", "action CUSTOM needs a provider");
            }
            (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
                errs.at("spec.provider.name", "provider name is required");
            }
            (AuthorizationAction::Custom, Some(_)) | (_, None) => {}
            (_, Some(_)) => errs.at(
                "spec.provider",
                "provider is only allowed with action CUSTOM",
            ),
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            for (j, f) in rule.from.iter().enumerate() {
                let fp = format!("{p}.from[{j}]");
                match &f.source {
                    None => errs.at(format!("{fp}.source"), "source is required"),
                    Some(s) if *s == Source::default() => {
                        errs.at(format!("{fp}.source"), "source must set at least one field")
                    }
                    Some(s) => validate_source(errs, &format!("{fp}.source"), s),
                }
            }
            for (j, t) in rule.to.iter().enumerate() {
                let tp = format!("{p}.to[{j}]");
                match &t.operation {
                    None => errs.at(format!("{tp}.operation"), "operation is required"),
                    Some(o) if *o == Operation::default() => errs.at(
                        format!("{tp}.operation"),
                        "operation must set at least one field",
                    ),
                    Some(o) => {
                        let op = format!("{tp}.operation");
                        check_values(errs, &op, "hosts", &o.hosts, wildcard_error);
                        check_values(errs, &op, "notHosts", &o.not_hosts, wildcard_error);
                        check_values(errs, &op, "ports", &o.ports, port_error);
                        check_values(errs, &op, "notPorts", &o.not_ports, port_error);
                        check_values(errs, &op, "methods", &o.methods, non_empty);
                        check_values(errs, &op, "notMethods", &o.not_methods, non_empty);
                        check_values(errs, &op, "paths", &o.paths, path_error);
                        check_values(errs, &op, "notPaths", &o.not_paths, path_error);
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                let cp = format!("{p}.when[{j}]");
                if c.key.is_empty() {
                    errs.at(format!("{cp}.key"), "key is required");
                } else if !when_key_ok(&c.key) {
                    errs.at(
                        format!("{cp}.key"),
                        format!(
                            "unknown key {:?}: must be one of {}, request.headers[NAME], request.auth.claims[NAME] or experimental.envoy.filters.*",
                            c.key,
                            WHEN_KEYS.join(", ")
                        ),
                    );
                }
                if c.values.is_empty() && c.not_values.is_empty() {
                    errs.at(&cp, "at least one of values or notValues is required");
                }
                let check: fn(&str) -> Option<String> = match c.key.as_str() {
                    "source.ip" | "remote.ip" | "destination.ip" => ip_error,
                    "destination.port" => port_error,
                    _ => non_empty,
                };
                check_values(errs, &cp, "values", &c.values, check);
                check_values(errs, &cp, "notValues", &c.not_values, check);
            }
        }
    }
}

fn validate_source(errs: &mut Errors, path: &str, s: &Source) {
    if !s.service_accounts.is_empty() && (!s.namespaces.is_empty() || !s.principals.is_empty()) {
        errs.at(
            path,
            "serviceAccounts cannot be combined with namespaces or principals",
        );
    }
    for (field, v) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        check_values(errs, path, field, v, wildcard_error);
    }
    for (field, v) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        check_values(errs, path, field, v, ip_error);
    }
    for (field, v) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (i, sa) in v.iter().enumerate() {
            let ok = sa.split_once('/').is_some_and(|(ns, name)| {
                !ns.is_empty() && !name.is_empty() && !name.contains('/')
            });
            if !ok {
                errs.at(
                    format!("{path}.{field}[{i}]"),
                    format!("invalid service account {sa:?}: must be \"namespace/name\""),
                );
            }
        }
    }
}
