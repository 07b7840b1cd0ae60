//! Transparent capture: in a fresh network namespace, an iptables rule
//! redirects TCP to the service VIP range (10.96.0.0/16) to the proxy's
//! outbound port, the way a sidecar's init rules do. An unmodified client
//! (curl) calling a service VIP reaches the service through the proxy,
//! which finds the original destination with `SO_ORIGINAL_DST` and routes
//! by it: HTTP by the VirtualService, a TCP port by its own listener.
//!
//! Needs root and `iptables`/`ip`/`curl`: skipped (with a message) when
//! they are missing, except under CI (`CI=true`), where that is a failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use keel_e2e::{
    Echo, run_cmd, skip_unless_ci, spawn_echo_in, spawn_pilot_in, spawn_proxy_in, wait_until,
};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Result<Self> {
        let name = format!("keel-cap-{}", std::process::id());
        run_cmd("ip", &["netns", "add", &name])?;
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        // An address (and so a route and a source address) for the VIP
        // range, so connect() reaches the nat table and replies return.
        ns.exec(&["ip", "addr", "add", "10.0.0.1/8", "dev", "lo"])?;
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.96.0.0/16",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.0];
        all.extend_from_slice(args);
        run_cmd("ip", &all)
    }

    /// `curl` inside the namespace: (status, headers and body).
    fn curl(&self, url: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["curl", "-sS", "-i", "--max-time", "10"];
        args.extend_from_slice(extra);
        args.push(url);
        self.exec(&args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_cmd("ip", &["netns", "del", &self.0]);
    }
}

/// Whether the test can run here; `Err` when it must (CI) but cannot.
fn can_run() -> Result<bool> {
    let root = run_cmd("id", &["-u"]).is_ok_and(|u| u.trim() == "0");
    let tools = ["iptables", "ip", "curl"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if root && tools {
        return Ok(true);
    }
    let why = format!("needs root ({root}) and iptables, ip, curl ({tools})");
    skip_unless_ci("the capture test", &why)
}

fn status_of(answer: &str) -> Option<u16> {
    answer
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn config(dir: &Path, v1: &Echo, v2: &Echo, tcp: &Echo) -> Result<()> {
    // One endpoint per Service, so each can have its own target port.
    let svc = |name: &str, vip: &str, port_name: &str, port: u16, target: u16, app: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: {app}}}
  ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]
---
"
        )
    };
    let pod = |name: &str, app: &str, version: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}, version: {version}}}}}
spec:
  containers: [{{name: app, image: echo}}]
status: {{podIP: 127.0.0.1, phase: Running}}
---
"
        )
    };
    let mut yaml = String::new();
    yaml += &svc(
        "web-v1",
        "10.96.0.11",
        "http",
        9080,
        v1.addr.port(),
        "web-v1",
    );
    yaml += &svc(
        "web-v2",
        "10.96.0.12",
        "http",
        9080,
        v2.addr.port(),
        "web-v2",
    );
    yaml += &svc(
        "web",
        "10.96.0.10",
        "http",
        9080,
        v1.addr.port(),
        "web-none",
    );
    yaml += &svc("db", "10.96.0.20", "tcp-db", 7070, tcp.addr.port(), "db");
    yaml += &pod("web-v1-1", "web-v1", "v1");
    yaml += &pod("web-v2-1", "web-v2", "v2");
    yaml += &pod("db-1", "db", "v1");
    // Calls to `web` go to web-v2: the route is the VirtualService's, not
    // the VIP's own service.
    yaml += "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web-v2}}]
";
    std::fs::write(dir.join("mesh.yaml"), yaml)?;
    Ok(())
}

#[test]
fn captured_connections_route_by_their_original_destination() -> Result<()> {
    if !can_run()? {
        return Ok(());
    }
    let ns = Netns::create()?;
    let n = Some(ns.0.as_str());
    let v1 = spawn_echo_in(
        n,
        "127.0.0.1:0",
        &["--name", "web-v1", "--version", "v1"],
        &[],
    )?;
    let v2 = spawn_echo_in(
        n,
        "127.0.0.1:0",
        &["--name", "web-v2", "--version", "v2"],
        &[],
    )?;
    let db = spawn_echo_in(n, "127.0.0.1:0", &["--name", "db"], &[])?;
    let dir = tempfile::tempdir()?;
    config(dir.path(), &v1, &v2, &db)?;
    let pilot = spawn_pilot_in(n, dir.path(), &[])?;
    let proxy = spawn_proxy_in(
        n,
        pilot.xds_addr,
        &[
            "--outbound-addr",
            "0.0.0.0:15001",
            "--pod-name",
            "client-1",
            "--pod-ip",
            "127.0.0.1",
            "--labels",
            "app=client,version=v1",
        ],
    )?;
    let ready = proxy.addr("ready");
    let ready_url = format!("http://{ready}/healthz/ready");
    assert!(
        wait_until(Duration::from_secs(20), || ns
            .curl(&ready_url, &[])
            .is_ok_and(|a| status_of(&a) == Some(200))),
        "the proxy never became ready"
    );

    // HTTP to a VIP: captured, routed by the VirtualService of its host.
    for i in 0..3 {
        let a = ns.curl(&format!("http://10.96.0.10:9080/captured/{i}"), &[])?;
        assert_eq!(status_of(&a), Some(200), "{a}");
        assert!(a.contains("\"name\":\"web-v2\""), "{a}");
        assert!(
            a.contains("x-forwarded-proto"),
            "not through the proxy: {a}"
        );
    }
    // Another VIP, no VirtualService: its own service.
    let a = ns.curl("http://10.96.0.11:9080/direct", &[])?;
    assert!(a.contains("\"name\":\"web-v1\""), "{a}");

    // A TCP port: spliced to the service behind the VIP, bytes untouched
    // (no x-forwarded-proto: nothing parsed the HTTP inside).
    let a = ns.curl("http://10.96.0.20:7070/raw", &[])?;
    assert_eq!(status_of(&a), Some(200), "{a}");
    assert!(a.contains("\"name\":\"db\""), "{a}");
    assert!(!a.contains("x-forwarded-proto"), "{a}");

    let stats = ns.curl(
        &format!("http://{}/stats/prometheus", proxy.addr("stats")),
        &[],
    )?;
    let count = |metric: &str, labels: &[&str]| -> Option<f64> {
        stats
            .lines()
            .filter(|l| l.starts_with(metric))
            .find(|l| labels.iter().all(|w| l.contains(w)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        count(
            "istio_requests_total{",
            &[
                "destination_service=\"web-v2.default.svc.cluster.local\"",
                "response_code=\"200\""
            ]
        ),
        Some(3.0),
        "{stats}"
    );
    assert_eq!(
        count(
            "istio_tcp_connections_opened_total{",
            &["destination_service=\"db.default.svc.cluster.local\""]
        ),
        Some(1.0),
        "{stats}"
    );
    Ok(())
}
