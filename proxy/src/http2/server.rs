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
mod recv;
mod request;
mod send;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::task::AtomicWaker;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

pub use body::{RecvBody, RecvError};

use super::frame::{self, Head, Reason, flag, setting};
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

/// A `content-length` value: digits only (the HTTP/1.1 client's rule).
fn parse_length(v: &[u8]) -> Option<u64> {
    crate::upstream::h1::parse_length(std::str::from_utf8(v).ok()?, 10)
}
