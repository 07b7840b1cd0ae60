//! The Aggregated Discovery Service (ADS) server: one gRPC stream per client,
//! carrying LDS, RDS, CDS and EDS in both the state-of-the-world ([`sotw`])
//! and incremental ([`delta`]) variants of the xDS v3 protocol.
//!
//! This module owns the per-stream protocol state (subscriptions, nonces,
//! ACK/NACK bookkeeping), the fan-out of config snapshots to every stream, the
//! connection registry behind `/debug/syncz`, and the xDS metrics. It does not
//! know what a resource contains: it is generic over a [`Generator`], and
//! diffs purely by the resource versions the generator computes. A malformed
//! or hostile request ends only its own stream, with a gRPC status saying why.

mod delta;
mod sotw;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, short_name};
use keel_proto::envoy::config::core::v3::Node;
use keel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use keel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::node::{ClientFlavor, NodeError, ProxyType};
use super::{Generator, NodeInfo, Resources, content_version};
use crate::metrics::Metrics;

/// The most resource names one stream may subscribe to for one type.
pub const MAX_SUBSCRIBED_NAMES: usize = 100_000;

/// How many responses may wait for a slow client before a stream stops
/// reading its requests.
const OUTBOUND_CAPACITY: usize = 16;

/// The longest NACK message kept for `/debug/syncz` and logs.
const MAX_NACK_MESSAGE: usize = 2048;

/// The ADS gRPC service. Cheap to clone: every clone shares one registry.
pub struct AdsServer<G: Generator> {
    shared: Arc<Shared<G>>,
}

impl<G: Generator> Clone for AdsServer<G> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// One connected stream, as shown on `/debug/syncz`.
#[derive(serde::Serialize, Clone, Debug)]
pub struct ClientStatus {
    /// `NODE_ID-COUNTER`, unique for the life of the server.
    pub connection_id: String,
    /// The node id the client sent.
    pub node_id: String,
    /// Sidecar or router.
    pub proxy_type: ProxyType,
    /// Envoy-style proxy or proxyless gRPC.
    pub flavor: ClientFlavor,
    /// When the stream was accepted, in seconds since the Unix epoch.
    pub connected_at: u64,
    /// Whether the stream speaks incremental (delta) xDS.
    pub delta: bool,
    /// The config generation the stream last computed a push for.
    pub config_generation: u64,
    /// Per resource type, keyed by short name (`lds`, `rds`, `cds`, `eds`).
    pub types: BTreeMap<String, TypeStatus>,
}

/// One resource type on one stream.
#[derive(serde::Serialize, Clone, Debug, Default, PartialEq)]
pub struct TypeStatus {
    /// Whether the client subscribed to every resource of the type.
    pub wildcard: bool,
    /// The names the client subscribed to (besides the wildcard), sorted.
    pub subscribed: Vec<String>,
    /// The version of the last response sent (for delta: of every resource
    /// the client holds after it).
    pub sent_version: String,
    /// The nonce of the last response sent.
    pub sent_nonce: String,
    /// The version the client last accepted (empty until the first ACK).
    pub acked_version: String,
    /// The nonce the client last accepted.
    pub acked_nonce: String,
    /// The client's message for its most recent NACK, kept after later ACKs
    /// (compare `acked_version` with `sent_version` to see the current state).
    pub last_nack: Option<String>,
    /// How many resources of the type the client holds from the last response.
    pub resources_sent: usize,
}

