//! The label sets of Istio's standard metrics, and the constructors that fill
//! them from what the proxy knows: its own workload ([`Workload::local`]), a
//! cluster's `istio` metadata and the picked endpoint ([`PeerLabels::outbound`]),
//! or the peer certificate's principal ([`Workload::from_principal`]).
//!
//! The labels that are fixed for a connection (reporter, source, destination,
//! security policy) live in [`PeerLabels`], built once and shared behind an
//! `Arc` ([`Peer`]); only [`RequestOutcome`] (protocol, status, flags) varies
//! per request. Values Istio cannot know are `unknown`, as in Istio. This
//! module does not record anything (that is [`super::Metrics`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use crate::config::{Config, ConfigError, workload_name};
use crate::state::cluster::{Cluster, ServiceRef};
use crate::state::endpoint::Endpoint;

/// Istio's value for a label the proxy cannot know.
pub const UNKNOWN: &str = "unknown";

/// `response_flags` values. Keel uses one short reason code per cause,
/// the same word in the `x-keel-error` header of a response the proxy
/// produced itself, in this label and in the log line (Envoy's letter codes
/// are listed for reference; a combination is comma-joined, as in Envoy).
pub mod flags {
    /// No flag.
    pub const NONE: &str = "-";
    /// Upstream connection failure (Envoy `UF`).
    pub const UPSTREAM_CONNECTION_FAILURE: &str = "connect_failure";
    /// No healthy upstream host (Envoy `UH`).
    pub const NO_HEALTHY_UPSTREAM: &str = "no_healthy_upstream";
    /// Upstream request timeout (Envoy `UT`).
    pub const UPSTREAM_REQUEST_TIMEOUT: &str = "timeout";
    /// Upstream connection terminated (Envoy `UC`).
    pub const UPSTREAM_CONNECTION_TERMINATION: &str = "upstream_reset";
    /// Upstream overflow, circuit breaking (Envoy `UO`).
    pub const UPSTREAM_OVERFLOW: &str = "overflow";
    /// Upstream retry limit exceeded (Envoy `URX`).
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: &str = "retry_limit";
    /// No route configured (Envoy `NR`).
    pub const NO_ROUTE_FOUND: &str = "no_route";
    /// No cluster for the route, or the cluster is unknown (Envoy `NC`).
    pub const NO_CLUSTER_FOUND: &str = "no_cluster";
    /// Downstream connection termination (Envoy `DC`).
    pub const DOWNSTREAM_CONNECTION_TERMINATION: &str = "downstream_reset";
    /// Stream idle timeout (Envoy `SI`).
    pub const STREAM_IDLE_TIMEOUT: &str = "idle_timeout";
    /// Request delayed by fault injection (Envoy `DI`).
    pub const DELAY_INJECTED: &str = "delay_injected";
    /// Request aborted by fault injection (Envoy `FI`).
    pub const FAULT_INJECTED: &str = "fault_abort";
    /// Rate limited locally (Envoy `RL`).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Denied by an authorization policy (Envoy `UAEX` / RBAC).
    pub const UNAUTHORIZED: &str = "rbac_denied";
    /// The proxy is draining or not configured yet.
    pub const NOT_READY: &str = "not_ready";
}

/// Writes a `&'static str` label value (the enums below).
fn encode_str(s: &str, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
    EncodeLabelValue::encode(&s, encoder)
}

/// Which side of the connection reports the metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client's proxy (outbound).
    Source,
    /// The server's proxy (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encode_str(
            match self {
                Self::Source => "source",
                Self::Destination => "destination",
            },
            encoder,
        )
    }
}

/// `connection_security_policy`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Not known (Istio's value on the source side).
    Unknown,
    /// Plain text.
    None,
    /// Mutual TLS.
    MutualTls,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encode_str(
            match self {
                Self::Unknown => "unknown",
                Self::None => "none",
                Self::MutualTls => "mutual_tls",
            },
            encoder,
        )
    }
}

