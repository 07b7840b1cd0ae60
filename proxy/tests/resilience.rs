//! keel-proxy's resilience features as a client sees them: retries (with
//! per-try timeouts, another endpoint on each try, replayed bodies) and
//! fault injection, configured by Istio VirtualServices through a real
//! keel-pilot. Each test starts keel-echo backends, pilot and one sidecar
//! proxy on loopback ports, and counts what a client gets back.

// Shared with the routing tests, which use more of it.
#[path = "routing/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use support::{Client, Mesh, Ports, docs, get, request, request_with_body, service_entry, subsets};

/// The authority every test routes to.
const ECHO: &str = "echo.test:9080";

/// `echo.test:9080` served by every keel-echo (`version: v1`, `v2`, ... in
/// order), with subsets `v1` and `v2`, and `echo.test`'s VirtualService
/// with these `http:` routes.
fn config(p: &Ports, http: &str) -> String {
    let versions = ["v1", "v2", "v3"];
    let endpoints: Vec<(u16, &str)> = p.echo.iter().copied().zip(versions).collect();
    docs(&[
        &service_entry("echo.test", 9080, "HTTP", &endpoints),
        &subsets("echo.test", &["v1", "v2"]),
        &format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.test]
  http:
{http}"
        ),
    ])
}

/// A VirtualService sending `HOST.test` to itself with `retries`.
fn retried_vs(host: &str, retries: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}, namespace: default}}
spec:
  hosts: [{host}.test]
  http:
  - retries: {retries}
    route: [{{destination: {{host: {host}.test}}}}]
"
    )
}

/// Sends `n` GETs for `path` one after the other; returns the statuses.
async fn statuses(c: &mut Client, path: &str, n: usize) -> Result<Vec<StatusCode>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.send(get(path, ECHO)?).await?.status);
    }
    Ok(out)
}

fn count(statuses: &[StatusCode], want: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == want).count()
}

#[tokio::test]
async fn retries_hide_a_backend_failing_30_percent() -> Result<()> {
    let routes = "  - name: retried
    match: [{uri: {prefix: /retried}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: echo.test}}]
  - name: once
    retries: {attempts: 0}
    route: [{destination: {host: echo.test}}]
";
    // Independent 30% failures and three retries succeed 1 - 0.3^4 = 99.2%
    // of the time; a random run of 1000 would miss 99% one time in four,
    // so the backend's failures are seeded: the same every run.
    let mesh = Mesh::start(
        &[&["--name", "flaky", "--fail-percent", "30", "--seed", "1"]],
        |p| config(p, routes),
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    const N: usize = 1000;
    let once = statuses(&mut c, "/once", N).await?;
    let retried = statuses(&mut c, "/retried", N).await?;
    let (ok_once, ok_retried) = (
        count(&once, StatusCode::OK),
        count(&retried, StatusCode::OK),
    );
    eprintln!("30% failing backend: {ok_once}/{N} without retries, {ok_retried}/{N} with 3");
    // Without retries ~70% (± 5 points: 3.5 standard deviations).
    ensure!(
        (650..=750).contains(&ok_once),
        "without retries {ok_once}/{N} succeeded, want about 700"
    );
    // With three retries 1 - 0.3^4 = 99.2%.
    ensure!(
        ok_retried * 100 >= N * 99,
        "with retries only {ok_retried}/{N} succeeded, want at least 99%"
    );
    // One request each in the metrics, whatever the attempts.
    mesh.expect_requests(&[("destination_service", "echo.test")], 2 * N as u64)?;
    Ok(())
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_and_exhausted_retries_say_so() -> Result<()> {
    let routes = "  - name: one-retry
    match: [{uri: {prefix: /one-retry}}]
    retries: {attempts: 1, retryOn: 5xx}
    route: [{destination: {host: echo.test}}]
  - name: to-broken
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: echo.test, subset: v1}}]
";
    let mesh = Mesh::start(
        &[
            &[
                "--name",
                "broken",
                "--version",
                "v1",
                "--fail-percent",
                "100",
            ],
            &["--name", "good", "--version", "v2"],
        ],
        |p| config(p, routes),
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    // Half the first attempts land on the broken endpoint; the one retry
    // avoids it, so every request succeeds. The upstream sees which attempt
    // it answers in `x-envoy-attempt-count` (a client's own is replaced).
    let mut attempts = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let req = request(
            Method::GET,
            "/one-retry",
            ECHO,
            &[("x-envoy-attempt-count", "9")],
        )?;
        let a = c.send(req).await?;
        ensure!(
            a.status == StatusCode::OK,
            "one retry: {} {}",
            a.status,
            a.text()
        );
        let seen = a.json()?["headers"]["x-envoy-attempt-count"].clone();
        *attempts.entry(seen.to_string()).or_insert(0) += 1;
    }
    let (first, second) = (attempts.get("\"1\""), attempts.get("\"2\""));
    ensure!(
        attempts.len() == 2 && first.is_some_and(|n| *n > 50) && second.is_some_and(|n| *n > 50),
        "attempt counts the upstream saw: {attempts:?}"
    );
    // Only the broken endpoint: three attempts, then its 503 goes back,
    // counted with the retry_limit flag.
    let a = c.send(get("/broken", ECHO)?).await?;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.header("x-echo-name"), Some("broken"));
    mesh.expect_requests(
        &[("response_code", "503"), ("response_flags", "retry_limit")],
        1,
    )?;
    Ok(())
}

