//! Body wrappers: count request bytes as they stream upstream, and record a
//! request's metrics and access-log entry when its response body ends
//! (read to the end, failed or dropped), without buffering either body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use super::access_log::{AccessLog, Entry};
use super::{Body, BoxError};
use crate::metrics::RequestRecorder;
use crate::metrics::labels::{RequestOutcome, flags};

/// A request body that counts the bytes it yields.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    /// Wraps `inner`, adding to `bytes`.
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Relaxed);
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is recorded when a response ends.
pub struct Completion {
    /// Where the metric goes.
    pub recorder: RequestRecorder,
    /// The outcome known at response headers (gRPC status may still come
    /// in trailers).
    pub outcome: RequestOutcome,
    /// When the request arrived.
    pub start: Instant,
    /// Request bytes so far (headers and body).
    pub request_bytes: Arc<AtomicU64>,
    /// Response header bytes.
    pub response_header_bytes: u64,
    /// The access-log entry, when access logging is on.
    pub log: Option<(AccessLog, Box<Entry>)>,
    /// The endpoint's active-request count, released with the response.
    pub inflight: Option<crate::balance::InFlight>,
    /// The cluster's circuit-breaker count, released with the response.
    pub active: Option<crate::upstream::Active>,
}

impl Completion {
    fn finish(self, response_body_bytes: u64, ended: bool) {
        let mut outcome = self.outcome;
        if !ended && outcome.response_flags == flags::NONE {
            outcome.response_flags = flags::DOWNSTREAM_CONNECTION_TERMINATION;
        }
        let duration = self.start.elapsed();
        let request_bytes = self.request_bytes.load(Relaxed);
        let response_bytes = self.response_header_bytes + response_body_bytes;
        self.recorder
            .record(outcome, duration, request_bytes, response_bytes);
        if let Some((log, mut entry)) = self.log {
            entry.finish(outcome, duration, request_bytes, response_bytes);
            log.write(*entry);
        }
    }
}

/// A response body that records its [`Completion`] when it ends.
pub struct Observed {
    inner: Body,
    bytes: u64,
    done: Option<Box<Completion>>,
}

impl Observed {
    /// Wraps `inner`.
    pub fn new(inner: Body, done: Completion) -> Self {
        Self {
            inner,
            bytes: 0,
            done: Some(Box::new(done)),
        }
    }

    fn finish(&mut self, ended: bool) {
        if let Some(done) = self.done.take() {
            done.finish(self.bytes, ended);
        }
    }
}

impl hyper::body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(done) = self.done.as_mut()
                    && let Some(status) = super::grpc_status(trailers)
                {
                    done.outcome.grpc_response_status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = self.done.as_mut()
                    && done.outcome.response_flags == flags::NONE
                {
                    done.outcome.response_flags = flags::UPSTREAM_CONNECTION_TERMINATION;
                }
                self.finish(true);
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let ended = self.inner.is_end_stream();
        self.finish(ended);
    }
}
