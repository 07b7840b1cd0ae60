//! The server against a client made of raw frames: preface, frames
//! written with `frame::put_*`, HPACK blocks built by hand (every field a
//! literal without indexing with a literal name), and the server's frames
//! read back with `frame::Head::parse` and `hpack::Decoder`. For protocol
//! behaviour hyper never produces; each test asserts the exact frame the
//! server answers with.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::http2::frame::{self, HEAD_LEN, Head, PREFACE, flag, kind, setting};
use crate::http2::hpack::{self, Name};

// ---- HPACK, by hand ----

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1).
fn put_int(dst: &mut Vec<u8>, first: u8, prefix: u32, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        dst.push(first | v as u8);
        return;
    }
    dst.push(first | max as u8);
    v -= max;
    while v >= 128 {
        dst.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    dst.push(v as u8);
}

/// A literal field without indexing, with a literal name (§6.2.2).
fn put_literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    put_int(dst, 0, 7, name.len());
    dst.extend_from_slice(name);
    put_int(dst, 0, 7, value.len());
    dst.extend_from_slice(value);
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        put_literal(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

fn req_fields<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "raw.test"),
        (":path", path),
    ]
}

fn get_block(path: &str) -> Vec<u8> {
    block(&req_fields("GET", path))
}

fn post_block(path: &str) -> Vec<u8> {
    block(&req_fields("POST", path))
}

// ---- frames, by hand ----

fn put_frame(dst: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    frame::put_head(dst, payload.len(), kind, flags, stream);
    dst.put_slice(payload);
}

/// HEADERS (with END_HEADERS) carrying `block`.
fn headers(stream: u32, block: &[u8], end_stream: bool) -> BytesMut {
    let mut b = BytesMut::new();
    frame::put_header_block(&mut b, stream, block, end_stream, 16_384);
    b
}

fn data(stream: u32, payload: &[u8], end_stream: bool) -> BytesMut {
    let mut b = BytesMut::new();
    frame::put_data(&mut b, stream, payload, end_stream, 16_384);
    b
}

fn rst(stream: u32, reason: Reason) -> BytesMut {
    let mut b = BytesMut::new();
    frame::put_rst(&mut b, stream, reason);
    b
}

fn window_update(stream: u32, increment: u32) -> BytesMut {
    let mut b = BytesMut::new();
    frame::put_window_update(&mut b, stream, increment);
    b
}

fn settings_values(payload: &[u8]) -> HashMap<u16, u32> {
    payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

// ---- the client ----

#[derive(Debug)]
struct RawFrame {
    head: Head,
    payload: Bytes,
}

#[derive(Debug)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
}

/// What the server sent on one stream.
#[derive(Debug, Default)]
struct StreamLog {
    /// `:status` and the header fields of the response head.
    status: Option<u16>,
    headers: HeaderMap,
    /// The flags of the response's HEADERS frame.
    head_flags: u8,
    body: Vec<u8>,
    data_frames: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    reset: Option<u32>,
    /// A header block in progress.
    block: Vec<u8>,
    block_end_stream: bool,
}

struct Raw {
    tcp: TcpStream,
    rbuf: BytesMut,
    decoder: hpack::Decoder,
    closed: bool,
    streams: HashMap<u32, StreamLog>,
    goaways: Vec<GoAway>,
    /// PINGs from the server that are not acknowledgements.
    pings: Vec<[u8; 8]>,
    /// Sum of the server's WINDOW_UPDATE increments on stream 0.
    conn_credit: i64,
}

