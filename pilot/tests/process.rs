//! keel-pilot as a real process: a watched config directory, ADS clients
//! over loopback, the debug endpoints, and bad input that must not disturb
//! anything else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_pilot::xds::node::metadata;
use keel_proto::any::{CLUSTER, LISTENER};
use keel_proto::envoy::config::cluster::v3::Cluster;
use keel_proto::envoy::config::core::v3::Node;
use keel_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-1, labels: {app: reviews, version: v1}}
status: {podIP: 10.1.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-1, labels: {app: reviews, version: v2}}
status: {podIP: 10.1.0.22}
";

const RULE_V1: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
";

const RULE_V1_V2: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

struct Pilot {
    child: Child,
    xds: SocketAddr,
    http: SocketAddr,
}

impl Drop for Pilot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Pilot {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-pilot"))
        .args(["--config-dir", &dir.to_string_lossy()])
        .args(["--xds-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--poll-ms", "100", "--debounce-after-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("keel-pilot starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let field = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .parse()
            .expect("address")
    };
    let (xds, http) = (field("xds="), field("http="));
    Pilot { child, xds, http }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pilot\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let status = buf[9..12].parse().expect("status");
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        metadata: Some(metadata(&[], &[("app", "productpage")])),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(addr: SocketAddr, id: &str, type_url: &str) -> Self {
        Self::try_open(addr, id, type_url).await.expect("stream")
    }

    /// Opens a stream; the server may refuse it at once or as its first item.
    async fn try_open(addr: SocketAddr, id: &str, type_url: &str) -> Result<Self, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        tx.send(DiscoveryRequest {
            node: node(id),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    async fn recv(&mut self, within: Duration) -> DiscoveryResponse {
        tokio::time::timeout(within, self.rx.next())
            .await
            .expect("a push in time")
            .expect("stream open")
            .expect("no error")
    }

    async fn ack(&self, r: &DiscoveryResponse, error: Option<&str>) {
        self.tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: error.map(|m| keel_proto::google::rpc::Status {
                    code: 3,
                    message: m.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("send ack");
    }
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| keel_proto::any::unpack::<Cluster>(a).expect("cluster").name)
        .collect()
}

const SIDECAR: &str = "sidecar~10.1.0.7~productpage-v1-1.default~default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reach_clients_and_bad_files_keep_last_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.yaml"), SERVICES).expect("write");
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
    std::fs::write(dir.path().join("rules/reviews.yaml"), RULE_V1).expect("write");
    let pilot = start(dir.path());

    let mut c = Sotw::open(pilot.xds, SIDECAR, CLUSTER).await;
    let first = c.recv(Duration::from_secs(5)).await;
    let names = cluster_names(&first);
    assert!(
        names.contains(&"outbound|9080|v1|reviews.default.svc.cluster.local".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("|v2|")));
    c.ack(&first, None).await;

    // An edit reaches the client within 2 s, with no reconnect.
    let edited = Instant::now();
    std::fs::write(dir.path().join("rules/reviews.yaml"), RULE_V1_V2).expect("write");
    let second = c.recv(Duration::from_secs(2)).await;
    assert!(edited.elapsed() < Duration::from_secs(2));
    assert!(
        cluster_names(&second)
            .contains(&"outbound|9080|v2|reviews.default.svc.cluster.local".to_string())
    );
    assert_ne!(first.version_info, second.version_info);
    c.ack(&second, None).await;

    // A broken edit is rejected alone: no push, the last good version serves,
    // and the debug endpoint names the problem.
    std::fs::write(dir.path().join("rules/reviews.yaml"), "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}, weight: 3}]}\n").expect("write");
    let quiet = tokio::time::timeout(Duration::from_millis(1200), c.rx.next()).await;
    assert!(
        quiet.is_err(),
        "a rejected file must not change what is served: {quiet:?}"
    );
    let (status, body) = http_get(pilot.http, "/debug/configz");
    assert_eq!(status, 200);
    assert!(
        body.contains("rules/reviews.yaml: document 1: DestinationRule default/reviews: spec.subsets[0].weight: unknown field `weight`"),
        "{body}"
    );
    let (_, metrics) = http_get(pilot.http, "/metrics");
    assert!(
        metrics.contains("pilot_config_rejected_files 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pilot_xds_pushes{type=\"cds\"} 2"),
        "{metrics}"
    );

    // Deleting the file removes its clusters.
    std::fs::remove_file(dir.path().join("rules/reviews.yaml")).expect("rm");
    let third = c.recv(Duration::from_secs(2)).await;
    assert!(
        !cluster_names(&third).iter().any(|n| n.contains("|v1|")),
        "{:?}",
        cluster_names(&third)
    );
    c.ack(&third, None).await;

    // A NACK is counted and shown, and the last ACKed version is kept.
    std::fs::write(dir.path().join("rules/reviews.yaml"), RULE_V1).expect("write");
    let fourth = c.recv(Duration::from_secs(2)).await;
    c.ack(
        &fourth,
        Some("cluster outbound|9080|v1|reviews rejected: test"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, metrics) = http_get(pilot.http, "/metrics");
    assert!(
        metrics.contains("pilot_total_xds_rejects{type=\"cds\"} 1"),
        "{metrics}"
    );
    let (_, syncz) = http_get(pilot.http, "/debug/syncz");
    let syncz: serde_json::Value = serde_json::from_str(&syncz).expect("json");
    let cds = &syncz[0]["types"]["cds"];
    assert_eq!(syncz[0]["node_id"], SIDECAR);
    assert_eq!(cds["acked_version"], third.version_info.as_str(), "{syncz}");
    assert!(
        cds["last_nack"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected: test"),
        "{syncz}"
    );

    // The config dump of a connected client is Envoy's JSON.
    let (status, dump) = http_get(pilot.http, &format!("/debug/config_dump?proxyID={SIDECAR}"));
    assert_eq!(status, 200, "{dump}");
    assert!(dump.contains("\"virtualOutbound\""), "{dump}");
    assert!(dump.contains("type.googleapis.com/envoy.admin.v3.ClustersConfigDump"));
    let (status, _) = http_get(pilot.http, "/debug/config_dump?proxyID=nobody");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_streams_end_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.yaml"), SERVICES).expect("write");
    let pilot = start(dir.path());
    let mut good = Sotw::open(pilot.xds, SIDECAR, LISTENER).await;
    let r = good.recv(Duration::from_secs(5)).await;
    good.ack(&r, None).await;

    for (id, type_url, want) in [
        ("not-an-istio-node", CLUSTER, "malformed"),
        (SIDECAR, "type.googleapis.com/made.up.Type", "made.up.Type"),
    ] {
        let err = match Sotw::try_open(pilot.xds, id, type_url).await {
            Err(status) => status,
            Ok(mut bad) => tokio::time::timeout(Duration::from_secs(5), bad.rx.next())
                .await
                .expect("answer in time")
                .expect("an item")
                .expect_err("the stream is refused"),
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains(want), "{err}");
    }

    // The good stream is still served: a config change reaches it.
    std::fs::write(
        dir.path().join("more.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: mysql}\nspec: {clusterIP: 10.96.0.40, ports: [{name: tcp, port: 3306}]}\n",
    )
    .expect("write");
    let next = good.recv(Duration::from_secs(2)).await;
    assert_eq!(next.type_url, LISTENER);
    let (_, metrics) = http_get(pilot.http, "/metrics");
    assert!(metrics.contains("pilot_xds{version="), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_streams_get_only_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.yaml"), SERVICES).expect("write");
    std::fs::write(dir.path().join("rule.yaml"), RULE_V1).expect("write");
    let pilot = start(dir.path());
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", pilot.xds))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: node(SIDECAR),
        type_url: CLUSTER.into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut recv = async || -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok")
    };
    let first = recv().await;
    let all: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(
        all.contains(&"outbound|9080|v1|reviews.default.svc.cluster.local"),
        "{all:?}"
    );
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");

    std::fs::write(dir.path().join("rule.yaml"), RULE_V1_V2).expect("write");
    let second = recv().await;
    let changed: Vec<&str> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        changed,
        vec!["outbound|9080|v2|reviews.default.svc.cluster.local"]
    );
    assert!(second.removed_resources.is_empty());
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: second.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");

    std::fs::remove_file(dir.path().join("rule.yaml")).expect("rm");
    let third = recv().await;
    let mut removed = third.removed_resources.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.yaml"), SERVICES).expect("write");
    let mut pilot = start(dir.path());
    let mut c = Sotw::open(pilot.xds, SIDECAR, CLUSTER).await;
    let r = c.recv(Duration::from_secs(5)).await;
    c.ack(&r, None).await;

    let pid = pilot.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    // The open stream is ended with UNAVAILABLE, telling the client to go
    // elsewhere, instead of holding the shutdown up forever.
    let err = tokio::time::timeout(Duration::from_secs(5), c.rx.next())
        .await
        .expect("the stream ends in time")
        .expect("an item")
        .expect_err("ended with a status");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(exit) = pilot.child.try_wait().expect("wait") {
            assert!(exit.success(), "{exit}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pilot did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
