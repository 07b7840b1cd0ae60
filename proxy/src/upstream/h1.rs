//! HTTP/1.1 to an upstream endpoint, driven from the request's own task.
//!
//! The request head and body are written, and the response read, by the
//! task that forwards the request: there is no connection task and no
//! channel in between (hyper's client connection costs a task wake-up and
//! two channel hops per request, which showed in the data-path profile).
//! The response body owns the connection while it streams; it keeps
//! writing whatever is left of the request body (full duplex) and hands the
//! connection back to its pool once both messages are complete.
//!
//! Upgrades (WebSocket) do not come here: they go through hyper, which
//! hands over the upgraded stream (see `Pool::send`).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::pool::{ConnLimits, Pool};
use crate::http::{Body, BoxError};

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head (or chunked trailer) may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Free space ensured in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// Buffers handed to one `writev`.
const MAX_WRITE_SLICES: usize = 32;

/// An HTTP/1.1 connection to an endpoint, idle between exchanges.
pub struct Conn {
    io: TcpStream,
    /// Bytes read but not consumed.
    rbuf: BytesMut,
    /// Whether it has carried an exchange before (a failure on a reused
    /// connection may be the server closing it while idle).
    reused: bool,
    /// Exchanges it has carried.
    uses: u32,
    /// Since when it has been idle (set when it goes back to its pool).
    idle_since: Option<std::time::Instant>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.io.peer_addr().ok())
            .field("reused", &self.reused)
            .finish()
    }
}

