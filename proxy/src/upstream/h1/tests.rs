//! The HTTP/1.1 client against scripted servers on loopback.
//!
//! Each test binds a listener on 127.0.0.1:0 that plays the upstream: it
//! reads the bytes the client sends (and asserts on them) and writes raw
//! response bytes, often in pieces with short pauses so the client sees
//! partial reads. The client is driven through `Pool::send`, the path the
//! proxy takes, or through `encode` + `exchange` where the pool would hide
//! what is asserted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as _, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::http::{Body, BoxError, empty, full};

/// The connect timeout handed to `Pool::send`.
const CONNECT: Duration = Duration::from_secs(2);
/// How long any one step of a script may take before the test fails (only
/// reached when something is broken).
const WAIT: Duration = Duration::from_secs(2);
/// The pause between the pieces of a split write.
const PAUSE: Duration = Duration::from_millis(5);
/// How long to watch for a connection that should not come.
const QUIET: Duration = Duration::from_millis(50);

/// `fut`, or a panic if it takes longer than `WAIT`.
async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("a step of the exchange took too long")
}

/// A listener playing the upstream endpoint.
async fn upstream() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback listener");
    let addr = listener.local_addr().expect("the listener's address");
    (listener, addr)
}

/// Asserts that nobody connects to `listener` (any connection the client
/// made is already queued by the time this runs).
async fn no_more_connections(listener: &TcpListener) {
    if let Ok(Ok((_, peer))) = tokio::time::timeout(QUIET, listener.accept()).await {
        panic!("the client opened another connection (from {peer})");
    }
}

fn pool(addr: SocketAddr) -> Arc<Pool> {
    Arc::new(Pool::new(addr))
}

fn request(method: Method, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "upstream.test")
        .body(body)
        .expect("a valid request")
}

fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri, empty())
}

/// A body of `frames`, of unknown size.
fn stream(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> Body {
    StreamBody::new(tokio_stream::iter(frames)).boxed_unsync()
}

/// A body fed from a channel, of unknown size.
fn channel() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Body) {
    let (tx, rx) = mpsc::channel(8);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed_unsync())
}

