//! The HTTP/2 server over real loopback sockets, as clients see it.
//!
//! Two kinds of client: hyper's HTTP/2 client (an independent
//! implementation, built on the `h2` crate) for what ordinary traffic does,
//! here; and a client built from raw frames and hand-made HPACK blocks for
//! protocol behaviour hyper never produces, in [`raw`]. Every test serves
//! one connection with [`Connection`] on a task, the way `http::serve_h2`
//! does (including its `select!` around `graceful_shutdown`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify, Semaphore, mpsc, oneshot};

use super::{Config, Connection, Error, Handler, RecvBody};
use crate::http2::frame::Reason;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body in these tests, request or response.
type TestBody = BoxBody<Bytes, BoxError>;
type Client = SendRequest<TestBody>;

/// Only for things that should happen at once: a failing test stops here
/// instead of hanging.
const GENEROUS: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(200);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(GENEROUS, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body that yields `frames` in order, then ends.
fn frames(frames: Vec<Frame<Bytes>>) -> TestBody {
    StreamBody::new(futures::stream::iter(
        frames.into_iter().map(Ok::<_, BoxError>),
    ))
    .boxed()
}

/// `len` pseudo-random octets: a byte-exact comparison catches reordered,
/// lost or repeated chunks.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v.into()
}

fn assert_same_bytes(got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "bodies differ: got {} octets, want {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

// ---- the server side ----

/// One served connection.
struct Server {
    addr: SocketAddr,
    shutdown: Arc<Notify>,
    done: oneshot::Receiver<Result<(), Error>>,
}

impl Server {
    /// Asks the connection to shut down gracefully (as a drain does).
    fn graceful_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// What the connection future resolved to.
    async fn finished(self) -> Result<(), Error> {
        within("the connection future to resolve", self.done)
            .await
            .expect("the server task ended without a result")
    }

    /// The connection must have failed with `reason`.
    async fn failed_with(self, reason: Reason) {
        match self.finished().await {
            Err(Error::Protocol { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("want a {} connection error, got {other:?}", reason.name()),
        }
    }
}

/// Accepts one connection on an ephemeral port and serves it.
async fn serve<H>(config: Config, handler: H) -> Server
where
    H: Handler + Unpin + Send + 'static,
    H::Future: Send + 'static,
    H::Body: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Arc::new(Notify::new());
    let (tx, done) = oneshot::channel();
    let trigger = Arc::clone(&shutdown);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut conn = Connection::new(tcp, config, handler);
        let result = tokio::select! {
            r = &mut conn => r,
            () = trigger.notified() => {
                conn.graceful_shutdown();
                (&mut conn).await
            }
        };
        let _ = tx.send(result);
    });
    Server {
        addr,
        shutdown,
        done,
    }
}

/// What the [`router`] handler reports.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A `/pending`, `/gate` or `/spawn-read` handler started.
    Started(String),
    /// A `/pending` or `/spawn-read` handler future was dropped.
    Dropped(String),
    /// What a `/spawn-read` task read: the body, or the error.
    Read(Result<Bytes, String>),
}

/// Shared with the [`router`] handler.
#[derive(Clone)]
struct Hooks {
    events: mpsc::UnboundedSender<Event>,
    /// `/gate` handlers wait for a permit each.
    gate: Arc<Semaphore>,
    /// `/gate` handlers running now, and the most ever at once.
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Every handler call.
    calls: Arc<AtomicUsize>,
}

struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    async fn next(&mut self) -> Event {
        within("a handler event", self.0.recv())
            .await
            .expect("the handler is gone")
    }

    /// Nothing more happens for a while.
    async fn quiet(&mut self) {
        if let Ok(e) = tokio::time::timeout(QUIET, self.0.recv()).await {
            panic!("unexpected handler event {e:?}");
        }
    }
}

fn hooks() -> (Hooks, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let hooks = Hooks {
        events: tx,
        gate: Arc::new(Semaphore::new(0)),
        running: Arc::default(),
        peak: Arc::default(),
        calls: Arc::default(),
    };
    (hooks, Events(rx))
}

/// Reports [`Event::Dropped`] when the handler future holding it goes.
struct DropGuard {
    path: String,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Dropped(self.path.clone()));
    }
}

type Routed = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;

