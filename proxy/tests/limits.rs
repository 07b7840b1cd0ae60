//! Circuit breakers: with `maxConnections: 1` and
//! `http1MaxPendingRequests: 1`, one request is sent to the service and one
//! waits for its connection; further concurrent ones are answered by the
//! proxy itself with `503`, `x-keel-error: overflow` and
//! `response_flags="overflow"`.

use std::time::Duration;

use anyhow::Result;
use keel_e2e::{http_send, spawn_echo_at, spawn_pilot, spawn_proxy};

#[test]
fn requests_beyond_the_connection_pool_limits_overflow() -> Result<()> {
    let slow = spawn_echo_at(
        "127.0.0.1:0",
        &["--name", "slow", "--delay-ms", "1500"],
        &[],
    )?;
    let port = slow.addr.port();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: slow, namespace: default}}
spec:
  hosts: [slow.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: slow, namespace: default}}
spec:
  host: slow.test
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1}}
      http: {{http1MaxPendingRequests: 1}}
"
        ),
    )?;
    let pilot = spawn_pilot(dir.path())?;
    let proxy = spawn_proxy(pilot.xds_addr, &["--pod-name", "client-1"])?;
    proxy.wait_ready(Duration::from_secs(20))?;
    let out = proxy.addr("outbound");

    let calls: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                // Staggered so the first two are surely in flight first.
                std::thread::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 }));
                let start = std::time::Instant::now();
                let a = http_send(out, "GET", "/", &[("Host", "slow.test:9080")], b"");
                a.map(|a| (a, start.elapsed()))
            })
        })
        .collect();
    let mut ok = Vec::new();
    let mut overflow = 0;
    for c in calls {
        let (a, took) = c.join().expect("client thread")?;
        match (a.status, a.headers.get("x-keel-error").map(String::as_str)) {
            (200, None) => ok.push(took),
            (503, Some("overflow")) => overflow += 1,
            other => panic!("unexpected answer {other:?}: {}", a.body),
        }
    }
    assert_eq!((ok.len(), overflow), (2, 3));
    // One connection: the second request waited for the first (1.5 s each).
    ok.sort();
    assert!(
        ok[0] < Duration::from_millis(2500) && ok[1] >= Duration::from_millis(2800),
        "the two answers took {ok:?}: the pending one should wait for the connection"
    );
    let stats = proxy.stats()?;
    let overflowed = stats
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("response_flags=\"overflow\"")
                && l.contains("destination_service=\"slow.test\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(overflowed, Some(3.0), "{stats}");
    Ok(())
}
