//! One downstream HTTP/2 connection: reads frames, runs each request's
//! handler, writes responses, all on the connection's task.
//!
//! - Streams: a handler future per request, polled when its waker fires
//!   (each stream slot has one long-lived waker that queues the slot), then
//!   its response body, pulled frame by frame while the peer's windows and
//!   the write buffer allow.
//! - Flow control: the peer's windows (connection and stream) bound what
//!   is sent; ours are reopened as handlers read request bodies, so what is
//!   buffered per connection stays within the connection window.
//! - Limits: concurrent streams (excess refused with REFUSED_STREAM),
//!   header list size (431), header blocks, streams reset by the client
//!   (a token bucket, as nghttp2 does against "rapid reset"), and no reads
//!   while the write buffer is full (PING/SETTINGS floods stall the peer,
//!   not the proxy).
//! - Shutdown: `graceful_shutdown` sends GOAWAY with the largest stream id
//!   and a PING; once the PING returns, a second GOAWAY names the last
//!   stream accepted, which is served to the end before the connection
//!   closes.

mod body;
mod request;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::task::AtomicWaker;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

pub use body::{RecvBody, RecvError};

use super::frame::{self, Head, Reason, flag, kind, setting};
use super::hpack;

/// Limits and windows of a connection.
#[derive(Clone, Debug)]
pub struct Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: what a client may send on one stream
    /// before the handler reads it.
    pub stream_window: u32,
    /// The connection's receive window: what all streams together may have
    /// buffered.
    pub conn_window: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE; larger requests are answered 431.
    pub max_header_list_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 200,
            stream_window: 1 << 20,
            conn_window: 2 << 20,
            max_header_list_size: 64 << 10,
        }
    }
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the socket failed.
    #[error("HTTP/2 connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol (a GOAWAY was sent).
    #[error("HTTP/2 {}: {detail}", reason.name())]
    Protocol {
        /// The code sent in GOAWAY.
        reason: Reason,
        /// What was wrong.
        detail: String,
    },
}

fn conn_err(reason: Reason, detail: impl Into<String>) -> Error {
    Error::Protocol {
        reason,
        detail: detail.into(),
    }
}

/// Stop reading while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 256 << 10;
/// Stop pulling response bodies above this.
const BODY_HIGH_WATER: usize = 64 << 10;
/// Streams the client may reset before answers: burst and refill per
/// second (nghttp2's defaults).
const RESET_BURST: f64 = 1000.0;
const RESET_RATE: f64 = 33.0;
/// Streams reset by the proxy remembered to ignore their late frames.
const RESET_MEMORY: usize = 256;
/// Rounds of read / run / write per poll before yielding to the runtime.
const ROUNDS_PER_POLL: usize = 32;
/// The opaque data of the PING sent with the first shutdown GOAWAY.
const SHUTDOWN_PING: [u8; 8] = *b"keel-gwy";

/// A handler: request in, response out.
pub trait Handler {
    /// Its response body.
    type Body: Body<Data = Bytes> + Unpin;
    /// Its future.
    type Future: Future<Output = Response<Self::Body>>;
    /// Starts handling `req`.
    fn call(&mut self, req: Request<RecvBody>) -> Self::Future;
}

impl<F, Fut, B> Handler for F
where
    F: FnMut(Request<RecvBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
{
    type Body = B;
    type Future = Fut;
    fn call(&mut self, req: Request<RecvBody>) -> Fut {
        self(req)
    }
}

/// Stream ids are small sequential odd numbers: no need to hash them.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap = HashMap<u32, usize, BuildHasherDefault<IdHasher>>;

/// Slots whose waker fired, and the connection task's waker.
#[derive(Default)]
struct ReadyQueue {
    slots: Mutex<Vec<usize>>,
    conn: AtomicWaker,
}

/// One per slot, reused by every stream the slot holds: a stale wake-up
/// only costs a spurious poll.
struct SlotWaker {
    queue: Arc<ReadyQueue>,
    slot: usize,
    queued: AtomicBool,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.slot);
            self.queue.conn.wake();
        }
    }
}

enum Phase<F, B> {
    /// The handler runs.
    Handling(Pin<Box<F>>),
    /// The response body is being sent.
    Sending(B),
}

/// What polling a stream asks the connection to do.
enum Step {
    Pending,
    WriteFull,
    Failed,
    Head(StatusCode, HeaderMap, bool),
    Flush,
}

struct Stream<F, B> {
    id: u32,
    phase: Phase<F, B>,
    /// The request body's queue (none when the request had no body).
    recv: Option<Arc<body::Shared>>,
    /// The client may still send DATA.
    recv_open: bool,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Read by the handler, not yet given back to the client.
    recv_unacked: u32,
    /// `content-length` of the request, and DATA received so far.
    content_length: Option<u64>,
    received: u64,
    /// What we may still send on this stream.
    send_window: i64,
    /// Data waiting for window, whether it ends the stream, and trailers
    /// to follow it.
    pending: Bytes,
    pending_end: bool,
    pending_trailers: Option<HeaderMap>,
}