impl Conn {
    /// A fresh connection.
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            reused: false,
            uses: 0,
            idle_since: None,
        }
    }

    /// Exchanges it has carried.
    pub fn uses(&self) -> u32 {
        self.uses
    }

    /// Marks it idle from `now`.
    pub fn set_idle(&mut self, now: std::time::Instant) {
        self.idle_since = Some(now);
    }

    /// Whether at `now` it has been idle longer than `timeout`.
    pub fn idle_longer_than(&self, timeout: std::time::Duration, now: std::time::Instant) -> bool {
        self.idle_since
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }

    /// Whether an idle connection can carry another request: the server
    /// has neither closed it nor sent anything unasked. Decided from the
    /// readiness the runtime already holds; a syscall only when the socket
    /// is flagged readable.
    pub fn is_reusable(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if self.io.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A request encoded for the wire: its head and what follows it.
pub struct Encoded {
    head: Bytes,
    framing: Framing,
    body: Body,
    /// A `HEAD` request: the response has no body whatever it says.
    head_method: bool,
    /// Whether sending it again after a silent close is safe (RFC 9110
    /// §9.2.2: idempotent methods).
    idempotent: bool,
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("head_len", &self.head.len())
            .field("framing", &self.framing)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body at all.
    Empty,
    /// `content-length` bytes, this many still to send.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Encodes `req` (origin-form URI, `Host` already set) as an HTTP/1.1
/// request head. The body is framed by its `content-length`, else by its
/// exact size when known, else chunked.
pub fn encode(req: Request<Body>) -> Result<Encoded, BoxError> {
    let (parts, body) = req.into_parts();
    encode_parts(&parts.method, &parts.uri, &parts.headers, None, body)
}

/// [`encode`] from borrowed parts, so a request sent more than once (a
/// retry) is encoded again without a copy of its headers. `extra`, when
/// given, is written in place of any such field in `headers` (the
/// per-attempt `x-envoy-attempt-count`).
pub fn encode_parts(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    extra: Option<(&HeaderName, &HeaderValue)>,
    body: Body,
) -> Result<Encoded, BoxError> {
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| parse_length(s.trim(), 10))
                .ok_or("the request's content-length is not a number")?,
        ),
        None => None,
    };
    let framing = match declared {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => Framing::Empty,
        None => match body.size_hint().exact() {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        },
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let field_len = |k: &HeaderName, v: &HeaderValue| k.as_str().len() + v.len() + 4;
    let mut head = BytesMut::with_capacity(
        64 + path.len()
            + headers.iter().map(|(k, v)| field_len(k, v)).sum::<usize>()
            + extra.map_or(0, |(k, v)| field_len(k, v)),
    );
    head.extend_from_slice(method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &HeaderName, value: &HeaderValue| {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || extra.is_some_and(|(e, _)| e == name)
        {
            continue;
        }
        field(name, value);
    }
    if let Some((name, value)) = extra {
        field(name, value);
    }
    match framing {
        Framing::Length(n) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(n.to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty if declared == Some(0) || needs_length(method) => {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty => {}
    }
    head.extend_from_slice(b"\r\n");
    Ok(Encoded {
        head: head.freeze(),
        framing,
        body,
        head_method: method == Method::HEAD,
        idempotent: matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ),
    })
}

/// Methods whose empty body is still announced (`content-length: 0`), as
/// servers may otherwise wait for one.
fn needs_length(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// Why an exchange failed.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: BoxError,
    /// The request, when sending it again on another connection is safe:
    /// the connection was a reused one the server closed without a byte of
    /// answer, the body was never read, and the method is idempotent.
    pub replay: Option<Encoded>,
}

/// Sends `req` on `conn` and waits for the response head; the response
/// body streams the rest and returns the connection to `pool` when done.
pub async fn exchange(
    conn: Conn,
    req: Encoded,
    pool: Weak<Pool>,
    limits: ConnLimits,
) -> Result<Response<ResponseBody>, Failure> {
    let mut ex = Exchange::new(conn, req);
    let head = std::future::poll_fn(|cx| ex.poll_head(cx)).await;
    match head {
        Ok(parts) => {
            let body = ResponseBody {
                ex: Some(ex),
                pool,
                limits,
            };
            Ok(Response::from_parts(parts, body))
        }
        Err(error) => {
            let replay = ex.into_replay();
            Err(Failure { error, replay })
        }
    }
}

/// One request/response on a connection.
struct Exchange {
    conn: Conn,
    /// The connection had carried an exchange before this one.
    was_reused: bool,
    // The request side.
    head: Bytes,
    /// What is left to write of the head.
    head_out: Bytes,
    /// Encoded body pieces not written yet.
    writes: VecDeque<Bytes>,
    framing: Framing,
    body: Option<Body>,
    body_touched: bool,
    send_error: Option<io::Error>,
    /// The request body failed (or broke its framing): the upstream would
    /// wait for the rest forever, so the exchange fails with this.
    aborted: Option<String>,
    idempotent: bool,
    head_method: bool,
    // The response side.
    read_any: bool,
    decoder: Decoder,
    keep_alive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoder {
    /// The head is not in yet.
    Head,
    /// This many body bytes still to read.
    Length(u64),
    /// Chunked, in the given state.
    Chunked(Chunk),
    /// Until the server closes the connection.
    Eof,
    /// The response is complete.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// This many bytes of chunk data.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer fields up to the final empty line.
    Trailers,
}

impl Exchange {
    fn new(mut conn: Conn, req: Encoded) -> Self {
        let was_reused = std::mem::replace(&mut conn.reused, true);
        conn.uses = conn.uses.saturating_add(1);
        conn.idle_since = None;
        let body = match req.framing {
            Framing::Empty => None,
            _ => Some(req.body),
        };
        Self {
            conn,
            was_reused,
            head_out: req.head.clone(),
            head: req.head,
            writes: VecDeque::new(),
            framing: req.framing,
            body,
            body_touched: false,
            send_error: None,
            aborted: None,
            idempotent: req.idempotent,
            head_method: req.head_method,
            read_any: false,
            decoder: Decoder::Head,
            keep_alive: true,
        }
    }

    /// The request back, if it may be sent again (see `Failure::replay`).
    fn into_replay(self) -> Option<Encoded> {
        if !self.was_reused || self.read_any || self.body_touched || !self.idempotent {
            return None;
        }
        Some(Encoded {
            head: self.head,
            framing: self.framing,
            body: self.body.unwrap_or_else(crate::http::empty),
            head_method: self.head_method,
            idempotent: self.idempotent,
        })
    }

    fn sending(&self) -> bool {
        self.send_error.is_none()
            && self.aborted.is_none()
            && (!self.head_out.is_empty() || !self.writes.is_empty() || self.body.is_some())
    }

    /// Writes as much of the request as the socket and the body allow.
    /// A write failure stops sending (the server may still answer).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.send_error.is_some() || self.aborted.is_some() {
                return Poll::Ready(());
            }
            // The head alone goes out with `send`, cheaper in the kernel
            // than `writev` (most requests have no body).
            while !self.head_out.is_empty() {
                match Pin::new(&mut self.conn.io).poll_write(cx, &self.head_out) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        self.send_error = Some(io::ErrorKind::WriteZero.into());
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(n)) => self.head_out.advance(n),
                    Poll::Ready(Err(e)) => {
                        self.send_error = Some(e);
                        return Poll::Ready(());
                    }
                }
            }
            while !self.writes.is_empty() {
                let io = Pin::new(&mut self.conn.io);
                let polled = if self.writes.len() == 1 {
                    io.poll_write(cx, &self.writes[0])
                } else {
                    let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
                    let n = self
                        .writes
                        .iter()
                        .zip(slices.iter_mut())
                        .map(|(b, s)| *s = IoSlice::new(b))
                        .count();
                    io.poll_write_vectored(cx, &slices[..n])
                };
                match polled {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        self.send_error = Some(io::ErrorKind::WriteZero.into());
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(mut written)) => {
                        while written > 0 {
                            let Some(front) = self.writes.front_mut() else {
                                break;
                            };
                            if written >= front.len() {
                                written -= front.len();
                                self.writes.pop_front();
                            } else {
                                front.advance(written);
                                written = 0;
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        self.send_error = Some(e);
                        return Poll::Ready(());
                    }
                }
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(());
            };
            self.body_touched = true;
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = self.queue_data(data) {
                            self.aborted = Some(e);
                        }
                    }
                    Err(frame) => {
                        if let (Ok(trailers), Framing::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            self.queue_end(Some(&trailers));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.aborted = Some(format!("reading the request body: {e}"));
                }
                None => {
                    if let Framing::Length(left @ 1..) = self.framing {
                        self.aborted = Some(format!(
                            "the request body ended {left} bytes short of its content-length"
                        ));
                    } else if self.framing == Framing::Chunked {
                        self.queue_end(None);
                    }
                    self.body = None;
                }
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err("the request body is longer than its content-length".to_string());
                }
                *left -= n;
                self.writes.push_back(data);
            }
            Framing::Chunked => {
                self.writes
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.writes.push_back(data);
                self.writes.push_back(Bytes::from_static(b"\r\n"));
            }
            Framing::Empty => {}
        }
        Ok(())
    }

    fn queue_end(&mut self, trailers: Option<&HeaderMap>) {
        let mut end = BytesMut::from(&b"0\r\n"[..]);
        for (name, value) in trailers.into_iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.writes.push_back(end.freeze());
        self.body = None;
    }

    /// Reads more from the connection; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.conn.rbuf.capacity() - self.conn.rbuf.len() < READ_RESERVE / 4 {
            self.conn.rbuf.reserve(READ_RESERVE);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.conn.io),
            cx,
            &mut self.conn.rbuf
        ))?;
        if n > 0 {
            self.read_any = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Sends what it can and reads the response head (skipping interim
    /// 1xx responses).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<http::response::Parts, BoxError>> {
        loop {
            if self.sending() {
                let _ = self.poll_send(cx);
            }
            if let Some(why) = self.aborted.take() {
                return Poll::Ready(Err(why.into()));
            }
            if let Some(parts) = self.parse_head()? {
                return Poll::Ready(Ok(parts));
            }
            if self.conn.rbuf.len() > MAX_HEAD {
                return Poll::Ready(Err(format!(
                    "the response head is larger than {} KiB",
                    MAX_HEAD / 1024
                )
                .into()));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    let why = match &self.send_error {
                        Some(e) => format!("; writing the request failed: {e}"),
                        None => String::new(),
                    };
                    let what = if self.read_any {
                        "in the middle of the response head"
                    } else {
                        "before answering"
                    };
                    return Poll::Ready(Err(format!("connection closed {what}{why}").into()));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Parses a complete response head from the buffer, if there is one.
    fn parse_head(&mut self) -> Result<Option<http::response::Parts>, BoxError> {
        loop {
            // Uninitialised: zeroing room for every possible field costs
            // more than parsing the few a response has.
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                &self.conn.rbuf,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(format!("malformed response head: {e}").into()),
            };
            if len > MAX_HEAD {
                return Err(
                    format!("the response head is larger than {} KiB", MAX_HEAD / 1024).into(),
                );
            }
            let code = resp.code.unwrap_or(0);
            let version = resp.version.unwrap_or(1);
            // Header positions, so the values can share the head's bytes
            // (`MAX_HEAD` fits in u32).
            let base = self.conn.rbuf.as_ptr() as usize;
            let count = resp.headers.len();
            let mut spans = [[0u32; 4]; MAX_HEADERS];
            for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
                let n = f.name.as_ptr() as usize - base;
                let v = f.value.as_ptr() as usize - base;
                *span = [n, f.name.len(), v, f.value.len()].map(|x| x as u32);
            }
            let head = self.conn.rbuf.split_to(len).freeze();
            if (100..200).contains(&code) && code != 101 {
                // 100 Continue, 103 Early Hints: the real answer follows.
                continue;
            }
            if code == 101 {
                return Err(
                    "the upstream switched protocols for a request that asked for no upgrade"
                        .into(),
                );
            }
            let status = StatusCode::from_u16(code)
                .map_err(|_| format!("response status {code} is out of range"))?;
            // Room for the few headers the proxy may add on the way back.
            let mut headers = HeaderMap::with_capacity(count + 2);
            let mut close = false;
            let mut keep_alive = false;
            for span in &spans[..count] {
                let [n, nl, v, vl] = span.map(|x| x as usize);
                let name = HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| {
                    format!(
                        "invalid response header name {:?}",
                        String::from_utf8_lossy(&head[n..n + nl])
                    )
                })?;
                // `Connection` is hop-by-hop: read here, and dropped when it
                // holds nothing but `close`/`keep-alive` (when it names
                // other headers it stays, for the forwarder to strip them).
                if name == header::CONNECTION {
                    let tokens = connection_tokens(&head[v..v + vl]);
                    close |= tokens.close;
                    keep_alive |= tokens.keep_alive;
                    if !tokens.other {
                        continue;
                    }
                }
                let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                    .map_err(|_| format!("invalid value for response header {name}"))?;
                headers.append(name, value);
            }
            // HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0
            // closes it unless told `keep-alive`.
            self.keep_alive = if version == 0 { keep_alive } else { !close };
            self.decoder = self.body_decoder(status, &headers)?;
            if headers.contains_key(header::TRANSFER_ENCODING)
                && headers.remove(header::CONTENT_LENGTH).is_some()
            {
                // Transfer-Encoding wins; the length is not forwarded, and
                // a connection that sent both is not trusted again
                // (RFC 9112 §6.3).
                self.keep_alive = false;
            }
            let mut parts = Response::new(()).into_parts().0;
            parts.status = status;
            parts.version = if version == 0 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            parts.headers = headers;
            return Ok(Some(parts));
        }
    }

    /// How the response body is delimited (RFC 9112 §6.3).
    fn body_decoder(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Decoder, BoxError> {
        if self.head_method
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Decoder::Done);
        }
        if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
            let chunked = te
                .to_str()
                .ok()
                .and_then(|s| s.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if chunked {
                return Ok(Decoder::Chunked(Chunk::Size));
            }
            self.keep_alive = false;
            return Ok(Decoder::Eof);
        }
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            let n = first
                .to_str()
                .ok()
                .and_then(|s| parse_length(s.trim(), 10))
                .ok_or("the response's content-length is not a number")?;
            if lengths.any(|other| other != first) {
                return Err("the response has conflicting content-length headers".into());
            }
            return Ok(if n == 0 {
                Decoder::Done
            } else {
                Decoder::Length(n)
            });
        }
        self.keep_alive = false;
        Ok(Decoder::Eof)
    }

    /// The next frame of the response body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.sending() {
            let _ = self.poll_send(cx);
        }
        if let Some(why) = self.aborted.take() {
            return Poll::Ready(Some(Err(why.into())));
        }
        loop {
            match self.decoder {
                Decoder::Head | Decoder::Done => return Poll::Ready(None),
                Decoder::Length(left) => {
                    if !self.conn.rbuf.is_empty() {
                        let n = left.min(self.conn.rbuf.len() as u64);
                        let data = self.conn.rbuf.split_to(n as usize).freeze();
                        self.decoder = match left - n {
                            0 => Decoder::Done,
                            rest => Decoder::Length(rest),
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(format!(
                            "the upstream closed the connection {left} bytes before the end of the response body"
                        )
                        .into())));
                    }
                }
                Decoder::Eof => {
                    if !self.conn.rbuf.is_empty() {
                        let data = self.conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        self.decoder = Decoder::Done;
                        return Poll::Ready(None);
                    }
                }
                Decoder::Chunked(state) => {
                    if let Some(frame) = self.decode_chunked(state)? {
                        return Poll::Ready(frame);
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(
                            "the upstream closed the connection in the middle of a chunked response body".into(),
                        )));
                    }
                }
            }
        }
    }

    /// Advances the chunked decoder over buffered bytes. `Ok(None)`: more
    /// bytes are needed; `Ok(Some(None))`: the body ended.
    #[allow(clippy::type_complexity)]
    fn decode_chunked(
        &mut self,
        mut state: Chunk,
    ) -> Result<Option<Option<Result<Frame<Bytes>, BoxError>>>, BoxError> {
        let buf = &mut self.conn.rbuf;
        loop {
            match state {
                Chunk::Size => {
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("a chunk-size line is too long".into());
                        }
                        self.decoder = Decoder::Chunked(state);
                        return Ok(None);
                    };
                    let line = &buf[..end];
                    let digits = line.split(|b| *b == b';').next().unwrap_or(&[]);
                    let digits = std::str::from_utf8(digits).unwrap_or("").trim();
                    let size = parse_length(digits, 16)
                        .ok_or_else(|| format!("invalid chunk size {digits:?}"))?;
                    buf.advance(end + 2);
                    state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        self.decoder = Decoder::Chunked(state);
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.decoder = Decoder::Chunked(match left - n {
                        0 => Chunk::DataEnd,
                        rest => Chunk::Data(rest),
                    });
                    return Ok(Some(Some(Ok(Frame::data(data)))));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        self.decoder = Decoder::Chunked(state);
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data is not followed by CRLF".into());
                    }
                    buf.advance(2);
                    state = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.decoder = Decoder::Done;
                        return Ok(Some(None));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    map.append(n, v);
                                }
                            }
                            (len, map)
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > MAX_HEAD {
                                return Err("the chunked trailers are too large".into());
                            }
                            self.decoder = Decoder::Chunked(state);
                            return Ok(None);
                        }
                        Err(e) => return Err(format!("malformed chunked trailers: {e}").into()),
                    };
                    buf.advance(len);
                    self.decoder = Decoder::Done;
                    return Ok(Some(Some(Ok(Frame::trailers(trailers)))));
                }
            }
        }
    }

    /// Whether the connection can carry another exchange now.
    fn reusable(&self) -> bool {
        self.decoder == Decoder::Done
            && self.keep_alive
            && self.send_error.is_none()
            && self.head_out.is_empty()
            && self.writes.is_empty()
            && self.body.is_none()
    }
}

