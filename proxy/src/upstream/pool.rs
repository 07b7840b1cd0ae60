//! Connections to one upstream endpoint: an HTTP/1.1 keep-alive pool and one
//! multiplexed HTTP/2 connection, shared by every cluster that contains the
//! endpoint (subsets included).
//!
//! HTTP/1.1 exchanges run on the request's own task (`h1`); a connection
//! goes back to the idle list when both its request and its response are
//! complete, and one dropped half-read is closed. Requests asking for an
//! upgrade get a connection of their own through hyper. The HTTP/2
//! connection is replaced when it closes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::h1;
use crate::http::{Body, BoxError};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE: usize = 256;
/// How often a request the upstream never saw is sent again on another
/// connection (the last time on a new one).
const MAX_UNSENT_REPLAYS: usize = 2;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The TCP connection was refused or failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The TCP connection did not complete in time.
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The cluster's connect timeout.
        timeout: Duration,
    },
    /// The HTTP handshake failed.
    #[error("HTTP/{version} handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// `1.1` or `2`.
        version: &'static str,
        /// What hyper reported.
        source: hyper::Error,
    },
    /// The connection broke before a response arrived.
    #[error("{addr} reset the request: {source}")]
    Reset {
        /// The endpoint.
        addr: SocketAddr,
        /// What went wrong.
        source: BoxError,
    },
}

impl SendError {
    /// Whether the failure happened before anything was sent (a connect
    /// failure rather than a reset).
    pub fn is_connect_failure(&self) -> bool {
        !matches!(self, Self::Reset { .. })
    }

    /// Whether an HTTP/2 upstream refused the stream (`REFUSED_STREAM`:
    /// it did not process the request).
    pub fn is_refused_stream(&self) -> bool {
        let Self::Reset { source, .. } = self else {
            return false;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = next {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            }
            next = e.source();
        }
        false
    }
}

/// How a cluster uses its endpoints' connections (DestinationRule
/// `connectionPool`): connect timeout, exchanges per HTTP/1.1 connection
/// (0: unlimited; `maxRequestsPerConnection`) and how long a connection may
/// sit idle (`idleTimeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Exchanges per connection; 0 is unlimited.
    pub max_requests_per_connection: u32,
    /// Idle connections older than this are not reused.
    pub idle_timeout: Option<Duration>,
}

impl From<Duration> for ConnLimits {
    /// Only a connect timeout.
    fn from(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            max_requests_per_connection: 0,
            idle_timeout: None,
        }
    }
}

impl From<&crate::state::cluster::Cluster> for ConnLimits {
    fn from(c: &crate::state::cluster::Cluster) -> Self {
        Self {
            connect_timeout: c.connect_timeout,
            max_requests_per_connection: c.max_requests_per_connection,
            idle_timeout: c.idle_timeout,
        }
    }
}

/// The connections to one endpoint.
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<IdleConn>>,
    h2: ArcSwapOption<H2Conn>,
    h2_connect: tokio::sync::Mutex<()>,
}

/// An idle HTTP/1.1 connection and the limits of the cluster that used it
/// last (a pool is shared by every cluster with the endpoint).
struct IdleConn {
    conn: h1::Conn,
    limits: ConnLimits,
}