fn data(bytes: &'static [u8]) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

async fn send(pool: &Arc<Pool>, req: Request<Body>) -> Response<Body> {
    within(pool.send(req, false, CONNECT))
        .await
        .expect("the upstream answers")
}

/// The error `send` fails with, as the proxy would log it.
async fn send_err(pool: &Arc<Pool>, req: Request<Body>) -> String {
    match within(pool.send(req, false, CONNECT)).await {
        Ok(resp) => panic!("expected an error, got {resp:?}"),
        Err(e) => e.to_string(),
    }
}

async fn body(resp: Response<Body>) -> Bytes {
    within(resp.into_body().collect())
        .await
        .expect("the response body arrives whole")
        .to_bytes()
}

/// The error reading the body of `resp` ends with.
async fn body_err(resp: Response<Body>) -> String {
    match within(resp.into_body().collect()).await {
        Ok(c) => panic!("expected a body error, got {:?}", c.to_bytes()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "{haystack:?} does not mention {needle:?}"
    );
}

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

/// One connection accepted by the scripted upstream.
struct Peer {
    io: TcpStream,
    /// Read and not consumed yet.
    buf: Vec<u8>,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Self {
        let (io, _) = within(listener.accept())
            .await
            .expect("accepting the client's connection");
        io.set_nodelay(true).expect("setting TCP_NODELAY");
        Self {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more; 0 once the client closed (a reset counts as closed).
    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = within(self.io.read(&mut chunk)).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next request head, CRLF CRLF included.
    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).expect("a UTF-8 request head");
            }
            let n = self.fill().await;
            assert!(
                n > 0,
                "the client closed before a whole request head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let got = self.fill().await;
            assert!(
                got > 0,
                "the client closed after {} of {n} expected bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    async fn write(&mut self, bytes: impl AsRef<[u8]>) {
        within(self.io.write_all(bytes.as_ref()))
            .await
            .expect("writing to the client");
    }

    /// Writes `parts` one by one with a pause after each, so the client
    /// reads them separately.
    async fn write_split(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.write(part).await;
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Waits for the client to close the connection, asserting it sent
    /// nothing more.
    async fn closed(&mut self) {
        while self.fill().await > 0 {}
        assert!(
            self.buf.is_empty(),
            "the client sent more before closing: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Whether the client closed the connection within `wait`, reading
    /// (and discarding) anything it sends meanwhile.
    async fn closes_within(&mut self, wait: Duration) -> bool {
        let mut chunk = vec![0u8; 16 * 1024];
        tokio::time::timeout(wait, async {
            loop {
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

// ---------------------------------------------------------------------------
// Request encoding
// ---------------------------------------------------------------------------

fn head_of(enc: &Encoded) -> &str {
    std::str::from_utf8(&enc.head).expect("a UTF-8 head")
}

#[test]
fn encode_frames_the_body_by_what_is_known() {
    let enc = encode(get("/a/b?c=d&e")).expect("encodes");
    assert_eq!(
        head_of(&enc),
        "GET /a/b?c=d&e HTTP/1.1\r\nhost: upstream.test\r\n\r\n"
    );
    assert_eq!(enc.framing, Framing::Empty);
    assert!(enc.idempotent && !enc.head_method);

    let enc = encode(request(Method::POST, "/", full("hello"))).expect("encodes");
    assert_eq!(
        head_of(&enc),
        "POST / HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!(enc.framing, Framing::Length(5));
    assert!(!enc.idempotent);

    let enc = encode(request(Method::POST, "/", empty())).expect("encodes");
    assert_eq!(
        head_of(&enc),
        "POST / HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(enc.framing, Framing::Empty);

    let enc = encode(request(Method::PUT, "/", stream(vec![data(b"x")]))).expect("encodes");
    assert_eq!(
        head_of(&enc),
        "PUT / HTTP/1.1\r\nhost: upstream.test\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(enc.framing, Framing::Chunked);
    assert!(enc.idempotent);

    let enc = encode(request(Method::HEAD, "/", empty())).expect("encodes");
    assert!(enc.head_method);

    // A declared length wins over the body's (unknown) size.
    let mut req = request(Method::POST, "/", stream(vec![data(b"abc")]));
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    let enc = encode(req).expect("encodes");
    assert_eq!(enc.framing, Framing::Length(3));
    assert!(head_of(&enc).ends_with("content-length: 3\r\n\r\n"));
    assert!(!head_of(&enc).contains("transfer-encoding"));

    let mut req = request(Method::POST, "/", full("abc"));
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("three"));
    let err = encode(req).expect_err("a non-numeric content-length is refused");
    assert_contains(&err.to_string(), "content-length is not a number");
}

#[test]
fn encode_parts_writes_the_extra_field_in_place_of_the_requests() {
    // A retry encodes the same kept parts again with its own attempt count;
    // a count the client sent is replaced, not repeated.
    let count = HeaderName::from_static("x-envoy-attempt-count");
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("upstream.test"));
    headers.insert(count.clone(), HeaderValue::from_static("7"));
    let uri: http::Uri = "/r".parse().expect("uri");
    for (n, want) in [("1", "1"), ("2", "2")] {
        let v = HeaderValue::from_static(n);
        let enc = encode_parts(&Method::GET, &uri, &headers, Some((&count, &v)), empty())
            .expect("encodes");
        assert_eq!(
            head_of(&enc),
            format!(
                "GET /r HTTP/1.1\r\nhost: upstream.test\r\nx-envoy-attempt-count: {want}\r\n\r\n"
            )
        );
    }
    // Without one, the request's own passes through.
    let enc = encode_parts(&Method::GET, &uri, &headers, None, empty()).expect("encodes");
    assert!(head_of(&enc).contains("x-envoy-attempt-count: 7\r\n"));
}

#[tokio::test]
async fn request_head_and_sized_body_reach_the_upstream_as_sent() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let head = p.head().await;
        let body = p.take(11).await;
        p.write("HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await;
        (head, body)
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri("/submit/form?x=1&y=%20two")
        .header(header::HOST, "upstream.test:8080")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header(header::CONTENT_TYPE, "text/plain")
        // Stale framing from the downstream: replaced by the real one.
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(full("hello world"))
        .expect("a valid request");
    let resp = send(&pool(addr), req).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(body(resp).await, "");
    let (head, body) = server.await.expect("the upstream script");
    assert_eq!(
        head,
        "POST /submit/form?x=1&y=%20two HTTP/1.1\r\n\
         host: upstream.test:8080\r\n\
         x-multi: a\r\n\
         x-multi: b\r\n\
         content-type: text/plain\r\n\
         content-length: 11\r\n\r\n"
    );
    assert_eq!(body, b"hello world");
}

#[tokio::test]
async fn empty_bodies_are_announced_only_where_servers_expect_it() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let mut heads = Vec::new();
        for _ in 0..4 {
            heads.push(p.head().await);
            p.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        heads
    });
    let pool = pool(addr);
    for req in [
        get("/"),
        request(Method::POST, "/post", empty()),
        request(Method::DELETE, "/delete", empty()),
        request(Method::PATCH, "/patch", full(Bytes::new())),
    ] {
        let resp = send(&pool, req).await;
        assert_eq!(body(resp).await, "");
    }
    let heads = server.await.expect("the upstream script");
    assert_eq!(
        heads,
        [
            "GET / HTTP/1.1\r\nhost: upstream.test\r\n\r\n",
            "POST /post HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 0\r\n\r\n",
            "DELETE /delete HTTP/1.1\r\nhost: upstream.test\r\n\r\n",
            "PATCH /patch HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 0\r\n\r\n",
        ]
    );
}

#[tokio::test]
async fn body_of_unknown_size_goes_out_chunked() {
    let (listener, addr) = upstream().await;
    let expected: &[u8] = b"3\r\nabc\r\ne\r\ndefghijklmnopq\r\n1\r\n!\r\n0\r\n\r\n";
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let head = p.head().await;
        let body = p.take(expected.len()).await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        // The terminating chunk ended the request: the connection carries
        // the next one.
        let next = p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        (head, body, next)
    });
    let pool = pool(addr);
    let req = request(
        Method::POST,
        "/upload",
        stream(vec![
            data(b"abc"),
            // An empty frame must not come out as a terminating chunk.
            data(b""),
            data(b"defghijklmnopq"),
            data(b"!"),
        ]),
    );
    let resp = send(&pool, req).await;
    assert_eq!(body(resp).await, "ok");
    let resp = send(&pool, get("/next")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (head, body, next) = server.await.expect("the upstream script");
    assert_eq!(
        head,
        "POST /upload HTTP/1.1\r\nhost: upstream.test\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(expected)
    );
    assert!(next.starts_with("GET /next HTTP/1.1\r\n"), "{next:?}");
}

#[tokio::test]
async fn request_trailers_follow_the_last_chunk() {
    let (listener, addr) = upstream().await;
    let expected: &[u8] = b"4\r\ndata\r\n0\r\nx-checksum: 1234\r\n\r\n";
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let head = p.head().await;
        let body = p.take(expected.len()).await;
        p.write("HTTP/1.1 204 No Content\r\n\r\n").await;
        (head, body)
    });
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("1234"));
    let req = request(
        Method::POST,
        "/grpc",
        stream(vec![data(b"data"), Ok(Frame::trailers(trailers))]),
    );
    let resp = send(&pool(addr), req).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (head, body) = server.await.expect("the upstream script");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head:?}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(expected)
    );
}

// ---------------------------------------------------------------------------
// Response framing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_length_body_read_across_partial_reads() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write_split(&[
            b"HTTP/1.1 200 OK\r\ncontent-",
            b"length: 12\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r",
            b"\nhello",
            b" wor",
            b"ld!",
        ])
        .await;
        // The response ended at its length: the connection is reused.
        let next = p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext")
            .await;
        (next, listener)
    });
    let pool = pool(addr);
    let resp = send(&pool, get("/first")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    let cookies: Vec<_> = resp.headers().get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(body(resp).await, "hello world!");
    let resp = send(&pool, get("/second")).await;
    assert_eq!(body(resp).await, "next");
    let (next, listener) = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /second HTTP/1.1\r\n"), "{next:?}");
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write_split(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n",
            b"5;name=value;other\r\nhel",
            b"lo\r",
            b"\n1",
            b"0\r\n, sixteen bytes \r\n",
            b"6 ; spaced\r\n world\r\n",
            b"0\r\nx-checksum: abc\r\nx-",
            b"other: 1\r\n",
            b"\r\n",
        ])
        .await;
        let next = p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        (next, listener)
    });
    let pool = pool(addr);
    let resp = send(&pool, get("/chunked")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = within(resp.into_body().collect())
        .await
        .expect("the chunked body arrives whole");
    let trailers = collected.trailers().cloned().expect("trailers come back");
    assert_eq!(collected.to_bytes(), "hello, sixteen bytes  world");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );
    assert_eq!(
        trailers.get("x-other").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // The chunked body (trailers included) was consumed exactly: the next
    // request shares the connection.
    let resp = send(&pool, get("/after")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (next, listener) = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /after HTTP/1.1\r\n"), "{next:?}");
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn chunked_body_without_trailers_keeps_the_connection() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await;
        p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ndef")
            .await;
    });
    let pool = pool(addr);
    let collected = within(send(&pool, get("/1")).await.into_body().collect())
        .await
        .expect("the body arrives");
    assert!(collected.trailers().is_none());
    assert_eq!(collected.to_bytes(), "abc");
    assert_eq!(body(send(&pool, get("/2")).await).await, "def");
    server.await.expect("the upstream script");
}

