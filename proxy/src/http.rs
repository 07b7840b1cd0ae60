//! HTTP forwarding: serves one downstream connection (HTTP/1.1 or h2c, as
//! detection found), routes each request by the route table its listener
//! chain names (or, for explicit-proxy and Host-addressed requests, the
//! listener of the authority's port), and forwards it to an endpoint of the
//! chosen cluster over a pooled HTTP/1.1 or HTTP/2 connection, streaming
//! both bodies. Upgrades (WebSocket) and `CONNECT` tunnels are spliced
//! byte for byte.
//!
//! Every response the proxy produces itself carries `x-keel-error: CODE`,
//! the code also being the request's `response_flags` and logged.

pub mod access_log;
pub mod body;
mod cors;
mod error;
mod forward;
mod retry;
mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use error::ErrorCode;

use crate::drain;
use crate::http2::server::{self as h2srv, RecvBody};
use crate::state::listener::RouteSource;
use crate::upstream::Plane;
use access_log::AccessLog;

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the data path sends or forwards.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Which side of the workload a connection is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leaving the workload (the outbound capture / explicit-proxy port).
    Outbound,
    /// Entering the workload (the inbound capture port).
    Inbound,
    /// A gateway listener, by name.
    Gateway(String),
}

/// What every request of one downstream connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    /// The data plane.
    pub plane: Arc<Plane>,
    /// The access log, when on.
    pub access_log: Option<AccessLog>,
    /// Which listener accepted it.
    pub role: Role,
    /// The client.
    pub peer: SocketAddr,
    /// The address the client reached (the listener's).
    pub local: SocketAddr,
    /// The original destination of a redirected connection.
    pub orig_dst: Option<SocketAddr>,
    /// The route source of the chain chosen at accept time; `None` routes
    /// each request by its authority's port.
    pub routes: Option<RouteSource>,
    /// The downstream spoke HTTP/2.
    pub h2: bool,
    /// Request body bytes kept for retries; a larger body is sent once.
    pub retry_buffer: usize,
    /// The route table the last request used (`forward::route_table`).
    pub route_memo: std::sync::Mutex<Option<RouteMemo>>,
}

/// The route table a connection's last request used, and for which
/// snapshot and port: the next request of the connection reuses it while
/// the snapshot is the same. The snapshot is held weakly, and a `Weak`
/// keeps its allocation from being reused, so comparing addresses cannot
/// mistake a newer snapshot for it.
#[derive(Debug)]
pub struct RouteMemo {
    snap: std::sync::Weak<crate::upstream::Snapshot>,
    port: u16,
    table: Arc<crate::state::route::RouteTable>,
}

/// Serves HTTP on `stream` until the client closes it or `drain` fires
/// (then in-flight requests finish and the connection closes gracefully).
pub async fn serve(ctx: Arc<ConnCtx>, stream: TcpStream, drain: drain::Watch) {
    if ctx.h2 {
        serve_h2(ctx, stream, drain).await;
    } else {
        serve_h1(ctx, stream, drain).await;
    }
}

/// HTTP/2 with Keel's own server (`crate::http2`): every stream runs on
/// this task, responses are pulled as the client's windows allow.
async fn serve_h2(ctx: Arc<ConnCtx>, stream: TcpStream, mut drain: drain::Watch) {
    let peer = ctx.peer;
    let handler = move |req: Request<RecvBody>| {
        let ctx = Arc::clone(&ctx);
        async move { forward::handle(ctx, req).await }
    };
    let mut conn = h2srv::Connection::new(stream, h2srv::Config::default(), handler);
    let result = tokio::select! {
        r = &mut conn => r,
        () = drain.signaled() => {
            conn.graceful_shutdown();
            (&mut conn).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "downstream HTTP/2 connection ended with an error");
    }
}

/// HTTP/1.1 with hyper's server.
async fn serve_h1(ctx: Arc<ConnCtx>, stream: TcpStream, mut drain: drain::Watch) {
    let peer = ctx.peer;
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(forward::handle(ctx, req).await) }
    });
    // Without writev hyper copies the response head and body into one
    // buffer and writes it with one `send`: cheaper than `writev` for the
    // small responses most requests get.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .writev(false)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "downstream HTTP connection ended with an error");
    }
}

/// The gRPC status in `headers` (`grpc-status`), if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Whether a request is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The port of `authority` (`host:port`, `[v6]:port`), else `default`
/// (also when what follows the last `:` is not 1 to 5 digits below 65536).
pub fn authority_port(authority: &str, default: u16) -> u16 {
    let b = authority.as_bytes();
    let after_host = match b.strip_prefix(b"[") {
        Some(v6) => v6
            .iter()
            .position(|&c| c == b']')
            .map_or(&[][..], |end| &v6[end + 1..]),
        None => b,
    };
    let Some(colon) = after_host.iter().rposition(|&c| c == b':') else {
        return default;
    };
    let digits = &after_host[colon + 1..];
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return default;
    }
    let port = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(port).unwrap_or(default)
}

/// An empty body.
pub fn empty() -> Body {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::authority_port;

    #[test]
    fn authority_port_reads_the_port_or_falls_back() {
        for (authority, want) in [
            ("example.com:8080", 8080),
            ("example.com", 80),
            ("example.com:", 80),
            ("10.0.0.1:65535", 65535),
            ("10.0.0.1:65536", 80),
            ("10.0.0.1:123456", 80),
            ("example.com:+81", 80),
            ("example.com:8o", 80),
            ("[::1]:9090", 9090),
            ("[::1]", 80),
            ("[::1", 80),
            ("", 80),
        ] {
            assert_eq!(authority_port(authority, 80), want, "{authority:?}");
        }
    }
}