impl Raw {
    /// Connected, nothing sent.
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Self {
            tcp,
            rbuf: BytesMut::with_capacity(64 << 10),
            decoder: hpack::Decoder::new(4096),
            closed: false,
            streams: HashMap::new(),
            goaways: Vec::new(),
            pings: Vec::new(),
            conn_credit: 0,
        }
    }

    /// Connected, with the preface and an empty SETTINGS sent.
    async fn open(addr: SocketAddr) -> Self {
        Self::open_with(addr, &[]).await
    }

    async fn open_with(addr: SocketAddr, settings: &[(u16, u32)]) -> Self {
        let mut c = Self::connect(addr).await;
        let mut b = BytesMut::from(&PREFACE[..]);
        frame::put_settings(&mut b, settings);
        c.send(&b).await;
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// For input the server may stop reading half-way (it has failed the
    /// connection): what it did is read back afterwards.
    async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The next frame (recorded), or `None` once the server has closed.
    async fn frame(&mut self) -> Option<RawFrame> {
        loop {
            if self.rbuf.len() >= HEAD_LEN {
                let head = Head::parse(self.rbuf[..HEAD_LEN].try_into().unwrap());
                let total = HEAD_LEN + head.len as usize;
                if self.rbuf.len() >= total {
                    let mut f = self.rbuf.split_to(total);
                    let payload = f.split_off(HEAD_LEN).freeze();
                    let frame = RawFrame { head, payload };
                    self.record(&frame);
                    return Some(frame);
                }
            }
            if self.closed {
                return None;
            }
            match within("a frame from the server", self.tcp.read_buf(&mut self.rbuf)).await {
                Ok(0) | Err(_) => self.closed = true,
                Ok(_) => {}
            }
        }
    }

    fn record(&mut self, f: &RawFrame) {
        let p = &f.payload[..];
        match f.head.kind {
            kind::HEADERS | kind::CONTINUATION => {
                let log = self.streams.entry(f.head.stream).or_default();
                if f.head.kind == kind::HEADERS {
                    assert!(!f.head.has(flag::PADDED | flag::PRIORITY));
                    log.block_end_stream = f.head.has(flag::END_STREAM);
                    if log.status.is_none() {
                        log.head_flags = f.head.flags;
                    }
                }
                log.block.extend_from_slice(p);
                if f.head.has(flag::END_HEADERS) {
                    let block = Bytes::from(std::mem::take(&mut log.block));
                    let mut fields = Vec::new();
                    self.decoder
                        .decode(block, usize::MAX, |field| fields.push(field))
                        .expect("the server's header block decodes");
                    let log = self.streams.get_mut(&f.head.stream).unwrap();
                    let mut map = HeaderMap::new();
                    let mut status = None;
                    for field in fields {
                        match field.name {
                            Name::Status => {
                                status = Some(
                                    std::str::from_utf8(&field.value).unwrap().parse().unwrap(),
                                );
                            }
                            Name::Header(n) => {
                                map.append(n, HeaderValue::from_maybe_shared(field.value).unwrap());
                            }
                            other => panic!("pseudo-header {other:?} in a response"),
                        }
                    }
                    if log.status.is_none() {
                        log.status = Some(status.expect("a response head has :status"));
                        log.headers = map;
                    } else {
                        assert!(status.is_none(), "trailers with :status");
                        log.trailers = Some(map);
                    }
                    log.ended |= log.block_end_stream;
                }
            }
            kind::DATA => {
                let log = self.streams.entry(f.head.stream).or_default();
                assert!(log.status.is_some(), "DATA before the response head");
                log.body.extend_from_slice(p);
                log.data_frames += 1;
                log.ended |= f.head.has(flag::END_STREAM);
            }
            kind::RST_STREAM => {
                let code = u32::from_be_bytes(p.try_into().unwrap());
                self.streams.entry(f.head.stream).or_default().reset = Some(code);
            }
            kind::GOAWAY => self.goaways.push(GoAway {
                last_stream: u32::from_be_bytes(p[..4].try_into().unwrap()),
                code: u32::from_be_bytes(p[4..8].try_into().unwrap()),
                debug: String::from_utf8_lossy(&p[8..]).into_owned(),
            }),
            kind::PING if !f.head.has(flag::ACK) => self.pings.push(p.try_into().unwrap()),
            kind::WINDOW_UPDATE if f.head.stream == 0 => {
                self.conn_credit += i64::from(u32::from_be_bytes(p.try_into().unwrap()));
            }
            _ => {}
        }
    }

    /// Reads until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            if self.frame().await.is_none() {
                panic!("the server closed the connection while waiting for {what}");
            }
        }
    }

    /// The complete response on `stream`.
    async fn response(&mut self, stream: u32) -> &StreamLog {
        self.until("a response", |c| {
            c.streams
                .get(&stream)
                .is_some_and(|s| s.ended || s.reset.is_some())
                || !c.goaways.is_empty()
        })
        .await;
        assert!(self.goaways.is_empty(), "GOAWAY {:?}", self.goaways);
        let log = &self.streams[&stream];
        // RST_STREAM NO_ERROR after a complete response only tells the
        // client to stop sending its request body (RFC 9113 §8.1).
        assert!(log.ended, "stream {stream} reset before its end: {log:?}");
        assert!(
            log.reset.is_none_or(|c| c == code(Reason::NoError)),
            "stream {stream}: {log:?}"
        );
        log
    }

    /// After a complete response on `stream`: its RST_STREAM code.
    async fn reset_after_response(&mut self, stream: u32) -> u32 {
        self.until("RST_STREAM", |c| {
            c.streams.get(&stream).is_some_and(|s| s.reset.is_some()) || !c.goaways.is_empty()
        })
        .await;
        assert!(self.goaways.is_empty(), "GOAWAY {:?}", self.goaways);
        self.streams[&stream].reset.unwrap()
    }

    /// The RST_STREAM code on `stream`; the stream must not be answered.
    async fn reset_code(&mut self, stream: u32) -> u32 {
        self.until("RST_STREAM", |c| {
            c.streams
                .get(&stream)
                .is_some_and(|s| s.reset.is_some() || s.ended)
                || !c.goaways.is_empty()
        })
        .await;
        assert!(self.goaways.is_empty(), "GOAWAY {:?}", self.goaways);
        let log = &self.streams[&stream];
        assert_eq!(log.status, None, "stream {stream} was answered: {log:?}");
        log.reset.unwrap()
    }

    /// The server's GOAWAY, after which it closes the connection.
    async fn goaway(&mut self) -> GoAway {
        self.until("GOAWAY", |c| !c.goaways.is_empty()).await;
        while self.frame().await.is_some() {}
        assert_eq!(self.goaways.len(), 1, "{:?}", self.goaways);
        self.goaways.pop().unwrap()
    }

    /// Watches for `d`: nothing may arrive on `stream` but WINDOW_UPDATEs.
    async fn nothing_on(&mut self, stream: u32, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(f) = tokio::time::timeout_at(deadline, self.frame()).await {
            let f = f.expect("the server closed the connection");
            assert!(
                f.head.stream != stream || f.head.kind == kind::WINDOW_UPDATE,
                "unexpected frame on stream {stream}: {f:?}"
            );
        }
    }
}

fn code(reason: Reason) -> u32 {
    reason as u32
}

/// Serves one connection with [`router`] and `config`, sends `input` after
/// the preface and SETTINGS, and expects a connection error: GOAWAY with
/// `reason` and a debug text containing `phrase`, the connection closed,
/// the connection future failed with `reason`.
async fn provoke(config: Config, input: &[u8], reason: Reason, phrase: &str) -> GoAway {
    let (hooks, _events) = hooks();
    let server = serve(config, router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    c.send_lossy(input).await;
    let g = c.goaway().await;
    assert_eq!(
        (frame::code_name(g.code), g.debug.contains(phrase)),
        (reason.name().to_string(), true),
        "GOAWAY {g:?}, want {} with {phrase:?}",
        reason.name()
    );
    server.failed_with(reason).await;
    g
}

// ---- connection set-up ----

#[tokio::test]
async fn the_server_opens_with_settings_from_its_config() {
    let (hooks, _events) = hooks();
    let config = Config {
        max_concurrent_streams: 17,
        stream_window: 70_000,
        conn_window: 1 << 20,
        max_header_list_size: 5_000,
    };
    let server = serve(config, router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let f = c.frame().await.unwrap();
    assert_eq!(
        (f.head.kind, f.head.flags, f.head.stream),
        (kind::SETTINGS, 0, 0)
    );
    let v = settings_values(&f.payload);
    assert_eq!(v.get(&setting::MAX_CONCURRENT_STREAMS), Some(&17));
    assert_eq!(v.get(&setting::INITIAL_WINDOW_SIZE), Some(&70_000));
    assert_eq!(v.get(&setting::MAX_HEADER_LIST_SIZE), Some(&5_000));
    // The connection window is opened from 65,535 to the configured size.
    let f = c.frame().await.unwrap();
    assert_eq!((f.head.kind, f.head.stream), (kind::WINDOW_UPDATE, 0));
    assert_eq!(c.conn_credit, (1 << 20) - 65_535);
    let f = c.frame().await.unwrap();
    assert_eq!(
        (f.head.kind, f.head.flags, f.head.len),
        (kind::SETTINGS, flag::ACK, 0)
    );
}

#[tokio::test]
async fn settings_are_acknowledged() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open_with(
        server.addr,
        &[
            (setting::HEADER_TABLE_SIZE, 0),
            (setting::ENABLE_PUSH, 0),
            (setting::INITIAL_WINDOW_SIZE, 100_000),
            (setting::MAX_FRAME_SIZE, 32_768),
            (0x99, 7), // unknown: ignored
        ],
    )
    .await;
    let mut b = BytesMut::new();
    frame::put_settings(&mut b, &[(setting::MAX_CONCURRENT_STREAMS, 10)]);
    c.send(&b).await;
    let mut acks = 0;
    while acks < 2 {
        let f = c.frame().await.expect("the connection stays open");
        if f.head.kind == kind::SETTINGS && f.head.has(flag::ACK) {
            assert_eq!((f.head.len, f.head.stream), (0, 0));
            acks += 1;
        }
    }
    // And it still serves.
    c.send(&headers(1, &get_block("/after-settings"), true))
        .await;
    assert_eq!(c.response(1).await.status, Some(200));
}

#[tokio::test]
async fn ping_is_answered_with_the_same_payload() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let payload = *b"\x01\x02keel\xfe\xff";
    let mut b = BytesMut::new();
    frame::put_ping(&mut b, false, payload);
    c.send(&b).await;
    loop {
        let f = c.frame().await.expect("a PING ACK");
        if f.head.kind == kind::PING {
            assert_eq!((f.head.flags, f.head.stream), (flag::ACK, 0));
            assert_eq!(&f.payload[..], &payload);
            break;
        }
    }
}