#[tokio::test]
async fn body_without_length_ends_when_the_upstream_closes() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write_split(&[
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nsome",
            b" bytes",
            b" then EOF",
        ])
        .await;
        drop(p);
        // Nothing to reuse: the next request opens a new connection.
        let mut p = Peer::accept(&listener).await;
        let next = p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        next
    });
    let pool = pool(addr);
    let resp = send(&pool, get("/stream")).await;
    assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(body(resp).await, "some bytes then EOF");
    assert_eq!(send(&pool, get("/next")).await.status(), StatusCode::OK);
    let next = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /next "), "{next:?}");
}

#[tokio::test]
async fn unchunked_transfer_coding_is_read_to_the_close() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nnot-really-gzip")
            .await;
    });
    let resp = send(&pool(addr), get("/")).await;
    assert_eq!(body(resp).await, "not-really-gzip");
    server.await.expect("the upstream script");
}

#[tokio::test]
async fn bodiless_responses_are_not_waited_on_and_keep_the_connection() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let mut heads = Vec::new();
        // HEAD: the length describes the GET's body, none follows.
        heads.push(p.head().await);
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            .await;
        // Even with chunked framing announced.
        heads.push(p.head().await);
        p.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        heads.push(p.head().await);
        p.write("HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n").await;
        heads.push(p.head().await);
        p.write("HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\netag: \"v1\"\r\n\r\n")
            .await;
        heads.push(p.head().await);
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
            .await;
        (heads, listener)
    });
    let pool = pool(addr);
    let resp = send(&pool, request(Method::HEAD, "/head", empty())).await;
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "100");
    assert_eq!(body(resp).await, "");
    let resp = send(&pool, request(Method::HEAD, "/head2", empty())).await;
    assert_eq!(body(resp).await, "");
    let resp = send(&pool, get("/no-content")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body().is_end_stream());
    assert_eq!(body(resp).await, "");
    let resp = send(&pool, get("/not-modified")).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(body(resp).await, "");
    let resp = send(&pool, get("/last")).await;
    assert_eq!(body(resp).await, "done");
    let (heads, listener) = server.await.expect("the upstream script");
    let lines: Vec<_> = heads
        .iter()
        .map(|h| h.lines().next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "HEAD /head HTTP/1.1",
            "HEAD /head2 HTTP/1.1",
            "GET /no-content HTTP/1.1",
            "GET /not-modified HTTP/1.1",
            "GET /last HTTP/1.1",
        ]
    );
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write_split(&[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 1",
            b"00 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"x-real: yes\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
    });
    let resp = send(&pool(addr), get("/")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-real"], "yes");
    assert!(!resp.headers().contains_key(header::LINK));
    assert_eq!(body(resp).await, "ok");
    server.await.expect("the upstream script");
}

#[tokio::test]
async fn large_response_body_arrives_intact() {
    let payload: Bytes = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (listener, addr) = upstream().await;
    let sent = payload.clone();
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            sent.len()
        ))
        .await;
        p.write(&sent).await;
    });
    let resp = send(&pool(addr), get("/big")).await;
    assert_eq!(resp.body().size_hint().exact(), Some(1_000_000));
    let got = body(resp).await;
    assert!(got == payload, "the body differs ({} bytes)", got.len());
    server.await.expect("the upstream script");
}

// ---------------------------------------------------------------------------
// Connection reuse
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let mut paths = Vec::new();
        for i in 0..3 {
            let head = p.head().await;
            paths.push(head.split(' ').nth(1).unwrap_or_default().to_owned());
            p.write(format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{i}"))
                .await;
        }
        (paths, listener)
    });
    let pool = pool(addr);
    for (i, path) in ["/a", "/b", "/c"].into_iter().enumerate() {
        let resp = send(&pool, get(path)).await;
        assert_eq!(body(resp).await, i.to_string());
    }
    let (paths, listener) = server.await.expect("the upstream script");
    assert_eq!(paths, ["/a", "/b", "/c"]);
    no_more_connections(&listener).await;
}

/// The cluster limits of the next tests.
fn limits(max_requests: u32, idle: Option<Duration>) -> super::super::pool::ConnLimits {
    super::super::pool::ConnLimits {
        connect_timeout: CONNECT,
        max_requests_per_connection: max_requests,
        idle_timeout: idle,
    }
}

