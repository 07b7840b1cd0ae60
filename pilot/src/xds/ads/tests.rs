//! End-to-end tests of the ADS server over a real loopback gRPC connection,
//! against a fake generator whose snapshot lists resources by type.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use keel_proto::envoy::config::cluster::v3::Cluster;
use keel_proto::envoy::config::core::v3::{Locality, Node};
use keel_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use keel_proto::envoy::config::listener::v3::Listener;
use keel_proto::envoy::config::route::v3::RouteConfiguration;
use keel_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use keel_proto::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::*;
use crate::xds::Resource;

const NODE: &str = "sidecar~10.0.0.1~app-1.default~default.svc.cluster.local";
const NODE2: &str = "sidecar~10.0.0.2~app-2.default~default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(300);

/// type URL → (name, payload).
type Snap = BTreeMap<String, Vec<(String, String)>>;

struct Fake;

impl Generator for Fake {
    type Snapshot = Snap;

    fn generate(
        &self,
        snapshot: &Snap,
        _node: &NodeInfo,
        type_url: &str,
        _names: Option<&BTreeSet<String>>,
    ) -> Resources {
        snapshot
            .get(type_url)
            .into_iter()
            .flatten()
            .map(|(name, payload)| (name.clone(), resource(type_url, name, payload)))
            .collect()
    }
}