#[tokio::test]
async fn per_try_timeout_and_a_retry_get_past_a_hanging_endpoint() -> Result<()> {
    let routes = "  - retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
    route: [{destination: {host: echo.test}}]
";
    let mesh = Mesh::start(
        &[
            &["--name", "hanging", "--delay-ms", "30000"],
            &["--name", "quick"],
        ],
        |p| config(p, routes),
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    for i in 0..20 {
        let start = Instant::now();
        let a = c.send(get("/", ECHO)?).await?;
        let took = start.elapsed();
        ensure!(
            a.status == StatusCode::OK && a.header("x-echo-name") == Some("quick"),
            "request {i}: {} from {:?}",
            a.status,
            a.header("x-echo-name")
        );
        // At most one 200 ms try at the hanging endpoint, plus back-off.
        ensure!(took < Duration::from_secs(1), "request {i} took {took:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bodies_are_replayed_up_to_the_buffer_and_larger_ones_say_why() -> Result<()> {
    let routes = "  - retries: {attempts: 1, retryOn: 5xx}
    route: [{destination: {host: echo.test}}]
";
    let mesh = Mesh::start(
        &[
            &["--name", "broken", "--fail-percent", "100"],
            &["--name", "good"],
        ],
        |p| config(p, routes),
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    let small = Bytes::from(vec![b's'; 16 * 1024]);
    for _ in 0..30 {
        let req = request_with_body(Method::POST, "/", ECHO, &[], small.clone())?;
        let a = c.send(req).await?;
        ensure!(a.status == StatusCode::OK, "{} {}", a.status, a.text());
        // The endpoint that answered saw the whole body.
        assert_eq!(a.json()?["body_bytes"], 16 * 1024);
    }
    // 100 KiB is over the 64 KiB buffer: sent once. When it meets the
    // broken endpoint first, its 503 comes back with the reason.
    let large = Bytes::from(vec![b'l'; 100 * 1024]);
    let mut skipped = 0;
    for _ in 0..40 {
        let req = request_with_body(Method::POST, "/", ECHO, &[], large.clone())?;
        let a = c.send(req).await?;
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                a.header("x-keel-retry-skipped"),
                Some("request_body_too_large")
            );
            skipped += 1;
        } else {
            assert_eq!(a.status, StatusCode::OK);
        }
    }
    // Each request meets the broken endpoint first half the time.
    ensure!(
        (5..=35).contains(&skipped),
        "{skipped} of 40 large requests were refused a retry, want about 20"
    );
    Ok(())
}

#[tokio::test]
async fn fault_delay_moves_the_median_by_its_duration() -> Result<()> {
    let routes = "  - name: delayed
    match: [{uri: {prefix: /delayed}}]
    fault: {delay: {percentage: {value: 100}, fixedDelay: 200ms}}
    route: [{destination: {host: echo.test}}]
  - route: [{destination: {host: echo.test}}]
";
    let mesh = Mesh::start(&[&["--name", "echo"]], |p| config(p, routes), false)?;
    let mut c = Client::h1(mesh.outbound()).await?;
    let median = async |c: &mut Client, path: &str| -> Result<Duration> {
        let mut took = Vec::new();
        for _ in 0..21 {
            let start = Instant::now();
            let a = c.send(get(path, ECHO)?).await?;
            ensure!(a.status == StatusCode::OK, "{path}: {}", a.status);
            took.push(start.elapsed());
        }
        took.sort();
        Ok(took[took.len() / 2])
    };
    let plain = median(&mut c, "/").await?;
    let delayed = median(&mut c, "/delayed").await?;
    let moved = delayed.saturating_sub(plain);
    eprintln!("p50 {plain:?} without the fault, {delayed:?} with a 200 ms delay");
    ensure!(
        (Duration::from_millis(180)..=Duration::from_millis(220)).contains(&moved),
        "the delay moved p50 by {moved:?}, want 200 ms ± 10%"
    );
    mesh.expect_requests(&[("response_flags", "delay_injected")], 21)?;
    Ok(())
}

#[tokio::test]
async fn fault_abort_fails_its_percentage_for_http_and_grpc() -> Result<()> {
    let routes = "  - name: aborted
    match: [{uri: {prefix: /aborted}}]
    fault: {abort: {percentage: {value: 25}, httpStatus: 503}}
    route: [{destination: {host: echo.test}}]
  - name: grpc-aborted
    match: [{uri: {prefix: /keel.echo}}]
    fault: {abort: {percentage: {value: 100}, grpcStatus: RESOURCE_EXHAUSTED}}
    route: [{destination: {host: echo.test}}]
";
    let mesh = Mesh::start(&[&["--name", "echo"]], |p| config(p, routes), false)?;
    let mut c = Client::h1(mesh.outbound()).await?;
    const N: usize = 2000;
    let got = statuses(&mut c, "/aborted", N).await?;
    let aborted = count(&got, StatusCode::SERVICE_UNAVAILABLE);
    eprintln!("abort 25%: {aborted}/{N}");
    // 25% ± 4 points (the standard deviation is ~1 point).
    ensure!(
        (420..=580).contains(&aborted),
        "{aborted}/{N} aborted, want 25% ± 4 points"
    );
    ensure!(
        aborted + count(&got, StatusCode::OK) == N,
        "other statuses: {got:?}"
    );
    mesh.expect_requests(
        &[("response_code", "503"), ("response_flags", "fault_abort")],
        aborted as u64,
    )?;

    // gRPC: a trailers-only answer with the configured status.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.outbound()))?
        .origin(format!("http://{ECHO}").parse()?)
        .connect()
        .await?;
    let mut grpc = keel_proto::keel::echo::v1::echo_client::EchoClient::new(channel);
    let err = grpc
        .echo(keel_proto::keel::echo::v1::EchoRequest::default())
        .await
        .expect_err("the fault aborts every gRPC call");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    Ok(())
}

/// What a mirror target saw: each request's `Host` and body length.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>;

/// A bare HTTP/1.1 server that records every request, then answers
/// `status` (with no body) after `delay`.
async fn recorder(status: &'static str, delay: Duration) -> Result<(u16, Seen)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let field = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|v| v.trim().to_string())
                    };
                    let host = field("host:").unwrap_or_default();
                    let len: usize = field("content-length:")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    record.lock().expect("lock").push((host, len));
                    tokio::time::sleep(delay).await;
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, seen))
}

