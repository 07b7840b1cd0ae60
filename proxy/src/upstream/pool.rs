//! Connections to one upstream endpoint: an HTTP/1.1 keep-alive pool and one
//! multiplexed HTTP/2 connection, shared by every cluster that contains the
//! endpoint (subsets included).
//!
//! An HTTP/1.1 connection goes back to the idle list when the response body
//! it carried has been read to the end; a response dropped half-read closes
//! its connection. The HTTP/2 connection is replaced when it closes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

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
        /// What hyper reported.
        source: hyper::Error,
    },
}

impl SendError {
    /// Whether the failure happened before anything was sent (a connect
    /// failure rather than a reset).
    pub fn is_connect_failure(&self) -> bool {
        !matches!(self, Self::Reset { .. })
    }
}

/// The connections to one endpoint.
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: ArcSwapOption<http2::SendRequest<Body>>,
    h2_connect: tokio::sync::Mutex<()>,
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
        mut req: Request<Body>,
        h2: bool,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, SendError> {
        // A pooled connection the server has just closed hands the request
        // back unsent; it then goes out on a fresh connection (this is not
        // a retry: nothing reached the upstream).
        let mut attempt = 0;
        loop {
            let fresh = attempt == MAX_UNSENT_REPLAYS;
            attempt += 1;
            if h2 {
                let mut sender = self.h2_sender(connect_timeout).await?;
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                    Err(mut e) => {
                        self.h2.store(None);
                        match e.take_message() {
                            Some(r) if !fresh => req = r,
                            _ => {
                                return Err(SendError::Reset {
                                    addr: self.addr,
                                    source: e.into_error(),
                                });
                            }
                        }
                    }
                }
                continue;
            }
            let mut sender = self.h1_sender(connect_timeout, fresh).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        // The connection now belongs to the upgrade.
                        return Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()));
                    }
                    let back = Arc::downgrade(self);
                    return Ok(resp.map(|inner| {
                        PooledBody {
                            inner,
                            back: Some((sender, back)),
                        }
                        .boxed_unsync()
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if !fresh => req = r,
                    _ => {
                        return Err(SendError::Reset {
                            addr: self.addr,
                            source: e.into_error(),
                        });
                    }
                },
            }
        }
    }

    async fn h1_sender(
        &self,
        connect_timeout: Duration,
        fresh: bool,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        loop {
            if fresh {
                break;
            }
            let next = self.idle.lock().ok().and_then(|mut i| i.pop());
            let Some(mut sender) = next else { break };
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let io = self.connect(connect_timeout).await?;
        let (sender, conn) = http1::Builder::new()
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
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn h2_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        if let Some(s) = &*self.h2.load()
            && !s.is_closed()
        {
            return Ok(http2::SendRequest::clone(s));
        }
        let _connecting = self.h2_connect.lock().await;
        // Someone else may have connected while we waited.
        if let Some(s) = &*self.h2.load()
            && !s.is_closed()
        {
            return Ok(http2::SendRequest::clone(s));
        }
        let io = self.connect(connect_timeout).await?;
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
        self.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn connect(&self, timeout: Duration) -> Result<TokioIo<TcpStream>, SendError> {
        let stream = connect(self.addr, timeout).await?;
        Ok(TokioIo::new(stream))
    }

    fn put_back(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(sender);
        }
    }
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

/// An HTTP/1.1 response body that returns its connection to the pool once
/// read to the end.
struct PooledBody {
    inner: Incoming,
    back: Option<(http1::SendRequest<Body>, Weak<Pool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_back(sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
