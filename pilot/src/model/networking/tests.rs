//! Tests for the networking kinds: Istio's bookinfo samples parse and
//! validate cleanly, and invalid snippets fail with precise paths.

use serde::de::DeserializeOwned;

use super::*;
use crate::model::validate::Errors;

/// YAML → JSON value → typed spec, the way the loader does it.
fn parse<T: DeserializeOwned>(yaml: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn errors_of(kind: &str, spec: serde_json::Value) -> Result<Errors, String> {
    fn go<T: DeserializeOwned>(
        v: serde_json::Value,
        f: fn(&T, &mut Errors),
    ) -> Result<Errors, String> {
        let spec: T = serde_path_to_error::deserialize(v)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        let mut errs = Errors::new();
        f(&spec, &mut errs);
        Ok(errs)
    }
    match kind {
        "VirtualService" => go(spec, VirtualServiceSpec::validate),
        "DestinationRule" => go(spec, DestinationRuleSpec::validate),
        "Gateway" => go(spec, GatewaySpec::validate),
        "ServiceEntry" => go(spec, ServiceEntrySpec::validate),
        "WorkloadEntry" => go(spec, WorkloadEntrySpec::validate),
        "Sidecar" => go(spec, SidecarSpec::validate),
        other => Err(format!("unexpected kind {other}")),
    }
}

fn check(kind: &str, yaml: &str) -> Result<Vec<(String, String)>, String> {
    let spec: serde_json::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    let errs = errors_of(kind, spec)?;
    Ok(errs
        .into_vec()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect())
}

#[track_caller]
fn assert_invalid(kind: &str, yaml: &str, path: &str, msg: &str) {
    let errs = check(kind, yaml).expect("parses");
    assert!(
        errs.iter().any(|(p, m)| p == path && m.contains(msg)),
        "expected {path}: ...{msg}... in {errs:#?}"
    );
}

#[track_caller]
fn assert_valid(kind: &str, yaml: &str) {
    let errs = check(kind, yaml).expect("parses");
    assert!(errs.is_empty(), "{errs:#?}");
}

#[test]
fn bookinfo_samples_parse_and_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/istio/bookinfo/networking");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (shared/ must sit beside the checkout)",
            dir.display()
        )
    });
    let mut docs = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).unwrap();
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap().to_string();
            let errs = errors_of(&kind, value["spec"].clone())
                .unwrap_or_else(|e| panic!("{}: {kind}: {e}", path.display()));
            assert!(errs.is_empty(), "{}: {kind}: {:#?}", path.display(), errs);
            docs += 1;
        }
    }
    assert!(docs >= 20, "only {docs} documents");
}

use serde::Deserialize;

#[test]
fn typed_fields_round_trip() {
    let vs: VirtualServiceSpec = parse(
        r#"
hosts: [reviews]
http:
- match:
  - headers:
      end-user: {exact: jason}
      x-present: {}
    uri: {prefix: /api}
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,503"}
  timeout: 1.5s
  route:
  - destination: {host: reviews, subset: v2}
"#,
    )
    .unwrap();
    let r = &vs.http[0];
    assert_eq!(r.matches[0].uri, Some(StringMatch::Prefix("/api".into())));
    assert_eq!(
        r.matches[0].headers["end-user"].0,
        Some(StringMatch::Exact("jason".into()))
    );
    assert_eq!(r.matches[0].headers["x-present"].0, None);
    assert_eq!(
        r.timeout.unwrap().as_std(),
        std::time::Duration::from_millis(1500)
    );
    assert_eq!(r.retries.as_ref().unwrap().attempts_or_default(), 3);
    assert_eq!(HttpRetry::default().retry_on_or_default(), DEFAULT_RETRY_ON);
    let back = serde_json::to_value(&vs).unwrap();
    let again: VirtualServiceSpec = serde_json::from_value(back).unwrap();
    assert_eq!(again, vs);
}