/// The HTTP/2 connection and the streams it has carried.
struct H2Conn {
    sender: http2::SendRequest<Body>,
    streams: std::sync::atomic::AtomicU32,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("idle", &self.idle.lock().map(|i| i.len()).unwrap_or(0))
            .finish()
    }
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
            h2_connect: tokio::sync::Mutex::new(()),
        }
    }

    /// The endpoint.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` over HTTP/2 (`h2`) or HTTP/1.1. HTTP/1.1 requests carry
    /// an origin-form URI and a `Host` header; HTTP/2 requests an absolute
    /// URI whose authority becomes `:authority`.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        h2: bool,
        limits: impl Into<ConnLimits>,
    ) -> Result<Response<Body>, SendError> {
        let limits = limits.into();
        // The HTTP/2 and upgrade paths hold hyper's futures, several times
        // the size of the HTTP/1.1 one: boxed, they do not grow the future
        // every request's task carries (and copies when spawned). Each box
        // is bound before its await: an unboxed temporary of the await
        // expression would stay in this future's state.
        if h2 || req.headers().contains_key(header::UPGRADE) {
            self.send_hyper(req, h2, limits).await
        } else {
            let req = h1::encode(req).map_err(|source| SendError::Reset {
                addr: self.addr,
                source,
            })?;
            self.send_encoded(req, limits).await
        }
    }

    /// Sends `req` through hyper: over HTTP/2 (`h2`), else an HTTP/1.1
    /// upgrade request on a connection of its own.
    pub async fn send_hyper(
        self: &Arc<Self>,
        req: Request<Body>,
        h2: bool,
        limits: ConnLimits,
    ) -> Result<Response<Body>, SendError> {
        if h2 {
            let f = Box::pin(self.send_h2(req, limits));
            f.await
        } else {
            let f = Box::pin(self.send_upgrade(req, limits.connect_timeout));
            f.await
        }
    }

    /// Sends a request already encoded for HTTP/1.1 (no upgrade).
    pub async fn send_encoded(
        self: &Arc<Self>,
        mut req: h1::Encoded,
        limits: ConnLimits,
    ) -> Result<Response<Body>, SendError> {
        let connect_timeout = limits.connect_timeout;
        // A pooled connection the server closed while idle fails without a
        // byte of answer; an idempotent request whose body was not read yet
        // then goes out again (the last time on a fresh connection).
        let mut attempt = 0;
        loop {
            let fresh = attempt == MAX_UNSENT_REPLAYS;
            attempt += 1;
            let conn = match self.checkout(fresh, &limits) {
                Some(c) => c,
                None => {
                    let f = Box::pin(connect(self.addr, connect_timeout));
                    h1::Conn::new(f.await?)
                }
            };
            match h1::exchange(conn, req, Arc::downgrade(self), limits).await {
                Ok(resp) => return Ok(resp.map(BodyExt::boxed_unsync)),
                Err(h1::Failure {
                    replay: Some(r), ..
                }) if !fresh => req = r,
                Err(f) => {
                    return Err(SendError::Reset {
                        addr: self.addr,
                        source: f.error,
                    });
                }
            }
        }
    }

    /// An idle HTTP/1.1 connection the server has not closed, within the
    /// cluster's idle timeout and requests per connection.
    fn checkout(&self, fresh: bool, limits: &ConnLimits) -> Option<h1::Conn> {
        if fresh {
            return None;
        }
        let now = limits.idle_timeout.map(|_| std::time::Instant::now());
        let mut idle = self.idle.lock().ok()?;
        while let Some(IdleConn { conn, .. }) = idle.pop() {
            if conn.is_reusable() && !spent(&conn, limits, now) {
                return Some(conn);
            }
        }
        None
    }

    /// A request asking for an upgrade (WebSocket) goes out on a new
    /// connection through hyper, which hands the upgraded stream over.
    async fn send_upgrade(
        &self,
        req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, SendError> {
        let io = TokioIo::new(connect(self.addr, connect_timeout).await?);
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake {
                addr: self.addr,
                version: "1.1",
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 upgrade connection ended");
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| SendError::Reset {
                addr,
                source: source.into(),
            })?;
        Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
    }

    async fn send_h2(
        &self,
        mut req: Request<Body>,
        limits: ConnLimits,
    ) -> Result<Response<Body>, SendError> {
        // A connection that closed under the request hands it back unsent;
        // it then goes out on a new connection (not a retry: nothing
        // reached the upstream).
        let mut attempt = 0;
        loop {
            let last = attempt == MAX_UNSENT_REPLAYS;
            attempt += 1;
            let mut sender = self.h2_sender(&limits).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                Err(mut e) => {
                    self.h2.store(None);
                    match e.take_message() {
                        Some(r) if !last => req = r,
                        _ => {
                            return Err(SendError::Reset {
                                addr: self.addr,
                                source: e.into_error().into(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// The endpoint's HTTP/2 connection, a new one when it closed or has
    /// carried the cluster's `maxRequestsPerConnection` streams (the old one
    /// finishes the streams it has).
    async fn h2_sender(&self, limits: &ConnLimits) -> Result<http2::SendRequest<Body>, SendError> {
        let usable = |c: &H2Conn| {
            !c.sender.is_closed() && {
                let n = c.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                limits.max_requests_per_connection == 0 || n < limits.max_requests_per_connection
            }
        };
        if let Some(c) = &*self.h2.load()
            && usable(c)
        {
            return Ok(http2::SendRequest::clone(&c.sender));
        }
        let _connecting = self.h2_connect.lock().await;
        // Someone else may have connected while we waited.
        if let Some(c) = &*self.h2.load()
            && usable(c)
        {
            return Ok(http2::SendRequest::clone(&c.sender));
        }
        let io = TokioIo::new(connect(self.addr, limits.connect_timeout).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake {
                addr: self.addr,
                version: "2",
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.h2.store(Some(Arc::new(H2Conn {
            sender: sender.clone(),
            streams: std::sync::atomic::AtomicU32::new(1),
        })));
        Ok(sender)
    }

    /// Keeps a connection whose exchange completed for the next request,
    /// unless it has carried its cluster's `maxRequestsPerConnection`; with
    /// an idle timeout, idle connections past theirs are closed on the way
    /// (the oldest are at the front: connections are reused from the back).
    pub(super) fn put_back(&self, mut conn: h1::Conn, limits: ConnLimits) {
        if limits.max_requests_per_connection > 0
            && conn.uses() >= limits.max_requests_per_connection
        {
            return;
        }
        let now = limits.idle_timeout.map(|_| std::time::Instant::now());
        if let Some(now) = now {
            conn.set_idle(now);
        }
        if let Ok(mut idle) = self.idle.lock() {
            if now.is_some() {
                let expired = idle
                    .iter()
                    .take_while(|i| spent(&i.conn, &i.limits, now))
                    .count();
                idle.drain(..expired);
            }
            if idle.len() < MAX_IDLE {
                idle.push(IdleConn { conn, limits });
            }
        }
    }
}

/// Whether an idle connection is past `limits` (its idle timeout, checked
/// when `now` is given, or its requests per connection).
fn spent(conn: &h1::Conn, limits: &ConnLimits, now: Option<std::time::Instant>) -> bool {
    let stale = match (limits.idle_timeout, now) {
        (Some(t), Some(now)) => conn.idle_longer_than(t, now),
        _ => false,
    };
    stale
        || (limits.max_requests_per_connection > 0
            && conn.uses() >= limits.max_requests_per_connection)
}

/// Opens a TCP connection to `addr` within `timeout`, with `TCP_NODELAY`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(SendError::Connect { addr, source }),
        Err(_) => return Err(SendError::ConnectTimeout { addr, timeout }),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
