//! The keel-proxy binary: parses the configuration, sets up logging, starts
//! the ADS client and the admin and readiness servers, and exits gracefully
//! on SIGTERM, Ctrl-C or `POST /quitquitquit`.

use std::process::ExitCode;

use clap::Parser;
use keel_proxy::admin::{self, AdminState};
use keel_proxy::config::Config;
use keel_proxy::state;
use keel_proxy::xds::XdsClient;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
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
}

async fn run(
    config: Config,
    log_level: Option<keel_proxy::logging::LogLevel>,
) -> Result<(), MainError> {
    let node = config.node()?;
    let shared = state::shared();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let admin_listener = admin::bind("admin-addr", config.admin_addr).await?;
    let ready_listener = admin::bind("ready-addr", config.ready_addr).await?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| admin::AdminError::Bind {
            what: "admin-addr",
            addr: config.admin_addr,
            source,
        })?;
    let ready_addr = ready_listener
        .local_addr()
        .map_err(|source| admin::AdminError::Bind {
            what: "ready-addr",
            addr: config.ready_addr,
            source,
        })?;

    let admin_router = admin::admin_router(AdminState {
        state: shared.clone(),
        log_level,
        shutdown: shutdown_tx.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        "admin-addr",
        admin_listener,
        admin_router,
        shutdown_rx.clone(),
    ));
    let ready_task = tokio::spawn(admin::serve(
        "ready-addr",
        ready_listener,
        admin::ready_router(shared.clone()),
        shutdown_rx.clone(),
    ));
    tracing::info!(node = %node.id, xds = %config.xds_address, "starting keel-proxy");
    let xds_task = tokio::spawn(
        XdsClient::new(node, &config.xds_address, shared.clone()).run(shutdown_rx.clone()),
    );
    println!("keel-proxy ready: admin={admin_addr} ready={ready_addr}");

    let mut quit = shutdown_rx.clone();
    tokio::select! {
        _ = quit.wait_for(|s| *s) => {}
        _ = keel_common::shutdown_signal() => tracing::info!("shutting down"),
    }
    shutdown_tx.send_replace(true);
    let _ = xds_task.await;
    for task in [admin_task, ready_task] {
        if let Ok(Err(e)) = task.await {
            return Err(e.into());
        }
    }
    tracing::info!("keel-proxy stopped");
    Ok(())
}
