//! Tests for the security kinds: valid policies pass, invalid snippets fail
//! with precise paths and messages.

use serde::de::DeserializeOwned;

use super::*;
use crate::model::validate::Errors;

fn check<T: DeserializeOwned>(yaml: &str, f: fn(&T, &mut Errors)) -> Vec<(String, String)> {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("yaml");
    let spec: T = serde_path_to_error::deserialize(value).expect("spec");
    let mut errs = Errors::new();
    f(&spec, &mut errs);
    errs.into_vec()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

#[track_caller]
fn has(errs: &[(String, String)], path: &str, msg: &str) {
    assert!(
        errs.iter().any(|(p, m)| p == path && m.contains(msg)),
        "expected {path}: ...{msg}... in {errs:#?}"
    );
}

fn authz(yaml: &str) -> Vec<(String, String)> {
    check(yaml, AuthorizationPolicySpec::validate)
}

#[test]
fn authorization_policy() {
    let ok = authz(
        r#"
selector: {matchLabels: {app: httpbin}}
action: ALLOW
rules:
- from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"], namespaces: ["test*"]}}]
  to: [{operation: {methods: [GET], paths: ["/info*", "/api/{*}/x/{**}"], ports: ["8080"]}}]
  when:
  - {key: "request.auth.claims[iss]", values: ["https://accounts.google.com"]}
  - {key: "request.headers[x-version]", notValues: ["v1"]}
  - {key: source.ip, values: ["10.0.0.0/8"]}
"#,
    );
    assert!(ok.is_empty(), "{ok:#?}");
    has(
        &authz("rules:\n- to: [{operation: {paths: [\"/a*b\"]}}]\n"),
        "spec.rules[0].to[0].operation.paths[0]",
        "\"*\" may only be",
    );
    has(
        &authz("action: CUSTOM\nrules: [{}]\n"),
        "spec.provider",
        "action CUSTOM needs a provider",
    );
    has(
        &authz("provider: {name: ext}\n"),
        "spec.provider",
        "only allowed with action CUSTOM",
    );
    has(
        &authz("rules:\n- when: [{key: request.foo, values: [a]}]\n"),
        "spec.rules[0].when[0].key",
        "unknown key \"request.foo\"",
    );
    has(
        &authz("rules:\n- when: [{key: source.ip}]\n"),
        "spec.rules[0].when[0]",
        "values or notValues",
    );
    has(
        &authz("rules:\n- to: [{operation: {ports: [\"0\", http]}}]\n"),
        "spec.rules[0].to[0].operation.ports[0]",
        "between 1 and 65535",
    );
    has(
        &authz("rules:\n- from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}]\n"),
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "invalid IP block",
    );
    has(
        &authz("rules:\n- from: [{source: {}}]\n"),
        "spec.rules[0].from[0].source",
        "at least one field",
    );
    has(
        &authz("selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, name: gw}\n"),
        "spec",
        "only one of selector, targetRef",
    );
}

#[test]
fn peer_authentication() {
    let f = PeerAuthenticationSpec::validate;
    assert!(check("mtls: {mode: STRICT}\n", f).is_empty());
    assert!(check("selector: {matchLabels: {app: a}}\nmtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}\n", f).is_empty());
    has(
        &check("portLevelMtls: {8080: {mode: DISABLE}}\n", f),
        "spec.portLevelMtls",
        "needs a selector",
    );
    has(
        &check(
            "selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: DISABLE}}\n",
            f,
        ),
        "spec.portLevelMtls.0",
        "port number must be between 1 and 65535, got 0",
    );
}

#[test]
fn request_authentication() {
    let f = RequestAuthenticationSpec::validate;
    let ok = check(
        "selector: {matchLabels: {app: a}}\njwtRules:\n- issuer: https://example.com\n  jwksUri: https://example.com/jwks.json\n  fromHeaders: [{name: x-jwt, prefix: \"Bearer \"}]\n  outputClaimToHeaders: [{header: x-sub, claim: sub}]\n",
        f,
    );
    assert!(ok.is_empty(), "{ok:#?}");
    has(
        &check("jwtRules:\n- jwksUri: https://a/j\n", f),
        "spec.jwtRules[0].issuer",
        "issuer is required",
    );
    has(
        &check("jwtRules:\n- issuer: a\n  jwksUri: ftp://a/j\n", f),
        "spec.jwtRules[0].jwksUri",
        "http:// or https://",
    );
    has(
        &check("jwtRules:\n- issuer: a\n  jwks: '{\"nokeys\": 1}'\n", f),
        "spec.jwtRules[0].jwks",
        "\"keys\" array",
    );
    has(
        &check(
            "jwtRules:\n- issuer: a\n  jwks: '{\"keys\": []}'\n  jwksUri: https://a/j\n",
            f,
        ),
        "spec.jwtRules[0]",
        "only one of jwks or jwksUri",
    );
    has(
        &check(
            "jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{header: \"bad header\", claim: \"\"}]\n",
            f,
        ),
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
        "invalid header name",
    );
    has(
        &check("jwtRules:\n- issuer: a\n  fromHeaders: [{prefix: x}]\n", f),
        "spec.jwtRules[0].fromHeaders[0].name",
        "required",
    );
    let v: serde_json::Value =
        serde_yaml::from_str("jwtRules:\n- issuer: a\n  jwks_uri: https://a/j\n").unwrap();
    let spec: RequestAuthenticationSpec = serde_json::from_value(v).unwrap();
    assert_eq!(spec.jwt_rules[0].jwks_uri.as_deref(), Some("https://a/j"));
}
