//! Tests of the metrics module: what a scrape of `/stats/prometheus` shows
//! after the data path records requests and connections, and (when the
//! `prometheus` binary is installed) what a real Prometheus scrapes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use prometheus_client::registry::Registry;

use super::*;
use crate::state::cluster::{
    CircuitBreakers, Cluster, Discovery, IstioClusterMeta, LbPolicy, ServiceRef, UpstreamProtocol,
};
use crate::state::endpoint::{Endpoint, EndpointAddress, Health, WorkloadMeta};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn productpage() -> Workload {
    Workload::from_labels(
        "productpage-v1",
        "bookinfo",
        Some("bookinfo-productpage"),
        "cluster.local",
        &labels(&[("app", "productpage"), ("version", "v1")]),
    )
}

fn reviews_cluster() -> Cluster {
    Cluster {
        name: "outbound|9080||reviews.bookinfo.svc.cluster.local".into(),
        discovery: Discovery::Eds {
            service_name: "outbound|9080||reviews.bookinfo.svc.cluster.local".into(),
        },
        lb: LbPolicy::RoundRobin,
        connect_timeout: Duration::from_secs(10),
        circuit_breakers: CircuitBreakers::default(),
        outlier_detection: None,
        protocol: UpstreamProtocol::Http1,
        idle_timeout: None,
        max_requests_per_connection: 0,
        healthy_panic_threshold_percent: 50.0,
        istio: Some(IstioClusterMeta {
            services: vec![ServiceRef {
                host: "reviews.bookinfo.svc.cluster.local".into(),
                name: "reviews".into(),
                namespace: "bookinfo".into(),
            }],
            default_original_port: Some(9080),
        }),
    }
}

fn reviews_v2() -> Endpoint {
    Endpoint {
        address: EndpointAddress::Socket("10.0.0.7:9080".parse().expect("addr")),
        weight: 1,
        health: Health::Healthy,
        labels: labels(&[("app", "reviews"), ("version", "v2")]),
        workload: Some(WorkloadMeta {
            workload: "reviews-v2".into(),
            service_account: "bookinfo-reviews".into(),
        }),
    }
}

/// Every sample line of family `name` (exact metric name before `{`),
/// as (labels, value).
fn samples(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let body = rest.strip_suffix('}')?;
            let mut map = HashMap::new();
            // Label values in these tests contain no `",` sequences.
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            Some((map, value.parse().ok()?))
        })
        .collect()
}

/// The one sample of `name` whose labels include all of `want`.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> (HashMap<String, String>, f64) {
    let found: Vec<_> = samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} sample with {want:?} in:\n{text}"
    );
    found.into_iter().next().expect("one sample")
}

fn scrape(registry: &Registry) -> String {
    encode(registry).expect("encodes")
}

#[test]
fn requests_total_counts_each_request_with_istio_labels() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let peer = PeerLabels::outbound(&productpage(), &reviews_cluster(), Some(&reviews_v2()));
    let recorder = metrics.requests(peer);
    for _ in 0..7 {
        recorder.record(
            RequestOutcome::http(200),
            Duration::from_millis(3),
            120,
            900,
        );
    }
    recorder.clone().record(
        RequestOutcome::http(503).with_flags(flags::UPSTREAM_CONNECTION_FAILURE),
        Duration::from_millis(1),
        120,
        0,
    );
    // The uncached path lands in the same series.
    let labels = RequestLabels {
        peer: recorder.peer().clone().shared(),
        outcome: RequestOutcome::http(200),
    };
    metrics.record_request(&labels, Duration::from_millis(2), 1, 1);

    let text = scrape(&registry);
    let (l, n) = sample(&text, "istio_requests_total", &[("response_code", "200")]);
    assert_eq!(n, 8.0);
    let expected = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "bookinfo"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
        ),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("destination_workload", "reviews-v2"),
        ("destination_workload_namespace", "bookinfo"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
        ),
        ("destination_app", "reviews"),
        ("destination_version", "v2"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v2"),
        ("destination_service", "reviews.bookinfo.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "bookinfo"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ];
    let want: HashMap<String, String> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(l, want);

    let (_, failed) = sample(
        &text,
        "istio_requests_total",
        &[
            ("response_code", "503"),
            ("response_flags", "connect_failure"),
        ],
    );
    assert_eq!(failed, 1.0);
    assert_eq!(samples(&text, "istio_requests_total").len(), 2, "{text}");
}

#[test]
fn duration_and_size_histograms_use_istio_buckets() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let recorder = metrics.requests(PeerLabels::outbound(
        &productpage(),
        &reviews_cluster(),
        None,
    ));
    recorder.record(
        RequestOutcome::grpc(200, 0),
        Duration::from_millis(7),
        50,
        5_000,
    );

    let text = scrape(&registry);
    let bucket =
        |name: &str, le: &str| sample(&text, name, &[("le", le), ("request_protocol", "grpc")]).1;
    let d = "istio_request_duration_milliseconds_bucket";
    assert_eq!(bucket(d, "5"), 0.0);
    assert_eq!(bucket(d, "10"), 1.0);
    assert_eq!(bucket(d, "+Inf"), 1.0);
    assert_eq!(samples(&text, d).len(), DURATION_BUCKETS_MS.len() + 1);
    let (_, sum) = sample(&text, "istio_request_duration_milliseconds_sum", &[]);
    assert!((sum - 7.0).abs() < 1e-9, "sum {sum}");
    assert_eq!(bucket("istio_request_bytes_bucket", "10"), 0.0);
    assert_eq!(bucket("istio_request_bytes_bucket", "100"), 1.0);
    assert_eq!(bucket("istio_response_bytes_bucket", "1000"), 0.0);
    assert_eq!(bucket("istio_response_bytes_bucket", "10000"), 1.0);
    assert_eq!(
        samples(&text, "istio_response_bytes_bucket").len(),
        SIZE_BUCKETS.len() + 1
    );
    // No endpoint picked: the destination workload is unknown, the service is not.
    let (l, _) = sample(&text, "istio_request_duration_milliseconds_count", &[]);
    assert_eq!(l["destination_workload"], "unknown");
    assert_eq!(l["destination_workload_namespace"], "bookinfo");
    assert_eq!(l["destination_service_name"], "reviews");
    assert_eq!(l["grpc_response_status"], "0");
}