/// `request_protocol`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RequestProtocol {
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// gRPC (HTTP/2 with `content-type: application/grpc*`).
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl EncodeLabelValue for RequestProtocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encode_str(
            match self {
                Self::Http => "http",
                Self::Grpc => "grpc",
                Self::Tcp => "tcp",
            },
            encoder,
        )
    }
}

/// A workload as telemetry names it. Cheap to clone (shared strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The workload name (`reviews-v1`).
    pub name: Arc<str>,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its SPIFFE id (`spiffe://cluster.local/ns/default/sa/reviews`).
    pub principal: Arc<str>,
    /// The `app` label.
    pub app: Arc<str>,
    /// The `version` label.
    pub version: Arc<str>,
    /// Istio's canonical service (`service.istio.io/canonical-name`, else `app`).
    pub canonical_service: Arc<str>,
    /// Istio's canonical revision (`service.istio.io/canonical-revision`,
    /// else `version`, else `latest`).
    pub canonical_revision: Arc<str>,
    /// The trust domain principals are built in (not a label).
    pub trust_domain: Arc<str>,
}

/// The first of `keys` present in `labels`.
fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// `spiffe://TD/ns/NS/sa/SA`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

impl Workload {
    /// A workload of which nothing is known.
    pub fn unknown(trust_domain: &str) -> Self {
        let u: Arc<str> = Arc::from(UNKNOWN);
        Self {
            name: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u,
            trust_domain: Arc::from(trust_domain),
        }
    }

    /// A workload from its name, namespace, service account and pod labels,
    /// as Istio derives app, version and canonical service from the labels.
    pub fn from_labels(
        name: &str,
        namespace: &str,
        service_account: Option<&str>,
        trust_domain: &str,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        let or_unknown = |s: &str| Arc::from(if s.is_empty() { UNKNOWN } else { s });
        let app = first_label(labels, &["app", "app.kubernetes.io/name"]);
        let version = first_label(labels, &["version", "app.kubernetes.io/version"]);
        let canonical_service = first_label(
            labels,
            &[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ],
        )
        .unwrap_or(name);
        let canonical_revision = first_label(
            labels,
            &[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ],
        )
        .unwrap_or("latest");
        let principal = match service_account.filter(|sa| !sa.is_empty()) {
            Some(sa) if !namespace.is_empty() => Arc::from(spiffe_id(trust_domain, namespace, sa)),
            _ => Arc::from(UNKNOWN),
        };
        Self {
            name: or_unknown(name),
            namespace: or_unknown(namespace),
            principal,
            app: or_unknown(app.unwrap_or_default()),
            version: or_unknown(version.unwrap_or_default()),
            canonical_service: or_unknown(canonical_service),
            canonical_revision: Arc::from(canonical_revision),
            trust_domain: Arc::from(trust_domain),
        }
    }

    /// The proxy's own workload, from its flags (the trust domain is the
    /// cluster domain, Istio's default).
    pub fn local(config: &Config) -> Result<Self, ConfigError> {
        let labels = config.parsed_labels()?;
        let name = workload_name(&labels, &config.pod_name());
        Ok(Self::from_labels(
            &name,
            &config.namespace,
            Some(&config.service_account),
            &config.cluster_domain,
            &labels,
        ))
    }