#[tokio::test]
async fn a_connection_carries_at_most_max_requests_per_connection() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for conn in 0..2 {
            let mut p = Peer::accept(&listener).await;
            for _ in 0..2 {
                let head = p.head().await;
                seen.push((conn, head.split(' ').nth(1).unwrap_or_default().to_owned()));
                p.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
            if conn == 0 {
                // The client closes the spent connection.
                p.closed().await;
            }
        }
        (seen, listener)
    });
    let pool = pool(addr);
    for path in ["/1", "/2", "/3", "/4"] {
        let resp = within(pool.send(get(path), false, limits(2, None)))
            .await
            .expect("an answer");
        assert_eq!(body(resp).await, "ok");
    }
    let (seen, listener) = server.await.expect("the upstream script");
    let want: Vec<(i32, String)> = vec![
        (0, "/1".into()),
        (0, "/2".into()),
        (1, "/3".into()),
        (1, "/4".into()),
    ];
    assert_eq!(seen, want);
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn a_connection_idle_past_the_idle_timeout_is_not_reused() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")
            .await;
        first.head().await;
        first
            .write("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb")
            .await;
        // After the pause the next request comes on a new connection.
        let mut second = Peer::accept(&listener).await;
        second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc")
            .await;
        first.closed().await;
        listener
    });
    let pool = pool(addr);
    let idle = limits(0, Some(Duration::from_millis(150)));
    let send = |path| within(pool.send(get(path), false, idle));
    assert_eq!(body(send("/a").await.expect("a")).await, "a");
    // Within the idle timeout: reused.
    assert_eq!(body(send("/b").await.expect("b")).await, "b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(body(send("/c").await.expect("c")).await, "c");
    let listener = server.await.expect("the upstream script");
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn connection_close_response_is_not_reused() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        // The upstream says it will close but leaves the socket open: the
        // client must go by the header.
        first
            .write("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            .await;
        let mut second = Peer::accept(&listener).await;
        let next = second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")
            .await;
        // The client closed the first connection, sending nothing more.
        first.closed().await;
        next
    });
    let pool = pool(addr);
    let resp = send(&pool, get("/1")).await;
    assert_eq!(body(resp).await, "ok");
    let resp = send(&pool, get("/2")).await;
    assert_eq!(body(resp).await, "new");
    let next = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /2 "), "{next:?}");
}

#[tokio::test]
async fn http10_response_closes_unless_kept_alive() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nv0")
            .await;
        let mut second = Peer::accept(&listener).await;
        first.closed().await;
        // HTTP/1.0 with keep-alive: this one is reused.
        second.head().await;
        second
            .write("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nka")
            .await;
        second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast")
            .await;
        listener
    });
    let pool = pool(addr);
    let resp = send(&pool, get("/1")).await;
    assert_eq!(resp.version(), Version::HTTP_10);
    assert_eq!(body(resp).await, "v0");
    assert_eq!(body(send(&pool, get("/2")).await).await, "ka");
    assert_eq!(body(send(&pool, get("/3")).await).await, "last");
    let listener = server.await.expect("the upstream script");
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn connection_header_is_consumed_unless_it_names_other_headers() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        peer.head().await;
        peer.write("HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\na")
            .await;
        peer.head().await;
        peer.write(
            "HTTP/1.1 200 OK\r\nconnection: x-hop, keep-alive\r\nx-hop: 1\r\ncontent-length: 1\r\n\r\nb",
        )
        .await;
        peer.head().await;
        peer.write(
            "HTTP/1.1 200 OK\r\nconnection: close, keep-alive\r\ncontent-length: 1\r\n\r\nc",
        )
        .await;
        listener
    });
    let pool = pool(addr);
    // Only connection management: nothing to forward.
    let resp = send(&pool, get("/1")).await;
    assert!(!resp.headers().contains_key("connection"), "{resp:?}");
    assert_eq!(body(resp).await, "a");
    // It names another header: it stays for the forwarder to strip both.
    let resp = send(&pool, get("/2")).await;
    assert_eq!(resp.headers()["connection"], "x-hop, keep-alive");
    assert_eq!(resp.headers()["x-hop"], "1");
    assert_eq!(body(resp).await, "b");
    // `close` wins over `keep-alive`: the connection is not reused.
    let resp = send(&pool, get("/3")).await;
    assert!(!resp.headers().contains_key("connection"));
    assert_eq!(body(resp).await, "c");
    let listener = server.await.expect("the upstream script");
    let client = tokio::spawn(async move { send(&pool, get("/4")).await.status() });
    let mut peer = tokio::time::timeout(Duration::from_secs(5), Peer::accept(&listener))
        .await
        .expect("the next request comes on a new connection");
    peer.head().await;
    peer.write("HTTP/1.1 204 No Content\r\n\r\n").await;
    assert_eq!(client.await.expect("the client"), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn body_dropped_half_read_closes_the_connection() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")
            .await;
        let mut second = Peer::accept(&listener).await;
        // The half-read response's connection is closed, not reused (the
        // rest of its body would be taken for the next response).
        first.closed().await;
        let next = second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")
            .await;
        next
    });
    let pool = pool(addr);
    let mut resp_body = send(&pool, get("/partial")).await.into_body();
    let frame = within(resp_body.frame())
        .await
        .expect("a first frame")
        .expect("a data frame");
    let got = frame.into_data().expect("data");
    assert!(!got.is_empty() && b"01234".starts_with(&got), "{got:?}");
    drop(resp_body);
    let resp = send(&pool, get("/next")).await;
    assert_eq!(body(resp).await, "new");
    let next = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /next "), "{next:?}");
}

#[tokio::test]
async fn unread_response_with_body_is_not_reused() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc")
            .await;
        let mut second = Peer::accept(&listener).await;
        first.closed().await;
        second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ndef")
            .await;
    });
    let pool = pool(addr);
    // The response is dropped without its body being read at all.
    drop(send(&pool, get("/ignored")).await);
    assert_eq!(body(send(&pool, get("/next")).await).await, "def");
    server.await.expect("the upstream script");
}

#[tokio::test]
async fn bytes_beyond_the_response_are_never_taken_for_the_next_one() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        // One write: the response and an unasked-for one behind it.
        first
            .write(
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
                 HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale",
            )
            .await;
        let mut second = Peer::accept(&listener).await;
        second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
            .await;
        first.closed().await;
    });
    let pool = pool(addr);
    assert_eq!(body(send(&pool, get("/1")).await).await, "ok");
    assert_eq!(body(send(&pool, get("/2")).await).await, "fresh");
    server.await.expect("the upstream script");
}

