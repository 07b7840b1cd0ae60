//! The connection's reading side: the client preface, each frame type,
//! header blocks becoming streams, and the receive windows.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::Waker;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    Connection, Error, Handler, Partial, Phase, RESET_BURST, RESET_MEMORY, RESET_RATE, RecvBody,
    SHUTDOWN_PING, Shutdown, Slot, SlotWaker, Stream, body, conn_err, parse_length, request,
    strip_padding,
};
use crate::http2::frame::{self, Head, Reason, flag, kind, setting};
use crate::http2::hpack;

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    pub(super) fn process_input(&mut self) -> Result<(), Error> {
        if !self.preface_done {
            if self.rbuf.len() < frame::PREFACE.len() {
                if !frame::PREFACE.starts_with(&self.rbuf[..]) {
                    return Err(conn_err(Reason::Protocol, "not the HTTP/2 client preface"));
                }
                return Ok(());
            }
            if &self.rbuf[..frame::PREFACE.len()] != frame::PREFACE {
                return Err(conn_err(Reason::Protocol, "not the HTTP/2 client preface"));
            }
            self.rbuf.advance(frame::PREFACE.len());
            self.preface_done = true;
        }
        while self.failed.is_none() && self.rbuf.len() >= frame::HEAD_LEN {
            let head = Head::parse(
                self.rbuf[..frame::HEAD_LEN]
                    .try_into()
                    .expect("checked: nine octets are buffered"),
            );
            if head.len > frame::DEFAULT_MAX_FRAME_SIZE {
                return Err(conn_err(
                    Reason::FrameSize,
                    format!(
                        "frame of {} octets over SETTINGS_MAX_FRAME_SIZE {}",
                        head.len,
                        frame::DEFAULT_MAX_FRAME_SIZE
                    ),
                ));
            }
            let total = frame::HEAD_LEN + head.len as usize;
            if self.rbuf.len() < total {
                self.rbuf.reserve(total - self.rbuf.len());
                break;
            }
            self.rbuf.advance(frame::HEAD_LEN);
            let payload = self.rbuf.split_to(head.len as usize).freeze();
            if !self.settings_seen {
                if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                    return Err(conn_err(
                        Reason::Protocol,
                        "the client's first frame is not SETTINGS",
                    ));
                }
                self.settings_seen = true;
            }
            self.frame(head, payload)?;
        }
        Ok(())
    }

    pub(super) fn frame(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
        if let Some(p) = &self.partial
            && (head.kind != kind::CONTINUATION || head.stream != p.stream)
        {
            return Err(conn_err(
                Reason::Protocol,
                format!(
                    "expected CONTINUATION of stream {}, got frame type {:#x} on stream {}",
                    p.stream, head.kind, head.stream
                ),
            ));
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => self.headers(head, payload),
            kind::CONTINUATION => self.continuation(head, &payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(conn_err(Reason::Protocol, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    return self.reset_for_peer(head.stream, Reason::FrameSize);
                }
                Ok(())
            }
            kind::RST_STREAM => self.rst_stream(head, &payload),
            kind::SETTINGS => self.settings(head, &payload),
            kind::PUSH_PROMISE => Err(conn_err(Reason::Protocol, "PUSH_PROMISE from a client")),
            kind::PING => self.ping(head, &payload),
            kind::GOAWAY => self.goaway(head, &payload),
            kind::WINDOW_UPDATE => self.window_update(head, &payload),
            _ => Ok(()),
        }
    }

    pub(super) fn ping(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        if head.stream != 0 {
            return Err(conn_err(Reason::Protocol, "PING on a stream"));
        }
        let Ok(opaque) = <[u8; 8]>::try_from(payload) else {
            return Err(conn_err(Reason::FrameSize, "PING payload is not 8 octets"));
        };
        if head.has(flag::ACK) {
            if opaque == SHUTDOWN_PING && self.shutdown == Shutdown::Pinged {
                frame::put_goaway(&mut self.wbuf, self.last_stream, Reason::NoError, b"");
                self.shutdown = Shutdown::Final;
            }
        } else {
            frame::put_ping(&mut self.wbuf, true, opaque);
        }
        Ok(())
    }

    pub(super) fn goaway(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        if head.stream != 0 {
            return Err(conn_err(Reason::Protocol, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(conn_err(Reason::FrameSize, "GOAWAY shorter than 8 octets"));
        }
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if code != 0 {
            tracing::debug!(
                code = %frame::code_name(code),
                debug = %String::from_utf8_lossy(&payload[8..]),
                "HTTP/2 client sent GOAWAY"
            );
        }
        self.peer_gone_away = true;
        Ok(())
    }

    pub(super) fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        if head.stream != 0 {
            return Err(conn_err(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if !payload.is_empty() {
                return Err(conn_err(Reason::FrameSize, "SETTINGS ACK with a payload"));
            }
            self.settings_acked = true;
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_err(
                Reason::FrameSize,
                "SETTINGS payload not a multiple of 6 octets",
            ));
        }
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                setting::ENABLE_PUSH if v > 1 => {
                    return Err(conn_err(Reason::Protocol, "SETTINGS_ENABLE_PUSH above 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if v > frame::MAX_WINDOW {
                        return Err(conn_err(
                            Reason::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = i64::from(v) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(v);
                    for i in 0..self.slots.len() {
                        if let Some(s) = self.slots[i].stream.as_mut() {
                            s.send_window += delta;
                            if s.send_window > i64::from(frame::MAX_WINDOW) {
                                return Err(conn_err(
                                    Reason::FlowControl,
                                    "a stream window grew above 2^31-1",
                                ));
                            }
                            if delta > 0 && !s.pending.is_empty() {
                                self.ready.push(i);
                            }
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&v) {
                        return Err(conn_err(
                            Reason::Protocol,
                            format!("SETTINGS_MAX_FRAME_SIZE {v} out of range"),
                        ));
                    }
                    self.peer_max_frame = v as usize;
                }
                // Table size: the encoder never indexes, so any size fits.
                _ => {}
            }
        }
        frame::put_settings_ack(&mut self.wbuf);
        Ok(())
    }

    pub(super) fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        let Ok(b) = <[u8; 4]>::try_from(payload) else {
            return Err(conn_err(Reason::FrameSize, "WINDOW_UPDATE not 4 octets"));
        };
        let inc = i64::from(u32::from_be_bytes(b) & frame::MAX_WINDOW);
        if head.stream == 0 {
            if inc == 0 {
                return Err(conn_err(Reason::Protocol, "WINDOW_UPDATE of 0"));
            }
            self.conn_send_window += inc;
            if self.conn_send_window > i64::from(frame::MAX_WINDOW) {
                return Err(conn_err(
                    Reason::FlowControl,
                    "connection window above 2^31-1",
                ));
            }
            self.ready.append(&mut self.blocked_on_conn);
            return Ok(());
        }
        let Some(&slot) = self.ids.get(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(conn_err(
                    Reason::Protocol,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            return Ok(());
        };
        if inc == 0 {
            return self.reset_for_peer(head.stream, Reason::Protocol);
        }
        let Some(s) = self.slots[slot].stream.as_mut() else {
            return Ok(());
        };
        s.send_window += inc;
        if s.send_window > i64::from(frame::MAX_WINDOW) {
            return self.reset_for_peer(head.stream, Reason::FlowControl);
        }
        if !s.pending.is_empty() {
            self.ready.push(slot);
        }
        Ok(())
    }

    pub(super) fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        if head.stream == 0 {
            return Err(conn_err(Reason::Protocol, "RST_STREAM on stream 0"));
        }
        let Ok(b) = <[u8; 4]>::try_from(payload) else {
            return Err(conn_err(Reason::FrameSize, "RST_STREAM not 4 octets"));
        };
        if head.stream > self.last_stream {
            return Err(conn_err(Reason::Protocol, "RST_STREAM on an idle stream"));
        }
        let Some(slot) = self.ids.get(&head.stream).copied() else {
            return Ok(());
        };
        let code = u32::from_be_bytes(b);
        self.close(slot, || {
            format!("the client reset the stream ({})", frame::code_name(code))
        });
        self.charge_reset()
    }

    /// Streams reset by the client, or by the proxy because of the
    /// client's errors ("rapid reset", "MadeYouReset"), share one budget.
    pub(super) fn charge_reset(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let refill = now.duration_since(self.reset_refilled).as_secs_f64() * RESET_RATE;
        self.reset_refilled = now;
        self.reset_tokens = (self.reset_tokens + refill).min(RESET_BURST) - 1.0;
        if self.reset_tokens < 0.0 {
            return Err(conn_err(
                Reason::EnhanceYourCalm,
                "too many streams reset by or because of the client",
            ));
        }
        Ok(())
    }

    /// Resets a stream because the client broke the protocol on it.
    pub(super) fn reset_for_peer(&mut self, id: u32, reason: Reason) -> Result<(), Error> {
        self.reset(id, reason);
        self.charge_reset()
    }

    pub(super) fn data(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
        if head.stream == 0 {
            return Err(conn_err(Reason::Protocol, "DATA on stream 0"));
        }
        let flow = i64::from(head.len);
        if flow > self.conn_recv_window {
            return Err(conn_err(
                Reason::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        self.conn_recv_window -= flow;
        let (data, padding) = strip_padding(head, payload)?;
        let Some(&slot) = self.ids.get(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(conn_err(Reason::Protocol, "DATA on an idle stream"));
            }
            // A stream already closed (reset, or answered): discard.
            self.release_conn(head.len);
            return Ok(());
        };
        let end = head.has(flag::END_STREAM);
        let Some(s) = self.slots[slot].stream.as_mut() else {
            self.release_conn(head.len);
            return Ok(());
        };
        let (true, Some(recv)) = (s.recv_open, s.recv.clone()) else {
            self.release_conn(head.len);
            return self.reset_for_peer(head.stream, Reason::StreamClosed);
        };
        if flow > s.recv_window {
            self.release_conn(head.len);
            return self.reset_for_peer(head.stream, Reason::FlowControl);
        }
        s.recv_window -= flow;
        s.received += data.len() as u64;
        let length_ok = match s.content_length {
            Some(cl) => s.received <= cl && (!end || s.received == cl),
            None => true,
        };
        if !length_ok {
            self.release_conn(head.len);
            return self.reset_for_peer(head.stream, Reason::Protocol);
        }
        s.recv_open = !end;
        let len = data.len() as u32;
        if !recv.push(data, end) {
            // The handler dropped the body: discard.
            self.release(slot, len);
        }
        if padding > 0 {
            self.release(slot, padding);
        }
        Ok(())
    }

    pub(super) fn headers(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
        if head.stream == 0 {
            return Err(conn_err(Reason::Protocol, "HEADERS on stream 0"));
        }
        let (mut fragment, _) = strip_padding(head, payload)?;
        if head.has(flag::PRIORITY) {
            if fragment.len() < 5 {
                return Err(conn_err(
                    Reason::FrameSize,
                    "HEADERS priority fields cut short",
                ));
            }
            fragment.advance(5);
        }
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.header_block(head.stream, end_stream, fragment);
        }
        self.partial = Some(Partial {
            stream: head.stream,
            end_stream,
            block: BytesMut::from(&fragment[..]),
        });
        Ok(())
    }

    pub(super) fn continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        let Some(mut p) = self.partial.take() else {
            return Err(conn_err(Reason::Protocol, "CONTINUATION without HEADERS"));
        };
        let limit = self.config.max_header_list_size as usize + (16 << 10);
        if p.block.len() + payload.len() > limit {
            return Err(conn_err(
                Reason::EnhanceYourCalm,
                format!("header block over {limit} octets"),
            ));
        }
        p.block.extend_from_slice(payload);
        if head.has(flag::END_HEADERS) {
            return self.header_block(p.stream, p.end_stream, p.block.freeze());
        }
        self.partial = Some(p);
        Ok(())
    }

    pub(super) fn header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: Bytes,
    ) -> Result<(), Error> {
        let max_list = self.config.max_header_list_size as usize;
        if let Some(&slot) = self.ids.get(&id) {
            // Trailers.
            let mut t = request::Trailers::default();
            let complete = self
                .decoder
                .decode(block, max_list, |f| t.field(f))
                .map_err(|e| conn_err(Reason::Compression, e.to_string()))?;
            let (recv, length_ok) = match self.slots[slot].stream.as_mut() {
                Some(s) if s.recv_open => {
                    s.recv_open = false;
                    let ok = s.content_length.is_none_or(|cl| cl == s.received);
                    (s.recv.clone(), ok)
                }
                _ => (None, true),
            };
            let Some(recv) = recv else {
                return self.reset_for_peer(id, Reason::StreamClosed);
            };
            if !end_stream || !complete || t.error.is_some() || !length_ok {
                let why = t.error.unwrap_or_else(|| {
                    if length_ok {
                        "trailers without END_STREAM or too large".to_string()
                    } else {
                        "request body shorter than its content-length".to_string()
                    }
                });
                tracing::debug!(stream = id, "malformed HTTP/2 request trailers: {why}");
                recv.fail(|| format!("malformed trailers: {why}"));
                return self.reset_for_peer(id, Reason::Protocol);
            }
            recv.trailers(t.headers);
            return Ok(());
        }
        if id <= self.last_stream && self.reset_recently.contains(&id) {
            // A stream the proxy reset or refused: the client's frames may
            // still be in flight. The block is decoded only to keep the
            // HPACK table in sync.
            self.decoder
                .decode(block, 0, |_| {})
                .map_err(|e| conn_err(Reason::Compression, e.to_string()))?;
            return Ok(());
        }
        if id.is_multiple_of(2) || id <= self.last_stream {
            return Err(conn_err(
                Reason::Protocol,
                format!(
                    "HEADERS opening stream {id} (stream ids must be odd and increasing; last {})",
                    self.last_stream
                ),
            ));
        }
        let mut builder = request::Builder::with_capacity(8);
        let complete = self
            .decoder
            .decode(block, max_list, |f| builder.field(f))
            .map_err(|e| conn_err(Reason::Compression, e.to_string()))?;
        self.last_stream = id;
        if self.shutdown == Shutdown::Final {
            // Past the last stream the final GOAWAY promised.
            self.send_rst(id, Reason::RefusedStream);
            return Ok(());
        }
        if self.active >= self.config.max_concurrent_streams as usize {
            self.send_rst(id, Reason::RefusedStream);
            return Ok(());
        }
        if !complete {
            self.respond_too_large(id);
            if !end_stream {
                self.send_rst(id, Reason::NoError);
            }
            return Ok(());
        }
        let head = match builder.finish() {
            Ok(h) => h,
            Err(why) => {
                tracing::debug!(stream = id, "malformed HTTP/2 request: {why}");
                self.send_rst(id, Reason::Protocol);
                return self.charge_reset();
            }
        };
        let content_length = match head.headers.get(http::header::CONTENT_LENGTH) {
            Some(v) => match parse_length(v.as_bytes()) {
                Some(n) if !end_stream || n == 0 => Some(n),
                _ => {
                    tracing::debug!(stream = id, "HTTP/2 request with a bad content-length");
                    self.send_rst(id, Reason::Protocol);
                    return self.charge_reset();
                }
            },
            None => None,
        };
        let slot = self.alloc_slot();
        let waker = Waker::from(Arc::clone(&self.slots[slot].waker));
        let (body, recv) = if end_stream {
            (RecvBody::empty(), None)
        } else {
            let shared = Arc::new(body::Shared::default());
            (
                RecvBody::streaming(Arc::clone(&shared), waker, content_length),
                Some(shared),
            )
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = head.headers;
        let fut = self.handler.call(req);
        self.slots[slot].stream = Some(Stream {
            id,
            phase: Phase::Handling(Box::pin(fut)),
            recv_open: recv.is_some(),
            recv,
            recv_window: if self.settings_acked {
                i64::from(self.config.stream_window)
            } else {
                i64::from(self.config.stream_window.max(frame::DEFAULT_WINDOW))
            },
            recv_unacked: 0,
            content_length,
            received: 0,
            send_window: self.peer_initial_window,
            pending: Bytes::new(),
            pending_end: false,
            pending_trailers: None,
        });
        self.ids.insert(id, slot);
        self.active += 1;
        self.ready.push(slot);
        Ok(())
    }

    pub(super) fn alloc_slot(&mut self) -> usize {
        if let Some(i) = self.free.pop() {
            return i;
        }
        let slot = self.slots.len();
        self.slots.push(Slot {
            stream: None,
            waker: Arc::new(SlotWaker {
                queue: Arc::clone(&self.queue),
                slot,
                queued: AtomicBool::new(false),
            }),
        });
        slot
    }

    /// Answers a request whose header list is over the limit: 431.
    pub(super) fn respond_too_large(&mut self, id: u32) {
        self.hbuf.clear();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-keel-error",
            http::HeaderValue::from_static("request_headers_too_large"),
        );
        hpack::encode_response_head(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &headers,
            &mut self.hbuf,
        );
        frame::put_header_block(&mut self.wbuf, id, &self.hbuf, true, self.peer_max_frame);
    }

    /// Queues RST_STREAM and remembers the stream for a while, so that
    /// frames the client sent before seeing it are ignored.
    pub(super) fn send_rst(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        if self.reset_recently.len() == RESET_MEMORY {
            self.reset_recently.pop_front();
        }
        self.reset_recently.push_back(id);
    }

    /// Sends RST_STREAM and forgets the stream.
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        self.send_rst(id, reason);
        if let Some(&slot) = self.ids.get(&id) {
            self.close(slot, || {
                format!("stream reset by the proxy ({})", reason.name())
            });
        }
    }

    /// Forgets the stream in `slot`, dropping its handler or body.
    pub(super) fn close(&mut self, slot: usize, why: impl FnOnce() -> String) {
        let Some(s) = self.slots[slot].stream.take() else {
            return;
        };
        if let Some(r) = &s.recv {
            // Buffered and unread, or read since the last release: back to
            // the connection window.
            let released = r.close(why);
            self.release_conn(u32::try_from(released).unwrap_or(u32::MAX));
        }
        self.ids.remove(&s.id);
        self.free.push(slot);
        self.active -= 1;
    }

    /// Gives `n` octets back to the connection window.
    pub(super) fn release_conn(&mut self, n: u32) {
        self.conn_unacked = self.conn_unacked.saturating_add(n);
        if self.conn_unacked >= self.config.conn_window / 2 {
            frame::put_window_update(&mut self.wbuf, 0, self.conn_unacked);
            self.conn_recv_window += i64::from(self.conn_unacked);
            self.conn_unacked = 0;
        }
    }

    /// Gives `n` octets back to the stream's and the connection's windows.
    pub(super) fn release(&mut self, slot: usize, n: u32) {
        if n == 0 {
            return;
        }
        self.release_conn(n);
        let half = self.config.stream_window / 2;
        let Some(s) = self.slots[slot].stream.as_mut() else {
            return;
        };
        s.recv_unacked = s.recv_unacked.saturating_add(n);
        if s.recv_open && s.recv_unacked >= half {
            frame::put_window_update(&mut self.wbuf, s.id, s.recv_unacked);
            s.recv_window += i64::from(s.recv_unacked);
            s.recv_unacked = 0;
        }
    }
}