/// A handler for most tests, by path:
/// - `/pending`: never answers (reports start and drop);
/// - `/gate`: answers `released` once it gets a permit from `Hooks::gate`;
/// - `/ignore-body`: answers at once, dropping the request body unread;
/// - `/204`: an empty 204;
/// - `/spawn-read`: hands the body to a task that reads it to the end
///   (as the upstream client does when forwarding) and never answers;
/// - anything else: reads the whole body and answers 200 with it,
///   `x-path`, and `x-trailers` listing the request trailers.
fn router(hooks: Hooks) -> impl FnMut(Request<RecvBody>) -> Routed + Send + Unpin + 'static {
    move |req: Request<RecvBody>| -> Routed { Box::pin(route(hooks.clone(), req)) }
}

async fn route(hooks: Hooks, req: Request<RecvBody>) -> Response<TestBody> {
    hooks.calls.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/pending" => {
            let _guard = DropGuard {
                path: path.clone(),
                events: hooks.events.clone(),
            };
            let _ = hooks.events.send(Event::Started(path));
            std::future::pending().await
        }
        "/gate" => {
            let now = hooks.running.fetch_add(1, Ordering::SeqCst) + 1;
            hooks.peak.fetch_max(now, Ordering::SeqCst);
            let _ = hooks.events.send(Event::Started(path));
            hooks.gate.acquire().await.unwrap().forget();
            hooks.running.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("released"))
        }
        "/ignore-body" => {
            drop(req);
            Response::new(full("ignored"))
        }
        "/204" => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .unwrap(),
        "/spawn-read" => {
            let _guard = DropGuard {
                path: path.clone(),
                events: hooks.events.clone(),
            };
            let events = hooks.events.clone();
            let body = req.into_body();
            tokio::spawn(async move {
                let read = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .map_err(|e| e.to_string());
                let _ = events.send(Event::Read(read));
            });
            let _ = hooks.events.send(Event::Started(path));
            std::future::pending().await
        }
        _ => match req.into_body().collect().await {
            Ok(c) => {
                let trailers = c
                    .trailers()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                Response::builder()
                    .header("x-path", path)
                    .header("x-trailers", trailers)
                    .body(full(c.to_bytes()))
                    .unwrap()
            }
            Err(e) => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(full(e.to_string()))
                .unwrap(),
        },
    }
}

// ---- hyper's client ----

async fn client(addr: SocketAddr) -> Client {
    client_with(addr, |_| {}).await
}

async fn client_with(
    addr: SocketAddr,
    tune: impl FnOnce(&mut hyper::client::conn::http2::Builder<TokioExecutor>),
) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    tune(&mut builder);
    let (send, conn) = builder.handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn get(path: &str) -> Request<TestBody> {
    Request::get(format!("http://keel.test{path}"))
        .body(empty())
        .unwrap()
}

fn post(path: &str, body: TestBody) -> Request<TestBody> {
    Request::post(format!("http://keel.test{path}"))
        .body(body)
        .unwrap()
}

/// Sends `req` and reads the whole response.
async fn fetch(client: &mut Client, req: Request<TestBody>) -> (http::response::Parts, Bytes) {
    let resp = within("the response head", client.send_request(req))
        .await
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = within("the response body", body.collect())
        .await
        .expect("response body failed")
        .to_bytes();
    (parts, body)
}

// ---- hyper tests ----

/// What a handler saw of its request.
struct Seen {
    method: Method,
    uri: String,
    version: Version,
    headers: HeaderMap,
    body_ended: bool,
}