#[test]
fn tcp_counters_count_bytes_and_connections() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let own = Workload::from_labels(
        "mysql-v1",
        "db",
        Some("mysql"),
        "cluster.local",
        &labels(&[("app", "mysql")]),
    );
    let client = Workload::from_principal("spiffe://cluster.local/ns/bookinfo/sa/ratings");
    let mysql = ServiceRef {
        host: "mysql.db.svc.cluster.local".into(),
        name: "mysql".into(),
        namespace: "db".into(),
    };
    let peer = PeerLabels::inbound(&own, &client, Some(&mysql), SecurityPolicy::MutualTls).shared();
    for _ in 0..2 {
        let conn = metrics.tcp(peer.clone(), flags::NONE);
        conn.received(100);
        conn.sent(1_000);
        conn.sent(500);
    }
    let mut failed = metrics.tcp(peer, flags::NONE);
    failed.set_close_flags(flags::UPSTREAM_CONNECTION_FAILURE);
    drop(failed);

    let text = scrape(&registry);
    let (l, received) = sample(&text, "istio_tcp_received_bytes_total", &[]);
    assert_eq!(received, 200.0);
    assert_eq!(l["reporter"], "destination");
    assert_eq!(l["request_protocol"], "tcp");
    assert_eq!(l["response_flags"], "-");
    assert_eq!(l["connection_security_policy"], "mutual_tls");
    assert_eq!(l["source_workload"], "unknown");
    assert_eq!(l["source_workload_namespace"], "bookinfo");
    assert_eq!(
        l["source_principal"],
        "spiffe://cluster.local/ns/bookinfo/sa/ratings"
    );
    assert_eq!(l["destination_workload"], "mysql-v1");
    assert_eq!(l["destination_version"], "unknown");
    assert_eq!(l["destination_canonical_revision"], "latest");
    assert_eq!(l["destination_service"], "mysql.db.svc.cluster.local");
    assert!(!l.contains_key("response_code"));
    assert!(!l.contains_key("grpc_response_status"));
    assert_eq!(sample(&text, "istio_tcp_sent_bytes_total", &[]).1, 3_000.0);
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &[]).1,
        3.0
    );
    let closed = |f| {
        sample(
            &text,
            "istio_tcp_connections_closed_total",
            &[("response_flags", f)],
        )
        .1
    };
    assert_eq!(closed("-"), 2.0);
    assert_eq!(closed("connect_failure"), 1.0);
}

#[test]
fn keel_proxy_metrics_render_under_their_names() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.record_protocol_detection(DetectionResult::Http2, Duration::from_micros(300));
    metrics.record_protocol_detection(DetectionResult::Timeout, Duration::from_secs(2));
    metrics.record_xds_update("cds", true);
    metrics.record_xds_update("cds", true);
    metrics.record_xds_update("eds", false);

    // Families render once they have a series.
    let peer = PeerLabels::outbound(&productpage(), &reviews_cluster(), None);
    metrics
        .requests(peer.clone())
        .record(RequestOutcome::http(200), Duration::ZERO, 0, 0);
    drop(metrics.tcp(peer, flags::NONE));

    let text = scrape(&registry);
    let det = "keel_proxy_protocol_detection_seconds_count";
    assert_eq!(sample(&text, det, &[("result", "http2")]).1, 1.0);
    assert_eq!(sample(&text, det, &[("result", "timeout")]).1, 1.0);
    assert_eq!(sample(&text, det, &[("result", "tls")]).1, 0.0);
    let b = "keel_proxy_protocol_detection_seconds_bucket";
    assert_eq!(
        sample(&text, b, &[("result", "http2"), ("le", "0.0001")]).1,
        0.0
    );
    assert_eq!(
        sample(&text, b, &[("result", "http2"), ("le", "0.0005")]).1,
        1.0
    );
    let xds = "keel_proxy_xds_updates_total";
    assert_eq!(
        sample(&text, xds, &[("type", "cds"), ("result", "ack")]).1,
        2.0
    );
    assert_eq!(
        sample(&text, xds, &[("type", "eds"), ("result", "nack")]).1,
        1.0
    );
    for name in [
        "# TYPE istio_requests_total counter",
        "# TYPE istio_request_duration_milliseconds histogram",
        "# TYPE istio_request_bytes histogram",
        "# TYPE istio_response_bytes histogram",
        "# TYPE istio_tcp_sent_bytes_total counter",
        "# TYPE istio_tcp_received_bytes_total counter",
        "# TYPE istio_tcp_connections_opened_total counter",
        "# TYPE istio_tcp_connections_closed_total counter",
        "# TYPE keel_proxy_protocol_detection_seconds histogram",
        "# TYPE keel_proxy_xds_updates_total counter",
    ] {
        assert!(text.contains(name), "{name} missing in:\n{text}");
    }
}