#[test]
fn unknown_fields_are_serde_errors() {
    let err = parse::<VirtualServiceSpec>(
        "hosts: [a]\nhttp:\n- retrys: {attempts: 3}\n  route: [{destination: {host: a}}]\n",
    )
    .unwrap_err();
    assert!(err.contains("unknown field `retrys`"), "{err}");
    assert!(err.starts_with("http[0]"), "{err}");
    let err =
        parse::<DestinationRuleSpec>("host: a\ntrafficPolicy: {loadBalancer: {simple: FASTEST}}\n")
            .unwrap_err();
    assert!(err.contains("unknown variant `FASTEST`"), "{err}");
    let err = parse::<VirtualServiceSpec>(
        "hosts: [a]\nhttp:\n- timeout: 5 seconds\n  route: [{destination: {host: a}}]\n",
    )
    .unwrap_err();
    assert!(err.contains("invalid duration \"5 seconds\""), "{err}");
    let err = parse::<VirtualServiceSpec>("hosts: [a]\nhttp:\n- match: [{uri: {exact: /a, prefix: /b}}]\n  route: [{destination: {host: a}}]\n").unwrap_err();
    assert!(!err.is_empty());
}

const VS_HEAD: &str = "hosts: [reviews]\nhttp:\n";

fn vs(route: &str) -> String {
    format!("{VS_HEAD}{route}")
}

#[test]
fn virtual_service_errors() {
    let k = "VirtualService";
    assert_invalid(
        k,
        &vs(
            "- route:\n  - {destination: {host: reviews, subset: v1}, weight: 50}\n  - {destination: {host: reviews, subset: v2}, weight: 40}\n",
        ),
        "spec.http[0].route",
        "weights must sum to 100, got 90",
    );
    assert_invalid(
        k,
        &vs("- route:\n  - {destination: {host: reviews}, weight: -10}\n"),
        "spec.http[0].route[0].weight",
        "must be between 0 and 100, got -10",
    );
    assert_invalid(
        k,
        &vs("- match: [{uri: {regex: \"/api/(v1\"}}]\n  route: [{destination: {host: reviews}}]\n"),
        "spec.http[0].match[0].uri.regex",
        "invalid regex",
    );
    assert_invalid(
        k,
        &vs("- timeout: 0s\n  route: [{destination: {host: reviews}}]\n"),
        "spec.http[0].timeout",
        "at least 1ms",
    );
    assert_invalid(
        k,
        &vs(
            "- retries: {attempts: 3, retryOn: \"5xx,sometimes\"}\n  route: [{destination: {host: reviews}}]\n",
        ),
        "spec.http[0].retries.retryOn",
        "invalid retryOn value \"sometimes\"",
    );
    assert_invalid(
        k,
        &vs("- retries: {attempts: -1}\n  route: [{destination: {host: reviews}}]\n"),
        "spec.http[0].retries.attempts",
        "must not be negative",
    );
    assert_invalid(
        k,
        "hosts: [reviews]\ngateways: [a/b/c]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        "spec.gateways[0]",
        "at most one '/'",
    );
    assert_invalid(
        k,
        "hosts: [\"*foo.com\"]\ngateways: [gw]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        "spec.hosts[0]",
        "a wildcard must be the whole first label",
    );
    assert_invalid(
        k,
        "hosts: [\"*\"]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        "spec.hosts[0]",
        "not allowed for a VirtualService that applies to the mesh",
    );
    assert_invalid(
        k,
        &vs("- route: [{destination: {host: reviews, subset: V_1}}]\n"),
        "spec.http[0].route[0].destination.subset",
        "invalid subset name",
    );
    assert_invalid(
        k,
        &vs("- route: [{destination: {host: reviews, port: {number: 0}}}]\n"),
        "spec.http[0].route[0].destination.port.number",
        "port number must be between 1 and 65535, got 0",
    );
    assert_invalid(
        k,
        &vs("- redirect: {uri: /x}\n  route: [{destination: {host: reviews}}]\n"),
        "spec.http[0]",
        "route and redirect cannot both be set",
    );
    assert_invalid(
        k,
        &vs(
            "- fault: {abort: {httpStatus: 700, percentage: {value: 120}}}\n  route: [{destination: {host: reviews}}]\n",
        ),
        "spec.http[0].fault.abort.httpStatus",
        "between 200 and 599, got 700",
    );
    assert_invalid(
        k,
        &vs(
            "- fault: {abort: {httpStatus: 500, percentage: {value: 120}}}\n  route: [{destination: {host: reviews}}]\n",
        ),
        "spec.http[0].fault.abort.percentage.value",
        "must be between 0 and 100, got 120",
    );
    assert_invalid(
        k,
        &vs("- fault: {delay: {fixedDelay: 0.5ms}}\n  route: [{destination: {host: reviews}}]\n"),
        "spec.http[0].fault.delay.fixedDelay",
        "at least 1ms",
    );
    assert_invalid(
        k,
        &vs(
            "- mirror: {host: ratings}\n  mirrorPercentage: {value: 101}\n  route: [{destination: {host: reviews}}]\n",
        ),
        "spec.http[0].mirrorPercentage.value",
        "must be between 0 and 100, got 101",
    );
    assert_invalid(
        k,
        &vs(
            "- headers: {request: {set: {\":path\": /x}}}\n  route: [{destination: {host: reviews}}]\n",
        ),
        "spec.http[0].headers.request.set.:path",
        "cannot be modified",
    );
    assert_invalid(
        k,
        &vs(
            "- corsPolicy: {allowMethods: [FETCH], allowOrigins: [{regex: \"(\"}]}\n  route: [{destination: {host: reviews}}]\n",
        ),
        "spec.http[0].corsPolicy.allowMethods[0]",
        "invalid method \"FETCH\"",
    );
    assert_invalid(
        k,
        "gateways: [gw]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        "spec.gateways",
        "delegate VirtualService",
    );
    assert_invalid(
        k,
        "http:\n- match: [{uri: {regex: /a.*}}]\n  route: [{destination: {host: reviews}}]\n",
        "spec.http[0].match[0].uri",
        "not supported in a delegate",
    );
    assert_invalid(
        k,
        &vs("- directResponse: {status: 99}\n"),
        "spec.http[0].directResponse.status",
        "between 200 and 599",
    );
    assert_invalid(
        k,
        "hosts: [db.example.com]\ntls:\n- match: [{sniHosts: [other.com]}]\n  route: [{destination: {host: db}}]\n",
        "spec.tls[0].match[0].sniHosts[0]",
        "does not match any",
    );
    assert_valid(k, &vs("- delegate: {name: reviews-delegate}\n"));
    assert_valid(k, "http:\n- route: [{destination: {host: reviews}}]\n");
}

