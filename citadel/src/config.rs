//! keel-citadel's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keel_common::parse_duration;

/// keel-citadel: the certificate authority of the mesh.
#[derive(Debug, Parser)]
#[command(name = "keel-citadel", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// `token`, or nothing to serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving flags.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints a bootstrap token for a namespace and service account: a
    /// proxy presents it (`--token-file`) to get its first certificate.
    Token(TokenArgs),
}

/// `keel-citadel token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The state directory of the citadel that will check the token.
    #[arg(long, env = "KEEL_CITADEL_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The workload's namespace.
    #[arg(long)]
    pub namespace: String,
    /// The workload's service account.
    #[arg(long)]
    pub service_account: String,
    /// How long the token is valid (`1h`, `30m`, `7d`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// Serving the certificate API.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the root certificate and key (when self-signed) and the
    /// bootstrap-token key are kept; created when missing.
    #[arg(long, env = "KEEL_CITADEL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The SPIFFE trust domain of issued identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The gRPC (TLS) address of the certificate API.
    #[arg(long, env = "KEEL_CITADEL_GRPC_ADDR", default_value = "0.0.0.0:8060")]
    pub grpc_addr: SocketAddr,
    /// The monitoring address (`/metrics`, `/ready`).
    #[arg(
        long,
        env = "KEEL_CITADEL_MONITORING_ADDR",
        default_value = "0.0.0.0:15014"
    )]
    pub monitoring_addr: SocketAddr,
    /// A plugged-in signing certificate (Istio's `ca-cert.pem`); needs
    /// `--ca-key` and `--root-cert`.
    #[arg(long, requires_all = ["ca_key", "root_cert"])]
    pub ca_cert: Option<PathBuf>,
    /// The plugged-in certificate's key (PKCS#8 PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The chain from the plugged-in certificate up to the root, root
    /// excluded (Istio's `cert-chain.pem`).
    #[arg(long, requires = "ca_cert")]
    pub cert_chain: Option<PathBuf>,
    /// The root of the plugged-in certificate (Istio's `root-cert.pem`).
    #[arg(long, requires = "ca_cert")]
    pub root_cert: Option<PathBuf>,
    /// The lifetime of a workload certificate whose request names none.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,
    /// The longest lifetime issued; longer requests are capped to it.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub max_workload_cert_ttl: Duration,
    /// DNS names of citadel's own serving certificate (the name a proxy's
    /// `--ca-address` uses must be one of them); comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "localhost,keel-citadel,keel-citadel.keel-system.svc,istiod.istio-system.svc"
    )]
    pub serving_dns: Vec<String>,
    /// Log format: `plain` or `json`.
    #[arg(long, default_value = "plain")]
    pub log_format: String,
}