// ---------------------------------------------------------------------------
// Replay of requests the upstream never answered
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idle_connection_closed_by_the_upstream_is_not_used() {
    let (listener, addr) = upstream().await;
    let (closed_tx, closed_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        // The upstream's idle timeout.
        drop(first);
        let _ = closed_tx.send(());
        let mut second = Peer::accept(&listener).await;
        let next = second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain")
            .await;
        next
    });
    let pool = pool(addr);
    assert_eq!(body(send(&pool, get("/1")).await).await, "ok");
    within(closed_rx).await.expect("the upstream closed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let resp = send(&pool, get("/2")).await;
    assert_eq!(body(resp).await, "again");
    let next = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /2 "), "{next:?}");
}

#[tokio::test]
async fn idempotent_request_unanswered_on_a_reused_connection_is_sent_again() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        // The request reaches an upstream closing the connection as it
        // comes: not a byte of answer.
        let lost = first.head().await;
        drop(first);
        let mut second = Peer::accept(&listener).await;
        let replayed = second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nreplayed")
            .await;
        (lost, replayed, listener)
    });
    let pool = pool(addr);
    assert_eq!(body(send(&pool, get("/1")).await).await, "ok");
    let resp = send(&pool, get("/again?x=1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await, "replayed");
    let (lost, replayed, listener) = server.await.expect("the upstream script");
    assert_eq!(
        lost,
        "GET /again?x=1 HTTP/1.1\r\nhost: upstream.test\r\n\r\n"
    );
    assert_eq!(replayed, lost);
    no_more_connections(&listener).await;
}

/// A request whose body went out on a reused connection the upstream then
/// closed without answering is not sent again: a POST is not idempotent,
/// and even a PUT's body is gone once sent. The error names the upstream.
#[tokio::test]
async fn request_with_a_body_unanswered_on_a_reused_connection_is_not_resent() {
    for (method, path, payload) in [
        (Method::PUT, "/put", "payload"),
        (Method::POST, "/order", "buy 1!"),
    ] {
        let (listener, addr) = upstream().await;
        let server = tokio::spawn(async move {
            let mut first = Peer::accept(&listener).await;
            first.head().await;
            first
                .write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            let head = first.head().await;
            let body = first.take(payload.len()).await;
            drop(first);
            (head, body, listener)
        });
        let pool = pool(addr);
        assert_eq!(body(send(&pool, get("/1")).await).await, "ok");
        let err = send_err(&pool, request(method.clone(), path, full(payload))).await;
        assert_contains(&err, &addr.to_string());
        assert_contains(&err, "connection closed before answering");
        let (head, body, listener) = server.await.expect("the upstream script");
        assert!(head.starts_with(&format!("{method} {path} ")), "{head:?}");
        assert_eq!(body, payload.as_bytes());
        // Sent once: no second connection carries it again.
        no_more_connections(&listener).await;
    }
}

#[tokio::test]
async fn unanswered_request_on_a_new_connection_is_not_replayed() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        drop(p);
        listener
    });
    let err = send_err(&pool(addr), get("/")).await;
    assert_contains(&err, "connection closed before answering");
    let listener = server.await.expect("the upstream script");
    no_more_connections(&listener).await;
}

/// `exchange` hands the request back only when resending it is safe.
#[tokio::test]
async fn exchange_offers_the_request_back_only_when_safe() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut heads = Vec::new();
        // 1 to 3: closed without a byte of answer.
        for _ in 0..3 {
            let mut p = Peer::accept(&listener).await;
            heads.push(p.head().await);
        }
        // 4: part of an answer, then closed.
        let mut p = Peer::accept(&listener).await;
        heads.push(p.head().await);
        p.write("HTTP/1.1 200").await;
        drop(p);
        // 5: the replayed request of 1, answered.
        let mut p = Peer::accept(&listener).await;
        heads.push(p.head().await);
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        heads
    });
    let connect = move |reused: bool| async move {
        let mut conn = Conn::new(
            within(TcpStream::connect(addr))
                .await
                .expect("connecting to the upstream"),
        );
        conn.reused = reused;
        conn
    };
    let exchange_err = |conn: Conn, req: Encoded| async move {
        match within(exchange(conn, req, Weak::new(), CONNECT.into())).await {
            Ok(resp) => panic!("expected a failure, got {resp:?}"),
            Err(f) => f,
        }
    };

    // A GET on a reused connection: the request comes back.
    let failure = exchange_err(connect(true).await, encode(get("/1")).expect("encodes")).await;
    assert_contains(
        &failure.error.to_string(),
        "connection closed before answering",
    );
    let replay = failure.replay.expect("a GET never answered may be resent");
    assert_eq!(
        head_of(&replay),
        "GET /1 HTTP/1.1\r\nhost: upstream.test\r\n\r\n"
    );

    // A POST: never.
    let post = encode(request(Method::POST, "/2", empty())).expect("encodes");
    let failure = exchange_err(connect(true).await, post).await;
    assert!(failure.replay.is_none(), "a POST must not be resent");

    // A GET on a connection that had carried nothing: the failure is not
    // the idle-close race.
    let failure = exchange_err(connect(false).await, encode(get("/3")).expect("encodes")).await;
    assert!(
        failure.replay.is_none(),
        "a new connection's failure is final"
    );

    // Part of a response came: the upstream saw the request.
    let failure = exchange_err(connect(true).await, encode(get("/4")).expect("encodes")).await;
    assert_contains(
        &failure.error.to_string(),
        "in the middle of the response head",
    );
    assert!(
        failure.replay.is_none(),
        "a half-answered request is not resent"
    );

    // The request handed back goes out again as it was.
    let resp = within(exchange(
        connect(false).await,
        replay,
        Weak::new(),
        CONNECT.into(),
    ))
    .await
    .expect("the replayed request is answered");
    let got = within(resp.into_body().collect())
        .await
        .expect("the body arrives")
        .to_bytes();
    assert_eq!(got, "ok");

    let heads = server.await.expect("the upstream script");
    let lines: Vec<_> = heads
        .iter()
        .map(|h| h.lines().next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "GET /1 HTTP/1.1",
            "POST /2 HTTP/1.1",
            "GET /3 HTTP/1.1",
            "GET /4 HTTP/1.1",
            "GET /1 HTTP/1.1",
        ]
    );
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Serves one connection: reads the request head, writes `response`, then
/// waits for the client to close the connection (checking it sent nothing
/// more) unless `close` (then it closes right after writing).
async fn serve_once(response: Vec<u8>, close: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        // The client may give up (and close) before reading it all.
        let _ = p.io.write_all(&response).await;
        if !close {
            p.closed().await;
        }
    });
    (addr, server)
}