#[test]
fn destination_rule_errors() {
    let k = "DestinationRule";
    assert_invalid(
        k,
        "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v1, labels: {version: v2}}\n",
        "spec.subsets[1].name",
        "subset name \"v1\" is defined twice",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {httpHeaderName: x-user, useSourceIp: true}\n",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "exactly one of",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 150}\n",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "between 0 and 100, got 150",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnections: -1}}\n",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "must not be negative",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  portLevelSettings:\n  - {port: {number: 80}, tls: {mode: SIMPLE}}\n  - {port: {number: 80}, tls: {mode: SIMPLE}}\n",
        "spec.trafficPolicy.portLevelSettings[1].port.number",
        "appears twice",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  portLevelSettings:\n  - {tls: {mode: SIMPLE}}\n",
        "spec.trafficPolicy.portLevelSettings[0].port",
        "port is required",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  tls: {mode: MUTUAL}\n",
        "spec.trafficPolicy.tls.clientCertificate",
        "MUTUAL mode needs",
    );
    assert_invalid(
        k,
        "host: reviews\ntrafficPolicy:\n  tls: {mode: ISTIO_MUTUAL, privateKey: /k}\n",
        "spec.trafficPolicy.tls",
        "ISTIO_MUTUAL",
    );
}

#[test]
fn gateway_errors() {
    let k = "Gateway";
    assert_invalid(
        k,
        "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [\"*\"]\n",
        "spec.servers[0].tls",
        "tls is required",
    );
    assert_invalid(
        k,
        "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [\"bad ns/foo.com\"]\n",
        "spec.servers[0].hosts[0]",
        "namespace",
    );
    assert_invalid(
        k,
        "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [a.com]\n- port: {number: 81, name: http, protocol: HTTP}\n  hosts: [b.com]\n",
        "spec.servers[1].port.name",
        "must be unique",
    );
    assert_invalid(
        k,
        "servers:\n- port: {number: 70000, name: http, protocol: HTP}\n  hosts: [a.com]\n",
        "spec.servers[0].port.protocol",
        "invalid protocol \"HTP\"",
    );
    assert_valid(
        k,
        "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [\"ns1/*.example.com\"]\n  tls: {mode: SIMPLE, credentialName: cert}\n",
    );
}

