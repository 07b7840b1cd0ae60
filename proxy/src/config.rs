//! The proxy's configuration: the one place that reads flags and environment
//! variables (Istio's names, `POD_NAMESPACE`, `INSTANCE_IP`, ...), and the
//! Envoy `Node` (Istio node id and metadata) the proxy presents to pilot.
//!
//! It does not start anything; `bin/keel-proxy.rs` does.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use clap::{Parser, ValueEnum};
use keel_proto::envoy::config::core::v3::Node;
use keel_proto::google::protobuf::{Struct, Value, value::Kind};

/// What went wrong reading the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A `--labels` entry is not `key=value`.
    #[error(
        "--labels / ISTIO_LABELS entry {index} ({entry:?}) is not key=value: write labels as app=reviews,version=v1"
    )]
    LabelNotPair {
        /// The 1-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
    },
    /// A `--labels` key is empty.
    #[error("--labels / ISTIO_LABELS entry {index} ({entry:?}) has an empty key")]
    EmptyLabelKey {
        /// The 1-based position of the entry.
        index: usize,
        /// The entry as written.
        entry: String,
    },
    /// A label key appears twice.
    #[error("--labels / ISTIO_LABELS defines label {key:?} twice")]
    DuplicateLabel {
        /// The repeated key.
        key: String,
    },
}

/// Sidecar beside a workload, or gateway (router).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A sidecar (`sidecar~...` node id).
    Sidecar,
    /// A gateway (`router~...` node id).
    Router,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// keel-proxy's command line (each flag has an environment fallback).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "keel-proxy",
    version,
    about = "Keel's sidecar and gateway proxy (xDS client). `keel-proxy init --help`: the init container's iptables capture"
)]
pub struct Config {
    /// Pilot's ADS (gRPC) address.
    #[arg(long, env = "XDS_ADDRESS", default_value = "127.0.0.1:15010")]
    pub xds_address: String,
    /// The workload's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The pod (or workload instance) name; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The workload's IP address.
    #[arg(long, env = "INSTANCE_IP")]
    pub pod_ip: Option<IpAddr>,
    /// The workload's service account.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// The workload's labels, `k=v,k=v`.
    #[arg(long, env = "ISTIO_LABELS", default_value = "")]
    pub labels: String,
    /// Sidecar or gateway.
    #[arg(long, value_enum, default_value = "sidecar")]
    pub mode: Mode,
    /// The outbound listener: captured outbound traffic, explicit HTTP
    /// proxying (`HTTP_PROXY`, `CONNECT`) and `Host`-addressed requests
    /// (sidecar mode).
    #[arg(long, env = "KEEL_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,
    /// The inbound listener: captured inbound traffic (sidecar mode).
    #[arg(long, env = "KEEL_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,
    /// The localhost admin server (`/config_dump`, `/logging`, `/quitquitquit`).
    #[arg(long, env = "KEEL_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// The Prometheus endpoint (`/stats/prometheus`).
    #[arg(long, env = "KEEL_STATS_ADDR", default_value = "0.0.0.0:15090")]
    pub stats_addr: SocketAddr,
    /// The readiness server (`/healthz/ready`).
    #[arg(long, env = "KEEL_READY_ADDR", default_value = "0.0.0.0:15021")]
    pub ready_addr: SocketAddr,
    /// How long SIGTERM waits for in-flight requests and connections
    /// (Istio's `terminationDrainDuration`), e.g. `5s`, `500ms`.
    #[arg(long, env = "TERMINATION_DRAIN_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// How long protocol detection waits for a client that sends nothing
    /// (server-speaks-first protocols) before treating it as TCP.
    #[arg(long, env = "KEEL_DETECT_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub detect_timeout: std::time::Duration,
    /// Request body bytes kept so a request can be retried; a request
    /// whose body is larger is sent once (the response says so in
    /// `x-keel-retry-skipped: request_body_too_large`).
    #[arg(long, env = "KEEL_RETRY_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub retry_buffer: usize,
    /// keel-citadel's certificate API (`host:port`, gRPC over TLS): the
    /// proxy gets its workload certificate there, and is not ready until it
    /// has one. Off when unset (no workload identity).
    #[arg(long, env = "CA_ADDR")]
    pub ca_address: Option<String>,
    /// The root certificate citadel's serving certificate is checked
    /// against (PEM).
    #[arg(
        long,
        env = "KEEL_CA_ROOT_CERT",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root_cert: std::path::PathBuf,
    /// The token presented to citadel (a bootstrap token from
    /// `keel-citadel token`, or a service-account token); read at each
    /// request, so a rotated token is picked up.
    #[arg(long, env = "KEEL_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// The lifetime asked for the workload certificate (citadel's default
    /// when unset).
    #[arg(long, env = "SECRET_TTL", value_parser = parse_duration)]
    pub cert_ttl: Option<std::time::Duration>,
    /// Worker threads (Istio's proxy `concurrency`); 1 runs everything on
    /// one thread, the fastest choice for a proxy pinned to one core.
    #[arg(long, env = "ISTIO_META_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Write a JSON access log line per request to this file (`-` for
    /// standard output); off when unset.
    #[arg(long, env = "KEEL_ACCESS_LOG")]
    pub access_log: Option<std::path::PathBuf>,
    /// The cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

pub use keel_common::parse_duration;

/// Labels Istio uses for the canonical workload name, in order of preference.
const NAME_LABELS: [&str; 2] = ["service.istio.io/canonical-name", "app"];

impl Config {
    /// The parsed `--labels`.
    pub fn parsed_labels(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        parse_labels(&self.labels)
    }