    /// A peer known only by its certificate's SPIFFE id (inbound mTLS):
    /// namespace and principal are set, the rest is `unknown`. Not a SPIFFE
    /// id: everything is `unknown` but the principal.
    pub fn from_principal(principal: &str) -> Self {
        let parsed = principal.strip_prefix("spiffe://").and_then(|rest| {
            let mut parts = rest.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(td), Some("ns"), Some(ns), Some("sa")) => Some((td, ns)),
                _ => None,
            }
        });
        let (td, ns) = parsed.unwrap_or(("", UNKNOWN));
        let mut w = Self::unknown(td);
        w.namespace = Arc::from(ns);
        if !principal.is_empty() {
            w.principal = Arc::from(principal);
        }
        w
    }

    /// The workload behind `endpoint` of `cluster` (its namespace is the
    /// cluster's service namespace; app and version come from the endpoint's
    /// labels, name and service account from its `istio` metadata).
    pub fn of_endpoint(cluster: &Cluster, endpoint: Option<&Endpoint>, trust_domain: &str) -> Self {
        let namespace = service_of(cluster).map_or("", |s| s.namespace.as_str());
        let Some(ep) = endpoint else {
            let mut w = Self::unknown(trust_domain);
            if !namespace.is_empty() {
                w.namespace = Arc::from(namespace);
            }
            return w;
        };
        let (name, sa) = ep.workload.as_ref().map_or(("", None), |w| {
            (w.workload.as_str(), Some(w.service_account.as_str()))
        });
        Self::from_labels(name, namespace, sa, trust_domain, &ep.labels)
    }
}

/// The service a cluster was generated for: the first of its `istio` services.
fn service_of(cluster: &Cluster) -> Option<&ServiceRef> {
    cluster.istio.as_ref().and_then(|m| m.services.first())
}

/// The labels fixed for a connection (or a cluster and endpoint): who
/// reports, source and destination workloads, the destination service and
/// the connection's security.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: Reporter,
    /// The client workload.
    pub source_workload: Arc<str>,
    /// Its namespace.
    pub source_workload_namespace: Arc<str>,
    /// Its SPIFFE id.
    pub source_principal: Arc<str>,
    /// Its `app` label.
    pub source_app: Arc<str>,
    /// Its `version` label.
    pub source_version: Arc<str>,
    /// Its canonical service.
    pub source_canonical_service: Arc<str>,
    /// Its canonical revision.
    pub source_canonical_revision: Arc<str>,
    /// The server workload.
    pub destination_workload: Arc<str>,
    /// Its namespace.
    pub destination_workload_namespace: Arc<str>,
    /// Its SPIFFE id.
    pub destination_principal: Arc<str>,
    /// Its `app` label.
    pub destination_app: Arc<str>,
    /// Its `version` label.
    pub destination_version: Arc<str>,
    /// Its canonical service.
    pub destination_canonical_service: Arc<str>,
    /// Its canonical revision.
    pub destination_canonical_revision: Arc<str>,
    /// The service's FQDN.
    pub destination_service: Arc<str>,
    /// The service's short name.
    pub destination_service_name: Arc<str>,
    /// The service's namespace.
    pub destination_service_namespace: Arc<str>,
    /// `unknown` (source side), `none` or `mutual_tls`.
    pub connection_security_policy: SecurityPolicy,
}

impl PeerLabels {
    /// Labels from both workloads and the destination service (`None`:
    /// `unknown`).
    pub fn new(
        reporter: Reporter,
        source: &Workload,
        destination: &Workload,
        service: Option<&ServiceRef>,
        security: SecurityPolicy,
    ) -> Self {
        let svc = |f: fn(&ServiceRef) -> &str| -> Arc<str> {
            Arc::from(service.map(f).filter(|s| !s.is_empty()).unwrap_or(UNKNOWN))
        };
        Self {
            reporter,
            source_workload: source.name.clone(),
            source_workload_namespace: source.namespace.clone(),
            source_principal: source.principal.clone(),
            source_app: source.app.clone(),
            source_version: source.version.clone(),
            source_canonical_service: source.canonical_service.clone(),
            source_canonical_revision: source.canonical_revision.clone(),
            destination_workload: destination.name.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_principal: destination.principal.clone(),
            destination_app: destination.app.clone(),
            destination_version: destination.version.clone(),
            destination_canonical_service: destination.canonical_service.clone(),
            destination_canonical_revision: destination.canonical_revision.clone(),
            destination_service: svc(|s| &s.host),
            destination_service_name: svc(|s| &s.name),
            destination_service_namespace: svc(|s| &s.namespace),
            connection_security_policy: security,
        }
    }

