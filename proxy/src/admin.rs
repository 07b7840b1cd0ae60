//! The admin server (localhost, `--admin-addr`, Envoy's 15000) and the
//! readiness server (`--ready-addr`, Istio's 15021).
//!
//! Admin: `GET /config_dump` (the proxy state as JSON), `GET /logging` and
//! `POST /logging?level=…`, `POST /quitquitquit`. Readiness:
//! `GET /healthz/ready`, 200 once the first CDS and LDS (and the EDS and RDS
//! they reference) are applied, 503 before. Both read the shared state
//! without locking and never write it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::logging::LogLevel;
use crate::state::SharedState;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error(
        "binding {what} on {addr}: {source}; is another proxy running, or pass a different --{what}"
    )]
    Bind {
        /// The flag (`admin-addr`, `ready-addr`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving {what}: {source}")]
    Serve {
        /// The server.
        what: &'static str,
        /// The IO error.
        source: std::io::Error,
    },
}

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy state.
    pub state: SharedState,
    /// The log level control, when logging was initialised.
    pub log_level: Option<LogLevel>,
    /// Set to true to shut the proxy down.
    pub shutdown: watch::Sender<bool>,
}

/// The admin routes.
pub fn admin_router(s: AdminState) -> Router {
    Router::new()
        .route("/config_dump", get(config_dump))
        .route("/logging", get(get_logging).post(set_logging))
        .route("/quitquitquit", post(quit))
        .with_state(s)
}

/// The readiness routes.
pub fn ready_router(state: SharedState, draining: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz/ready", get(ready))
        .with_state((state, draining))
}

/// The Prometheus routes (`/stats/prometheus`, and `/metrics` for
/// scrapers configured the generic way).
pub fn stats_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/stats/prometheus", get(stats))
        .route("/metrics", get(stats))
        .with_state(registry)
}

async fn stats(State(registry): State<Arc<Registry>>) -> Response {
    match crate::metrics::encode(&registry) {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Binds `addr` (flag name `what` for messages).
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { what, addr, source })
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| AdminError::Serve { what, source })
}

async fn config_dump(State(s): State<AdminState>) -> Response {
    let state = s.state.load_full();
    axum::Json(&*state).into_response()
}

async fn get_logging(State(s): State<AdminState>) -> Response {
    match &s.log_level {
        Some(l) => format!("level: {}\n", l.get()).into_response(),
        None => (StatusCode::NOT_FOUND, "logging is not configurable\n").into_response(),
    }
}

async fn set_logging(
    State(s): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(level) = q.get("level") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing ?level=, e.g. POST /logging?level=debug\n",
        )
            .into_response();
    };
    let Some(control) = &s.log_level else {
        return (StatusCode::NOT_FOUND, "logging is not configurable\n").into_response();
    };
    match control.set(level) {
        Ok(()) => {
            tracing::info!(%level, "log level changed");
            format!("level: {level}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn quit(State(s): State<AdminState>) -> Response {
    tracing::info!("/quitquitquit: shutting down");
    s.shutdown.send_replace(true);
    "OK\n".into_response()
}

async fn ready(State((state, draining)): State<(SharedState, watch::Receiver<bool>)>) -> Response {
    if *draining.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining (shutting down)\n",
        )
            .into_response();
    }
    if state.load().is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first CDS, LDS and the EDS/RDS they reference\n",
        )
            .into_response()
    }
}
