//! keel-echo: the sample workload for Keel's tests and local demo.
//!
//! One listener per `--listen` address serves HTTP/1.1, HTTP/2 with prior
//! knowledge (h2c) and gRPC (`keel.echo.v1.Echo`); every answer carries the
//! workload's name and version and what it saw of the request, so a test can
//! count a traffic split by version. It can fail a percentage of requests,
//! delay them, and call downstream services (through `HTTP_PROXY`). This file
//! owns the process: flags, listeners, per-connection dispatch between the
//! gRPC service (`content-type: application/grpc`) and the HTTP echo handler,
//! and graceful shutdown on SIGTERM/Ctrl-C. The answers themselves live in
//! `http.rs`, `grpc.rs` and `downstream.rs`.

mod config;
mod downstream;
mod grpc;
mod http;

use std::convert::Infallible;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use keel_proto::keel::echo::v1::echo_server::EchoServer;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::Service;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;

/// State shared by every connection.
pub struct Shared {
    pub config: Config,
    /// Seeds the fault-injection dice: a per-process random SipHash key,
    /// or SipHash's fixed key over `--seed` and the roll number.
    dice: Dice,
    rolls: AtomicU64,
}

impl Shared {
    fn new(config: Config) -> Self {
        let dice = match config.seed {
            Some(seed) => Dice::Seeded(seed),
            None => Dice::Random(std::collections::hash_map::RandomState::new()),
        };
        Self {
            config,
            dice,
            rolls: AtomicU64::new(0),
        }
    }

    /// True with probability `percent`/100: whether to fail this request.
    pub fn roll(&self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        if percent >= 100.0 {
            return true;
        }
        let roll = self.rolls.fetch_add(1, Ordering::Relaxed);
        let n = match &self.dice {
            Dice::Random(key) => key.hash_one(roll),
            Dice::Seeded(seed) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                (*seed, roll).hash(&mut h);
                h.finish()
            }
        };
        ((n % 1_000_000) as f64) < percent * 10_000.0
    }
}

/// Where the fault-injection dice get their randomness.
enum Dice {
    Random(std::collections::hash_map::RandomState),
    Seeded(u64),
}

/// The client address of a connection, put into each request's extensions
/// (tonic passes them on to the gRPC handler).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keel-echo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let config = Config::from_env()?;
    let mut listeners = Vec::with_capacity(config.listen.len());
    let mut stdout = std::io::stdout().lock();
    for addr in &config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --listen {addr}"))?;
        let local = listener
            .local_addr()
            .with_context(|| format!("reading the bound address of {addr}"))?;
        writeln!(stdout, "keel-echo listening on {local}").context("writing to stdout")?;
        listeners.push(TcpListenerStream::new(listener));
    }
    stdout.flush().context("writing to stdout")?;
    drop(stdout);
    info!(
        name = %config.name,
        version = %config.version,
        fail_percent = config.fail_percent,
        delay_ms = config.delay.as_millis() as u64,
        downstream = config.downstream.len(),
        proxy = config.proxy.as_ref().map(|p| p.authority.as_str()),
        "keel-echo started"
    );

    let drain = config.drain;
    let shared = Arc::new(Shared::new(config));
    let grpc = EchoServer::new(grpc::GrpcEcho::new(shared.clone()));
    let graceful = GracefulShutdown::new();
    let mut incoming = futures::stream::select_all(listeners);
    let shutdown = keel_common::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = incoming.next() => match conn {
                Some(Ok(stream)) => {
                    tokio::spawn(serve_connection(
                        stream,
                        shared.clone(),
                        grpc.clone(),
                        graceful.watcher(),
                    ));
                }
                Some(Err(err)) => {
                    warn!("accepting a connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    drop(incoming);
    info!(
        connections = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "connections still open after {} ms; exiting anyway",
            drain.as_millis()
        );
    }
    Ok(())
}

/// Serves one connection until it closes or shutdown drains it: HTTP/1.1
/// (with upgrades) or h2c, each request routed to the gRPC service or the
/// HTTP echo handler.
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    grpc: EchoServer<grpc::GrpcEcho>,
    watcher: Watcher,
) {
    let Ok(peer) = stream.peer_addr() else { return };
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%peer, "setting TCP_NODELAY failed: {err}");
    }
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let shared = shared.clone();
        let mut grpc = grpc.clone();
        async move {
            if is_grpc(&req) {
                grpc.call(req).await
            } else {
                Ok::<_, Infallible>(http::handle(shared, req).await)
            }
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(err) = watcher
        .watch(conn)
        .instrument(info_span!("conn", %peer))
        .await
    {
        debug!(%peer, "connection ended with an error: {err}");
    }
}

/// gRPC is HTTP/2 with `content-type: application/grpc` (or `+proto` etc.).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == hyper::Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}
