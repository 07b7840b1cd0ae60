//! keel-proxy's telemetry: Istio's standard request and TCP metrics under
//! Istio's names and labels (so existing dashboards work), plus Keel's own
//! proxy metrics (protocol detection, xDS updates).
//!
//! [`Metrics::new`] registers every family into a registry passed in, and
//! [`encode`] renders that registry as Prometheus text for
//! `/stats/prometheus`. The data path resolves labels once per connection
//! ([`Metrics::requests`], [`Metrics::tcp`]) and then records with a few
//! atomic operations per request: no label strings are built, hashed or
//! compared per request. This module serves nothing and decides no labels
//! itself; [`labels`] builds them from state.

pub mod labels;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use labels::{
    Peer, PeerLabels, Reporter, RequestLabels, RequestOutcome, RequestProtocol, SecurityPolicy,
    TcpLabels, Workload, flags,
};

/// The `Content-Type` of [`encode`]'s output (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Istio's `istio_request_duration_milliseconds` buckets.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's `istio_request_bytes` / `istio_response_bytes` buckets.
pub const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// `keel_proxy_protocol_detection_seconds` buckets (100 µs to 10 s: detection
/// waits at most the detection timeout for a client's first bytes).
pub const DETECTION_BUCKETS_S: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0,
];

/// Series cached per [`RequestRecorder`]; further outcomes are looked up in
/// their family each time (still correct, just slower).
const MAX_CACHED_OUTCOMES: usize = 16;

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

fn detection_histogram() -> Histogram {
    Histogram::new(DETECTION_BUCKETS_S)
}

/// The outcome of sniffing a connection's first bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DetectionResult {
    /// HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// Anything else: opaque TCP.
    Tcp,
    /// The client sent nothing in time (treated as TCP).
    Timeout,
}

impl DetectionResult {
    const ALL: [Self; 5] = [
        Self::Http1,
        Self::Http2,
        Self::Tls,
        Self::Tcp,
        Self::Timeout,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tls => "tls",
            Self::Tcp => "tcp",
            Self::Timeout => "timeout",
        }
    }
}

/// Labels of `keel_proxy_protocol_detection_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectionLabels {
    result: &'static str,
}

/// Labels of `keel_proxy_xds_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsLabels {
    /// The resource type's short name (`cds`, `eds`, …) or type URL.
    r#type: String,
    /// `ack` or `nack`.
    result: &'static str,
}

/// keel-proxy's metrics. Cloning shares the families.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RequestLabels>,
    request_bytes: HistogramFamily<RequestLabels>,
    response_bytes: HistogramFamily<RequestLabels>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    /// One series per [`DetectionResult`], resolved up front (in `ALL` order).
    detection: [Histogram; 5],
    xds_updates: Family<XdsLabels, Counter>,
}

impl Metrics {
    /// Creates the families and registers them into `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(size_histogram);
        let response_bytes: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(size_histogram);
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let detection_family: HistogramFamily<DetectionLabels> =
            Family::new_with_constructor(detection_histogram);
        let detection = DetectionResult::ALL
            .map(|r| detection_family.get_or_create_owned(&DetectionLabels { result: r.as_str() }));
        let xds_updates = Family::<XdsLabels, Counter>::default();

        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "istio_requests",
            "Requests handled, by source, destination, response code and flags",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            request_duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request sizes in bytes (headers and body)",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response sizes in bytes (headers and body)",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent in the response direction of TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received in the request direction of TCP connections",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "keel_proxy_protocol_detection_seconds",
            "Time to detect a connection's protocol, by result",
            detection_family,
        );
        registry.register(
            "keel_proxy_xds_updates",
            "xDS responses applied (ack) or rejected (nack), by resource type",
            xds_updates.clone(),
        );
        Self {
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            detection,
            xds_updates,
        }
    }

    /// Records one request under `labels` (looks the series up by label
    /// set: for the per-request path, prefer a [`RequestRecorder`]).
    pub fn record_request(
        &self,
        labels: &RequestLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.request_series(labels)
            .record(duration, request_bytes, response_bytes);
    }

    fn request_series(&self, labels: &RequestLabels) -> RequestSeries {
        RequestSeries {
            requests: self.requests.get_or_create_owned(labels),
            duration: self.request_duration.get_or_create_owned(labels),
            request_bytes: self.request_bytes.get_or_create_owned(labels),
            response_bytes: self.response_bytes.get_or_create_owned(labels),
        }
    }

    /// A recorder for requests between `peer`'s source and destination,
    /// to keep for the connection (or the cluster and endpoint) and share
    /// across its requests.
    pub fn requests(&self, peer: impl Into<Peer>) -> RequestRecorder {
        RequestRecorder(Arc::new(RecorderInner {
            peer: peer.into(),
            metrics: self.clone(),
            cache: ArcSwap::from_pointee(Vec::new()),
        }))
    }

    /// Counts a TCP connection opened (`flags`: usually [`flags::NONE`]) and
    /// returns the recorder of its bytes; dropping it counts the close.
    pub fn tcp(&self, peer: impl Into<Peer>, flags: &'static str) -> TcpRecorder {
        let labels = TcpLabels::new(peer.into(), flags);
        self.tcp_opened.get_or_create(&labels).inc();
        TcpRecorder {
            sent: self.tcp_sent.get_or_create_owned(&labels),
            received: self.tcp_received.get_or_create_owned(&labels),
            close_flags: flags,
            labels,
            closed: self.tcp_closed.clone(),
        }
    }

    /// Records how long detecting a connection's protocol took.
    pub fn record_protocol_detection(&self, result: DetectionResult, elapsed: Duration) {
        // `ALL` lists the variants in declaration order.
        self.detection[result as usize].observe(elapsed.as_secs_f64());
    }

    /// Counts an xDS response of `type_name` (`cds`, `eds`, … or the type
    /// URL) acked or nacked.
    pub fn record_xds_update(&self, type_name: &str, ack: bool) {
        let labels = XdsLabels {
            r#type: type_name.to_string(),
            result: if ack { "ack" } else { "nack" },
        };
        self.xds_updates.get_or_create(&labels).inc();
    }
}

