//! The keel-proxy binary: parses the configuration, sets up logging, binds
//! the data-path, admin, stats and readiness ports, starts the ADS client,
//! and drains gracefully on SIGTERM, Ctrl-C or `POST /quitquitquit`.
//! `keel-proxy init` instead installs the pod's iptables capture
//! (`keel_proxy::init`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use keel_proxy::admin::{self, AdminState};
use keel_proxy::config::{Config, Mode};
use keel_proxy::http::Role;
use keel_proxy::http::access_log::AccessLog;
use keel_proxy::identity;
use keel_proxy::listen::{self, DataPath};
use keel_proxy::metrics::Metrics;
use keel_proxy::metrics::labels::{Workload, spiffe_id};
use keel_proxy::upstream::Plane;
use keel_proxy::xds::XdsClient;
use keel_proxy::{drain, state};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// mimalloc: the data path allocates and frees many small objects per
/// request (header maps, body frames, task cells); it costs less CPU per
/// request than glibc's allocator (docs/benchmarks.md). Called through
/// `keel_proxy::alloc` so that small allocations take its fast path.
#[global_allocator]
static ALLOCATOR: keel_proxy::alloc::Mimalloc = keel_proxy::alloc::Mimalloc;

fn main() -> ExitCode {
    // `keel-proxy init …` is the init container's role (iptables capture),
    // with its own flags: dispatched before the proxy's Config is parsed.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return keel_proxy::init::main(std::env::args_os().skip(2));
    }
    let config = Config::parse();
    // An idle runtime thread hands its free heap memory back to the OS
    // (`keel_proxy::alloc::trim_if_due`).
    let runtime = if config.concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(keel_proxy::alloc::trim_if_due)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(config.concurrency))
            .enable_all()
            .on_thread_park(keel_proxy::alloc::trim_if_due)
            .build()
    };
    match runtime {
        Ok(rt) => rt.block_on(start(config)),
        Err(e) => {
            eprintln!("keel-proxy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: Config) -> ExitCode {
    // Wakes the runtime once per trim interval, so a thread that went idle
    // right after a burst (too soon to trim then) parks, and trims, again.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(keel_proxy::alloc::TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    });
    let log_level = match keel_proxy::logging::init(config.log_format) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("keel-proxy: {e}");
            None
        }
    };
    match run(config, log_level).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("keel-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Config(#[from] keel_proxy::config::ConfigError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("--access-log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), MainError> {
    let l = admin::bind(what, addr).await?;
    let local = l
        .local_addr()
        .map_err(|source| admin::AdminError::Bind { what, addr, source })?;
    Ok((l, local))
}

async fn run(
    config: Config,
    log_level: Option<keel_proxy::logging::LogLevel>,
) -> Result<(), MainError> {
    let node = config.node()?;
    let own = Workload::local(&config)?;
    let shared = state::shared();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let registry = Arc::new(registry);
    let access_log = match &config.access_log {
        Some(p) => Some(
            AccessLog::start(p.clone()).map_err(|source| MainError::AccessLog {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    let plane = Arc::new(Plane::new(shared.clone(), metrics.clone(), own));
    let dp = DataPath {
        plane,
        access_log,
        detect_timeout: config.detect_timeout,
        retry_buffer: config.retry_buffer,
    };

    let (admin_listener, admin_addr) = bind("admin-addr", config.admin_addr).await?;
    let (ready_listener, ready_addr) = bind("ready-addr", config.ready_addr).await?;
    let (stats_listener, stats_addr) = bind("stats-addr", config.stats_addr).await?;
    let (drain, watch) = drain::channel();
    let (draining_tx, draining_rx) = watch::channel(false);
    let mut ports = format!("admin={admin_addr} ready={ready_addr} stats={stats_addr}");
    match config.mode {
        Mode::Sidecar => {
            let (out, out_addr) = bind("outbound-addr", config.outbound_addr).await?;
            let (inb, in_addr) = bind("inbound-addr", config.inbound_addr).await?;
            ports.push_str(&format!(" outbound={out_addr} inbound={in_addr}"));
            tokio::spawn(listen::serve(
                dp.clone(),
                out,
                Role::Outbound,
                watch.clone(),
            ));
            tokio::spawn(listen::serve(dp.clone(), inb, Role::Inbound, watch.clone()));
        }
        Mode::Router => {
            tokio::spawn(listen::gateways(dp.clone(), watch.clone()));
        }
    }
    drop(watch);

    // The workload certificate, when a CA is configured: readiness waits
    // for it, the stats show its expiry.
    let identity = config.ca_address.as_ref().map(|ca| {
        let current: identity::Current = Arc::default();
        let settings = identity::Settings {
            ca_address: ca.clone(),
            ca_root_cert: config.ca_root_cert.clone(),
            token_file: config.token_file.clone(),
            spiffe_id: spiffe_id(
                &config.cluster_domain,
                &config.namespace,
                &config.service_account,
            ),
            ttl: config.cert_ttl,
        };
        tokio::spawn(identity::run(
            settings,
            current.clone(),
            shutdown_rx.clone(),
        ));
        current
    });

    let admin_task = tokio::spawn(admin::serve(
        "admin-addr",
        admin_listener,
        admin::admin_router(AdminState {
            state: shared.clone(),
            log_level,
            shutdown: shutdown_tx.clone(),
        }),
        shutdown_rx.clone(),
    ));
    let ready_task = tokio::spawn(admin::serve(
        "ready-addr",
        ready_listener,
        admin::ready_router(shared.clone(), draining_rx, identity.clone()),
        shutdown_rx.clone(),
    ));
    let stats_task = tokio::spawn(admin::serve(
        "stats-addr",
        stats_listener,
        admin::stats_router(registry, identity),
        shutdown_rx.clone(),
    ));
    tracing::info!(node = %node.id, xds = %config.xds_address, "starting keel-proxy");
    let xds_task = tokio::spawn(
        XdsClient::new(node, &config.xds_address, shared.clone())
            .with_metrics(metrics)
            .run(shutdown_rx.clone()),
    );
    println!("keel-proxy ready: {ports}");

    let mut quit = shutdown_rx.clone();
    tokio::select! {
        _ = quit.wait_for(|s| *s) => {}
        _ = keel_common::shutdown_signal() => {}
    }
    draining_tx.send_replace(true);
    let active = drain.active();
    tracing::info!(
        connections = active,
        deadline = ?config.drain_timeout,
        "draining: no new connections, finishing in-flight work"
    );
    if drain.drain(config.drain_timeout).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(deadline = ?config.drain_timeout, "drain deadline passed; closing what is left");
    }
    shutdown_tx.send_replace(true);
    let _ = xds_task.await;
    for task in [admin_task, ready_task, stats_task] {
        if let Ok(Err(e)) = task.await {
            return Err(e.into());
        }
    }
    tracing::info!("keel-proxy stopped");
    Ok(())
}