#[tokio::test]
async fn a_wrong_preface_is_refused() {
    let cases: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nhost: raw.test\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for input in cases {
        let (hooks, _events) = hooks();
        let server = serve(Config::default(), router(hooks)).await;
        let mut c = Raw::connect(server.addr).await;
        c.send_lossy(input).await;
        let g = c.goaway().await;
        assert_eq!(g.code, code(Reason::Protocol), "{input:?}: {g:?}");
        assert!(g.debug.contains("preface"), "{g:?}");
        server.failed_with(Reason::Protocol).await;
    }
}

#[tokio::test]
async fn the_first_frame_must_be_settings() {
    let mut ping = BytesMut::from(&PREFACE[..]);
    frame::put_ping(&mut ping, false, [0; 8]);
    let mut ack = BytesMut::from(&PREFACE[..]);
    frame::put_settings_ack(&mut ack);
    let mut head = BytesMut::from(&PREFACE[..]);
    head.put_slice(&headers(1, &get_block("/"), true));
    for input in [ping, ack, head] {
        let (hooks, _events) = hooks();
        let server = serve(Config::default(), router(hooks.clone())).await;
        let mut c = Raw::connect(server.addr).await;
        c.send_lossy(&input).await;
        let g = c.goaway().await;
        assert_eq!(g.code, code(Reason::Protocol), "{g:?}");
        assert!(g.debug.contains("first frame is not SETTINGS"), "{g:?}");
        server.failed_with(Reason::Protocol).await;
        assert_eq!(hooks.calls.load(Ordering::SeqCst), 0);
    }
}

// ---- stream ids ----

#[tokio::test]
async fn headers_on_an_even_stream_is_a_connection_error() {
    let g = provoke(
        Config::default(),
        &headers(2, &get_block("/"), true),
        Reason::Protocol,
        "odd",
    )
    .await;
    assert_eq!(g.last_stream, 0);
}

#[tokio::test]
async fn stream_ids_must_increase() {
    let mut input = headers(5, &get_block("/five"), true);
    input.put_slice(&headers(3, &get_block("/three"), true));
    let g = provoke(Config::default(), &input, Reason::Protocol, "increasing").await;
    assert_eq!(g.last_stream, 5);

    // Reusing a closed stream's id is the same mistake.
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &get_block("/one"), true)).await;
    assert_eq!(c.response(1).await.status, Some(200));
    c.send_lossy(&headers(1, &get_block("/one-again"), true))
        .await;
    let g = c.goaway().await;
    assert_eq!(
        (g.code, g.last_stream),
        (code(Reason::Protocol), 1),
        "{g:?}"
    );
    server.failed_with(Reason::Protocol).await;
}

// ---- flow control ----

#[tokio::test]
async fn data_on_an_idle_stream_is_a_connection_error() {
    provoke(
        Config::default(),
        &data(1, b"hello", true),
        Reason::Protocol,
        "idle",
    )
    .await;
    provoke(
        Config::default(),
        &data(0, b"hello", true),
        Reason::Protocol,
        "stream 0",
    )
    .await;
}

#[tokio::test]
async fn data_beyond_the_connection_window_is_a_connection_error() {
    let config = Config {
        conn_window: 65_535,
        stream_window: 1 << 20,
        ..Config::default()
    };
    let mut input = headers(1, &post_block("/pending"), false);
    // 4 × 16,384 = 65,536: one octet over.
    input.put_slice(&data(1, &[7; 4 * 16_384], false));
    let g = provoke(config, &input, Reason::FlowControl, "connection window").await;
    assert_eq!(g.last_stream, 1);
}

#[tokio::test]
async fn connection_window_update_errors() {
    provoke(
        Config::default(),
        &window_update(0, 0),
        Reason::Protocol,
        "WINDOW_UPDATE of 0",
    )
    .await;
    // 65,535 + (2^31 - 1) overflows the window.
    provoke(
        Config::default(),
        &window_update(0, frame::MAX_WINDOW),
        Reason::FlowControl,
        "2^31-1",
    )
    .await;
}

#[tokio::test]
async fn stream_window_update_errors_reset_only_that_stream() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &get_block("/pending"), true)).await;
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    c.send(&window_update(1, 0)).await;
    assert_eq!(c.reset_code(1).await, code(Reason::Protocol));
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));

    c.send(&headers(3, &get_block("/pending"), true)).await;
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    c.send(&window_update(3, frame::MAX_WINDOW)).await;
    assert_eq!(c.reset_code(3).await, code(Reason::FlowControl));
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));

    c.send(&headers(5, &get_block("/still-fine"), true)).await;
    assert_eq!(c.response(5).await.status, Some(200));
}

