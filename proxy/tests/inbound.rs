//! The inbound side of a sidecar: a request reaching the inbound listener
//! for the workload's port is forwarded to the local application and
//! reported with `reporter="destination"`; a port the workload does not
//! serve gets `404 no_route`.
//!
//! Without iptables nothing is redirected, so the request addresses the
//! inbound listener directly and the proxy routes it by its `Host` port,
//! the way it would by the original destination port of a captured one.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_e2e::{http_send, spawn_echo_at, spawn_pilot, spawn_proxy};

#[test]
fn inbound_forwards_to_the_local_app_and_reports_as_destination() -> Result<()> {
    let app = spawn_echo_at(
        "127.0.0.1:0",
        &["--name", "ratings", "--version", "v1"],
        &[],
    )?;
    let port = app.addr.port();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: ratings, version: v1}}}}
"
        ),
    )?;
    let pilot = spawn_pilot(dir.path())?;
    let proxy = spawn_proxy(
        pilot.xds_addr,
        &[
            "--pod-name",
            "ratings-v1-1",
            "--pod-ip",
            "127.0.0.1",
            "--labels",
            "app=ratings,version=v1",
        ],
    )?;
    proxy.wait_ready(Duration::from_secs(20))?;
    let inbound = proxy.addr("inbound");

    let host = format!("ratings.test:{port}");
    for i in 0..5 {
        let a = http_send(inbound, "GET", &format!("/r/{i}"), &[("Host", &host)], b"")?;
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        let json: serde_json::Value = serde_json::from_str(&a.body)?;
        assert_eq!(json["name"], "ratings");
        assert_eq!(json["path"], format!("/r/{i}"));
    }
    let a = http_send(inbound, "GET", "/", &[("Host", "ratings.test:1")], b"")?;
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(
        a.headers.get("x-keel-error").map(String::as_str),
        Some("no_route")
    );

    let stats = proxy.stats()?;
    let served = sample(
        &stats,
        "istio_requests_total{",
        &[
            "reporter=\"destination\"",
            "destination_workload=\"ratings\"",
            "destination_service=\"ratings.test\"",
            "response_code=\"200\"",
            "connection_security_policy=\"none\"",
        ],
    )
    .context("no inbound istio_requests_total series")?;
    assert_eq!(served, 5.0);
    let unrouted = sample(
        &stats,
        "istio_requests_total{",
        &["reporter=\"destination\"", "response_flags=\"no_route\""],
    );
    assert_eq!(unrouted, Some(1.0));
    Ok(())
}

/// The value of the first series of `metric` whose labels include all of
/// `labels`.
fn sample(stats: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    stats
        .lines()
        .filter(|l| l.starts_with(metric))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