async fn head_error(response: &[u8], close: bool) -> String {
    let (addr, server) = serve_once(response.to_vec(), close).await;
    let err = send_err(&pool(addr), get("/")).await;
    server.await.expect("the upstream script");
    err
}

async fn body_error(response: &[u8], close: bool) -> String {
    let (addr, server) = serve_once(response.to_vec(), close).await;
    let resp = send(&pool(addr), get("/")).await;
    let err = body_err(resp).await;
    server.await.expect("the upstream script");
    err
}

#[tokio::test]
async fn malformed_status_line_is_an_error() {
    let err = head_error(b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n", false).await;
    assert_contains(&err, "malformed response head");
    let err = head_error(b"ICY 200 OK\r\n\r\n", false).await;
    assert_contains(&err, "malformed response head");
}

#[tokio::test]
async fn malformed_header_line_is_an_error() {
    let err = head_error(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", false).await;
    assert_contains(&err, "malformed response head");
}

#[tokio::test]
async fn oversized_response_head_is_an_error() {
    // 40 fields of 2000 bytes, never ending: the client stops past 64 KiB.
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..40 {
        response.extend_from_slice(format!("x-pad-{i:02}: ").as_bytes());
        response.extend(std::iter::repeat_n(b'a', 2000));
        response.extend_from_slice(b"\r\n");
    }
    let err = head_error(&response, false).await;
    assert_contains(&err, "the response head is larger than 64 KiB");
}

#[tokio::test]
async fn too_many_header_fields_is_an_error() {
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..200 {
        response.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
    }
    response.extend_from_slice(b"content-length: 0\r\n\r\n");
    let err = head_error(&response, false).await;
    assert_contains(&err, "malformed response head");
}

#[tokio::test]
async fn upstream_closing_mid_head_is_an_error() {
    let err = head_error(b"HTTP/1.1 200 OK\r\ncontent-le", true).await;
    assert_contains(&err, "connection closed in the middle of the response head");
}

#[tokio::test]
async fn unrequested_switching_protocols_is_an_error() {
    let err = head_error(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        false,
    )
    .await;
    assert_contains(&err, "switched protocols");
}

#[tokio::test]
async fn status_out_of_range_is_an_error() {
    let err = head_error(b"HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n", false).await;
    assert_contains(&err, "response status 99 is out of range");
}

#[tokio::test]
async fn conflicting_content_lengths_are_an_error() {
    let err = head_error(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 30\r\n\r\nabc",
        false,
    )
    .await;
    assert_contains(&err, "conflicting content-length");
}

#[tokio::test]
async fn repeated_equal_content_lengths_are_accepted() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc")
            .await;
    });
    assert_eq!(body(send(&pool(addr), get("/")).await).await, "abc");
    server.await.expect("the upstream script");
}

#[tokio::test]
async fn non_numeric_content_length_is_an_error() {
    let err = head_error(b"HTTP/1.1 200 OK\r\ncontent-length: 12abc\r\n\r\n", false).await;
    assert_contains(&err, "content-length is not a number");
    let err = head_error(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).await;
    assert_contains(&err, "content-length is not a number");
}

#[tokio::test]
async fn content_length_body_cut_short_is_an_error() {
    let err = body_error(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly6b", true).await;
    assert_contains(
        &err,
        "closed the connection 4 bytes before the end of the response body",
    );
}

#[tokio::test]
async fn invalid_chunk_size_is_an_error() {
    let err = body_error(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        false,
    )
    .await;
    assert_contains(&err, "invalid chunk size \"zz\"");
    let err = body_error(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n",
        false,
    )
    .await;
    assert_contains(&err, "invalid chunk size");
    // Larger than any body can be.
    let err = body_error(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
        false,
    )
    .await;
    assert_contains(&err, "invalid chunk size");
}

#[tokio::test]
async fn chunk_data_not_followed_by_crlf_is_an_error() {
    let err = body_error(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        false,
    )
    .await;
    assert_contains(&err, "chunk data is not followed by CRLF");
}

#[tokio::test]
async fn endless_chunk_size_line_is_an_error() {
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
    response.extend(std::iter::repeat_n(b'x', 5000));
    let err = body_error(&response, false).await;
    assert_contains(&err, "chunk-size line is too long");
}

#[tokio::test]
async fn chunked_body_cut_short_is_an_error() {
    let err = body_error(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        true,
    )
    .await;
    assert_contains(&err, "in the middle of a chunked response body");
}

#[tokio::test]
async fn errors_reach_the_body_reader_after_the_good_bytes() {
    let (addr, server) = serve_once(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nq\r\n".to_vec(),
        false,
    )
    .await;
    let mut resp_body = send(&pool(addr), get("/")).await.into_body();
    let first = within(resp_body.frame())
        .await
        .expect("a frame")
        .expect("the good chunk")
        .into_data()
        .expect("data");
    assert_eq!(first, "abc");
    let err = within(resp_body.frame())
        .await
        .expect("a frame")
        .expect_err("then the error");
    assert_contains(&err.to_string(), "invalid chunk size \"q\"");
    // The body is over after an error.
    assert!(within(resp_body.frame()).await.is_none());
    drop(resp_body);
    server.await.expect("the upstream script");
}

// ---------------------------------------------------------------------------
// Full duplex
// ---------------------------------------------------------------------------

#[tokio::test]
async fn response_streams_while_the_request_body_is_still_sent() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let head = p.head().await;
        let first = p.take(6).await;
        // Answer before the request is complete, echoing what came.
        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        out.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
        out.extend_from_slice(&first);
        out.extend_from_slice(b"\r\n");
        p.write(out).await;
        let rest = p.take(5).await;
        let mut out = format!("{:x}\r\n", rest.len()).into_bytes();
        out.extend_from_slice(&rest);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        p.write_split(&[&out[..4], &out[4..]]).await;
        // Both messages complete: the connection carries the next exchange.
        let next = p.head().await;
        p.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        (head, next, listener)
    });
    let pool = pool(addr);
    let (tx, req_body) = channel();
    tx.send(data(b"hello ")).await.expect("the body is read");
    let mut req = request(Method::POST, "/echo", req_body);
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
    let resp = send(&pool, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp_body = resp.into_body();
    let first = within(resp_body.frame())
        .await
        .expect("a frame")
        .expect("the echo of the first part")
        .into_data()
        .expect("data");
    assert_eq!(first, "hello ");
    // Only now does the rest of the request body exist.
    tx.send(data(b"world")).await.expect("the body is read");
    drop(tx);
    let rest = within(resp_body.collect())
        .await
        .expect("the rest of the echo")
        .to_bytes();
    assert_eq!(rest, "world");
    assert_eq!(send(&pool, get("/after")).await.status(), StatusCode::OK);
    let (head, next, listener) = server.await.expect("the upstream script");
    assert!(head.contains("content-length: 11\r\n"), "{head:?}");
    assert!(next.starts_with("GET /after "), "{next:?}");
    no_more_connections(&listener).await;
}