/// The server sends response DATA only within the client's windows: the
/// stream window (SETTINGS_INITIAL_WINDOW_SIZE 10), then the connection
/// window (65,535), resuming exactly on each WINDOW_UPDATE.
#[tokio::test]
async fn response_data_waits_for_the_clients_windows() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open_with(server.addr, &[(setting::INITIAL_WINDOW_SIZE, 10)]).await;
    let body = pattern(100, 5);
    let mut input = headers(1, &post_block("/echo"), false);
    input.put_slice(&data(1, &body, true));
    c.send(&input).await;
    c.until("10 octets", |c| {
        c.streams.get(&1).is_some_and(|s| s.body.len() >= 10)
    })
    .await;
    c.nothing_on(1, QUIET).await;
    assert_eq!(c.streams[&1].body.len(), 10);
    c.send(&window_update(1, 90)).await;
    let log = c.response(1).await;
    assert_same_bytes(&log.body, &body);

    // Stream windows ample now; the connection window has 65,435 left.
    let mut b = BytesMut::new();
    frame::put_settings(&mut b, &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
    c.send(&b).await;
    let body = pattern(70_000, 6);
    let mut input = headers(3, &post_block("/echo"), false);
    input.put_slice(&data(3, &body, true));
    c.send(&input).await;
    c.until("65,435 octets", |c| {
        c.streams.get(&3).is_some_and(|s| s.body.len() >= 65_435)
    })
    .await;
    c.nothing_on(3, QUIET).await;
    assert_eq!(c.streams[&3].body.len(), 65_435);
    c.send(&window_update(0, 10_000)).await;
    let log = c.response(3).await;
    assert_same_bytes(&log.body, &body);
}

/// Request bodies the handler drops unread, 3× the connection window in
/// all, sent by a client that honours the windows it is given: it only
/// gets through if the server returns the window of discarded data.
#[tokio::test]
async fn discarded_request_bodies_give_their_window_back() {
    let (hooks, _events) = hooks();
    let conn_window: i64 = 128 << 10;
    let config = Config {
        stream_window: 64 << 10,
        conn_window: conn_window as u32,
        ..Config::default()
    };
    let server = serve(config, router(hooks.clone())).await;
    let mut c = Raw::open(server.addr).await;
    let per_stream = 60_000; // below every stream window
    let mut sent: i64 = 0;
    let mut ids = Vec::new();
    let mut id = 1;
    while sent <= 3 * conn_window {
        c.send(&headers(id, &post_block("/ignore-body"), false))
            .await;
        ids.push(id);
        let mut left = per_stream;
        while left > 0 {
            if c.streams.get(&id).is_some_and(|s| s.reset.is_some()) {
                break; // the server said stop (RST_STREAM NO_ERROR)
            }
            let n = left.min(16_384);
            while 65_535 + c.conn_credit - sent < n as i64 {
                assert!(c.frame().await.is_some(), "closed while waiting for window");
            }
            c.send(&data(id, &vec![id as u8; n], n == left)).await;
            sent += n as i64;
            left -= n;
        }
        id += 2;
    }
    for id in &ids {
        let log = c.response(*id).await;
        assert_eq!(log.status, Some(200), "stream {id}");
        assert_eq!(log.body, b"ignored");
    }
    assert!(sent > 3 * conn_window);
    assert_eq!(hooks.calls.load(Ordering::SeqCst), ids.len());
}

// ---- malformed requests ----

struct Malformed {
    what: &'static str,
    block: Vec<u8>,
    end_stream: bool,
    /// DATA sent after the HEADERS, with END_STREAM.
    data: Option<&'static [u8]>,
}

fn malformed_cases() -> Vec<Malformed> {
    let get = |extra: &[(&'static str, &'static str)]| {
        let mut f = req_fields("GET", "/malformed");
        f.extend_from_slice(extra);
        block(&f)
    };
    let case = |what, block| Malformed {
        what,
        block,
        end_stream: true,
        data: None,
    };
    vec![
        case(
            "connection: keep-alive",
            get(&[("connection", "keep-alive")]),
        ),
        case("keep-alive", get(&[("keep-alive", "timeout=5")])),
        case(
            "transfer-encoding",
            get(&[("transfer-encoding", "chunked")]),
        ),
        case("upgrade", get(&[("upgrade", "websocket")])),
        case("te: gzip", get(&[("te", "gzip")])),
        case(
            "missing :path",
            block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "raw.test"),
            ]),
        ),
        case(
            "missing :method",
            block(&[
                (":scheme", "http"),
                (":authority", "raw.test"),
                (":path", "/"),
            ]),
        ),
        case(
            "empty :path",
            block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "raw.test"),
                (":path", ""),
            ]),
        ),
        case(
            "pseudo-header after a regular field",
            block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "raw.test"),
                ("x-early", "1"),
                (":path", "/"),
            ]),
        ),
        case(
            "duplicate :method",
            block(&[
                (":method", "GET"),
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "raw.test"),
                (":path", "/"),
            ]),
        ),
        case(":status in a request", get(&[(":status", "200")])),
        case("LF in a value", get(&[("x-bad", "a\nb")])),
        Malformed {
            what: "content-length 5 with END_STREAM on HEADERS",
            block: block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "raw.test"),
                (":path", "/"),
                ("content-length", "5"),
            ]),
            end_stream: true,
            data: None,
        },
        Malformed {
            what: "content-length 5 with 3 octets of DATA",
            block: block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "raw.test"),
                (":path", "/"),
                ("content-length", "5"),
            ]),
            end_stream: false,
            data: Some(b"abc"),
        },
        Malformed {
            what: "content-length 2 with 3 octets of DATA",
            block: block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "raw.test"),
                (":path", "/"),
                ("content-length", "2"),
            ]),
            end_stream: false,
            data: Some(b"abc"),
        },
        case(
            "non-numeric content-length",
            get(&[("content-length", "5x")]),
        ),
    ]
}

/// Sends `case` on `id` and expects RST_STREAM PROTOCOL_ERROR there (no
/// response), then a valid request on `id + 2` answered 200.
async fn assert_malformed(c: &mut Raw, id: u32, case: &Malformed) {
    let mut input = headers(id, &case.block, case.end_stream);
    if let Some(d) = case.data {
        input.put_slice(&data(id, d, true));
    }
    c.send(&input).await;
    let code = c.reset_code(id).await;
    assert_eq!(
        frame::code_name(code),
        "PROTOCOL_ERROR",
        "{}: RST_STREAM code",
        case.what
    );
    let ok = id + 2;
    let mut f = req_fields("GET", "/valid");
    f.push(("te", "trailers"));
    c.send(&headers(ok, &block(&f), true)).await;
    let log = c.response(ok).await;
    assert_eq!(log.status, Some(200), "{}: the next request", case.what);
    assert_eq!(log.headers["x-path"], "/valid");
}