#[test]
fn service_entry_and_workload_entry_errors() {
    let k = "ServiceEntry";
    assert_invalid(
        k,
        "hosts: [\"*.example.com\"]\nresolution: DNS\nports: [{number: 443, name: https, protocol: TLS}]\n",
        "spec.hosts[0]",
        "wildcard host \"*.example.com\" cannot be resolved with DNS",
    );
    assert_invalid(
        k,
        "hosts: [db.internal]\nresolution: STATIC\nports: [{number: 5432, name: pg, protocol: TCP}]\n",
        "spec.endpoints",
        "STATIC resolution needs endpoints",
    );
    assert_invalid(
        k,
        "hosts: [db.internal]\nresolution: STATIC\nports: [{number: 5432, name: pg}]\nendpoints: [{address: db.example.com}]\n",
        "spec.endpoints[0].address",
        "STATIC resolution needs IP addresses",
    );
    assert_invalid(
        k,
        "hosts: [a.com]\naddresses: [300.1.1.1]\nports: [{number: 80, name: http}, {number: 80, name: http2}]\n",
        "spec.ports[1].number",
        "port number 80 is listed twice",
    );
    assert_invalid(
        k,
        "hosts: [a.com]\naddresses: [300.1.1.1]\n",
        "spec.addresses[0]",
        "invalid address",
    );
    assert_invalid(
        k,
        "hosts: [a.com]\nresolution: STATIC\nworkloadSelector: {labels: {app: a}}\nendpoints: [{address: 1.1.1.1}]\n",
        "spec",
        "only one of endpoints or workloadSelector",
    );
    assert_invalid(
        "WorkloadEntry",
        "labels: {app: a}\n",
        "spec.address",
        "address is required",
    );
    assert_invalid(
        "WorkloadEntry",
        "address: 10.0.0.1\nports: {http: 0}\n",
        "spec.ports.http",
        "port number must be between 1 and 65535, got 0",
    );
    assert_valid(
        k,
        "hosts: [a.sock]\nresolution: STATIC\nports: [{number: 80, name: http}]\nendpoints: [{address: \"unix:///var/run/a.sock\"}]\n",
    );
}

#[test]
fn sidecar_errors() {
    let k = "Sidecar";
    assert_invalid(
        k,
        "egress:\n- hosts: [foo.com]\n",
        "spec.egress[0].hosts[0]",
        "namespace/dnsName",
    );
    assert_invalid(
        k,
        "egress:\n- hosts: [\"./*\"]\n- hosts: [\"istio-system/*\"]\n",
        "spec.egress[1].port",
        "only one egress listener may omit port",
    );
    assert_invalid(
        k,
        "ingress:\n- defaultEndpoint: 127.0.0.1:8080\n",
        "spec.ingress[0].port",
        "port is required",
    );
    assert_invalid(
        k,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  defaultEndpoint: 10.0.0.1:8080\n",
        "spec.ingress[0].defaultEndpoint",
        "invalid defaultEndpoint",
    );
    assert_valid(
        k,
        "ingress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  defaultEndpoint: 127.0.0.1:8080\negress:\n- hosts: [\"./*\", \"~/*\", \"istio-system/*\"]\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
}
