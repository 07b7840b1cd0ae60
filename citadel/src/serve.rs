//! Serving: the certificate API over TLS (client certificates optional,
//! for renewals) and the monitoring endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use keel_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::{Authenticator, BootstrapTokens, ClientCertificates};
use crate::ca::{Ca, ROOT_CERT_FILE, Source};
use crate::config::ServeArgs;
use crate::metrics::Metrics;
use crate::service::CertificateService;
use crate::token::Tokens;

/// How long citadel's own serving certificate is valid (it is made anew at
/// every start, with a key that never leaves memory).
const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Runs citadel until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let state_dir = args
        .state_dir
        .clone()
        .context("--state-dir (or KEEL_CITADEL_STATE_DIR) is required: where the root and the token key are kept")?;
    let source = match &args.ca_cert {
        Some(ca_cert) => Source::Plugged {
            ca_cert: ca_cert.clone(),
            ca_key: args.ca_key.clone().context("--ca-cert needs --ca-key")?,
            cert_chain: args.cert_chain.clone(),
            root_cert: args
                .root_cert
                .clone()
                .context("--ca-cert needs --root-cert")?,
        },
        None => Source::SelfSigned {
            state_dir: state_dir.clone(),
            trust_domain: args.trust_domain.clone(),
        },
    };
    let root_path = match &source {
        Source::Plugged { root_cert, .. } => root_cert.clone(),
        Source::SelfSigned { state_dir, .. } => state_dir.join(ROOT_CERT_FILE),
    };
    let ca = Arc::new(Ca::load(&source)?);
    let tokens = Arc::new(Tokens::load_or_create(&state_dir)?);
    let metrics = Arc::new(Metrics::default());

    let tls = serving_tls(&ca, &args)?;
    let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", args.grpc_addr))?;
    let monitoring = tokio::net::TcpListener::bind(args.monitoring_addr)
        .await
        .with_context(|| format!("binding the monitoring address {}", args.monitoring_addr))?;
    let grpc_addr = grpc.local_addr()?;
    let monitoring_addr = monitoring.local_addr()?;

    let authenticators: Vec<Box<dyn Authenticator>> = vec![
        Box::new(ClientCertificates {
            trust_domain: args.trust_domain.clone(),
        }),
        Box::new(BootstrapTokens(tokens)),
    ];
    let service = CertificateService {
        ca: Arc::clone(&ca),
        authenticators,
        trust_domain: args.trust_domain.clone(),
        default_ttl: args.workload_cert_ttl,
        max_ttl: args.max_workload_cert_ttl,
        metrics: Arc::clone(&metrics),
    };
    let grpc_server = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        .add_service(IstioCertificateServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming(grpc), keel_common::shutdown_signal());
    let monitoring_server = axum::serve(monitoring, monitoring_router(ca, metrics))
        .with_graceful_shutdown(keel_common::shutdown_signal());

    tracing::info!(
        %grpc_addr,
        %monitoring_addr,
        trust_domain = %args.trust_domain,
        root = %root_path.display(),
        "keel-citadel serving"
    );
    print_ready(grpc_addr, monitoring_addr, &root_path);
    let (g, m) = tokio::join!(grpc_server, monitoring_server);
    g.context("serving gRPC")?;
    m.context("serving monitoring")?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: a response's last
/// TLS record would otherwise wait for the client's delayed ACK (40 ms per
/// request, measured by keel-citadel-bench).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        })
    })
}

/// The line tests and `keelctl` wait for.
fn print_ready(
    grpc: std::net::SocketAddr,
    monitoring: std::net::SocketAddr,
    root: &std::path::Path,
) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "keel-citadel ready: grpc={grpc} monitoring={monitoring} root={}",
        root.display()
    );
    let _ = out.flush();
}

/// The TLS identity of the gRPC listener: a fresh key, certified by the CA
/// for `--serving-dns`, loopback and the listening address.
fn serving_tls(ca: &Ca, args: &ServeArgs) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the serving key")?;
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !args.grpc_addr.ip().is_unspecified() && !ips.contains(&args.grpc_addr.ip()) {
        ips.push(args.grpc_addr.ip());
    }
    let cert = ca
        .sign_server(&key, &args.serving_dns, &ips, SERVING_TTL)
        .context("certifying the serving key")?;
    let chain = format!("{cert}{}", ca.intermediates_pem());
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            chain,
            key.serialize_pem(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.root_pem()))
        .client_auth_optional(true))
}

fn monitoring_router(ca: Arc<Ca>, metrics: Arc<Metrics>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render(
                    ca.root_not_after(),
                    ca.signing_not_after(),
                    SystemTime::now(),
                );
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/ready", get(|| async { "ready\n" }))
}