struct Slot<F, B> {
    stream: Option<Stream<F, B>>,
    waker: Arc<SlotWaker>,
}

/// Continuation of a header block in progress.
struct Partial {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    None,
    /// First GOAWAY and the PING sent.
    Pinged,
    /// Final GOAWAY sent: no new streams.
    Final,
}

/// A served connection; resolves when it has closed.
pub struct Connection<T, H: Handler> {
    io: T,
    handler: H,
    config: Config,
    rbuf: BytesMut,
    wbuf: BytesMut,
    hbuf: BytesMut,
    preface_done: bool,
    settings_seen: bool,
    /// The client acknowledged our SETTINGS (until then it may send the
    /// protocol's default 65 535 octets per stream).
    settings_acked: bool,
    decoder: hpack::Decoder,
    partial: Option<Partial>,
    slots: Vec<Slot<H::Future, H::Body>>,
    free: Vec<usize>,
    ids: IdMap,
    active: usize,
    last_stream: u32,
    queue: Arc<ReadyQueue>,
    ready: Vec<usize>,
    blocked_on_conn: Vec<usize>,
    blocked_on_write: Vec<usize>,
    // The peer's settings and our send window.
    peer_initial_window: i64,
    peer_max_frame: usize,
    conn_send_window: i64,
    // Our receive window.
    conn_recv_window: i64,
    conn_unacked: u32,
    reset_tokens: f64,
    reset_refilled: Instant,
    /// Streams the proxy reset lately, whose late frames are ignored.
    reset_recently: std::collections::VecDeque<u32>,
    shutdown: Shutdown,
    peer_gone_away: bool,
    read_closed: bool,
    failed: Option<Error>,
    closed: bool,
}

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    /// Serves `io` (which starts with the client preface) with `handler`.
    pub fn new(io: T, config: Config, handler: H) -> Self {
        let mut wbuf = BytesMut::with_capacity(16 << 10);
        frame::put_settings(
            &mut wbuf,
            &[
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    config.max_concurrent_streams,
                ),
                (setting::INITIAL_WINDOW_SIZE, config.stream_window),
                (setting::MAX_HEADER_LIST_SIZE, config.max_header_list_size),
            ],
        );
        let conn_window = config
            .conn_window
            .clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW);
        if conn_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(&mut wbuf, 0, conn_window - frame::DEFAULT_WINDOW);
        }
        Self {
            io,
            handler,
            rbuf: BytesMut::with_capacity(16 << 10),
            wbuf,
            hbuf: BytesMut::with_capacity(1024),
            preface_done: false,
            settings_seen: false,
            settings_acked: false,
            decoder: hpack::Decoder::new(4096),
            partial: None,
            slots: Vec::new(),
            free: Vec::new(),
            ids: IdMap::default(),
            active: 0,
            last_stream: 0,
            queue: Arc::default(),
            ready: Vec::new(),
            blocked_on_conn: Vec::new(),
            blocked_on_write: Vec::new(),
            peer_initial_window: i64::from(frame::DEFAULT_WINDOW),
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            conn_send_window: i64::from(frame::DEFAULT_WINDOW),
            conn_recv_window: i64::from(conn_window),
            conn_unacked: 0,
            reset_tokens: RESET_BURST,
            reset_refilled: Instant::now(),
            reset_recently: std::collections::VecDeque::new(),
            shutdown: Shutdown::None,
            peer_gone_away: false,
            read_closed: false,
            failed: None,
            closed: false,
            config,
        }
    }

    /// Stops taking new streams (GOAWAY), lets the accepted ones finish,
    /// then closes.
    pub fn graceful_shutdown(&mut self) {
        if self.shutdown != Shutdown::None || self.failed.is_some() {
            return;
        }
        if !self.preface_done {
            self.closed = true;
        } else {
            frame::put_goaway(&mut self.wbuf, frame::MAX_WINDOW, Reason::NoError, b"");
            frame::put_ping(&mut self.wbuf, false, SHUTDOWN_PING);
            self.shutdown = Shutdown::Pinged;
        }
        self.queue.conn.wake();
    }

    /// Sends GOAWAY for a connection error and stops everything.
    fn fail(&mut self, err: Error) {
        if self.failed.is_some() {
            return;
        }
        if let Error::Protocol { reason, detail } = &err {
            frame::put_goaway(&mut self.wbuf, self.last_stream, *reason, detail.as_bytes());
        }
        self.cancel_all("the connection failed");
        self.failed = Some(err);
    }

    fn cancel_all(&mut self, why: &str) {
        for slot in &mut self.slots {
            if let Some(s) = slot.stream.take()
                && let Some(r) = &s.recv
            {
                r.close(|| why.to_string());
            }
        }
        self.ids.clear();
        self.free = (0..self.slots.len()).collect();
        self.active = 0;
        self.blocked_on_conn.clear();
        self.blocked_on_write.clear();
    }

    // ---- reading ----

    fn process_input(&mut self) -> Result<(), Error> {
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

    fn frame(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
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

    fn ping(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
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

    fn goaway(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
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

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
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

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
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

    fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
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
    fn charge_reset(&mut self) -> Result<(), Error> {
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
    fn reset_for_peer(&mut self, id: u32, reason: Reason) -> Result<(), Error> {
        self.reset(id, reason);
        self.charge_reset()
    }

    fn data(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
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

    fn headers(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
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

    fn continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
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

    fn header_block(&mut self, id: u32, end_stream: bool, block: Bytes) -> Result<(), Error> {
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
        if self.reset_recently.contains(&id) {
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
            self.respond_local(id, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
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

    fn alloc_slot(&mut self) -> usize {
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

    /// Answers a stream the proxy cannot hand to the handler.
    fn respond_local(&mut self, id: u32, status: StatusCode) {
        self.hbuf.clear();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-keel-error",
            http::HeaderValue::from_static("request_headers_too_large"),
        );
        hpack::encode_response_head(status, &headers, &mut self.hbuf);
        frame::put_header_block(&mut self.wbuf, id, &self.hbuf, true, self.peer_max_frame);
    }

    /// Queues RST_STREAM and remembers the stream for a while, so that
    /// frames the client sent before seeing it are ignored.
    fn send_rst(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        if self.reset_recently.len() == RESET_MEMORY {
            self.reset_recently.pop_front();
        }
        self.reset_recently.push_back(id);
    }

    /// Sends RST_STREAM and forgets the stream.
    fn reset(&mut self, id: u32, reason: Reason) {
        self.send_rst(id, reason);
        if let Some(&slot) = self.ids.get(&id) {
            self.close(slot, || {
                format!("stream reset by the proxy ({})", reason.name())
            });
        }
    }

    /// Forgets the stream in `slot`, dropping its handler or body.
    fn close(&mut self, slot: usize, why: impl FnOnce() -> String) {
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
    fn release_conn(&mut self, n: u32) {
        self.conn_unacked = self.conn_unacked.saturating_add(n);
        if self.conn_unacked >= self.config.conn_window / 2 {
            frame::put_window_update(&mut self.wbuf, 0, self.conn_unacked);
            self.conn_recv_window += i64::from(self.conn_unacked);
            self.conn_unacked = 0;
        }
    }

    /// Gives `n` octets back to the stream's and the connection's windows.
    fn release(&mut self, slot: usize, n: u32) {
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

    // ---- running streams ----

    fn run_ready(&mut self) -> bool {
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

    fn run_stream(&mut self, slot: usize) {
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

    fn send_head(&mut self, id: u32, status: StatusCode, mut headers: HeaderMap, end: bool) {
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
    fn flush_pending(&mut self, slot: usize) -> bool {
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
    fn finish(&mut self, slot: usize) {
        let Some(s) = self.slots[slot].stream.as_ref() else {
            return;
        };
        if s.recv_open {
            self.send_rst(s.id, Reason::NoError);
        }
        self.close(slot, || "the response ended first".to_string());
    }

    // ---- the socket ----

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        if wrote {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                return Poll::Ready(Err(e.into()));
            }
            self.wbuf.clear();
        }
        Poll::Ready(Ok(wrote))
    }

    fn done(&self) -> bool {
        if self.closed || self.failed.is_some() {
            return true;
        }
        if self.active > 0 || self.partial.is_some() {
            return false;
        }
        self.read_closed || self.peer_gone_away || self.shutdown == Shutdown::Final
    }
}

impl<T, H> Future for Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler + Unpin,
{
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.queue.conn.register(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            let mut progress = false;
            if !this.read_closed && this.failed.is_none() && this.wbuf.len() < WRITE_HIGH_WATER {
                if this.rbuf.capacity() - this.rbuf.len() < 4096 {
                    this.rbuf.reserve(16 << 10);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        this.read_closed = true;
                        this.cancel_all("the client closed the connection");
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        if let Err(e) = this.process_input() {
                            this.fail(e);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        this.cancel_all("the connection failed");
                        return Poll::Ready(Err(e.into()));
                    }
                    Poll::Pending => {}
                }
            }
            if this.failed.is_none() && this.run_ready() {
                progress = true;
            }
            match this.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => {
                    if wrote {
                        progress = true;
                        this.ready.append(&mut this.blocked_on_write);
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.cancel_all("the connection failed");
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {}
            }
            if this.wbuf.is_empty() && this.done() {
                let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                return Poll::Ready(match this.failed.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T, H: Handler> fmt::Debug for Connection<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("active", &self.active)
            .field("last_stream", &self.last_stream)
            .finish_non_exhaustive()
    }
}

/// Splits a DATA or HEADERS payload's padding off (RFC 9113 §6.1).
fn strip_padding(head: Head, mut payload: Bytes) -> Result<(Bytes, u32), Error> {
    if !head.has(flag::PADDED) {
        return Ok((payload, 0));
    }
    if payload.is_empty() {
        return Err(conn_err(
            Reason::FrameSize,
            "PADDED frame without a pad length",
        ));
    }
    let pad = usize::from(payload[0]);
    if pad >= payload.len() {
        return Err(conn_err(
            Reason::Protocol,
            "padding as long as the frame payload",
        ));
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad);
    Ok((payload, pad as u32 + 1))
}

/// A `content-length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}