#[test]
fn workload_labels_follow_istio_precedence() {
    let w = Workload::from_labels(
        "reviews-v3",
        "bookinfo",
        None,
        "cluster.local",
        &labels(&[
            ("app.kubernetes.io/name", "reviews"),
            ("service.istio.io/canonical-revision", "3"),
        ]),
    );
    assert_eq!(&*w.app, "reviews");
    assert_eq!(&*w.version, "unknown");
    assert_eq!(&*w.canonical_service, "reviews");
    assert_eq!(&*w.canonical_revision, "3");
    assert_eq!(&*w.principal, "unknown");

    let odd = Workload::from_principal("not-spiffe");
    assert_eq!(&*odd.namespace, "unknown");
    assert_eq!(&*odd.principal, "not-spiffe");

    // No istio metadata: the service is the cluster name's host.
    let mut c = reviews_cluster();
    c.istio = None;
    let p = PeerLabels::outbound(&productpage(), &c, None);
    assert_eq!(
        &*p.destination_service,
        "reviews.bookinfo.svc.cluster.local"
    );
    assert_eq!(&*p.destination_service_name, "unknown");
}

/// Kills and reaps the Prometheus this test started.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes the encoded text over HTTP and answers a query
/// with the recorded value and labels. Needs the `prometheus` binary
/// (`$PROMETHEUS`, else on `PATH`; Debian: `apt-get install prometheus`,
/// which `.ci/run` installs): under CI a missing binary fails the test, on a
/// developer's machine it is skipped with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_istio_requests_total() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    if Command::new(&bin).arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{bin} is not installed: CI must install Debian's prometheus (.ci/run does)"
        );
        eprintln!("skipping: {bin} not installed (apt-get install prometheus)");
        return;
    }
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let recorder = metrics.requests(PeerLabels::outbound(
        &productpage(),
        &reviews_cluster(),
        Some(&reviews_v2()),
    ));
    for _ in 0..5 {
        recorder.record(RequestOutcome::http(200), Duration::from_millis(7), 10, 10);
    }

    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/stats/prometheus",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let body = encode(&registry).expect("encodes");
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keel-proxy\n    \
             metrics_path: /stats/prometheus\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write config");
    let mut child = Child(
        Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads Prometheus's log until it says where it listens, then drains it.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("msg=\"Listening on\"") {
                let addr = line.rsplit("address=").next().unwrap_or_default().trim();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.to_string());
                }
            }
        }
    });
    let addr: std::net::SocketAddr = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("prometheus logs its listen address")
    })
    .await
    .expect("join")
    .parse()
    .expect("a socket address");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let result = loop {
        let answer = tokio::task::spawn_blocking(move || {
            keel_e2e::http_get(addr, "/api/v1/query?query=istio_requests_total")
        })
        .await
        .expect("join");
        if let Ok((200, body)) = &answer {
            let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if !result.is_empty() {
                break result;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus never scraped istio_requests_total: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(result.len(), 1, "{result:?}");
    let m = &result[0]["metric"];
    assert_eq!(m["__name__"], "istio_requests_total");
    assert_eq!(m["job"], "keel-proxy");
    assert_eq!(m["response_code"], "200");
    assert_eq!(m["reporter"], "source");
    assert_eq!(m["source_workload"], "productpage-v1");
    assert_eq!(m["destination_workload"], "reviews-v2");
    assert_eq!(
        m["destination_service"],
        "reviews.bookinfo.svc.cluster.local"
    );
    assert_eq!(result[0]["value"][1], "5");

    // The histogram is queryable as Istio's dashboards query it.
    let q =
        "/api/v1/query?query=sum(istio_request_duration_milliseconds_bucket%7Ble%3D%2210%22%7D)";
    let (status, body) = tokio::task::spawn_blocking(move || keel_e2e::http_get(addr, q))
        .await
        .expect("join")
        .expect("query");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["data"]["result"][0]["value"][1], "5", "{body}");
    drop(child);
}