#[tokio::test]
async fn malformed_requests_reset_only_their_stream() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks.clone())).await;
    let mut c = Raw::open(server.addr).await;
    let cases = malformed_cases();
    for (i, case) in cases.iter().enumerate() {
        assert_malformed(&mut c, 1 + 4 * i as u32, case).await;
    }
    // Only the valid requests ran a handler, and perhaps the two
    // content-length-vs-DATA cases (created, then reset by the DATA: if
    // that came in the same read, their future was never polled).
    let calls = hooks.calls.load(Ordering::SeqCst);
    assert!((cases.len()..=cases.len() + 2).contains(&calls), "{calls}");
}

/// RFC 9113 §8.2.1: uppercase field names make the request malformed, a
/// stream error; the server turns it into a connection-wide
/// COMPRESSION_ERROR instead, failing every other stream on the connection.
#[tokio::test]
async fn an_uppercase_header_name_resets_only_its_stream() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let mut f = req_fields("GET", "/");
    f.push(("X-Upper", "1"));
    let case = Malformed {
        what: "uppercase name",
        block: block(&f),
        end_stream: true,
        data: None,
    };
    assert_malformed(&mut c, 1, &case).await;
}

/// RFC 9113 §8.3: an undefined pseudo-header makes the request malformed
/// (a stream error); same root cause as the uppercase name.
#[tokio::test]
async fn an_unknown_pseudo_header_resets_only_its_stream() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let mut f = req_fields("GET", "/");
    f.push((":foo", "1"));
    let case = Malformed {
        what: "unknown pseudo-header",
        block: block(&f),
        end_stream: true,
        data: None,
    };
    assert_malformed(&mut c, 1, &case).await;
}

/// RFC 9113 §8.1.1: content-length must equal the DATA received, however
/// the stream ends — here by trailers.
#[tokio::test]
async fn content_length_is_checked_when_trailers_end_the_body() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let mut f = req_fields("POST", "/cl-trailers");
    f.push(("content-length", "5"));
    let mut input = headers(1, &block(&f), false);
    input.put_slice(&data(1, b"abc", false));
    input.put_slice(&headers(1, &block(&[("x-t", "1")]), true));
    c.send(&input).await;
    assert_eq!(c.reset_code(1).await, code(Reason::Protocol));
}

// ---- HPACK and header blocks ----

#[tokio::test]
async fn an_invalid_hpack_index_is_a_compression_error() {
    // Indexed field 200: the static table has 61 entries, the dynamic
    // table none.
    let mut b = vec![];
    put_int(&mut b, 0x80, 7, 200);
    provoke(
        Config::default(),
        &headers(1, &b, true),
        Reason::Compression,
        "index 200",
    )
    .await;
}

#[tokio::test]
async fn a_header_block_split_over_continuations_is_answered() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let mut f = req_fields("GET", "/split");
    let long = "x".repeat(300);
    f.push(("x-long", &long));
    let b = block(&f);
    let mut input = BytesMut::new();
    frame::put_header_block(&mut input, 1, &b, true, b.len().div_ceil(3));
    let kinds: Vec<u8> = {
        let mut at = 0;
        let mut k = Vec::new();
        while at < input.len() {
            let h = Head::parse(input[at..at + HEAD_LEN].try_into().unwrap());
            k.push(h.kind);
            at += HEAD_LEN + h.len as usize;
        }
        k
    };
    assert_eq!(
        kinds,
        [kind::HEADERS, kind::CONTINUATION, kind::CONTINUATION]
    );
    c.send(&input).await;
    let log = c.response(1).await;
    assert_eq!(log.status, Some(200));
    assert_eq!(log.headers["x-path"], "/split");
}

#[tokio::test]
async fn only_continuation_may_follow_an_unfinished_header_block() {
    let b = get_block("/interrupted");
    let open = |stream| {
        let mut f = BytesMut::new();
        put_frame(&mut f, kind::HEADERS, flag::END_STREAM, stream, &b);
        f
    };
    // A PING in the middle.
    let mut input = open(1);
    frame::put_ping(&mut input, false, [1; 8]);
    provoke(
        Config::default(),
        &input,
        Reason::Protocol,
        "expected CONTINUATION",
    )
    .await;
    // A CONTINUATION of another stream.
    let mut input = open(1);
    put_frame(&mut input, kind::CONTINUATION, flag::END_HEADERS, 3, &[]);
    provoke(
        Config::default(),
        &input,
        Reason::Protocol,
        "expected CONTINUATION",
    )
    .await;
    // HEADERS of another stream.
    let mut input = open(1);
    input.put_slice(&headers(3, &get_block("/other"), true));
    provoke(
        Config::default(),
        &input,
        Reason::Protocol,
        "expected CONTINUATION",
    )
    .await;
    // A CONTINUATION with no header block open.
    let mut input = BytesMut::new();
    put_frame(&mut input, kind::CONTINUATION, flag::END_HEADERS, 1, &b);
    provoke(
        Config::default(),
        &input,
        Reason::Protocol,
        "without HEADERS",
    )
    .await;
}

#[tokio::test]
async fn endless_continuations_are_cut_off() {
    let config = Config {
        max_header_list_size: 4 << 10,
        ..Config::default()
    };
    let mut input = BytesMut::new();
    let mut first = get_block("/endless");
    first.resize(16_384, 0x80 | 2); // indexed `:method GET`, over and over
    put_frame(&mut input, kind::HEADERS, flag::END_STREAM, 1, &first);
    for _ in 0..8 {
        put_frame(&mut input, kind::CONTINUATION, 0, 1, &[0x82; 16_384]);
    }
    provoke(config, &input, Reason::EnhanceYourCalm, "header block over").await;
}

// ---- limits ----