#[tokio::test]
async fn large_bodies_flow_both_ways_at_once() {
    // The upstream echoes as it reads, before the request is complete:
    // with neither side's socket buffers able to hold everything, the
    // client must read the response while it writes the request.
    const LEN: usize = 4 * 1024 * 1024;
    let payload: Bytes = (0..LEN).map(|i| (i % 253) as u8).collect();
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        let head = p.head().await;
        p.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let mut left = LEN;
        while left > 0 {
            if p.buf.is_empty() {
                assert!(p.fill().await > 0, "the request body stopped {left} short");
            }
            let n = p.buf.len().min(left);
            let mut out = format!("{n:x}\r\n").into_bytes();
            out.extend(p.buf.drain(..n));
            out.extend_from_slice(b"\r\n");
            p.write(out).await;
            left -= n;
        }
        p.write("0\r\n\r\n").await;
        head
    });
    let resp = send(
        &pool(addr),
        request(Method::PUT, "/echo", full(payload.clone())),
    )
    .await;
    let got = body(resp).await;
    assert!(
        got == payload,
        "the echo differs ({} of {LEN} bytes)",
        got.len()
    );
    let head = server.await.expect("the upstream script");
    assert!(
        head.contains(&format!("content-length: {LEN}\r\n")),
        "{head:?}"
    );
}

#[tokio::test]
async fn early_answer_before_the_request_body_does_not_reuse_the_connection() {
    // The upstream answers (say, 413) without reading the body, which is
    // still being produced: the connection cannot carry another request.
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        first.head().await;
        first
            .write("HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!")
            .await;
        let mut second = Peer::accept(&listener).await;
        let next = second.head().await;
        second
            .write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        next
    });
    let pool = pool(addr);
    let (tx, req_body) = channel();
    tx.send(data(b"part")).await.expect("the body is read");
    let resp = send(&pool, request(Method::POST, "/upload", req_body)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body(resp).await, "too big!");
    let resp = send(&pool, get("/next")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    drop(tx);
    let next = server.await.expect("the upstream script");
    assert!(next.starts_with("GET /next "), "{next:?}");
}

// ---------------------------------------------------------------------------
// Several idle connections, and the limits of replay
// ---------------------------------------------------------------------------

/// What the upstream of `flaky_upstream` has seen.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    flaky: AtomicUsize,
}