/// The four series of one request label set.
#[derive(Clone, Debug)]
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestSeries {
    fn record(&self, duration: Duration, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(duration.as_secs_f64() * 1000.0);
        // Precision loss above 2^53 bytes is irrelevant for bucketing.
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

/// Records requests of one source/destination pair. Each distinct
/// [`RequestOutcome`] is looked up in the families once, then served from a
/// small lock-free cache: a request costs a cache scan, one counter
/// increment and three histogram observations. Clones share the cache.
#[derive(Clone, Debug)]
pub struct RequestRecorder(Arc<RecorderInner>);

/// What a [`RequestRecorder`] shares between its clones (one reference
/// count per clone, not one per metric family).
#[derive(Debug)]
struct RecorderInner {
    peer: Peer,
    metrics: Metrics,
    cache: ArcSwap<Vec<(RequestOutcome, RequestSeries)>>,
}

impl RequestRecorder {
    /// Records one request: its outcome, its duration (first byte in to
    /// last byte out) and its request and response sizes in bytes.
    pub fn record(
        &self,
        outcome: RequestOutcome,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        {
            let cache = self.0.cache.load();
            if let Some((_, series)) = cache.iter().find(|(o, _)| *o == outcome) {
                series.record(duration, request_bytes, response_bytes);
                return;
            }
        }
        let series = self.0.metrics.request_series(&RequestLabels {
            peer: self.0.peer.clone(),
            outcome,
        });
        series.record(duration, request_bytes, response_bytes);
        if self.0.cache.load().len() < MAX_CACHED_OUTCOMES {
            self.0.cache.rcu(|cached| {
                let mut next = Vec::clone(cached);
                if !next.iter().any(|(o, _)| *o == outcome) {
                    next.push((outcome, series.clone()));
                }
                next
            });
        }
    }

    /// The labels requests are recorded under.
    pub fn peer(&self) -> &PeerLabels {
        &self.0.peer.0
    }
}

/// Records one TCP connection: bytes with an atomic add each, the close
/// when dropped.
#[derive(Debug)]
pub struct TcpRecorder {
    sent: Counter,
    received: Counter,
    labels: TcpLabels,
    close_flags: &'static str,
    closed: Family<TcpLabels, Counter>,
}

impl TcpRecorder {
    /// Counts bytes sent towards the client (the response direction).
    pub fn sent(&self, bytes: u64) {
        self.sent.inc_by(bytes);
    }

    /// Counts bytes received from the client (the request direction).
    pub fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    /// Sets the flags the close is counted under (e.g. `UF` when the
    /// upstream connection failed).
    pub fn set_close_flags(&mut self, flags: &'static str) {
        self.close_flags = flags;
    }
}

impl Drop for TcpRecorder {
    fn drop(&mut self) {
        let mut labels = self.labels.clone();
        labels.response_flags = self.close_flags;
        self.closed.get_or_create(&labels).inc();
    }
}

/// Renders `registry` in the Prometheus text format (0.0.4, what Envoy's
/// `/stats/prometheus` serves; see [`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}
