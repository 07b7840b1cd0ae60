//! The admin server (localhost, `--admin-addr`, Envoy's 15000) and the
//! readiness server (`--ready-addr`, Istio's 15021).
//!
//! Admin: `GET /config_dump` (the proxy state as JSON), `GET /logging` and
//! `POST /logging?level=…`, `POST /quitquitquit`. Readiness:
//! `GET /healthz/ready`, 200 once the first CDS and LDS (and the EDS and RDS
//! they reference) are applied, 503 before. Both read the shared state
//! without locking and never write it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity;
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

/// What one of the three servers answers.
#[derive(Clone)]
pub enum Endpoints {
    /// Admin: `GET /config_dump`, `GET`/`POST /logging`, `POST /quitquitquit`.
    Admin(AdminState),
    /// Readiness: `GET /healthz/ready` (also waiting for the workload
    /// certificate when a CA is configured).
    Ready(
        SharedState,
        watch::Receiver<bool>,
        Option<identity::Current>,
    ),
    /// Prometheus: `GET /stats/prometheus` (and `/metrics`), with the
    /// workload certificate's expiry when there is one.
    Stats(Arc<Registry>, Option<identity::Current>),
}

/// A response with a body.
type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

/// The admin routes.
pub fn admin_router(s: AdminState) -> Endpoints {
    Endpoints::Admin(s)
}

/// The readiness routes.
pub fn ready_router(
    state: SharedState,
    draining: watch::Receiver<bool>,
    identity: Option<identity::Current>,
) -> Endpoints {
    Endpoints::Ready(state, draining, identity)
}

/// The Prometheus routes (`/stats/prometheus`, and `/metrics` for
/// scrapers configured the generic way).
pub fn stats_router(registry: Arc<Registry>, identity: Option<identity::Current>) -> Endpoints {
    Endpoints::Stats(registry, identity)
}

impl Endpoints {
    fn handle<B>(&self, req: &Request<B>) -> Reply {
        let path = req.uri().path();
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let post = req.method() == Method::POST;
        let route = match (self, path) {
            (Self::Admin(s), "/config_dump") => get.then(|| config_dump(s)),
            (Self::Admin(s), "/logging") if post => Some(set_logging(s, req.uri().query())),
            (Self::Admin(s), "/logging") => get.then(|| get_logging(s)),
            (Self::Admin(s), "/quitquitquit") => post.then(|| quit(s)),
            (Self::Ready(state, draining, id), "/healthz/ready") => {
                get.then(|| ready(state, draining, id.as_ref()))
            }
            (Self::Stats(registry, id), "/stats/prometheus" | "/metrics") => {
                get.then(|| stats(registry, id.as_ref()))
            }
            _ => return text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
        };
        route.unwrap_or_else(|| {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}\n", req.method()),
            )
        })
    }
}

fn stats(registry: &Registry, identity: Option<&identity::Current>) -> Reply {
    match crate::metrics::encode(registry) {
        Ok(mut body) => {
            // Istio's agent metric, computed now (it counts down).
            if let Some(c) = identity.and_then(|i| i.load_full()) {
                let left = c.expiry_seconds(std::time::SystemTime::now());
                body.push_str(&format!(
                    "# HELP istio_agent_cert_expiry_seconds The time remaining, in seconds, before the certificate chain will expire. A negative value indicates the cert is expired.\n\
                     # TYPE istio_agent_cert_expiry_seconds gauge\n\
                     istio_agent_cert_expiry_seconds{{resource_name=\"default\"}} {left}\n"
                ));
            }
            reply(StatusCode::OK, crate::metrics::CONTENT_TYPE, body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Binds `addr` (flag name `what` for messages).
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { what, addr, source })
}

/// Serves `endpoints` (HTTP/1.1) on `listener` until `shutdown` turns
/// true; open connections then finish the request they are on.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    endpoints: Endpoints,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::debug!(what, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return Ok(()),
        };
        let endpoints = endpoints.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = endpoints.handle(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn config_dump(s: &AdminState) -> Reply {
    let state = s.state.load_full();
    match serde_json::to_vec(&*state) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing the state: {e}\n"),
        ),
    }
}

fn get_logging(s: &AdminState) -> Reply {
    match &s.log_level {
        Some(l) => text(StatusCode::OK, format!("level: {}\n", l.get())),
        None => text(StatusCode::NOT_FOUND, "logging is not configurable\n"),
    }
}

fn set_logging(s: &AdminState, query: Option<&str>) -> Reply {
    let Some(level) = query_param(query.unwrap_or(""), "level") else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing ?level=, e.g. POST /logging?level=debug\n",
        );
    };
    let Some(control) = &s.log_level else {
        return text(StatusCode::NOT_FOUND, "logging is not configurable\n");
    };
    match control.set(&level) {
        Ok(()) => {
            tracing::info!(%level, "log level changed");
            text(StatusCode::OK, format!("level: {level}\n"))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// The first `name=` value of a query string, percent-decoded (`+` is a
/// space, as in forms).
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn quit(s: &AdminState) -> Reply {
    tracing::info!("/quitquitquit: shutting down");
    s.shutdown.send_replace(true);
    text(StatusCode::OK, "OK\n")
}

fn ready(
    state: &SharedState,
    draining: &watch::Receiver<bool>,
    identity: Option<&identity::Current>,
) -> Reply {
    if *draining.borrow() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining (shutting down)\n",
        );
    }
    if identity.is_some_and(|i| i.load().is_none()) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the workload certificate from citadel (--ca-address)\n",
        );
    }
    if state.load().is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first CDS, LDS and the EDS/RDS they reference\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_param("level=debug", "level").as_deref(),
            Some("debug")
        );
        assert_eq!(
            query_param("x=1&level=info%2Ckeel_proxy%3Ddebug", "level").as_deref(),
            Some("info,keel_proxy=debug")
        );
        assert_eq!(
            query_param("level=a+b%zz%4", "level").as_deref(),
            Some("a b%zz%4")
        );
        assert_eq!(query_param("levels=x", "level"), None);
        assert_eq!(query_param("", "level"), None);
    }

    #[test]
    fn unknown_paths_and_methods_say_so() {
        let stats = stats_router(Arc::new(Registry::default()), None);
        let req = |m: Method, p: &str| Request::builder().method(m).uri(p).body(()).expect("req");
        assert_eq!(
            stats.handle(&req(Method::GET, "/metrics")).status(),
            StatusCode::OK
        );
        assert_eq!(
            stats.handle(&req(Method::GET, "/nope")).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            stats
                .handle(&req(Method::POST, "/stats/prometheus"))
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