#[tokio::test]
async fn mirrors_get_copies_without_slowing_the_request() -> Result<()> {
    let (shadow_port, seen) = recorder("200 OK", Duration::from_millis(500)).await?;
    let routes = "  - name: mirrored
    match: [{uri: {prefix: /mirrored}}]
    route: [{destination: {host: echo.test}}]
    mirror: {host: shadow.test}
    mirrorPercentage: {value: 100}
  - name: half
    match: [{uri: {prefix: /half}}]
    route: [{destination: {host: echo.test}}]
    mirror: {host: shadow.test}
    mirrorPercentage: {value: 50}
  - route: [{destination: {host: echo.test}}]
";
    let mesh = Mesh::start(
        &[&["--name", "echo"]],
        |p| {
            docs(&[
                &config(p, routes),
                &service_entry("shadow.test", 9080, "HTTP", &[(shadow_port, "v1")]),
            ])
        },
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    let median = async |c: &mut Client, path: &str, body: usize| -> Result<Duration> {
        let mut took = Vec::new();
        for _ in 0..21 {
            let req =
                request_with_body(Method::POST, path, ECHO, &[], Bytes::from(vec![b'm'; body]))?;
            let start = Instant::now();
            let a = c.send(req).await?;
            ensure!(
                a.status == StatusCode::OK,
                "{path}: {} {}",
                a.status,
                a.text()
            );
            took.push(start.elapsed());
        }
        took.sort();
        Ok(took[took.len() / 2])
    };
    let plain = median(&mut c, "/plain", 1000).await?;
    let mirrored = median(&mut c, "/mirrored", 1000).await?;
    eprintln!("p50 {plain:?} plain, {mirrored:?} mirrored to a target answering in 500 ms");
    ensure!(
        mirrored < plain + Duration::from_millis(50),
        "mirroring to a slow target moved p50 from {plain:?} to {mirrored:?}"
    );
    // Every copy arrives, with the whole body and the `-shadow` authority.
    // The recorder runs on this test's runtime: wait without blocking it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().map(|s| s.len()).unwrap_or(0) < 21 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let copies = seen.lock().expect("lock");
        assert_eq!(copies.len(), 21, "{copies:?}");
        assert!(
            copies
                .iter()
                .all(|(host, len)| host == "echo.test-shadow:9080" && *len == 1000),
            "{copies:?}"
        );
    }
    // mirrorPercentage: 50 copies about half.
    for _ in 0..200 {
        let a = c.send(get("/half", ECHO)?).await?;
        ensure!(a.status == StatusCode::OK, "{}", a.status);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let half = seen.lock().expect("lock").len() - 21;
    ensure!((70..=130).contains(&half), "{half} of 200 copied at 50%");
    // The copies are not counted as requests of the real destination.
    mesh.expect_requests(&[("destination_service", "echo.test")], 242)?;
    Ok(())
}

#[tokio::test]
async fn a_retry_budget_caps_retries_when_every_endpoint_fails() -> Result<()> {
    // Every attempt fails after 50 ms. Both services retry 3 times on 5xx;
    // only `budgeted.test` has a DestinationRule with a retry budget.
    let (port, seen) = recorder("503 Service Unavailable", Duration::from_millis(50)).await?;
    let vs = |host: &str| retried_vs(host, "{attempts: 3, retryOn: 5xx}");
    let budget = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: budgeted, namespace: default}
spec:
  host: budgeted.test
  trafficPolicy:
    retryBudget: {percent: 20, minRetryConcurrency: 1}
";
    let mesh = Mesh::start(
        &[&["--name", "unused"]],
        |_| {
            docs(&[
                &service_entry("budgeted.test", 9080, "HTTP", &[(port, "v1")]),
                &service_entry("unbudgeted.test", 9080, "HTTP", &[(port, "v1")]),
                &vs("budgeted"),
                &vs("unbudgeted"),
                budget,
            ])
        },
        false,
    )?;
    const CLIENTS: usize = 40;
    const EACH: usize = 5;
    let run = async |host: &'static str| -> Result<(usize, usize)> {
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let mut c = Client::h1(mesh.outbound()).await?;
            tasks.push(tokio::spawn(async move {
                let mut skipped = 0;
                for _ in 0..EACH {
                    let a = c.send(get("/", host)?).await?;
                    ensure!(a.status == StatusCode::SERVICE_UNAVAILABLE, "{}", a.status);
                    if a.header("x-keel-retry-skipped") == Some("retry_budget_exhausted") {
                        skipped += 1;
                    }
                }
                anyhow::Ok(skipped)
            }));
        }
        let mut skipped = 0;
        for t in tasks {
            skipped += t.await??;
        }
        let attempts = seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(h, _)| h == host)
            .count();
        Ok((attempts, skipped))
    };
    let requests = CLIENTS * EACH;
    let (free, free_skipped) = run("unbudgeted.test:9080").await?;
    let (capped, skipped) = run("budgeted.test:9080").await?;
    eprintln!(
        "{requests} requests to a failing endpoint: {free} attempts without a budget, \
         {capped} with 20% ({skipped} refused a retry)"
    );
    // Without a budget every request is tried four times.
    ensure!(
        free == 4 * requests && free_skipped == 0,
        "{free} attempts, {free_skipped} skipped"
    );
    // With it, at most ~8 retries run at once (20% of 40): well under half.
    ensure!(
        capped < 2 * requests,
        "{capped} attempts for {requests} requests under a 20% retry budget"
    );
    ensure!(skipped > 0, "no request was refused a retry");
    mesh.expect_requests(
        &[
            ("destination_service", "budgeted.test"),
            ("response_flags", "overflow"),
        ],
        skipped as u64,
    )?;
    Ok(())
}