    /// The pod name: `--pod-name`, else the host name, else `keel-proxy`.
    pub fn pod_name(&self) -> String {
        self.pod_name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "keel-proxy".to_string())
    }

    /// Istio's node id: `TYPE~IP~POD.NS~NS.svc.DOMAIN`.
    pub fn node_id(&self) -> String {
        let kind = match self.mode {
            Mode::Sidecar => "sidecar",
            Mode::Router => "router",
        };
        let ip = self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default();
        format!(
            "{kind}~{ip}~{pod}.{ns}~{ns}.svc.{domain}",
            pod = self.pod_name(),
            ns = self.namespace,
            domain = self.cluster_domain
        )
    }

    /// The Envoy `Node` sent on every ADS stream.
    pub fn node(&self) -> Result<Node, ConfigError> {
        let labels = self.parsed_labels()?;
        let pod = self.pod_name();
        let workload = workload_name(&labels, &pod);
        let mut fields = BTreeMap::new();
        let mut put = |k: &str, v: Kind| {
            fields.insert(k.to_string(), Value { kind: Some(v) });
        };
        put("NAMESPACE", Kind::StringValue(self.namespace.clone()));
        put("POD_NAME", Kind::StringValue(pod));
        put("WORKLOAD_NAME", Kind::StringValue(workload));
        put(
            "SERVICE_ACCOUNT",
            Kind::StringValue(self.service_account.clone()),
        );
        put("CLUSTER_ID", Kind::StringValue("Kubernetes".into()));
        if let Some(ip) = self.pod_ip {
            put("INSTANCE_IPS", Kind::StringValue(ip.to_string()));
        }
        let labels = Struct {
            fields: labels
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Value {
                            kind: Some(Kind::StringValue(v)),
                        },
                    )
                })
                .collect(),
        };
        put("LABELS", Kind::StructValue(labels));
        Ok(Node {
            id: self.node_id(),
            cluster: String::new(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            user_agent_name: "keel-proxy".into(),
            ..Default::default()
        })
    }
}

/// Parses `k=v,k=v` (whitespace around entries is ignored; empty is no labels).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for (i, entry) in s.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::LabelNotPair {
                index: i + 1,
                entry: entry.to_string(),
            })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(ConfigError::EmptyLabelKey {
                index: i + 1,
                entry: entry.to_string(),
            });
        }
        if labels.insert(k.to_string(), v.trim().to_string()).is_some() {
            return Err(ConfigError::DuplicateLabel { key: k.to_string() });
        }
    }
    Ok(labels)
}

/// Istio's workload name: the canonical-name or `app` label, else the pod name
/// without its ReplicaSet and pod hashes (`reviews-v1-5b9f8c-x7k2p` → `reviews-v1`).
pub fn workload_name(labels: &BTreeMap<String, String>, pod: &str) -> String {
    if let Some(name) = NAME_LABELS.iter().find_map(|k| labels.get(*k)) {
        return name.clone();
    }
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() >= 3 {
        parts[..parts.len() - 2].join("-")
    } else {
        pod.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["keel-proxy"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("valid flags")
    }

    #[test]
    fn builds_istio_node() {
        let c = parse(&[
            "--namespace",
            "bookinfo",
            "--pod-name",
            "reviews-v1-5b9f8c-x7k2p",
            "--pod-ip",
            "10.1.0.21",
            "--labels",
            "version=v1, team=a",
            "--service-account",
            "bookinfo-reviews",
        ]);
        let node = c.node().expect("node");
        assert_eq!(
            node.id,
            "sidecar~10.1.0.21~reviews-v1-5b9f8c-x7k2p.bookinfo~bookinfo.svc.cluster.local"
        );
        let meta = node.metadata.expect("metadata");
        let s = |k: &str| match meta.fields.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("WORKLOAD_NAME"), "reviews-v1");
        assert_eq!(s("NAMESPACE"), "bookinfo");
        assert_eq!(s("SERVICE_ACCOUNT"), "bookinfo-reviews");
        assert_eq!(s("INSTANCE_IPS"), "10.1.0.21");
        assert_eq!(s("CLUSTER_ID"), "Kubernetes");
        match meta.fields.get("LABELS").and_then(|v| v.kind.clone()) {
            Some(Kind::StructValue(l)) => assert_eq!(l.fields.len(), 2),
            other => panic!("LABELS: {other:?}"),
        }
    }

    #[test]
    fn router_mode_and_app_label() {
        let c = parse(&[
            "--mode",
            "router",
            "--pod-name",
            "gw-1",
            "--labels",
            "app=ingress",
        ]);
        assert!(c.node_id().starts_with("router~~gw-1.default~"));
        let labels = c.parsed_labels().expect("labels");
        assert_eq!(workload_name(&labels, "gw-1"), "ingress");
    }

    #[test]
    fn durations_parse_with_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_duration("5w").is_err_and(|e| e.contains("unknown unit")));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn label_errors_are_precise() {
        assert_eq!(
            parse_labels("app=a,version"),
            Err(ConfigError::LabelNotPair {
                index: 2,
                entry: "version".into()
            })
        );
        assert_eq!(
            parse_labels("=x"),
            Err(ConfigError::EmptyLabelKey {
                index: 1,
                entry: "=x".into()
            })
        );
        assert_eq!(
            parse_labels("a=1,a=2"),
            Err(ConfigError::DuplicateLabel { key: "a".into() })
        );
        assert!(parse_labels("").expect("empty").is_empty());
    }
}