/// Rapid reset (CVE-2023-44487): streams opened and cancelled at once,
/// more than the burst of 1000.
#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off() {
    let b = get_block("/pending");
    let mut input = BytesMut::new();
    for i in 0..1100 {
        let id = 1 + 2 * i;
        input.put_slice(&headers(id, &b, true));
        input.put_slice(&rst(id, Reason::Cancel));
    }
    provoke(
        Config::default(),
        &input,
        Reason::EnhanceYourCalm,
        "too many streams reset",
    )
    .await;
}

#[tokio::test]
async fn resets_below_the_burst_are_tolerated() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let b = get_block("/pending");
    let mut input = BytesMut::new();
    for i in 0..500 {
        let id = 1 + 2 * i;
        input.put_slice(&headers(id, &b, true));
        input.put_slice(&rst(id, Reason::Cancel));
    }
    input.put_slice(&headers(1001, &get_block("/after-resets"), true));
    c.send(&input).await;
    assert_eq!(c.response(1001).await.status, Some(200));
}

/// A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS gets
/// REFUSED_STREAM for the excess; a closed stream frees its place.
#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let (hooks, mut events) = hooks();
    let config = Config {
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let server = serve(config, router(hooks.clone())).await;
    let mut c = Raw::open(server.addr).await;
    let mut input = BytesMut::new();
    for id in [1, 3, 5] {
        input.put_slice(&headers(id, &get_block("/pending"), true));
    }
    c.send(&input).await;
    assert_eq!(c.reset_code(5).await, code(Reason::RefusedStream));
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    assert_eq!(hooks.calls.load(Ordering::SeqCst), 2);

    c.send(&rst(1, Reason::Cancel)).await;
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    c.send(&headers(7, &get_block("/seventh"), true)).await;
    assert_eq!(c.response(7).await.status, Some(200));
}

/// 431 for a header list over SETTINGS_MAX_HEADER_LIST_SIZE; with a body
/// to come, the stream is then closed with RST_STREAM NO_ERROR and the
/// DATA already on its way is discarded.
#[tokio::test]
async fn an_oversized_header_list_is_answered_431_then_closed() {
    let (hooks, _events) = hooks();
    let config = Config {
        max_header_list_size: 4 << 10,
        ..Config::default()
    };
    let server = serve(config, router(hooks.clone())).await;
    let mut c = Raw::open(server.addr).await;
    let big = "v".repeat(10 << 10);
    let mut f = req_fields("POST", "/big-head");
    f.push(("x-big", &big));
    let mut input = headers(1, &block(&f), false);
    input.put_slice(&data(1, b"body on its way", true));
    c.send(&input).await;
    let log = c.response(1).await;
    assert_eq!(log.status, Some(431));
    assert_eq!(log.headers["x-keel-error"], "request_headers_too_large");
    assert!(log.head_flags & flag::END_STREAM != 0);
    assert_eq!(c.reset_after_response(1).await, code(Reason::NoError));
    c.send(&headers(3, &get_block("/small"), true)).await;
    assert_eq!(c.response(3).await.status, Some(200));
    assert_eq!(hooks.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn push_promise_from_a_client_is_a_connection_error() {
    let mut payload = 2u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&get_block("/pushed"));
    let mut input = headers(1, &get_block("/"), true);
    put_frame(
        &mut input,
        kind::PUSH_PROMISE,
        flag::END_HEADERS,
        1,
        &payload,
    );
    provoke(Config::default(), &input, Reason::Protocol, "PUSH_PROMISE").await;
}

#[tokio::test]
async fn a_frame_over_the_max_frame_size_is_a_connection_error() {
    let mut input = headers(1, &post_block("/pending"), false);
    put_frame(&mut input, kind::DATA, 0, 1, &[0; 16_385]);
    provoke(
        Config::default(),
        &input,
        Reason::FrameSize,
        "over SETTINGS_MAX_FRAME_SIZE",
    )
    .await;
}

// ---- frame details ----

#[tokio::test]
async fn padding_is_stripped_from_headers_and_data() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let padded = |pad: u8, content: &[u8], prefix: &[u8]| {
        let mut p = vec![pad];
        p.extend_from_slice(prefix);
        p.extend_from_slice(content);
        p.extend(std::iter::repeat_n(0, usize::from(pad)));
        p
    };
    let mut input = BytesMut::new();
    put_frame(
        &mut input,
        kind::HEADERS,
        flag::PADDED | flag::END_HEADERS,
        1,
        &padded(7, &post_block("/padded"), &[]),
    );
    put_frame(
        &mut input,
        kind::DATA,
        flag::PADDED,
        1,
        &padded(10, b"hello ", &[]),
    );
    put_frame(
        &mut input,
        kind::DATA,
        flag::PADDED,
        1,
        &padded(0, b"padded ", &[]),
    );
    put_frame(
        &mut input,
        kind::DATA,
        flag::PADDED | flag::END_STREAM,
        1,
        &padded(255, b"world", &[]),
    );
    // PADDED and PRIORITY together: pad length, then the priority fields.
    put_frame(
        &mut input,
        kind::HEADERS,
        flag::PADDED | flag::PRIORITY | flag::END_HEADERS | flag::END_STREAM,
        3,
        &padded(3, &get_block("/prio"), &[0, 0, 0, 0, 16]),
    );
    c.send(&input).await;
    let log = c.response(1).await;
    assert_eq!(log.status, Some(200));
    assert_eq!(log.headers["x-path"], "/padded");
    assert_eq!(log.body, b"hello padded world");
    let log = c.response(3).await;
    assert_eq!(log.status, Some(200));
    assert_eq!(log.headers["x-path"], "/prio");
}

/// An empty response is one HEADERS frame with END_STREAM; a body comes
/// as DATA, END_STREAM on the last.
#[tokio::test]
async fn empty_and_non_empty_responses_on_the_wire() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &get_block("/204"), true)).await;
    let log = c.response(1).await;
    assert_eq!(log.status, Some(204));
    assert_eq!(log.head_flags, flag::END_STREAM | flag::END_HEADERS);
    assert_eq!(log.data_frames, 0);

    let mut input = headers(3, &post_block("/echo"), false);
    input.put_slice(&data(3, b"some body", true));
    c.send(&input).await;
    let log = c.response(3).await;
    assert_eq!(log.head_flags, flag::END_HEADERS);
    assert!(log.data_frames >= 1);
    assert_eq!(log.body, b"some body");
    assert!(log.trailers.is_none());
}