/// A length of digits only (`1*DIGIT`, `1*HEXDIG`): Rust's parsers also
/// take a leading `+`, which other hops would read differently.
pub(crate) fn parse_length(s: &str, radix: u32) -> Option<u64> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(s, radix).ok()
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// What a `Connection` header value says.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// It names anything else (other hop-by-hop headers, `upgrade`), or is
    /// not text.
    other: bool,
}

fn connection_tokens(value: &[u8]) -> ConnectionTokens {
    let mut t = ConnectionTokens::default();
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            t.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            t.keep_alive = true;
        } else if !token.is_empty() {
            t.other = true;
        }
    }
    t
}

/// A response body read straight from the upstream connection; the
/// connection goes back to its pool once the exchange is complete, and is
/// closed if the body is dropped half-read.
pub struct ResponseBody {
    ex: Option<Exchange>,
    pool: Weak<Pool>,
    limits: ConnLimits,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("decoder", &self.ex.as_ref().map(|e| e.decoder))
            .finish()
    }
}

impl ResponseBody {
    fn release(&mut self) {
        let Some(ex) = self.ex.take() else { return };
        if ex.reusable()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put_back(ex.conn, self.limits);
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(ex) = self.ex.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ex.poll_body(cx);
        match &polled {
            Poll::Ready(None) => {
                // The response is complete; the request may still be
                // going out (the server answered early). Finish sending
                // if it is quick, else the connection closes.
                if ex.sending() {
                    let _ = ex.poll_send(cx);
                }
                self.release();
            }
            Poll::Ready(Some(Ok(_))) if ex.decoder == Decoder::Done && !ex.sending() => {
                self.release();
            }
            Poll::Ready(Some(Err(_))) => self.ex = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ex
            .as_ref()
            .is_none_or(|ex| ex.decoder == Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.ex.as_ref().map(|ex| ex.decoder) {
            None | Some(Decoder::Done) => SizeHint::with_exact(0),
            Some(Decoder::Length(n)) => SizeHint::with_exact(n),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests;
