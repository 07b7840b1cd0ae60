//! `keel-echo`, the sample workload, as a user of it sees it: each test
//! starts the real binary on an ephemeral loopback port (reading the port
//! from its `keel-echo listening on ADDR` line) and asserts on its answers
//! over HTTP/1.1, HTTP/2 (h2c), gRPC and an upgraded connection: name and
//! version, injected failures and delays, downstream calls (direct and
//! through an explicit HTTP proxy that must see absolute-form requests), and
//! a clean exit on SIGTERM.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_e2e::{Echo, spawn_echo_at};
use keel_proto::keel::echo::v1::EchoRequest;
use keel_proto::keel::echo::v1::echo_client::EchoClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts keel-echo on `127.0.0.1:0` with `args` and `env` (see
/// [`keel_e2e::spawn_echo_at`]).
fn spawn_echo(args: &[&str], env: &[(&str, &str)]) -> Result<Echo> {
    spawn_echo_at("127.0.0.1:0", args, env)
}

/// What one request got back.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body {:?}", String::from_utf8_lossy(&self.body)))
    }
}

fn request(path: &str, headers: &[(&str, &str)]) -> Result<Request<Full<Bytes>>> {
    let mut req = Request::get(path).header("host", "echo.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.body(Full::new(Bytes::new()))?)
}

async fn into_answer(resp: hyper::Response<hyper::body::Incoming>) -> Result<Answer> {
    let (parts, body) = resp.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// An HTTP/1.1 connection to `addr`.
async fn h1(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One HTTP/1.1 GET on a fresh connection.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Answer> {
    let mut sender = h1(addr).await?;
    into_answer(sender.send_request(request(path, headers)?).await?).await
}

#[tokio::test]
async fn http1_answers_with_name_version_and_request() -> Result<()> {
    let echo = spawn_echo(&["--name", "reviews-v2", "--version", "v2"], &[])?;
    let answer = get(echo.addr, "/api/x?a=1", &[("x-request-id", "r-1")]).await?;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-echo-name"], "reviews-v2");
    assert_eq!(answer.headers["x-echo-version"], "v2");
    let body = answer.json()?;
    assert_eq!(body["name"], "reviews-v2");
    assert_eq!(body["version"], "v2");
    assert_eq!(body["protocol"], "HTTP/1.1");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/api/x");
    assert_eq!(body["query"], "a=1");
    assert_eq!(body["host"], "echo.test");
    assert_eq!(body["headers"]["x-request-id"], "r-1");
    assert!(
        body["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );

    let health = get(echo.addr, "/healthz", &[]).await?;
    assert_eq!(
        (health.status, &health.body[..]),
        (StatusCode::OK, &b"ok"[..])
    );
    let sized = get(echo.addr, "/?size=1000", &[("x-echo-status", "418")]).await?;
    assert_eq!(
        (sized.status, sized.body.len()),
        (StatusCode::IM_A_TEAPOT, 1000)
    );

    // Request bodies are read and their size reported.
    let mut sender = h1(echo.addr).await?;
    let post = Request::post("/upload")
        .header("host", "echo.test")
        .body(Full::new(Bytes::from(vec![7u8; 12345])))?;
    let answer = into_answer(sender.send_request(post).await?).await?;
    assert_eq!(answer.json()?["body_bytes"], 12345);
    Ok(())
}

#[tokio::test]
async fn http2_prior_knowledge_works_on_the_same_port() -> Result<()> {
    let echo = spawn_echo(&["--version", "v3"], &[])?;
    let stream = TcpStream::connect(echo.addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("http://echo.test/h2").body(Full::new(Bytes::new()))?;
    let answer = into_answer(sender.send_request(req).await?).await?;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json()?;
    assert_eq!(body["protocol"], "HTTP/2");
    assert_eq!(body["version"], "v3");
    assert_eq!(body["path"], "/h2");
    assert_eq!(body["host"], "echo.test");
    Ok(())
}

#[tokio::test]
async fn grpc_answers_with_name_version_and_metadata() -> Result<()> {
    let echo = spawn_echo(&["--name", "grpc-echo", "--version", "v2"], &[])?;
    let mut client = EchoClient::connect(format!("http://{}", echo.addr)).await?;
    let mut req = tonic::Request::new(EchoRequest {
        message: "hello".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("end-user", "jason".parse()?);
    let resp = client.echo(req).await?;
    assert_eq!(
        resp.metadata()
            .get("x-echo-version")
            .map(|v| v.to_str().ok()),
        Some(Some("v2"))
    );
    let resp = resp.into_inner();
    assert_eq!(
        (
            resp.message.as_str(),
            resp.name.as_str(),
            resp.version.as_str()
        ),
        ("hello", "grpc-echo", "v2")
    );
    assert_eq!(
        resp.metadata.get("end-user").map(String::as_str),
        Some("jason")
    );
    assert!(resp.peer.starts_with("127.0.0.1:"), "peer {:?}", resp.peer);

    let failed = client
        .echo(EchoRequest {
            fail_code: tonic::Code::PermissionDenied as i32,
            ..Default::default()
        })
        .await
        .err()
        .context("fail_code 7 should fail the call")?;
    assert_eq!(failed.code(), tonic::Code::PermissionDenied);

    let mut stream = client
        .server_stream(EchoRequest {
            count: 4,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(answer) = stream.message().await? {
        indexes.push(answer.index);
    }
    assert_eq!(indexes, [0, 1, 2, 3]);
    Ok(())
}

#[tokio::test]
async fn fail_percent_fails_that_share_of_requests() -> Result<()> {
    let echo = spawn_echo(&["--fail-percent", "30", "--version", "v1"], &[])?;
    let mut sender = h1(echo.addr).await?;
    let (mut ok, mut failed) = (0u32, 0u32);
    for _ in 0..1000 {
        sender.ready().await?;
        let answer = into_answer(sender.send_request(request("/", &[])?).await?).await?;
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.json()?["version"], "v1");
                failed += 1;
            }
            other => bail!("unexpected status {other}"),
        }
    }
    eprintln!("--fail-percent 30: {failed} of 1000 failed, {ok} ok");
    assert!((250..=350).contains(&failed), "{failed} of 1000 failed");

    // gRPC fails the same share with UNAVAILABLE.
    let mut client = EchoClient::connect(format!("http://{}", echo.addr)).await?;
    let mut unavailable = 0;
    for _ in 0..200 {
        if let Err(status) = client.echo(EchoRequest::default()).await {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            unavailable += 1;
        }
    }
    eprintln!("--fail-percent 30 over gRPC: {unavailable} of 200 failed");
    assert!(
        (30..=90).contains(&unavailable),
        "{unavailable} of 200 failed"
    );

    // A header overrides the flag per request.
    let answer = get(echo.addr, "/", &[("x-echo-fail-percent", "0")]).await?;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = get(echo.addr, "/", &[("x-echo-fail-percent", "100")]).await?;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test]
async fn delay_header_delays_the_answer() -> Result<()> {
    let echo = spawn_echo(&[], &[])?;
    let start = Instant::now();
    let answer = get(echo.addr, "/", &[("x-echo-delay-ms", "200")]).await?;
    let took = start.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(took >= Duration::from_millis(200), "took {took:?}");
    Ok(())
}

#[tokio::test]
async fn downstream_answers_are_included() -> Result<()> {
    let backend = spawn_echo(&["--name", "ratings", "--version", "v2"], &[])?;
    let url = format!("http://{}/ratings/1", backend.addr);
    let front = spawn_echo(&["--name", "reviews", "--downstream", &url], &[])?;
    let answer = get(
        front.addr,
        "/",
        &[("x-request-id", "req-42"), ("x-b3-traceid", "abc")],
    )
    .await?;
    let body = answer.json()?;
    let down = &body["downstream"][0];
    assert_eq!(down["url"], url.as_str());
    assert_eq!(down["status"], 200);
    assert_eq!(down["body"]["name"], "ratings");
    assert_eq!(down["body"]["version"], "v2");
    assert_eq!(down["body"]["path"], "/ratings/1");
    assert_eq!(down["body"]["headers"]["x-request-id"], "req-42");
    assert_eq!(down["body"]["headers"]["x-b3-traceid"], "abc");
    Ok(())
}

#[tokio::test]
async fn downstream_goes_through_http_proxy_in_absolute_form() -> Result<()> {
    let backend = spawn_echo(&["--version", "v3"], &[])?;
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    tokio::spawn(run_proxy(proxy, seen.clone()));

    let url = format!("http://{}/via-proxy?q=1", backend.addr);
    let front = spawn_echo(
        &["--downstream", &url],
        &[("HTTP_PROXY", &format!("http://{proxy_addr}"))],
    )?;
    let body = get(front.addr, "/", &[]).await?.json()?;
    let down = &body["downstream"][0];
    assert_eq!(down["status"], 200, "{down}");
    assert_eq!(down["body"]["version"], "v3");
    assert_eq!(down["body"]["path"], "/via-proxy");
    assert_eq!(down["body"]["host"], backend.addr.to_string());
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(seen, [format!("GET {url} HTTP/1.1")]);
    Ok(())
}

/// A minimal explicit HTTP proxy: records each request line, connects to the
/// absolute-form URL's authority and relays the bytes both ways.
async fn run_proxy(listener: TcpListener, seen: Arc<Mutex<Vec<String>>>) -> Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = client.read(&mut buf).await?;
                ensure!(n > 0, "client closed before the request head ended");
                head.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let line = text.lines().next().unwrap_or_default().to_string();
            if let Ok(mut seen) = seen.lock() {
                seen.push(line.clone());
            }
            let target = line.split(' ').nth(1).unwrap_or_default();
            let authority = target
                .strip_prefix("http://")
                .and_then(|rest| rest.split('/').next())
                .with_context(|| format!("not absolute-form: {line:?}"))?;
            let mut upstream = TcpStream::connect(authority).await?;
            upstream.write_all(&head).await?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
            Ok(())
        });
    }
}

#[tokio::test]
async fn upgraded_connections_echo_bytes() -> Result<()> {
    let echo = spawn_echo(&[], &[])?;
    let mut stream = TcpStream::connect(echo.addr).await?;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(stream.read(&mut byte).await? == 1, "closed during the 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 101"), "got {head:?}");
    stream.write_all(b"ping through the mesh").await?;
    let mut echoed = [0u8; 21];
    stream.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"ping through the mesh");
    Ok(())
}

#[test]
fn sigterm_stops_it_cleanly() -> Result<()> {
    let echo = spawn_echo(&[], &[])?;
    let status = Command::new("kill")
        .args(["-TERM", &echo.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed: {status}");
    let exit = echo.child.finish(Duration::from_secs(10))?;
    assert!(exit.success(), "keel-echo exited with {exit}");
    Ok(())
}
