//! keel-proxy's workload identity from a real keel-citadel: not ready until
//! the certificate is in, renewed at half its lifetime (also after the
//! bootstrap token expired: renewals present the current certificate), and
//! a proxy whose token citadel refuses stays not ready, saying why.

use std::time::Duration;

use anyhow::{Result, ensure};
use keel_e2e::{http_get, spawn_citadel, spawn_pilot, spawn_proxy, wait_until};

/// `istio_agent_cert_expiry_seconds` on the proxy's stats.
fn cert_expiry(stats: &str) -> Option<f64> {
    stats.lines().find_map(|l| {
        l.strip_prefix("istio_agent_cert_expiry_seconds{resource_name=\"default\"} ")
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn the_proxy_is_ready_once_certified_and_renews_before_expiry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let citadel = spawn_citadel(&dir.path().join("citadel"), &[])?;
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh)?;
    let pilot = spawn_pilot(&mesh)?;
    // A bootstrap token that expires long before the certificates do
    // their second renewal; 6 s certificates renew every ~3 s.
    let token = citadel.token_file("default", "reviews", "4s")?;
    let ca = format!("localhost:{}", citadel.grpc_addr.port());
    let root = citadel.root_cert.display().to_string();
    let token_path = token.display().to_string();
    let proxy = spawn_proxy(
        pilot.xds_addr,
        &[
            "--namespace",
            "default",
            "--service-account",
            "reviews",
            "--ca-address",
            &ca,
            "--ca-root-cert",
            &root,
            "--token-file",
            &token_path,
            "--cert-ttl",
            "6s",
        ],
    )?;
    proxy.wait_ready(Duration::from_secs(20))?;
    let left = cert_expiry(&proxy.stats()?).expect("the certificate's expiry on the stats");
    ensure!((0.0..=6.0).contains(&left), "expires in {left} s");

    // Renewals keep it valid past the token's expiry (4 s) and past the
    // first certificate's own lifetime (6 s).
    std::thread::sleep(Duration::from_secs(10));
    let issued = citadel.metric("citadel_server_success_cert_issuance_count")?;
    ensure!(
        issued >= 3.0,
        "{issued} certificates issued in 10 s of 6 s lifetimes"
    );
    let left = cert_expiry(&proxy.stats()?).expect("expiry");
    ensure!(left > 0.0, "the current certificate expired {left} s ago");
    let (status, _) = http_get(proxy.addr("ready"), "/healthz/ready")?;
    ensure!(status == 200, "ready answered {status} after renewals");
    Ok(())
}

#[test]
fn a_refused_token_keeps_the_proxy_not_ready_and_says_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let citadel = spawn_citadel(&dir.path().join("citadel"), &[])?;
    // A token from another citadel: its signature does not verify.
    let other = spawn_citadel(&dir.path().join("other"), &[])?;
    let foreign = other.token_file("default", "reviews", "1h")?;
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh)?;
    let pilot = spawn_pilot(&mesh)?;
    let ca = format!("localhost:{}", citadel.grpc_addr.port());
    let root = citadel.root_cert.display().to_string();
    let token_path = foreign.display().to_string();
    let proxy = spawn_proxy(
        pilot.xds_addr,
        &[
            "--service-account",
            "reviews",
            "--ca-address",
            &ca,
            "--ca-root-cert",
            &root,
            "--token-file",
            &token_path,
        ],
    )?;
    let refused = wait_until(Duration::from_secs(20), || {
        citadel
            .metric("citadel_server_authentication_failure_count")
            .is_ok_and(|n| n >= 1.0)
    });
    ensure!(refused, "citadel never saw the proxy's request");
    let (status, body) = http_get(proxy.addr("ready"), "/healthz/ready")?;
    ensure!(
        status == 503 && body.contains("workload certificate"),
        "{status} {body}"
    );
    ensure!(
        cert_expiry(&proxy.stats()?).is_none(),
        "no certificate, no expiry"
    );
    Ok(())
}
