//! keel-pilot's configuration: the only place that reads flags and the
//! environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How pilot is run.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "keel-pilot",
    version,
    about = "Keel's control plane: Istio config in, Envoy xDS v3 (ADS) out"
)]
pub struct Config {
    /// Directory of Istio/Kubernetes YAML or JSON, read recursively and watched.
    #[arg(long, env = "KEEL_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Address of the xDS (ADS) gRPC server. Port 0 picks a free port.
    #[arg(long, env = "KEEL_XDS_ADDR", default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,
    /// Address of the monitoring and debug HTTP server (/metrics, /ready, /debug/*).
    #[arg(long, env = "KEEL_HTTP_ADDR", default_value = "127.0.0.1:15014")]
    pub http_addr: SocketAddr,
    /// The cluster's DNS domain suffix: services are NAME.NAMESPACE.svc.SUFFIX.
    #[arg(long, env = "KEEL_DOMAIN_SUFFIX", default_value = "cluster.local")]
    pub domain_suffix: String,
    /// The namespace whose policies apply mesh-wide.
    #[arg(long, env = "KEEL_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// Quiet period after a config change before it is pushed, in milliseconds.
    #[arg(long, env = "KEEL_DEBOUNCE_AFTER_MS", default_value_t = 100)]
    pub debounce_after_ms: u64,
    /// Longest a stream of changes may delay a push, in milliseconds.
    #[arg(long, env = "KEEL_DEBOUNCE_MAX_MS", default_value_t = 1000)]
    pub debounce_max_ms: u64,
    /// How often the config directory is scanned for changes, in milliseconds.
    #[arg(long, env = "KEEL_POLL_MS", default_value_t = 250)]
    pub poll_ms: u64,
    /// Log format: `plain` or `json`.
    #[arg(long, env = "KEEL_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    pub log_format: String,
}

impl Config {
    /// The debounce quiet period.
    pub fn debounce_after(&self) -> Duration {
        Duration::from_millis(self.debounce_after_ms)
    }

    /// The debounce maximum delay.
    pub fn debounce_max(&self) -> Duration {
        Duration::from_millis(self.debounce_max_ms)
    }

    /// The directory scan interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(10))
    }
}