fn resource(type_url: &str, name: &str, payload: &str) -> Resource {
    match type_url {
        LISTENER => Resource::new(
            name,
            &Listener {
                name: name.into(),
                stat_prefix: payload.into(),
                ..Default::default()
            },
        ),
        ROUTE => Resource::new(
            name,
            &RouteConfiguration {
                name: name.into(),
                internal_only_headers: vec![payload.into()],
                ..Default::default()
            },
        ),
        ENDPOINT => Resource::new(
            name,
            &ClusterLoadAssignment {
                cluster_name: name.into(),
                endpoints: vec![LocalityLbEndpoints {
                    locality: Some(Locality {
                        zone: payload.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        _ => Resource::new(
            name,
            &Cluster {
                name: name.into(),
                alt_stat_name: payload.into(),
                ..Default::default()
            },
        ),
    }
}

fn snap(entries: &[(&str, &[(&str, &str)])]) -> Arc<Snap> {
    Arc::new(
        entries
            .iter()
            .map(|(t, rs)| {
                let rs = rs
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .collect();
                (t.to_string(), rs)
            })
            .collect(),
    )
}

struct Harness {
    snapshots: watch::Sender<Arc<Snap>>,
    server: AdsServer<Fake>,
    metrics: Arc<Metrics>,
    client: AggregatedDiscoveryServiceClient<Channel>,
}

async fn start(initial: Arc<Snap>) -> Harness {
    let (snapshots, rx) = watch::channel(initial);
    let metrics = Arc::new(Metrics::new());
    let server = AdsServer::new(Arc::new(Fake), rx, Arc::clone(&metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = server.clone().into_service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Harness {
        snapshots,
        server,
        metrics,
        client,
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

fn req(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn sotw(
    h: &mut Harness,
    mut first: DiscoveryRequest,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    if first.node.is_none() {
        first.node = node(NODE);
    }
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let stream = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

async fn delta(
    h: &mut Harness,
    first: DeltaDiscoveryRequest,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: node(NODE),
        ..first
    })
    .await
    .unwrap();
    let stream = h
        .client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

async fn recv<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("no error status")
        .expect("stream still open")
}

async fn recv_err<T: std::fmt::Debug>(stream: &mut Streaming<T>) -> tonic::Status {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a status in time")
        .expect_err("the stream ends with an error")
}

async fn quiet<T: std::fmt::Debug>(stream: &mut Streaming<T>) {
    if let Ok(msg) = tokio::time::timeout(QUIET, stream.message()).await {
        panic!("expected no response, got {msg:?}");
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|any| {
            keel_proto::any::unpack::<Cluster>(any)
                .map(|c| c.name)
                .or_else(|_| keel_proto::any::unpack::<RouteConfiguration>(any).map(|r| r.name))
                .unwrap()
        })
        .collect()
}

fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

fn cds_status(h: &Harness) -> TypeStatus {
    h.server.clients()[0].types["cds"].clone()
}

async fn with_timeout<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test finished in time")
}

#[tokio::test]
async fn sotw_wildcard_cds_gets_all_clusters() {
    with_timeout(async {
        let mut h = start(snap(&[(CLUSTER, &[("a", "1"), ("b", "1")])])).await;
        let (_tx, mut rx) = sotw(&mut h, req(CLUSTER, &[], "")).await;
        let resp = recv(&mut rx).await;
        assert_eq!(resp.type_url, CLUSTER);
        assert_eq!(names(&resp), ["a", "b"]);
        assert!(!resp.nonce.is_empty() && !resp.version_info.is_empty());
        assert_eq!(h.metrics.pushes.get(&["cds"]), 1);
        assert_eq!(h.metrics.xds_clients.get(), 1);
        let clients = h.server.clients();
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].connection_id, format!("{NODE}-1"));
        assert!(clients[0].types["cds"].wildcard);
        assert_eq!(
            h.server.node(NODE).map(|n| n.pod_name),
            Some("app-1".into())
        );
    })
    .await;
}

#[tokio::test]
async fn sotw_ack_then_config_change_pushes_new_version_and_unchanged_config_does_not() {
    with_timeout(async {
        let mut h = start(snap(&[(CLUSTER, &[("a", "1")])])).await;
        let (tx, mut rx) = sotw(&mut h, req(CLUSTER, &[], "")).await;
        let first = recv(&mut rx).await;
        let mut ack = req(CLUSTER, &[], &first.nonce);
        ack.version_info = first.version_info.clone();
        tx.send(ack).await.unwrap();
        eventually("the ACK", || cds_status(&h).acked_nonce == first.nonce).await;
        assert_eq!(cds_status(&h).acked_version, first.version_info);

        // Same content in a new snapshot: nothing to push.
        h.snapshots.send(snap(&[(CLUSTER, &[("a", "1")])])).unwrap();
        quiet(&mut rx).await;
        assert_eq!(h.metrics.pushes.get(&["cds"]), 1);

        h.snapshots
            .send(snap(&[(CLUSTER, &[("a", "2"), ("b", "1")])]))
            .unwrap();
        let second = recv(&mut rx).await;
        assert_eq!(names(&second), ["a", "b"]);
        assert_ne!(second.version_info, first.version_info);
        assert_ne!(second.nonce, first.nonce);
        assert_eq!(h.metrics.convergence.count(), 1);

        // Removing a cluster: SotW omits it.
        h.snapshots.send(snap(&[(CLUSTER, &[("b", "1")])])).unwrap();
        assert_eq!(names(&recv(&mut rx).await), ["b"]);
    })
    .await;
}

#[tokio::test]
async fn sotw_nack_is_counted_recorded_and_not_resent() {
    with_timeout(async {
        let mut h = start(snap(&[(CLUSTER, &[("a", "1")])])).await;
        let (tx, mut rx) = sotw(&mut h, req(CLUSTER, &[], "")).await;
        let first = recv(&mut rx).await;
        let mut nack = req(CLUSTER, &[], &first.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "cluster a: bad lb policy".into(),
            details: vec![],
        });
        tx.send(nack).await.unwrap();
        eventually("the NACK", || cds_status(&h).last_nack.is_some()).await;
        let status = cds_status(&h);
        assert_eq!(
            status.last_nack.as_deref(),
            Some("cluster a: bad lb policy")
        );
        assert_eq!(status.acked_version, "");
        assert_eq!(status.sent_version, first.version_info);
        assert_eq!(h.metrics.rejects.get(&["cds"]), 1);
        quiet(&mut rx).await;

        // A new snapshot with the same content still does not resend it.
        h.snapshots.send(snap(&[(CLUSTER, &[("a", "1")])])).unwrap();
        quiet(&mut rx).await;
        assert_eq!(h.metrics.pushes.get(&["cds"]), 1);
    })
    .await;
}

#[tokio::test]
async fn sotw_named_rds_gets_only_those_names_and_resubscribe_responds() {
    with_timeout(async {
        let routes: &[(&str, &str)] = &[("r1", "x"), ("r2", "x"), ("r3", "x")];
        let mut h = start(snap(&[(ROUTE, routes)])).await;
        let (tx, mut rx) = sotw(&mut h, req(ROUTE, &["r1", "r3", "missing"], "")).await;
        let first = recv(&mut rx).await;
        assert_eq!(names(&first), ["r1", "r3"]);

        // An ACK that changes the subscription is answered at once.
        tx.send(req(ROUTE, &["r2"], &first.nonce)).await.unwrap();
        let second = recv(&mut rx).await;
        assert_eq!(names(&second), ["r2"]);

        // A stale nonce is ignored, even with new names.
        tx.send(req(ROUTE, &["r1"], &first.nonce)).await.unwrap();
        quiet(&mut rx).await;

        // An empty RDS subscription means nothing, not everything.
        tx.send(req(ROUTE, &[], &second.nonce)).await.unwrap();
        assert!(recv(&mut rx).await.resources.is_empty());
    })
    .await;
}

#[tokio::test]
async fn delta_subscribe_change_and_removal() {
    with_timeout(async {
        let mut h = start(snap(&[(CLUSTER, &[("a", "1"), ("b", "1")])])).await;
        let first = DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            ..Default::default()
        };
        let (tx, mut rx) = delta(&mut h, first).await;
        let r1 = recv(&mut rx).await;
        assert_eq!(delta_names(&r1), ["a", "b"]);
        assert!(r1.removed_resources.is_empty());
        assert_eq!(r1.resources[0].version, resource(CLUSTER, "a", "1").version);
        let ack = |nonce: &str| DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(ack(&r1.nonce)).await.unwrap();

        h.snapshots
            .send(snap(&[(CLUSTER, &[("a", "1"), ("b", "2")])]))
            .unwrap();
        let r2 = recv(&mut rx).await;
        assert_eq!(delta_names(&r2), ["b"]);
        assert!(r2.removed_resources.is_empty());
        tx.send(ack(&r2.nonce)).await.unwrap();

        h.snapshots.send(snap(&[(CLUSTER, &[("b", "2")])])).unwrap();
        let r3 = recv(&mut rx).await;
        assert!(r3.resources.is_empty());
        assert_eq!(r3.removed_resources, ["a"]);
        tx.send(ack(&r3.nonce)).await.unwrap();
        eventually("the ACK", || cds_status(&h).acked_nonce == r3.nonce).await;
        assert!(h.server.clients()[0].delta);

        // Unchanged content: nothing.
        h.snapshots.send(snap(&[(CLUSTER, &[("b", "2")])])).unwrap();
        quiet(&mut rx).await;
    })
    .await;
}

#[tokio::test]
async fn delta_initial_resource_versions_suppress_resend() {
    with_timeout(async {
        let mut h = start(snap(&[(ENDPOINT, &[("e1", "z1"), ("e2", "z1")])])).await;
        let first = DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names_subscribe: vec!["e1".into(), "e2".into(), "gone".into()],
            initial_resource_versions: HashMap::from([
                ("e1".to_string(), resource(ENDPOINT, "e1", "z1").version),
                ("e2".to_string(), "stale".to_string()),
            ]),
            ..Default::default()
        };
        let (tx, mut rx) = delta(&mut h, first).await;
        let r1 = recv(&mut rx).await;
        assert_eq!(delta_names(&r1), ["e2"]);
        assert_eq!(r1.removed_resources, ["gone"]);

        // Re-subscribing to a held name resends it (the client may have dropped it).
        tx.send(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            response_nonce: r1.nonce.clone(),
            resource_names_subscribe: vec!["e1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(delta_names(&recv(&mut rx).await), ["e1"]);
    })
    .await;
}

#[tokio::test]
async fn malformed_node_ends_only_that_stream() {
    with_timeout(async {
        let mut h = start(snap(&[(CLUSTER, &[("a", "1")])])).await;
        let (_good_tx, mut good) = sotw(&mut h, req(CLUSTER, &[], "")).await;
        recv(&mut good).await;

        let mut bad = req(CLUSTER, &[], "");
        bad.node = node("not-an-istio-id");
        let (_bad_tx, mut bad) = sotw(&mut h, bad).await;
        let status = recv_err(&mut bad).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("malformed"),
            "{}",
            status.message()
        );
        assert_eq!(h.metrics.stream_errors.get(&["bad_node"]), 1);

        h.snapshots.send(snap(&[(CLUSTER, &[("a", "2")])])).unwrap();
        assert_eq!(names(&recv(&mut good).await), ["a"]);
        assert_eq!(h.server.clients().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn unknown_type_url_ends_the_stream_with_invalid_argument() {
    with_timeout(async {
        let mut h = start(snap(&[])).await;
        let secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
        let (_tx, mut rx) = sotw(&mut h, req(secret, &[], "")).await;
        let status = recv_err(&mut rx).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(secret), "{}", status.message());
        assert!(status.message().contains(CLUSTER), "{}", status.message());
        eventually("the client to deregister", || h.server.clients().is_empty()).await;
        assert_eq!(h.metrics.xds_clients.get(), 0);
    })
    .await;
}

#[tokio::test]
async fn too_many_names_is_resource_exhausted() {
    with_timeout(async {
        let mut h = start(snap(&[])).await;
        let (tx, rx) = mpsc::channel(1);
        let many: Vec<String> = (0..=MAX_SUBSCRIBED_NAMES).map(|i| i.to_string()).collect();
        tx.send(DeltaDiscoveryRequest {
            node: node(NODE2),
            type_url: ENDPOINT.into(),
            resource_names_subscribe: many,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut stream = h
            .client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let status = recv_err(&mut stream).await;
        assert_eq!(status.code(), Code::ResourceExhausted);
    })
    .await;
}