/// An upstream serving each connection on a task of its own: `/warm` is
/// answered keep-alive, `/flaky` is met, its first `drops` times, by the
/// connection closing without an answer.
async fn flaky_upstream(drops: usize) -> (SocketAddr, Arc<Seen>) {
    let (listener, addr) = upstream().await;
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let mut p = Peer::accept(&listener).await;
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                loop {
                    let head = p.head().await;
                    if head.starts_with("GET /flaky ")
                        && counts.flaky.fetch_add(1, Ordering::SeqCst) < drops
                    {
                        return;
                    }
                    p.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn replay_goes_through_the_idle_connections_then_a_new_one() {
    let (addr, seen) = flaky_upstream(2).await;
    let pool = pool(addr);
    // Two requests at once: two connections, both idle afterwards.
    let (a, b) = tokio::join!(send(&pool, get("/warm")), send(&pool, get("/warm")));
    assert_eq!(body(a).await, "ok");
    assert_eq!(body(b).await, "ok");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    // Both idle connections fail it without an answer; the third attempt,
    // on a new connection, is answered.
    let resp = send(&pool, get("/flaky")).await;
    assert_eq!(body(resp).await, "ok");
    assert_eq!(seen.flaky.load(Ordering::SeqCst), 3);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn replay_stops_after_a_new_connection_fails_too() {
    let (addr, seen) = flaky_upstream(usize::MAX).await;
    let pool = pool(addr);
    assert_eq!(body(send(&pool, get("/warm")).await).await, "ok");
    let err = send_err(&pool, get("/flaky")).await;
    assert_contains(&err, "connection closed before answering");
    // Once on the idle connection, once on a new one: a failure there is
    // not the idle-close race.
    assert_eq!(seen.flaky.load(Ordering::SeqCst), 2);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connection_check_spots_closed_and_chatty_connections() {
    let (listener, addr) = upstream().await;
    let dial = || async {
        let io = within(TcpStream::connect(addr))
            .await
            .expect("connecting to the upstream");
        let peer = Peer::accept(&listener).await;
        (Conn::new(io), peer)
    };
    // Let the runtime take in what happened on the sockets.
    let settle = || tokio::time::sleep(Duration::from_millis(20));

    let (quiet, _keep) = dial().await;
    settle().await;
    assert!(quiet.is_reusable(), "a quiet connection is reusable");

    let (closed, peer) = dial().await;
    drop(peer);
    settle().await;
    assert!(!closed.is_reusable(), "the upstream closed it");

    let (chatty, mut peer) = dial().await;
    peer.write("HTTP/1.1 408 Request Timeout\r\n\r\n").await;
    settle().await;
    assert!(!chatty.is_reusable(), "the upstream sent something unasked");

    let (mut leftover, _keep) = dial().await;
    leftover.rbuf.extend_from_slice(b"x");
    assert!(!leftover.is_reusable(), "bytes of a past response remain");
}

// ---------------------------------------------------------------------------
// Regressions found by this suite.
// ---------------------------------------------------------------------------

/// A request body that fails part-way (the downstream client went away)
/// fails the exchange at once and closes the connection: the upstream,
/// still waiting for the rest of the body, would never answer.
#[tokio::test]
async fn request_body_failure_fails_the_exchange() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        assert_eq!(p.take(3).await, b"abc");
        // A real server waits here for the 7 missing bytes.
        p.closes_within(Duration::from_secs(1)).await
    });
    let mut req = request(
        Method::POST,
        "/upload",
        stream(vec![
            data(b"abc"),
            Err("the downstream client went away".into()),
        ]),
    );
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let sent = tokio::time::timeout(
        Duration::from_millis(300),
        pool(addr).send(req, false, CONNECT),
    )
    .await;
    let closed = server.await.expect("the upstream script");
    let err = match sent {
        Err(_) => panic!(
            "the request body failed, yet the exchange still waits for an answer \
             (upstream saw the connection closed: {closed})"
        ),
        Ok(Ok(resp)) => panic!("expected an error, got {resp:?}"),
        Ok(Err(e)) => e.to_string(),
    };
    assert_contains(&err, "request body");
    assert!(
        closed,
        "the upstream should see the aborted request's connection close"
    );
}

/// The same when the request body ends short of the content-length it
/// was sent with.
#[tokio::test]
async fn request_body_shorter_than_its_length_fails_the_exchange() {
    let (listener, addr) = upstream().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.head().await;
        assert_eq!(p.take(3).await, b"abc");
        p.closes_within(Duration::from_secs(1)).await
    });
    let mut req = request(Method::POST, "/upload", stream(vec![data(b"abc")]));
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let sent = tokio::time::timeout(
        Duration::from_millis(300),
        pool(addr).send(req, false, CONNECT),
    )
    .await;
    let closed = server.await.expect("the upstream script");
    let err = match sent {
        Err(_) => panic!(
            "the request body ended 7 bytes short, yet the exchange still waits for an \
             answer (upstream saw the connection closed: {closed})"
        ),
        Ok(Ok(resp)) => panic!("expected an error, got {resp:?}"),
        Ok(Err(e)) => e.to_string(),
    };
    assert_contains(&err, "7 bytes short");
    assert!(
        closed,
        "the upstream should see the aborted request's connection close"
    );
}

/// `MAX_HEAD` holds for a head that arrives whole too, not only while it
/// is incomplete (here about 100 KB in the reads that cross 64 KiB).
#[tokio::test]
async fn complete_response_head_larger_than_64_kib_is_an_error() {
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..50 {
        response.extend_from_slice(format!("x-pad-{i:02}: ").as_bytes());
        response.extend(std::iter::repeat_n(b'a', 2000));
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"content-length: 0\r\n\r\n");
    assert!(response.len() > 100_000);
    let (addr, server) = serve_once(response, false).await;
    let sent = within(pool(addr).send(get("/"), false, CONNECT)).await;
    let err = match sent {
        Ok(resp) => {
            let fields = resp.headers().len();
            drop(resp);
            server.await.expect("the upstream script");
            panic!("a response head of over 100 KB ({fields} fields) was accepted")
        }
        Err(e) => e.to_string(),
    };
    server.await.expect("the upstream script");
    assert_contains(&err, "the response head is larger than 64 KiB");
}

/// `content-length` and chunk sizes are digits only: Rust's integer
/// parsing takes a leading `+`, which RFC 9110 §8.6 (`1*DIGIT`) and
/// RFC 9112 §7.1 (`1*HEXDIG`) do not, and which other hops would frame
/// differently.
#[tokio::test]
async fn signed_lengths_are_an_error() {
    let (addr, server) = serve_once(
        b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc".to_vec(),
        false,
    )
    .await;
    let sent = within(pool(addr).send(get("/"), false, CONNECT)).await;
    match sent {
        Ok(resp) => {
            let cl = resp.headers().get(header::CONTENT_LENGTH).cloned();
            drop(resp);
            server.await.expect("the upstream script");
            panic!("content-length {cl:?} was accepted");
        }
        Err(e) => assert_contains(&e.to_string(), "content-length is not a number"),
    }
    server.await.expect("the upstream script");

    let err = body_error(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
        false,
    )
    .await;
    assert_contains(&err, "invalid chunk size");
}

/// A response with both `transfer-encoding: chunked` and
/// `content-length` is decoded as chunked, and the overridden
/// `content-length` is removed (RFC 9112 §6.3): `forward` strips
/// `transfer-encoding` as hop-by-hop, so a kept length would make the
/// downstream response `abc` instead of `abcde`.
#[tokio::test]
async fn overridden_content_length_does_not_describe_the_body() {
    let (addr, server) = serve_once(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"
            .to_vec(),
        false,
    )
    .await;
    let sent = within(pool(addr).send(get("/"), false, CONNECT)).await;
    if let Ok(resp) = sent {
        let cl = resp.headers().get(header::CONTENT_LENGTH).cloned();
        let got = body(resp).await;
        assert_eq!(got, "abcde", "the body is framed by the chunked coding");
        assert!(
            cl.is_none(),
            "the response says content-length {cl:?} but carries {} bytes",
            got.len()
        );
    }
    server.await.expect("the upstream script");
}