    /// Outbound (`reporter=source`): this proxy's workload calls `cluster`,
    /// `endpoint` being the host picked (`None` before one is, or when the
    /// pick failed). Without `istio` metadata, `destination_service` is the
    /// host of an `outbound|port|subset|host` cluster name, else the name.
    pub fn outbound(own: &Workload, cluster: &Cluster, endpoint: Option<&Endpoint>) -> Self {
        let destination = Workload::of_endpoint(cluster, endpoint, &own.trust_domain);
        let mut labels = Self::new(
            Reporter::Source,
            own,
            &destination,
            service_of(cluster),
            SecurityPolicy::Unknown,
        );
        if service_of(cluster).is_none() {
            let host = cluster.name.rsplit('|').next().unwrap_or(&cluster.name);
            labels.destination_service = Arc::from(host);
        }
        labels
    }

    /// Inbound (`reporter=destination`): `source` (see
    /// [`Workload::from_principal`]) calls this proxy's workload as `service`.
    pub fn inbound(
        own: &Workload,
        source: &Workload,
        service: Option<&ServiceRef>,
        security: SecurityPolicy,
    ) -> Self {
        Self::new(Reporter::Destination, source, own, service, security)
    }

    /// Shares these labels for recording (see [`Peer`]).
    pub fn shared(self) -> Peer {
        Peer(Arc::new(self))
    }
}

/// [`PeerLabels`] behind an `Arc`: cloning it into a request's label set is
/// one reference count, not nineteen strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Peer(pub Arc<PeerLabels>);

impl From<PeerLabels> for Peer {
    fn from(labels: PeerLabels) -> Self {
        labels.shared()
    }
}

impl EncodeLabelSet for Peer {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }
}

/// What varies per request: protocol, status codes and flags.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestOutcome {
    /// `http` or `grpc`.
    pub request_protocol: RequestProtocol,
    /// The HTTP status sent downstream (0: no response, as in Envoy).
    pub response_code: u16,
    /// The gRPC status (`None` renders empty, as Istio does for non-gRPC).
    pub grpc_response_status: Option<u32>,
    /// Envoy-style response flags ([`flags`]), `-` when none.
    pub response_flags: &'static str,
}

impl RequestOutcome {
    /// An HTTP request answered with `status`, no flags.
    pub fn http(status: u16) -> Self {
        Self {
            request_protocol: RequestProtocol::Http,
            response_code: status,
            grpc_response_status: None,
            response_flags: flags::NONE,
        }
    }

    /// A gRPC request answered with HTTP `status` and gRPC `grpc_status`.
    pub fn grpc(status: u16, grpc_status: u32) -> Self {
        Self {
            request_protocol: RequestProtocol::Grpc,
            response_code: status,
            grpc_response_status: Some(grpc_status),
            response_flags: flags::NONE,
        }
    }

    /// The same with `response_flags` set.
    pub fn with_flags(mut self, flags: &'static str) -> Self {
        self.response_flags = flags;
        self
    }
}

/// The labels of the `istio_request*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Fixed per connection.
    #[prometheus(flatten)]
    pub peer: Peer,
    /// Varies per request.
    #[prometheus(flatten)]
    pub outcome: RequestOutcome,
}

/// The labels of the `istio_tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Fixed per connection.
    #[prometheus(flatten)]
    pub peer: Peer,
    /// Always `tcp`.
    pub request_protocol: RequestProtocol,
    /// Envoy-style response flags, `-` when none.
    pub response_flags: &'static str,
}

impl TcpLabels {
    /// TCP labels for `peer` with `flags`.
    pub fn new(peer: Peer, flags: &'static str) -> Self {
        Self {
            peer,
            request_protocol: RequestProtocol::Tcp,
            response_flags: flags,
        }
    }
}