/// `graceful_shutdown`, frame by frame: GOAWAY with 2^31-1 and a PING;
/// streams opened meanwhile are still served; the PING's ACK brings the
/// final GOAWAY naming the last stream; later streams are refused; the
/// accepted ones finish; then the connection closes cleanly.
#[tokio::test]
async fn graceful_shutdown_on_the_wire() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks.clone())).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &get_block("/gate"), true)).await;
    assert_eq!(events.next().await, Event::Started("/gate".into()));

    server.graceful_shutdown();
    c.until("the first GOAWAY and a PING", |c| {
        !c.goaways.is_empty() && !c.pings.is_empty()
    })
    .await;
    let g = c.goaways.remove(0);
    assert_eq!((g.last_stream, g.code), (frame::MAX_WINDOW, 0), "{g:?}");

    // Opened before the final GOAWAY: served.
    c.send(&headers(3, &get_block("/in-the-window"), true))
        .await;
    assert_eq!(c.response(3).await.status, Some(200));

    let mut ack = BytesMut::new();
    frame::put_ping(&mut ack, true, c.pings[0]);
    c.send(&ack).await;
    c.until("the final GOAWAY", |c| !c.goaways.is_empty()).await;
    let g = c.goaways.remove(0);
    assert_eq!((g.last_stream, g.code), (3, 0), "{g:?}");

    c.send(&headers(5, &get_block("/too-late"), true)).await;
    assert_eq!(c.reset_code(5).await, code(Reason::RefusedStream));

    hooks.gate.add_permits(1);
    let log = c.response(1).await;
    assert_eq!(log.body, b"released");
    while c.frame().await.is_some() {}
    server.finished().await.expect("a clean shutdown");
    assert_eq!(hooks.calls.load(Ordering::SeqCst), 2);
}

/// A client that resets a stream mid-upload: the body's reader (on
/// another task) gets an error naming the reset.
#[tokio::test]
async fn a_client_reset_fails_the_request_body_with_its_code() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let mut input = headers(1, &post_block("/spawn-read"), false);
    input.put_slice(&data(1, b"half", false));
    c.send(&input).await;
    assert_eq!(events.next().await, Event::Started("/spawn-read".into()));
    c.send(&rst(1, Reason::Cancel)).await;
    let mut read = None;
    while read.is_none() {
        if let Event::Read(r) = events.next().await {
            read = Some(r);
        }
    }
    let err = read.unwrap().expect_err("the body must fail");
    assert!(err.contains("reset") && err.contains("CANCEL"), "{err}");
}

// ---- more connection and stream errors ----

#[tokio::test]
async fn invalid_control_frames_are_connection_errors() {
    let settings = |values: &[(u16, u32)]| {
        let mut b = BytesMut::new();
        frame::put_settings(&mut b, values);
        b
    };
    let framed = |kind, flags, stream, payload: &[u8]| {
        let mut b = BytesMut::new();
        put_frame(&mut b, kind, flags, stream, payload);
        b
    };
    let cases: Vec<(&str, BytesMut, Reason, &str)> = vec![
        (
            "ENABLE_PUSH 2",
            settings(&[(setting::ENABLE_PUSH, 2)]),
            Reason::Protocol,
            "ENABLE_PUSH",
        ),
        (
            "INITIAL_WINDOW_SIZE 2^31",
            settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]),
            Reason::FlowControl,
            "INITIAL_WINDOW_SIZE",
        ),
        (
            "MAX_FRAME_SIZE 100",
            settings(&[(setting::MAX_FRAME_SIZE, 100)]),
            Reason::Protocol,
            "MAX_FRAME_SIZE",
        ),
        (
            "MAX_FRAME_SIZE 2^24",
            settings(&[(setting::MAX_FRAME_SIZE, 1 << 24)]),
            Reason::Protocol,
            "MAX_FRAME_SIZE",
        ),
        (
            "SETTINGS of 5 octets",
            framed(kind::SETTINGS, 0, 0, &[0; 5]),
            Reason::FrameSize,
            "multiple of 6",
        ),
        (
            "SETTINGS ACK with a payload",
            framed(kind::SETTINGS, flag::ACK, 0, &[0; 6]),
            Reason::FrameSize,
            "ACK with a payload",
        ),
        (
            "SETTINGS on a stream",
            framed(kind::SETTINGS, 0, 1, &[]),
            Reason::Protocol,
            "on a stream",
        ),
        (
            "PING of 7 octets",
            framed(kind::PING, 0, 0, &[0; 7]),
            Reason::FrameSize,
            "8 octets",
        ),
        (
            "PING on a stream",
            framed(kind::PING, 0, 1, &[0; 8]),
            Reason::Protocol,
            "on a stream",
        ),
        (
            "WINDOW_UPDATE of 3 octets",
            framed(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1]),
            Reason::FrameSize,
            "4 octets",
        ),
        (
            "WINDOW_UPDATE on an idle stream",
            window_update(9, 100),
            Reason::Protocol,
            "idle",
        ),
        (
            "RST_STREAM on stream 0",
            rst(0, Reason::Cancel),
            Reason::Protocol,
            "stream 0",
        ),
        (
            "RST_STREAM on an idle stream",
            rst(9, Reason::Cancel),
            Reason::Protocol,
            "idle",
        ),
        (
            "GOAWAY on a stream",
            framed(kind::GOAWAY, 0, 1, &[0; 8]),
            Reason::Protocol,
            "on a stream",
        ),
        (
            "HEADERS on stream 0",
            headers(0, &get_block("/"), true),
            Reason::Protocol,
            "stream 0",
        ),
        (
            "PRIORITY on stream 0",
            framed(kind::PRIORITY, 0, 0, &[0, 0, 0, 1, 16]),
            Reason::Protocol,
            "stream 0",
        ),
        (
            "padding longer than the frame",
            framed(
                kind::HEADERS,
                flag::PADDED | flag::END_HEADERS,
                1,
                &[9, 0x82],
            ),
            Reason::Protocol,
            "padding",
        ),
    ];
    for (what, input, reason, phrase) in cases {
        let g = provoke(Config::default(), &input, reason, phrase).await;
        assert_eq!(frame::code_name(g.code), reason.name(), "{what}");
    }
}