#[tokio::test]
async fn cors_preflights_are_answered_and_allowed_origins_get_headers() -> Result<()> {
    let routes = "  - corsPolicy:
      allowOrigins: [{exact: \"https://app.test\"}, {regex: \"https://.*\\\\.trusted\\\\.test\"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-echo-name]
      maxAge: 10m
      allowCredentials: true
    route: [{destination: {host: echo.test}}]
";
    let mesh = Mesh::start(&[&["--name", "echo"]], |p| config(p, routes), false)?;
    let mut c = Client::h1(mesh.outbound()).await?;
    let preflight = |origin: &str| {
        support::request(
            Method::OPTIONS,
            "/api",
            ECHO,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-token"),
            ],
        )
    };
    // An allowed origin's preflight is answered by the proxy.
    let a = c.send(preflight("https://app.test")?).await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(a.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(a.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(a.header("access-control-max-age"), Some("600"));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        a.header("x-echo-name"),
        None,
        "the preflight reached the app"
    );
    // Another origin's preflight goes to the app, without CORS headers.
    let a = c.send(preflight("https://evil.test")?).await?;
    assert_eq!(a.header("x-echo-name"), Some("echo"));
    assert_eq!(a.header("access-control-allow-origin"), None);
    // Requests from allowed origins get the headers on the app's answer.
    let get_from =
        |origin: &str| support::request(Method::GET, "/api", ECHO, &[("origin", origin)]);
    let a = c.send(get_from("https://x.trusted.test")?).await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-echo-name"), Some("echo"));
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://x.trusted.test")
    );
    assert_eq!(
        a.header("access-control-expose-headers"),
        Some("x-echo-name")
    );
    let a = c.send(get_from("https://evil.test")?).await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("access-control-allow-origin"), None);
    Ok(())
}

