//! keel-proxy as a real process against a real keel-pilot: readiness, the
//! config dump, ACKs on pilot's syncz, a live VirtualService edit, and
//! surviving a pilot restart on the same port.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_e2e::{ChildGuard, bin_path, http_get};

const CONFIG: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-1, namespace: default, labels: {app: reviews, version: v1}}
status: {podIP: 10.1.0.21, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-1, namespace: default, labels: {app: reviews, version: v2}}
status: {podIP: 10.1.0.22, phase: Running}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn vs(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"
    )
}

fn read_line_addrs(child: &mut ChildGuard, keys: [&str; 2]) -> [SocketAddr; 2] {
    let stdout = child.take_stdout().expect("stdout piped");
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "no ready line"
        );
        if !line.contains(" ready: ") {
            continue;
        }
        let get = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {line:?}"))
                .parse()
                .expect("addr")
        };
        std::thread::spawn(move || for _ in reader.lines() {});
        return [get(keys[0]), get(keys[1])];
    }
}

fn pilot(dir: &Path, xds: SocketAddr) -> (ChildGuard, SocketAddr) {
    let mut cmd = Command::new(bin_path("keel-pilot", "keel-pilot"));
    cmd.arg("--config-dir")
        .arg(dir)
        .args(["--xds-addr", &xds.to_string(), "--http-addr", "127.0.0.1:0"])
        .args(["--poll-ms", "100", "--debounce-after-ms", "50"]);
    let mut child = ChildGuard::spawn("keel-pilot", &mut cmd, Stdio::piped()).expect("pilot");
    let [_, http] = read_line_addrs(&mut child, ["xds=", "http="]);
    (child, http)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dump(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("json")
}

fn weights(d: &serde_json::Value) -> Vec<u64> {
    let vhs = d["routes"]["9080"]["virtual_hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    vhs.iter()
        .find(|vh| vh["name"] == "reviews.default.svc.cluster.local:9080")
        .and_then(|vh| {
            vh["routes"][0]["action"]["forward"]["clusters"]
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["weight"].as_u64())
        .collect()
}

fn synced(http: SocketAddr, node: &str) -> bool {
    let Ok((200, body)) = http_get(http, "/debug/syncz") else {
        return false;
    };
    let clients: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    clients.iter().any(|c| {
        c["node_id"] == node
            && ["lds", "rds", "cds", "eds"].iter().all(|t| {
                let s = &c["types"][t];
                s["acked_nonce"] == s["sent_nonce"] && s["sent_nonce"] != ""
            })
    })
}

#[test]
fn proxy_syncs_follows_edits_and_survives_pilot_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), CONFIG).expect("write");
    std::fs::write(dir.path().join("vs.yaml"), vs(80, 20)).expect("write");
    let xds = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (pilot1, http) = pilot(dir.path(), xds);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel-proxy"));
    cmd.args(["--xds-address", &xds.to_string()])
        .args(["--admin-addr", "127.0.0.1:0", "--ready-addr", "127.0.0.1:0"])
        .args([
            "--stats-addr",
            "127.0.0.1:0",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .args(["--pod-name", "productpage-v1-1", "--pod-ip", "10.1.0.7"])
        .args(["--labels", "app=productpage,version=v1"]);
    let mut proxy = ChildGuard::spawn("keel-proxy", &mut cmd, Stdio::piped()).expect("proxy");
    let [admin, ready] = read_line_addrs(&mut proxy, ["admin=", "ready="]);
    let node = "sidecar~10.1.0.7~productpage-v1-1.default~default.svc.cluster.local";

    wait_for("ready", Duration::from_secs(10), || {
        http_get(ready, "/healthz/ready").is_ok_and(|(s, _)| s == 200)
    });
    let d = dump(admin);
    assert_eq!(weights(&d), [80, 20], "{d:#}");
    assert!(
        d["endpoints"]["outbound|9080|v1|reviews.default.svc.cluster.local"]["localities"][0]["endpoints"]
            [0]["address"]["socket"]
            == "10.1.0.21:9080",
        "{:#}",
        d["endpoints"]
    );
    wait_for("syncz ACKs", Duration::from_secs(5), || synced(http, node));

    std::fs::write(dir.path().join("vs.yaml"), vs(10, 90)).expect("write");
    wait_for("edited VS", Duration::from_secs(2), || {
        weights(&dump(admin)) == [10, 90]
    });

    drop(pilot1);
    std::thread::sleep(Duration::from_millis(500));
    let after = dump(admin);
    assert_eq!(after["routes"], dump(admin)["routes"]);
    assert_eq!(weights(&after), [10, 90]);
    assert_eq!(http_get(ready, "/healthz/ready").expect("ready").0, 200);

    let (_pilot2, http2) = pilot(dir.path(), xds);
    wait_for("resync after restart", Duration::from_secs(20), || {
        synced(http2, node)
    });
    assert_eq!(weights(&dump(admin)), [10, 90]);
}
