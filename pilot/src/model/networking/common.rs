//! Types shared by several networking kinds: destinations, string matches,
//! percentages, ports, workload selectors, TLS settings and connection pools,
//! with their validation. Kind-specific rules live in each kind's module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::duration::Duration;
use crate::model::validate::{
    Errors, check_duration, check_labels, check_non_negative, check_port, check_regex,
    is_dns1123_label, wildcard_host_error,
};

/// A port selected by number (`port: {number: 9080}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port number; 0 means unset.
    #[serde(default)]
    pub number: u32,
}

/// A service (and optionally subset and port) that traffic is sent to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service name from the registry: short name, FQDN or ServiceEntry host.
    pub host: String,
    /// A subset defined in a DestinationRule for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Port on the host; may be omitted when the service has a single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// Records errors: host required and not `*`, subset a DNS-1123 label,
    /// port 1–65535 when given.
    pub fn validate(&self, errs: &mut Errors, path: &str) {
        if self.host.is_empty() {
            errs.at(format!("{path}.host"), "destination host is required");
        } else if self.host == "*" {
            errs.at(
                format!("{path}.host"),
                "destination host cannot be \"*\": name one service",
            );
        } else if let Some(msg) = wildcard_host_error(&self.host) {
            errs.at(format!("{path}.host"), msg);
        }
        if let Some(subset) = &self.subset
            && !is_dns1123_label(subset)
        {
            errs.at(
                format!("{path}.subset"),
                format!("invalid subset name {subset:?}: must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"),
            );
        }
        if let Some(port) = &self.port {
            check_port(errs, &format!("{path}.port.number"), port.number);
        }
    }
}

/// A percentage, 0–100, with fractions (`{value: 0.1}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// Percentage in the range 0–100.
    #[serde(default)]
    pub value: f64,
}

/// How a string is matched: exactly, by prefix, or by RE2 regular expression
/// (which must match the whole string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    /// The whole value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The whole value matches this RE2 regular expression.
    Regex(String),
}

impl StringMatch {
    /// Records an error when a regex does not compile.
    pub fn validate(&self, errs: &mut Errors, path: &str) {
        if let StringMatch::Regex(re) = self {
            check_regex(errs, &format!("{path}.regex"), re);
        }
    }

    /// True when this is a regex match.
    pub fn is_regex(&self) -> bool {
        matches!(self, StringMatch::Regex(_))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

/// A header or query parameter match that may be empty (`{}`): `None` means
/// "the header is present" (or, under `withoutHeaders`, absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawStringMatch", into = "RawStringMatch")]
pub struct OptionalStringMatch(pub Option<StringMatch>);

impl TryFrom<RawStringMatch> for OptionalStringMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        match (raw.exact, raw.prefix, raw.regex) {
            (None, None, None) => Ok(Self(None)),
            (Some(s), None, None) => Ok(Self(Some(StringMatch::Exact(s)))),
            (None, Some(s), None) => Ok(Self(Some(StringMatch::Prefix(s)))),
            (None, None, Some(s)) => Ok(Self(Some(StringMatch::Regex(s)))),
            _ => Err("only one of exact, prefix or regex may be set".to_string()),
        }
    }
}

impl From<OptionalStringMatch> for RawStringMatch {
    fn from(m: OptionalStringMatch) -> Self {
        let mut raw = RawStringMatch::default();
        match m.0 {
            None => {}
            Some(StringMatch::Exact(s)) => raw.exact = Some(s),
            Some(StringMatch::Prefix(s)) => raw.prefix = Some(s),
            Some(StringMatch::Regex(s)) => raw.regex = Some(s),
        }
        raw
    }
}

/// Selects workloads by labels (`workloadSelector: {labels: {...}}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A port on a Gateway server or Sidecar listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number; 0 when unset (Sidecar listeners bound to a unix socket).
    #[serde(default)]
    pub number: u32,
    /// HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL, REDIS, TCP, TLS, UDP.
    #[serde(default)]
    pub protocol: String,
    /// Label for the port.
    #[serde(default)]
    pub name: String,
    /// Deprecated in Istio; kept so existing config parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Protocols Istio accepts on ports (compared case-insensitively).
pub const PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
];

