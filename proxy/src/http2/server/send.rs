//! The connection's sending side: polling ready streams' handlers and
//! response bodies, and writing HEADERS, DATA and trailers as the client's
//! windows allow.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};

use http::{HeaderMap, StatusCode};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{BODY_HIGH_WATER, Connection, Handler, Phase, Step, request};
use crate::http2::frame::{self, Reason};
use crate::http2::hpack;

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    pub(super) fn run_ready(&mut self) -> bool {
        {
            let mut shared = self
                .queue
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.ready.append(&mut shared);
        }
        if self.ready.is_empty() {
            return false;
        }
        let mut batch = std::mem::take(&mut self.ready);
        for &slot in &batch {
            self.slots[slot]
                .waker
                .queued
                .store(false, Ordering::Release);
        }
        for &slot in &batch {
            self.run_stream(slot);
        }
        batch.clear();
        if self.ready.is_empty() {
            self.ready = batch;
        }
        true
    }

    pub(super) fn run_stream(&mut self, slot: usize) {
        // Window the handler gave back by reading the request body.
        if let Some(r) = self.slots[slot]
            .stream
            .as_ref()
            .and_then(|s| s.recv.clone())
        {
            let n = r.take_released();
            self.release(slot, u32::try_from(n).unwrap_or(u32::MAX));
        }
        let waker = Waker::from(Arc::clone(&self.slots[slot].waker));
        let mut cx = Context::from_waker(&waker);
        loop {
            let write_full = self.wbuf.len() >= BODY_HIGH_WATER;
            let Some(s) = self.slots[slot].stream.as_mut() else {
                return;
            };
            let step = match &mut s.phase {
                Phase::Handling(fut) => match fut.as_mut().poll(&mut cx) {
                    Poll::Pending => Step::Pending,
                    Poll::Ready(resp) => {
                        let (parts, body) = resp.into_parts();
                        let end = body.is_end_stream();
                        s.phase = Phase::Sending(body);
                        Step::Head(parts.status, parts.headers, end)
                    }
                },
                Phase::Sending(_) if !s.pending.is_empty() || s.pending_trailers.is_some() => {
                    Step::Flush
                }
                Phase::Sending(_) if write_full => Step::WriteFull,
                Phase::Sending(body) => match Pin::new(&mut *body).poll_frame(&mut cx) {
                    Poll::Pending => Step::Pending,
                    Poll::Ready(None) => {
                        s.pending_end = true;
                        Step::Flush
                    }
                    Poll::Ready(Some(Err(_))) => Step::Failed,
                    Poll::Ready(Some(Ok(f))) => match f.into_data() {
                        Ok(data) => {
                            s.pending = data;
                            s.pending_end = body.is_end_stream();
                            Step::Flush
                        }
                        Err(f) => {
                            if let Ok(t) = f.into_trailers() {
                                s.pending_trailers = Some(t);
                                s.pending_end = true;
                            }
                            Step::Flush
                        }
                    },
                },
            };
            let id = s.id;
            match step {
                Step::Pending => return,
                Step::WriteFull => {
                    self.blocked_on_write.push(slot);
                    return;
                }
                Step::Failed => {
                    tracing::debug!(stream = id, "HTTP/2 response body failed; resetting");
                    self.reset(id, Reason::Internal);
                    return;
                }
                Step::Head(status, headers, end) => {
                    self.send_head(id, status, headers, end);
                    if end {
                        self.finish(slot);
                        return;
                    }
                }
                Step::Flush => {
                    if !self.flush_pending(slot) {
                        return;
                    }
                    if self.slots[slot]
                        .stream
                        .as_ref()
                        .is_some_and(|s| s.pending_end)
                    {
                        self.finish(slot);
                        return;
                    }
                }
            }
        }
    }

    pub(super) fn send_head(
        &mut self,
        id: u32,
        status: StatusCode,
        mut headers: HeaderMap,
        end: bool,
    ) {
        if headers.keys().any(request::is_connection_specific) {
            for name in [
                http::header::CONNECTION,
                http::header::TRANSFER_ENCODING,
                http::header::UPGRADE,
            ] {
                headers.remove(name);
            }
            headers.remove("keep-alive");
            headers.remove("proxy-connection");
        }
        self.hbuf.clear();
        hpack::encode_response_head(status, &headers, &mut self.hbuf);
        frame::put_header_block(&mut self.wbuf, id, &self.hbuf, end, self.peer_max_frame);
    }

    /// Sends what the stream has pending as far as the windows allow;
    /// `true` when nothing is left pending.
    pub(super) fn flush_pending(&mut self, slot: usize) -> bool {
        let Some(s) = self.slots[slot].stream.as_mut() else {
            return true;
        };
        if !s.pending.is_empty() || (s.pending_end && s.pending_trailers.is_none()) {
            let window = s.send_window.min(self.conn_send_window).max(0) as usize;
            if window == 0 && !s.pending.is_empty() {
                if self.conn_send_window <= 0 {
                    self.blocked_on_conn.push(slot);
                }
                return false;
            }
            let n = s.pending.len().min(window);
            let chunk = s.pending.split_to(n);
            let done = s.pending.is_empty();
            let end = done && s.pending_end && s.pending_trailers.is_none();
            frame::put_data(&mut self.wbuf, s.id, &chunk, end, self.peer_max_frame);
            s.send_window -= n as i64;
            self.conn_send_window -= n as i64;
            if !done {
                if self.conn_send_window <= 0 {
                    self.blocked_on_conn.push(slot);
                }
                return false;
            }
        }
        if let Some(t) = s.pending_trailers.take() {
            let id = s.id;
            self.hbuf.clear();
            hpack::encode_trailers(&t, &mut self.hbuf);
            frame::put_header_block(&mut self.wbuf, id, &self.hbuf, true, self.peer_max_frame);
        }
        true
    }

    /// The response is complete: the stream closes (telling the client to
    /// stop sending a request body it is still sending).
    pub(super) fn finish(&mut self, slot: usize) {
        let Some(s) = self.slots[slot].stream.as_ref() else {
            return;
        };
        if s.recv_open {
            self.send_rst(s.id, Reason::NoError);
        }
        self.close(slot, || "the response ended first".to_string());
    }
}