#[tokio::test]
async fn a_get_reaches_the_handler_and_its_response_the_client() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = serve(Config::default(), move |req: Request<RecvBody>| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_string();
            let _ = tx.send(Seen {
                method: req.method().clone(),
                uri: req.uri().to_string(),
                version: req.version(),
                headers: req.headers().clone(),
                body_ended: req.body().is_end_stream(),
            });
            if path == "/empty" {
                return Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .header("x-empty", "yes")
                    .body(empty())
                    .unwrap();
            }
            Response::builder()
                .status(StatusCode::NON_AUTHORITATIVE_INFORMATION)
                .header("x-answer", "42")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("content-type", "text/plain")
                .body(full("hello, h2"))
                .unwrap()
        }
    })
    .await;
    let mut client = client(server.addr).await;

    let req = Request::get("http://example.test:8080/a/b?x=1&y=2")
        .header("x-custom", "value")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("user-agent", "keel-test")
        .body(empty())
        .unwrap();
    let (parts, body) = fetch(&mut client, req).await;
    assert_eq!(parts.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(parts.headers["x-answer"], "42");
    assert_eq!(parts.headers["content-type"], "text/plain");
    let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(body, "hello, h2");

    let s = seen.recv().await.unwrap();
    assert_eq!(s.method, Method::GET);
    assert_eq!(s.uri, "http://example.test:8080/a/b?x=1&y=2");
    assert_eq!(s.version, Version::HTTP_2);
    assert!(
        s.body_ended,
        "END_STREAM on the HEADERS: the body has ended"
    );
    assert_eq!(s.headers["x-custom"], "value");
    assert_eq!(s.headers["user-agent"], "keel-test");
    let multi: Vec<_> = s.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(
        s.headers.keys().all(|k| !k.as_str().starts_with(':')),
        "no pseudo-headers among the header fields: {:?}",
        s.headers
    );

    // An empty response: HEADERS with END_STREAM, so the body has ended as
    // soon as the head arrives.
    let resp = within("the response", client.send_request(get("/empty")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["x-empty"], "yes");
    assert!(resp.body().is_end_stream(), "END_STREAM on the HEADERS");
    let collected = resp.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_none());
    assert!(collected.to_bytes().is_empty());
    let s = seen.recv().await.unwrap();
    assert_eq!(s.uri, "http://keel.test/empty");
}

#[tokio::test]
async fn cookie_crumbs_are_joined_into_one_field() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = serve(Config::default(), move |req: Request<RecvBody>| {
        let tx = tx.clone();
        async move {
            let cookies: Vec<HeaderValue> =
                req.headers().get_all("cookie").iter().cloned().collect();
            let _ = tx.send(cookies);
            Response::new(empty())
        }
    })
    .await;
    let mut client = client(server.addr).await;
    let req = Request::get("http://keel.test/")
        .header("cookie", "a=1")
        .header("cookie", "b=2; c=3")
        .body(empty())
        .unwrap();
    let (parts, _) = fetch(&mut client, req).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(seen.recv().await.unwrap(), ["a=1; b=2; c=3"]);
}