/// Records an error unless `protocol` is one of [`PROTOCOLS`].
pub fn check_protocol(errs: &mut Errors, path: &str, protocol: &str) {
    if !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(protocol)) {
        errs.at(
            path,
            format!(
                "invalid protocol {protocol:?}: must be one of {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

/// True when `protocol` carries TLS that the server terminates or passes
/// through (HTTPS, TLS).
pub fn is_tls_protocol(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("HTTPS") || protocol.eq_ignore_ascii_case("TLS")
}

/// Server-side TLS mode on Gateway servers and Sidecar ingress listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward the connection by SNI without terminating TLS (the default).
    #[default]
    Passthrough,
    /// Terminate TLS with the server's certificate.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Passthrough by SNI to the matching service, no VirtualService needed.
    AutoPassthrough,
    /// Mutual TLS with Istio-issued workload certificates.
    IstioMutual,
    /// Accept clients with or without a certificate.
    OptionalMutual,
}

impl ServerTlsMode {
    /// The mode as spelled in config (`SIMPLE`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Passthrough => "PASSTHROUGH",
            Self::Simple => "SIMPLE",
            Self::Mutual => "MUTUAL",
            Self::AutoPassthrough => "AUTO_PASSTHROUGH",
            Self::IstioMutual => "ISTIO_MUTUAL",
            Self::OptionalMutual => "OPTIONAL_MUTUAL",
        }
    }
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsProtocol {
    /// Let Envoy choose.
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// One certificate/key pair on a server (`tlsCertificates[]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Path of the server certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    /// Path of the private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Path of the CA bundle used to verify client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// TLS settings of a Gateway server or Sidecar ingress listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Send a 301 redirect to HTTPS for plain HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// How the server handles TLS; PASSTHROUGH when unset.
    #[serde(default)]
    pub mode: ServerTlsMode,
    /// Path of the server certificate (SIMPLE/MUTUAL without credentialName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    /// Path of the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Path of the CA bundle for client certificates (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Path of a certificate revocation list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    /// Name of a secret holding key, certificate and optionally CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Up to two secrets (for example RSA and ECDSA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Up to two certificate/key pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Secret holding only the CA certificate for client verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_credential_name: Option<String>,
    /// Allowed subject alternative names of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Allowed SPKI hashes (base64) of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Allowed hex-encoded SHA-256 hashes of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    /// Allowed cipher suites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Allowed ECDH curves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
    /// Skip client certificate verification (OPTIONAL_MUTUAL, MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

impl ServerTlsSettings {
    /// Records errors in server TLS settings: certificate sources are
    /// exclusive, SIMPLE/MUTUAL need a certificate and key (or a credential),
    /// MUTUAL needs a CA, ISTIO_MUTUAL must not name certificates.
    pub fn validate(&self, errs: &mut Errors, path: &str) {
        let has_file_cert = self.server_certificate.is_some() || self.private_key.is_some();
        let sources = [
            self.credential_name.is_some(),
            !self.credential_names.is_empty(),
            !self.tls_certificates.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources > 1 {
            errs.at(
                path,
                "only one of credentialName, credentialNames or tlsCertificates may be set",
            );
        }
        if self.credential_names.len() > 2 {
            errs.at(
                format!("{path}.credentialNames"),
                format!(
                    "at most 2 credential names are allowed, got {}",
                    self.credential_names.len()
                ),
            );
        }
        if self.tls_certificates.len() > 2 {
            errs.at(
                format!("{path}.tlsCertificates"),
                format!(
                    "at most 2 certificates are allowed, got {}",
                    self.tls_certificates.len()
                ),
            );
        }
        let has_credential = sources > 0;
        match self.mode {
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
                if !has_credential {
                    if self.server_certificate.is_none() {
                        errs.at(
                            format!("{path}.serverCertificate"),
                            format!(
                                "{} mode needs serverCertificate and privateKey, or credentialName",
                                self.mode.name()
                            ),
                        );
                    }
                    if self.private_key.is_none() {
                        errs.at(
                            format!("{path}.privateKey"),
                            format!(
                                "{} mode needs serverCertificate and privateKey, or credentialName",
                                self.mode.name()
                            ),
                        );
                    }
                    if self.mode != ServerTlsMode::Simple
                        && self.ca_certificates.is_none()
                        && self.ca_cert_credential_name.is_none()
                    {
                        errs.at(
                            format!("{path}.caCertificates"),
                            "MUTUAL mode needs caCertificates (or a credential holding the CA) to verify clients",
                        );
                    }
                }
            }
            ServerTlsMode::IstioMutual => {
                if has_credential || has_file_cert || self.ca_certificates.is_some() {
                    errs.at(
                        path,
                        "ISTIO_MUTUAL mode uses Istio certificates: do not set serverCertificate, privateKey, caCertificates or credentialName",
                    );
                }
            }
            ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => {}
        }
    }
}

/// Client-side TLS mode for connections to an upstream (DestinationRule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plain text (the default when tls is unset).
    #[default]
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// TLS with a client certificate.
    Mutual,
    /// Mutual TLS with Istio-issued workload certificates.
    IstioMutual,
}

/// TLS settings for connections to an upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// How to connect; DISABLE when unset.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// Path of the client certificate (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Path of the client private key (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Path of the CA bundle used to verify the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Path of a certificate revocation list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    /// Secret holding client key/certificate/CA (sidecar or gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Names accepted in the server's certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip server certificate verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

impl ClientTlsSettings {
    /// Records errors: MUTUAL needs clientCertificate and privateKey (or
    /// credentialName); ISTIO_MUTUAL must not name certificates.
    pub fn validate(&self, errs: &mut Errors, path: &str) {
        match self.mode {
            ClientTlsMode::Mutual if self.credential_name.is_none() => {
                if self.client_certificate.is_none() {
                    errs.at(
                        format!("{path}.clientCertificate"),
                        "MUTUAL mode needs clientCertificate and privateKey, or credentialName",
                    );
                }
                if self.private_key.is_none() {
                    errs.at(
                        format!("{path}.privateKey"),
                        "MUTUAL mode needs clientCertificate and privateKey, or credentialName",
                    );
                }
            }
            ClientTlsMode::IstioMutual
                if self.client_certificate.is_some()
                    || self.private_key.is_some()
                    || self.ca_certificates.is_some()
                    || self.credential_name.is_some() =>
            {
                errs.at(
                    path,
                    "ISTIO_MUTUAL mode uses Istio certificates: do not set clientCertificate, privateKey, caCertificates or credentialName",
                );
            }
            _ => {}
        }
    }
}

/// Whether HTTP/1.1 connections are upgraded to HTTP/2 upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Use the mesh-wide default.
    #[default]
    Default,
    /// Never upgrade.
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// TCP keepalive settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dead (OS default: 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Idle time before probing starts (OS default: 2h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// Interval between probes (OS default: 75s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// TCP connection pool limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Maximum connections to a destination host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// TCP connect timeout (Istio's default: 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Keepalive probing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout for TCP connections (Istio's default: 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// HTTP keepalive (HTTP/2 PING) settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2KeepAlive {
    /// Interval between PINGs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time to wait for a PING response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// HTTP connection pool limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Maximum queued requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i64>,
    /// Maximum active requests to a destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i64>,
    /// Maximum requests per connection; 1 disables keep-alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    /// Maximum concurrent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    /// Idle timeout for upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 upgrade policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the downstream protocol upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent streams per HTTP/2 connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i64>,
    /// HTTP/2 PING keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// Connection pool settings (DestinationRule, Sidecar inbound).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits, also applied to HTTP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

impl ConnectionPoolSettings {
    /// Records errors: counts must not be negative, durations at least 1ms.
    pub fn validate(&self, errs: &mut Errors, path: &str) {
        if self.tcp.is_none() && self.http.is_none() {
            errs.at(path, "connection pool must set at least one of tcp or http");
        }
        if let Some(tcp) = &self.tcp {
            let p = format!("{path}.tcp");
            if let Some(v) = tcp.max_connections {
                check_non_negative(errs, &format!("{p}.maxConnections"), v);
            }
            let durations = [
                ("connectTimeout", &tcp.connect_timeout),
                ("maxConnectionDuration", &tcp.max_connection_duration),
                ("idleTimeout", &tcp.idle_timeout),
            ];
            for (name, d) in durations {
                if let Some(d) = d {
                    check_duration(errs, &format!("{p}.{name}"), d);
                }
            }
            if let Some(ka) = &tcp.tcp_keepalive {
                for (name, d) in [("time", &ka.time), ("interval", &ka.interval)] {
                    if let Some(d) = d {
                        check_duration(errs, &format!("{p}.tcpKeepalive.{name}"), d);
                    }
                }
            }
        }
        if let Some(http) = &self.http {
            let p = format!("{path}.http");
            let counts = [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ];
            for (name, v) in counts {
                if let Some(v) = v {
                    check_non_negative(errs, &format!("{p}.{name}"), v);
                }
            }
            if let Some(d) = &http.idle_timeout {
                check_duration(errs, &format!("{p}.idleTimeout"), d);
            }
            if let Some(ka) = &http.http2_keep_alive {
                for (name, d) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                    if let Some(d) = d {
                        check_duration(errs, &format!("{p}.http2KeepAlive.{name}"), d);
                    }
                }
            }
        }
    }
}

/// Records errors in a workload selector's labels (`{path}.labels`).
pub fn check_workload_selector(errs: &mut Errors, path: &str, sel: &WorkloadSelector) {
    check_labels(errs, &format!("{path}.labels"), &sel.labels);
}