impl<G: Generator> AdsServer<G> {
    /// Creates a server that pushes every snapshot published on `snapshots`
    /// to every connected stream.
    pub fn new(
        generator: Arc<G>,
        snapshots: watch::Receiver<Arc<G::Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let first = Generation {
            snapshot: Arc::clone(&snapshots.borrow()),
            number: 1,
            since: Instant::now(),
        };
        let (gen_tx, gen_rx) = watch::channel(Arc::new(first));
        Self {
            shared: Arc::new(Shared {
                generator,
                metrics,
                generations: gen_rx,
                watcher: Mutex::new(Some((snapshots, gen_tx))),
                clients: Mutex::new(BTreeMap::new()),
                next_connection: AtomicU64::new(1),
                next_nonce: AtomicU64::new(1),
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    /// Ends every stream with UNAVAILABLE ("pilot is shutting down"), so
    /// clients reconnect elsewhere and a graceful server shutdown is not held
    /// up by streams that never end by themselves. New streams are refused.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Every connected stream, oldest first.
    pub fn clients(&self) -> Vec<ClientStatus> {
        lock(&self.shared.clients)
            .values()
            .map(|c| lock(&c.status).clone())
            .collect()
    }

    /// The identity of the most recently connected stream with node id `proxy_id`.
    pub fn node(&self, proxy_id: &str) -> Option<NodeInfo> {
        lock(&self.shared.clients)
            .values()
            .rev()
            .find(|c| c.node.id == proxy_id)
            .map(|c| (*c.node).clone())
    }
}

#[tonic::async_trait]
impl<G: Generator> AggregatedDiscoveryService for AdsServer<G> {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.shared.start_watcher();
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        tokio::spawn(sotw::run(
            Arc::clone(&self.shared),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.shared.start_watcher();
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        tokio::spawn(delta::run(
            Arc::clone(&self.shared),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One config snapshot as the streams see it: numbered, with the instant it
/// became current (the start of the convergence-time measurement).
struct Generation<S> {
    snapshot: Arc<S>,
    number: u64,
    since: Instant,
}

/// What every stream of one server shares.
struct Shared<G: Generator> {
    generator: Arc<G>,
    metrics: Arc<Metrics>,
    /// Cloned by each stream to learn of new snapshots.
    generations: watch::Receiver<Arc<Generation<G::Snapshot>>>,
    /// The snapshot source and the generation sender, until the first stream
    /// starts the task that numbers snapshots (so `new` needs no runtime).
    #[allow(clippy::type_complexity)]
    watcher: Mutex<
        Option<(
            watch::Receiver<Arc<G::Snapshot>>,
            watch::Sender<Arc<Generation<G::Snapshot>>>,
        )>,
    >,
    /// Connected streams by connection counter.
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
    next_connection: AtomicU64,
    next_nonce: AtomicU64,
    /// True once the server is shutting down.
    shutdown: watch::Sender<bool>,
}

struct ClientEntry {
    node: Arc<NodeInfo>,
    status: Mutex<ClientStatus>,
}

impl<G: Generator> Shared<G> {
    /// Starts the snapshot-numbering task once, on the first stream.
    fn start_watcher(&self) {
        if let Some((source, out)) = lock(&self.watcher).take() {
            tokio::spawn(number_snapshots(source, out));
        }
    }

    fn nonce(&self) -> String {
        self.next_nonce.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Generates the resources of `type_url` for `node` off the async
    /// runtime, keeping only the names asked for (all for a wildcard).
    async fn generate(
        &self,
        snapshot: Arc<G::Snapshot>,
        node: Arc<NodeInfo>,
        type_url: &'static str,
        names: Option<BTreeSet<String>>,
    ) -> Result<Resources, StreamError> {
        let generator = Arc::clone(&self.generator);
        tokio::task::spawn_blocking(move || {
            let mut out = generator.generate(&snapshot, &node, type_url, names.as_ref());
            if let Some(names) = &names {
                out.retain(|name, _| names.contains(name));
            }
            out
        })
        .await
        .map_err(|e| StreamError::Generator {
            type_url,
            reason: e.to_string(),
        })
    }

    /// Identifies the client from its first request and registers the stream.
    fn open(self: &Arc<Self>, node: Option<&Node>, delta: bool) -> Result<Conn<G>, StreamError> {
        let node = Arc::new(NodeInfo::from_node(node)?);
        let counter = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{counter}", node.id);
        let connected_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let entry = Arc::new(ClientEntry {
            node: Arc::clone(&node),
            status: Mutex::new(ClientStatus {
                connection_id: id.clone(),
                node_id: node.id.clone(),
                proxy_type: node.proxy_type,
                flavor: node.flavor,
                connected_at,
                delta,
                config_generation: 0,
                types: BTreeMap::new(),
            }),
        });
        lock(&self.clients).insert(counter, Arc::clone(&entry));
        self.metrics.xds_clients.add(1);
        tracing::info!(connection = %id, node = %node.id, delta, "xDS client connected");
        Ok(Conn {
            shared: Arc::clone(self),
            node,
            id,
            counter,
            entry,
        })
    }
}

/// Numbers each new snapshot and stamps when it became current, so every
/// stream measures convergence from the same instant.
async fn number_snapshots<S: Send + Sync + 'static>(
    mut source: watch::Receiver<Arc<S>>,
    out: watch::Sender<Arc<Generation<S>>>,
) {
    loop {
        let snapshot = Arc::clone(&source.borrow_and_update());
        out.send_if_modified(|current| {
            if Arc::ptr_eq(&current.snapshot, &snapshot) {
                return false;
            }
            *current = Arc::new(Generation {
                snapshot,
                number: current.number + 1,
                since: Instant::now(),
            });
            true
        });
        tokio::select! {
            changed = source.changed() => if changed.is_err() { return },
            () = out.closed() => return,
        }
    }
}

/// A registered stream; deregisters itself when the stream's task ends.
struct Conn<G: Generator> {
    shared: Arc<Shared<G>>,
    node: Arc<NodeInfo>,
    id: String,
    counter: u64,
    entry: Arc<ClientEntry>,
}

impl<G: Generator> Conn<G> {
    fn set_type_status(&self, type_url: &str, status: TypeStatus) {
        lock(&self.entry.status)
            .types
            .insert(short_name(type_url).to_string(), status);
    }

    fn set_generation(&self, number: u64) {
        lock(&self.entry.status).config_generation = number;
    }

    /// Counts and logs a NACK, returning the (bounded) message to keep.
    fn nack(&self, type_url: &str, version: &str, message: &str) -> String {
        let message = truncate(message, MAX_NACK_MESSAGE);
        self.shared.metrics.rejects.inc(&[short_name(type_url)]);
        tracing::warn!(
            connection = %self.id,
            node = %self.node.id,
            type_url = short_name(type_url),
            version,
            error = %message,
            "xDS client rejected config"
        );
        message
    }

    /// Counts one response sent, and its convergence time when a config
    /// change caused it.
    fn pushed(&self, type_url: &str, since: Option<Instant>) {
        self.shared.metrics.pushes.inc(&[short_name(type_url)]);
        if let Some(since) = since {
            self.shared
                .metrics
                .convergence
                .observe(since.elapsed().as_secs_f64());
        }
    }
}

impl<G: Generator> Drop for Conn<G> {
    fn drop(&mut self) {
        lock(&self.shared.clients).remove(&self.counter);
        self.shared.metrics.xds_clients.add(-1);
        tracing::info!(connection = %self.id, node = %self.node.id, "xDS client disconnected");
    }
}

/// Why a stream was ended by the server.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The first request had no node, or an unparseable one.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A request named a resource type pilot does not serve.
    #[error(
        "unsupported type_url {0:?}: pilot serves {LISTENER}, {ROUTE}, {CLUSTER} and {ENDPOINT}"
    )]
    UnknownType(String),
    /// A subscription grew beyond [`MAX_SUBSCRIBED_NAMES`].
    #[error(
        "too many resource names for {type_url}: {count} requested, at most {MAX_SUBSCRIBED_NAMES} allowed per type"
    )]
    TooManyNames {
        type_url: &'static str,
        count: usize,
    },
    /// The generator panicked.
    #[error("generating {type_url} failed: {reason}")]
    Generator {
        type_url: &'static str,
        reason: String,
    },
    /// The client went away; not an error worth a status.
    #[error("the client closed the stream")]
    Closed,
    /// Pilot is stopping.
    #[error("pilot is shutting down; reconnect to another instance")]
    ShuttingDown,
}

impl StreamError {
    fn status(&self) -> Status {
        let msg = self.to_string();
        match self {
            Self::Node(_) | Self::UnknownType(_) => Status::invalid_argument(msg),
            Self::TooManyNames { .. } => Status::resource_exhausted(msg),
            Self::Generator { .. } => Status::internal(msg),
            Self::Closed => Status::cancelled(msg),
            Self::ShuttingDown => Status::unavailable(msg),
        }
    }

    /// The `reason` label of `pilot_total_xds_internal_errors`.
    fn reason(&self) -> &'static str {
        match self {
            Self::Node(_) => "bad_node",
            Self::UnknownType(_) => "unknown_type",
            Self::TooManyNames { .. } => "too_many_names",
            Self::Generator { .. } => "generator",
            Self::Closed => "closed",
            Self::ShuttingDown => "shutdown",
        }
    }
}

/// Ends a stream for `err`: counts it, logs it and sends the status (unless
/// the client is already gone).
async fn end_stream<T>(metrics: &Metrics, tx: &mpsc::Sender<Result<T, Status>>, err: StreamError) {
    if matches!(err, StreamError::Closed) {
        return;
    }
    if matches!(err, StreamError::ShuttingDown) {
        // Not the client's fault: tell it, don't count it.
        let _ = tx.send(Err(err.status())).await;
        return;
    }
    metrics.stream_errors.inc(&[err.reason()]);
    tracing::warn!(error = %err, "ending xDS stream");
    // The client may be gone already; there is no one else to tell.
    let _ = tx.send(Err(err.status())).await;
}

/// Maps a requested type URL to the served constant, or refuses it.
fn known_type(type_url: &str) -> Result<&'static str, StreamError> {
    PUSH_ORDER
        .into_iter()
        .find(|t| *t == type_url)
        .ok_or_else(|| StreamError::UnknownType(truncate(type_url, 256)))
}

/// Whether an empty first subscription means "everything" (LDS and CDS).
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// One version for a set of resources: equal sets give equal versions.
fn combined_version<'a>(versions: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut bytes = Vec::new();
    for (name, version) in versions {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(version.as_bytes());
        bytes.push(b'\n');
    }
    content_version(&bytes)
}

fn check_count(type_url: &'static str, count: usize) -> Result<(), StreamError> {
    if count > MAX_SUBSCRIBED_NAMES {
        return Err(StreamError::TooManyNames { type_url, count });
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Status maps stay consistent even if a holder panicked mid-update.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