#[tokio::test]
async fn an_always_failing_endpoint_is_ejected_and_the_others_carry_the_traffic() -> Result<()> {
    let vs = |host: &str| retried_vs(host, "{attempts: 0}");
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: guarded, namespace: default}
spec:
  host: guarded.test
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
";
    let mesh = Mesh::start(
        &[
            &["--name", "broken", "--fail-percent", "100"],
            &["--name", "good-1"],
            &["--name", "good-2"],
        ],
        |p| {
            let eps: Vec<(u16, &str)> = p.echo.iter().map(|port| (*port, "v1")).collect();
            docs(&[
                &service_entry("guarded.test", 9080, "HTTP", &eps),
                &service_entry("unguarded.test", 9080, "HTTP", &eps),
                &vs("guarded"),
                &vs("unguarded"),
                dr,
            ])
        },
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    const N: usize = 300;
    let failures = async |c: &mut Client, host: &str| -> Result<usize> {
        let mut failed = 0;
        for _ in 0..N {
            let a = c.send(get("/", host)?).await?;
            if a.status != StatusCode::OK {
                ensure!(a.header("x-echo-name") == Some("broken"), "{}", a.status);
                failed += 1;
            }
        }
        Ok(failed)
    };
    let unguarded = failures(&mut c, "unguarded.test:9080").await?;
    let guarded = failures(&mut c, "guarded.test:9080").await?;
    eprintln!(
        "{N} requests over 3 endpoints, one broken: {unguarded} failed without outlier detection, {guarded} with"
    );
    // Without: about a third fail.
    ensure!(
        unguarded >= 60,
        "only {unguarded} of {N} failed without outlier detection"
    );
    // With: the two errors that trip consecutive5xxErrors: 2, then none.
    ensure!(
        guarded == 2,
        "{guarded} of {N} failed with outlier detection, want 2"
    );
    Ok(())
}

#[tokio::test]
async fn peak_ewma_sends_most_requests_to_the_faster_endpoint() -> Result<()> {
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ewma
  namespace: default
  annotations: {keel.dev/load-balancer: peak-ewma}
spec:
  host: ewma.test
";
    let mesh = Mesh::start(
        &[&["--name", "slow", "--delay-ms", "60"], &["--name", "fast"]],
        |p| {
            let eps: Vec<(u16, &str)> = p.echo.iter().map(|port| (*port, "v1")).collect();
            docs(&[
                &service_entry("ewma.test", 9080, "HTTP", &eps),
                &service_entry("plain.test", 9080, "HTTP", &eps),
                dr,
            ])
        },
        false,
    )?;
    let mut c = Client::h1(mesh.outbound()).await?;
    const N: usize = 200;
    let fast_share = async |c: &mut Client, host: &str, n: usize| -> Result<usize> {
        let mut fast = 0;
        for _ in 0..n {
            let a = c.send(get("/", host)?).await?;
            ensure!(a.status == StatusCode::OK, "{}", a.status);
            fast += usize::from(a.header("x-echo-name") == Some("fast"));
        }
        Ok(fast)
    };
    // One request at a time: least request sees two idle endpoints.
    let plain = fast_share(&mut c, "plain.test:9080", N / 2).await?;
    let ewma = fast_share(&mut c, "ewma.test:9080", N).await?;
    eprintln!(
        "sequential requests, endpoints 60 ms apart: {plain} of {} to the fast one by least request, {ewma} of {N} by peak EWMA",
        N / 2
    );
    ensure!(
        (25..=75).contains(&plain),
        "least request sent {plain} of {} to the fast endpoint",
        N / 2
    );
    ensure!(
        ewma >= N * 9 / 10,
        "peak EWMA sent only {ewma} of {N} to the fast endpoint"
    );
    Ok(())
}
