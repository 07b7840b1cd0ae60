//! Circuit breakers: with `maxConnections: 1` and
//! `http1MaxPendingRequests: 1`, two requests may be in flight to the
//! service; further concurrent ones are answered by the proxy itself with
//! `503`, `x-keel-error: overflow` and `response_flags="overflow"`.

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
                http_send(out, "GET", "/", &[("Host", "slow.test:9080")], b"")
            })
        })
        .collect();
    let mut ok = 0;
    let mut overflow = 0;
    for c in calls {
        let a = c.join().expect("client thread")?;
        match (a.status, a.headers.get("x-keel-error").map(String::as_str)) {
            (200, None) => ok += 1,
            (503, Some("overflow")) => overflow += 1,
            other => panic!("unexpected answer {other:?}: {}", a.body),
        }
    }
    assert_eq!((ok, overflow), (2, 3));
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