#[tokio::test]
async fn stream_level_data_errors_reset_only_that_stream() {
    let (hooks, mut events) = hooks();
    let config = Config {
        stream_window: 65_535,
        ..Config::default()
    };
    let server = serve(config, router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    // DATA after END_STREAM: STREAM_CLOSED.
    c.send(&headers(1, &get_block("/pending"), true)).await;
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    c.send(&data(1, b"late", true)).await;
    assert_eq!(c.reset_code(1).await, code(Reason::StreamClosed));
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    // DATA beyond the stream window (65,535): FLOW_CONTROL_ERROR.
    c.send(&headers(3, &post_block("/pending"), false)).await;
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    c.send(&data(3, &[1; 65_536], false)).await;
    assert_eq!(c.reset_code(3).await, code(Reason::FlowControl));
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    // PRIORITY of the wrong size: FRAME_SIZE_ERROR on the stream.
    c.send(&headers(5, &get_block("/pending"), true)).await;
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    let mut b = BytesMut::new();
    put_frame(&mut b, kind::PRIORITY, 0, 5, &[0; 4]);
    c.send(&b).await;
    assert_eq!(c.reset_code(5).await, code(Reason::FrameSize));
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    // The connection (and its windows) still works.
    let body = pattern(100_000, 7);
    let mut input = headers(7, &post_block("/echo"), false);
    input.put_slice(&data(7, &body[..60_000], false));
    c.send(&input).await;
    c.until("window for the rest", |c| c.conn_credit > 0).await;
    c.send(&data(7, &body[60_000..], true)).await;
    let mut b = BytesMut::new();
    frame::put_settings(&mut b, &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
    frame::put_window_update(&mut b, 0, 1 << 20);
    c.send(&b).await;
    assert_same_bytes(&c.response(7).await.body, &body);
}

/// Frames the client already had in flight on a stream the server has
/// answered and closed (RST_STREAM NO_ERROR): ignored (RFC 9113 §5.1,
/// "closed"), the connection goes on.
#[tokio::test]
async fn frames_on_a_stream_the_server_closed_are_ignored() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &post_block("/ignore-body"), false))
        .await;
    assert_eq!(c.response(1).await.body, b"ignored");
    assert_eq!(c.reset_after_response(1).await, code(Reason::NoError));
    let mut input = data(1, b"in flight", false);
    input.put_slice(&window_update(1, 1000));
    put_frame(&mut input, kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 16]);
    input.put_slice(&data(1, b"more", true));
    input.put_slice(&rst(1, Reason::Cancel));
    input.put_slice(&headers(3, &get_block("/next"), true));
    c.send(&input).await;
    let log = c.response(3).await;
    assert_eq!(log.headers["x-path"], "/next");
}

/// The same for request trailers in flight: HEADERS on a stream the
/// server closed must be decoded (HPACK state) and ignored, not taken for
/// a new stream with a reused id.
#[tokio::test]
async fn trailers_on_a_stream_the_server_closed_are_ignored() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &post_block("/ignore-body"), false))
        .await;
    assert_eq!(c.response(1).await.body, b"ignored");
    assert_eq!(c.reset_after_response(1).await, code(Reason::NoError));
    let mut input = data(1, b"in flight", false);
    input.put_slice(&headers(1, &block(&[("x-checksum", "1")]), true));
    input.put_slice(&headers(3, &get_block("/next"), true));
    c.send(&input).await;
    let log = c.response(3).await;
    assert_eq!(log.headers["x-path"], "/next");
}

/// "MadeYouReset" (CVE-2025-8671): the client makes the *server* reset
/// stream after stream (here with a zero WINDOW_UPDATE on each), which the
/// rapid-reset budget must count too, or the flood costs a handler per
/// stream without limit.
#[tokio::test]
async fn a_made_you_reset_flood_is_cut_off() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let b = get_block("/pending");
    let mut input = BytesMut::new();
    for i in 0..1100 {
        let id = 1 + 2 * i;
        input.put_slice(&headers(id, &b, true));
        input.put_slice(&window_update(id, 0));
    }
    // A PING behind the flood: its ACK means the server took it all.
    frame::put_ping(&mut input, false, *b"behind!!");
    c.send_lossy(&input).await;
    loop {
        let f = c.frame().await.expect("GOAWAY before the close");
        if f.head.kind == kind::GOAWAY {
            break;
        }
        assert!(
            f.head.kind != kind::PING,
            "no GOAWAY after 1100 streams reset by the server for client errors"
        );
    }
    let g = c.goaways.pop().unwrap();
    assert_eq!(frame::code_name(g.code), "ENHANCE_YOUR_CALM", "{g:?}");
}

/// A client may send up to 65,535 octets on a stream before it has the
/// server's SETTINGS (RFC 9113 §3.4, §6.9.3): a smaller configured stream
/// window only binds once the client has acknowledged it.
#[tokio::test]
async fn a_small_stream_window_binds_only_once_acknowledged() {
    let (hooks, _events) = hooks();
    let config = Config {
        stream_window: 16 << 10,
        ..Config::default()
    };
    let server = serve(config, router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let body = pattern(40_000, 8);
    let mut input = headers(1, &post_block("/echo"), false);
    input.put_slice(&data(1, &body, true));
    c.send(&input).await;
    assert_same_bytes(&c.response(1).await.body, &body);
}

/// The client's GOAWAY: requests in flight are still answered, then the
/// server closes the connection cleanly.
#[tokio::test]
async fn a_client_goaway_lets_requests_in_flight_finish() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks.clone())).await;
    let mut c = Raw::open(server.addr).await;
    c.send(&headers(1, &get_block("/gate"), true)).await;
    assert_eq!(events.next().await, Event::Started("/gate".into()));
    let mut b = BytesMut::new();
    frame::put_goaway(&mut b, 0, Reason::NoError, b"bye");
    c.send(&b).await;
    c.nothing_on(1, QUIET).await;
    hooks.gate.add_permits(1);
    assert_eq!(c.response(1).await.body, b"released");
    while c.frame().await.is_some() {}
    server.finished().await.expect("a clean close");
}

/// The client closing its side of the socket (FIN): every handler is
/// dropped and the connection future resolves Ok.
#[tokio::test]
async fn a_client_closing_the_socket_drops_every_handler() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut c = Raw::open(server.addr).await;
    let mut input = headers(1, &get_block("/pending"), true);
    input.put_slice(&headers(3, &get_block("/pending"), true));
    c.send(&input).await;
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    c.tcp.shutdown().await.unwrap();
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    server.finished().await.expect("a clean close");
    while c.frame().await.is_some() {}
}
