//! `keel-pilot`: serves Istio config from a directory as Envoy xDS v3.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser as _;
use keel_pilot::config::Config;
use keel_pilot::debug::{self, DebugState};
use keel_pilot::metrics::Metrics;
use keel_pilot::model::store::ConfigStore;
use keel_pilot::source::file::{self, Debounce, FileSource};
use keel_pilot::xds::ads::AdsServer;
use keel_pilot::xds::generator::KeelGenerator;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

fn main() -> ExitCode {
    let config = Config::parse();
    keel_common::init_logging(&config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel-pilot: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("keel-pilot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let mut store = ConfigStore::new(&config.domain_suffix, &config.root_namespace);
    let mut source = FileSource::new(&config.config_dir);
    source
        .sync(&mut store)
        .context("reading the initial config")?;
    let store = Arc::new(Mutex::new(store));
    let first = file::publish(&store, &metrics);
    let (tx, rx) = watch::channel(first);

    let generator = Arc::new(KeelGenerator::new());
    let ads = AdsServer::new(generator.clone(), rx.clone(), metrics.clone());

    let xds_listener = tokio::net::TcpListener::bind(config.xds_addr)
        .await
        .with_context(|| format!("binding the xDS address {}", config.xds_addr))?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.http_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    tokio::spawn(file::run(
        source,
        store.clone(),
        tx,
        metrics.clone(),
        Debounce {
            after: config.debounce_after(),
            max: config.debounce_max(),
            poll: config.poll_interval(),
        },
    ));

    let ads_handle = ads.clone();
    let debug_state = Arc::new(DebugState {
        metrics: metrics.clone(),
        store,
        snapshots: rx,
        ads: ads.clone(),
        generator,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = {
        let mut stop = stop_rx.clone();
        axum::serve(http_listener, debug::router(debug_state)).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
    };
    let xds = {
        let mut stop = stop_rx.clone();
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(ads.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(xds_listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
    };
    tracing::info!(%xds_addr, %http_addr, config_dir = %config.config_dir.display(), "keel-pilot serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "keel-pilot ready: xds={xds_addr} http={http_addr}")?;
        out.flush()?;
    }
    let ads_for_stop = ads_handle.clone();
    tokio::spawn(async move {
        keel_common::shutdown_signal().await;
        tracing::info!("shutting down");
        ads_for_stop.shutdown();
        let _ = stop_tx.send(true);
    });
    let (h, x) = tokio::join!(http, xds);
    h.context("HTTP server")?;
    x.context("xDS server")?;
    Ok(())
}