/// 5 MiB up and back down with a 64 KiB stream window and a 128 KiB
/// connection window: neither the request nor the response fits any
/// window, so both directions' flow control must keep reopening.
#[tokio::test]
async fn a_large_request_body_is_echoed_through_small_windows() {
    let config = Config {
        stream_window: 64 << 10,
        conn_window: 128 << 10,
        ..Config::default()
    };
    let server = serve(config, |req: Request<RecvBody>| async move {
        let body = req.into_body().map_frame(|f| f).map_err(BoxError::from);
        Response::new(body.boxed())
    })
    .await;
    let mut client = client(server.addr).await;
    let data = pattern(5 << 20, 1);
    let chunks: Vec<Frame<Bytes>> = (0..data.len())
        .step_by(40_000)
        .map(|at| Frame::data(data.slice(at..(at + 40_000).min(data.len()))))
        .collect();
    let (parts, body) = fetch(&mut client, post("/echo", frames(chunks))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_same_bytes(&body, &data);
}

#[tokio::test]
async fn a_large_response_reaches_a_client_with_default_windows() {
    let data = pattern(8 << 20, 2);
    let body = data.clone();
    let server = serve(Config::default(), move |_req: Request<RecvBody>| {
        let body = body.clone();
        async move { Response::new(full(body)) }
    })
    .await;
    let mut client = client(server.addr).await;
    let (parts, got) = fetch(&mut client, get("/big")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_same_bytes(&got, &data);
}

/// The same with the protocol's 65,535-octet windows: the server must
/// stop at every window and resume on each WINDOW_UPDATE.
#[tokio::test]
async fn a_large_response_reaches_a_client_with_the_smallest_windows() {
    let data = pattern(2 << 20, 3);
    let body = data.clone();
    let server = serve(Config::default(), move |_req: Request<RecvBody>| {
        let body = body.clone();
        async move { Response::new(full(body)) }
    })
    .await;
    let mut client = client_with(server.addr, |b| {
        b.initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
    })
    .await;
    let (parts, got) = fetch(&mut client, get("/big")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_same_bytes(&got, &data);
}

#[tokio::test]
async fn response_trailers_arrive_as_trailers() {
    let server = serve(Config::default(), |_req: Request<RecvBody>| async move {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("all-good"));
        Response::builder()
            .header("content-type", "application/grpc")
            .body(frames(vec![
                Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello")),
                Frame::trailers(trailers),
            ]))
            .unwrap()
    })
    .await;
    let mut client = client(server.addr).await;
    let resp = within("the response", client.send_request(get("/grpc")))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = within("the body", resp.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
    assert_eq!(collected.to_bytes(), &b"\0\0\0\0\x05hello"[..]);
}

#[tokio::test]
async fn request_trailers_reach_the_handler_as_a_trailers_frame() {
    let (hooks, _events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut client = client(server.addr).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let body = frames(vec![
        Frame::data(Bytes::from_static(b"first,")),
        Frame::data(Bytes::from_static(b"second")),
        Frame::trailers(trailers),
    ]);
    let (parts, got) = fetch(&mut client, post("/upload", body)).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(got, "first,second");
    assert_eq!(parts.headers["x-trailers"], "x-checksum=abc123");
}

/// 100 requests on one connection, each handler waiting until all 100
/// have started: they can only all be answered if they run concurrently.
#[tokio::test]
async fn a_hundred_concurrent_requests_are_all_answered() {
    let barrier = Arc::new(Barrier::new(100));
    let config = Config {
        max_concurrent_streams: 200,
        ..Config::default()
    };
    let server = serve(config, move |req: Request<RecvBody>| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            Response::new(full(req.uri().path().to_string()))
        }
    })
    .await;
    let client = client(server.addr).await;
    let requests = (0..100).map(|i| {
        let mut client = client.clone();
        async move {
            let (parts, body) = fetch(&mut client, get(&format!("/r{i}"))).await;
            assert_eq!(parts.status, StatusCode::OK);
            assert_eq!(body, format!("/r{i}"));
        }
    });
    within("100 responses", futures::future::join_all(requests)).await;
}

/// With SETTINGS_MAX_CONCURRENT_STREAMS 2, hyper (h2) holds a third
/// request back client-side: at most two handlers ever run at once, and
/// the third runs once one finishes. (A client that ignores the setting
/// gets REFUSED_STREAM: `raw::streams_beyond_the_limit_are_refused`.)
#[tokio::test]
async fn at_most_max_concurrent_streams_handlers_run_at_once() {
    let (hooks, mut events) = hooks();
    let config = Config {
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let server = serve(config, router(hooks.clone())).await;
    let mut client = client(server.addr).await;
    // One round trip: the client has the server's SETTINGS.
    fetch(&mut client, get("/warm-up")).await;

    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { fetch(&mut client, get("/gate")).await })
        })
        .collect();
    assert_eq!(events.next().await, Event::Started("/gate".into()));
    assert_eq!(events.next().await, Event::Started("/gate".into()));
    events.quiet().await;
    assert_eq!(hooks.running.load(Ordering::SeqCst), 2);

    hooks.gate.add_permits(3);
    for t in tasks {
        let (parts, body) = within("a gated response", t).await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "released");
    }
    assert_eq!(events.next().await, Event::Started("/gate".into()));
    assert_eq!(hooks.peak.load(Ordering::SeqCst), 2);
}

/// A client that gives up on a response (its future dropped: hyper sends
/// RST_STREAM CANCEL) makes the server drop the handler future, and the
/// connection goes on serving.
#[tokio::test]
async fn a_cancelled_request_drops_the_handler() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut client = client(server.addr).await;
    let pending = tokio::spawn(client.send_request(get("/pending")));
    assert_eq!(events.next().await, Event::Started("/pending".into()));
    pending.abort();
    assert_eq!(events.next().await, Event::Dropped("/pending".into()));
    let (parts, _) = fetch(&mut client, get("/after")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-path"], "/after");
}

/// The proxy forwards a request body from another task (hyper's upstream
/// pipe). When the client resets the stream mid-upload, that reader gets
/// an error, not a clean (truncated) end of body.
#[tokio::test]
async fn a_reset_mid_upload_fails_the_request_body() {
    let (hooks, mut events) = hooks();
    let server = serve(Config::default(), router(hooks)).await;
    let mut client = client(server.addr).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let resp = tokio::spawn(client.send_request(post("/spawn-read", body)));
    tx.send(Ok(Frame::data(Bytes::from_static(b"part one"))))
        .await
        .unwrap();
    assert_eq!(events.next().await, Event::Started("/spawn-read".into()));
    // A failing request body makes hyper reset the stream (INTERNAL_ERROR).
    tx.send(Err("the upload broke".into())).await.unwrap();
    let mut read = None;
    let mut dropped = false;
    while read.is_none() || !dropped {
        match events.next().await {
            Event::Read(r) => read = Some(r),
            Event::Dropped(_) => dropped = true,
            e => panic!("unexpected {e:?}"),
        }
    }
    let err = read.unwrap().expect_err("the body must fail, not end");
    assert!(err.contains("reset"), "error names the reset: {err}");
    assert!(within("the response future", resp).await.unwrap().is_err());
}

/// `graceful_shutdown` with a request in flight: that request still gets
/// its whole response, then the connection future resolves Ok and the
/// connection takes no more requests.
#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let (hooks, mut events) = hooks();
    let mut server = serve(Config::default(), router(hooks.clone())).await;
    let mut client = client(server.addr).await;
    let mut c = client.clone();
    let in_flight = tokio::spawn(async move { fetch(&mut c, get("/gate")).await });
    assert_eq!(events.next().await, Event::Started("/gate".into()));

    server.graceful_shutdown();
    assert!(
        tokio::time::timeout(QUIET, &mut server.done).await.is_err(),
        "the connection must wait for the request in flight"
    );
    hooks.gate.add_permits(1);
    let (parts, body) = within("the in-flight response", in_flight).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "released");
    server.finished().await.expect("a clean shutdown");

    let after = within(
        "a request after shutdown",
        client.send_request(get("/late")),
    )
    .await;
    assert!(after.is_err(), "the connection is closed: {after:?}");
    assert_eq!(hooks.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_oversized_header_list_is_answered_431() {
    let (hooks, _events) = hooks();
    let config = Config {
        max_header_list_size: 4 << 10,
        ..Config::default()
    };
    let server = serve(config, router(hooks.clone())).await;
    let mut client = client(server.addr).await;
    let big = "v".repeat(10 << 10);
    let req = Request::get("http://keel.test/big-head")
        .header("x-big", big)
        .body(empty())
        .unwrap();
    let (parts, body) = fetch(&mut client, req).await;
    assert_eq!(parts.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(parts.headers["x-keel-error"], "request_headers_too_large");
    assert!(body.is_empty());
    assert_eq!(hooks.calls.load(Ordering::SeqCst), 0, "no handler call");
    // The connection (and its HPACK state) is still good.
    let (parts, _) = fetch(&mut client, get("/small")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-path"], "/small");
}

/// Request bodies the handler never reads, several times the connection
/// window in all, through hyper: every response arrives.
#[tokio::test]
async fn unread_request_bodies_do_not_stall_the_connection() {
    let (hooks, _events) = hooks();
    let config = Config {
        stream_window: 64 << 10,
        conn_window: 128 << 10,
        ..Config::default()
    };
    let server = serve(config, router(hooks)).await;
    let mut client = client(server.addr).await;
    for i in 0..6 {
        let (parts, body) = fetch(
            &mut client,
            post("/ignore-body", full(pattern(100 << 10, 10 + i))),
        )
        .await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "ignored");
    }
}

/// An endless response body, then the client's stream reset: the server
/// drops the body (it would otherwise wait on the window forever) and
/// serves the next request.
#[tokio::test]
async fn a_response_body_cut_short_by_the_client_is_dropped() {
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let server = serve(Config::default(), move |req: Request<RecvBody>| {
        let guard = DropGuard {
            path: req.uri().path().to_string(),
            events: dropped_tx.clone(),
        };
        async move {
            if guard.path != "/endless" {
                return Response::new(full("small"));
            }
            let chunk = pattern(16 << 10, 4);
            let endless = futures::stream::repeat_with(move || {
                let _held = &guard;
                Ok::<_, BoxError>(Frame::data(chunk.clone()))
            });
            Response::new(StreamBody::new(endless).boxed())
        }
    })
    .await;
    let mut client = client_with(server.addr, |b| {
        b.initial_stream_window_size(65_535)
            .initial_connection_window_size(1 << 20);
    })
    .await;
    let resp = within("the head", client.send_request(get("/endless")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = within("a first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_data());
    drop(body);
    let d = within("the body to be dropped", dropped.recv()).await;
    assert_eq!(d, Some(Event::Dropped("/endless".into())));
    let (parts, got) = fetch(&mut client, get("/small")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(got, "small");
}

/// Connection-specific fields a handler (or an HTTP/1.1 upstream) puts in
/// a response are not sent (a client treats them as malformed), and a
/// head bigger than a frame goes out as HEADERS + CONTINUATION.
#[tokio::test]
async fn response_heads_are_cleaned_and_split_into_frames() {
    let large = "L".repeat(40 << 10);
    let value = large.clone();
    let server = serve(Config::default(), move |_req: Request<RecvBody>| {
        let value = value.clone();
        async move {
            Response::builder()
                .header("connection", "close")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("transfer-encoding", "chunked")
                .header("upgrade", "h2c")
                .header("x-large", value)
                .header("x-kept", "yes")
                .body(full("body"))
                .unwrap()
        }
    })
    .await;
    let mut client = client_with(server.addr, |b| {
        b.max_header_list_size(1 << 20);
    })
    .await;
    let (parts, body) = fetch(&mut client, get("/")).await;
    assert_eq!(parts.status, StatusCode::OK);
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!parts.headers.contains_key(name), "{name} was sent");
    }
    assert_eq!(parts.headers["x-kept"], "yes");
    assert_eq!(parts.headers["x-large"], large.as_str());
    assert_eq!(body, "body");
}

/// A response body that fails part-way: the client sees the data sent so
/// far and then an error (RST_STREAM), never a clean end; the connection
/// goes on.
#[tokio::test]
async fn a_failing_response_body_resets_the_stream() {
    let server = serve(Config::default(), |req: Request<RecvBody>| async move {
        if req.uri().path() != "/fails" {
            return Response::new(full("fine"));
        }
        let body = StreamBody::new(futures::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err(BoxError::from("upstream went away")),
        ]));
        Response::new(body.boxed())
    })
    .await;
    let mut client = client(server.addr).await;
    let resp = within("the head", client.send_request(get("/fails")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let err = loop {
        match within("a body frame", body.frame()).await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly after {got:?}"),
        }
    };
    assert_eq!(got, b"partial");
    assert!(format!("{err:?}").contains("INTERNAL_ERROR"), "{err:?}");
    let (parts, body) = fetch(&mut client, get("/next")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "fine");
}

/// A gRPC-style proxy passes the request body, trailers included, on as
/// a response body: request trailers come back as response trailers.
#[tokio::test]
async fn echoed_request_trailers_become_response_trailers() {
    let server = serve(Config::default(), |req: Request<RecvBody>| async move {
        Response::new(req.into_body().map_err(BoxError::from).boxed())
    })
    .await;
    let mut client = client(server.addr).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("7"));
    let body = frames(vec![
        Frame::data(Bytes::from_static(b"ping")),
        Frame::trailers(trailers),
    ]);
    let resp = within("the head", client.send_request(post("/echo", body)))
        .await
        .unwrap();
    let collected = within("the body", resp.into_body().collect())
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "7");
    assert_eq!(collected.to_bytes(), "ping");
}

/// Several large responses at once share the connection window and the
/// write buffer; each arrives byte-exact.
#[tokio::test]
async fn concurrent_large_responses_are_each_byte_exact() {
    let server = serve(Config::default(), |req: Request<RecvBody>| async move {
        let seed: u64 = req.uri().path()[1..].parse().unwrap();
        Response::new(full(pattern(1 << 20, seed)))
    })
    .await;
    let client = client_with(server.addr, |b| {
        b.initial_stream_window_size(256 << 10)
            .initial_connection_window_size(512 << 10);
    })
    .await;
    let requests = (100..108).map(|seed| {
        let mut client = client.clone();
        async move {
            let (parts, body) = fetch(&mut client, get(&format!("/{seed}"))).await;
            assert_eq!(parts.status, StatusCode::OK);
            assert_same_bytes(&body, &pattern(1 << 20, seed));
        }
    });
    within("8 responses", futures::future::join_all(requests)).await;
}
