//! The ADS client: one state-of-the-world stream to pilot carrying CDS and
//! LDS (wildcard), then EDS and RDS for exactly the names the accepted
//! clusters and listeners reference.
//!
//! Every response goes through [`handlers::apply`](super::handlers::apply);
//! the new state is swapped in, then the response is ACKed (version of the
//! response) or NACKed (`error_detail` INVALID_ARGUMENT with every rejection
//! message; version of the last fully accepted response). When the stream
//! fails the current state keeps serving and the client reconnects with
//! exponential backoff and full jitter, resubscribing with the names and
//! versions it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use keel_proto::envoy::config::core::v3::Node;
use keel_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keel_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use keel_proto::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::handlers;
use crate::state::SharedState;

/// The first reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// How long to wait for a TCP/HTTP2 connection to pilot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// gRPC INVALID_ARGUMENT.
const INVALID_ARGUMENT: i32 = 3;

/// Why a stream to pilot ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// `--xds-address` is not a usable URI.
    #[error("xds address {address:?} is invalid: {source}; expected HOST:PORT")]
    BadAddress {
        /// The address as configured.
        address: String,
        /// The parse error.
        source: tonic::transport::Error,
    },
    /// Pilot could not be reached.
    #[error("connecting to pilot at {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The stream failed.
    #[error("ADS stream: {0}")]
    Stream(#[from] tonic::Status),
    /// Pilot closed the stream.
    #[error("pilot closed the ADS stream")]
    Closed,
    /// The request channel closed (the stream task ended).
    #[error("the ADS request stream closed")]
    RequestsClosed,
}

/// The ADS client.
pub struct XdsClient {
    node: Node,
    address: String,
    state: SharedState,
    metrics: Option<crate::metrics::Metrics>,
}

/// What the stream currently subscribes to by name.
#[derive(Default)]
struct Subscriptions {
    rds: BTreeSet<String>,
    eds: BTreeSet<String>,
    /// The last nonce received on this stream, per type URL.
    nonces: BTreeMap<String, String>,
}

impl Subscriptions {
    fn nonce(&self, type_url: &str) -> &str {
        self.nonces.get(type_url).map_or("", String::as_str)
    }
}

impl XdsClient {
    /// A client for pilot at `address` (`HOST:PORT`, or a full `http://` URI)
    /// writing into `state`.
    pub fn new(node: Node, address: &str, state: SharedState) -> Self {
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        Self {
            node,
            address,
            state,
            metrics: None,
        }
    }

    /// Counts applied and rejected responses in `keel_proxy_xds_updates_total`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `shutdown` turns true, reconnecting as needed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut got_response = false;
            let result = tokio::select! {
                r = self.stream_once(&mut got_response) => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if got_response {
                backoff = BACKOFF_MIN;
            }
            match result {
                Ok(()) => {
                    warn!(address = %self.address, "pilot closed the ADS stream; reconnecting")
                }
                Err(err) => {
                    warn!(address = %self.address, error = %err, "ADS stream failed; keeping the current config and reconnecting")
                }
            }
            // Full jitter: anywhere in [0, backoff].
            let delay = backoff.mul_f64(fastrand::f64());
            debug!(?delay, "reconnecting to pilot");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn stream_once(&self, got_response: &mut bool) -> Result<(), XdsError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.address.clone())
            .map_err(|source| XdsError::BadAddress {
                address: self.address.clone(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| XdsError::Connect {
                address: self.address.clone(),
                source,
            })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(32);

        // Resubscribe with what we hold, so pilot can skip or resend.
        let current = self.state.load_full();
        let mut subs = Subscriptions {
            rds: current.referenced_routes(),
            eds: current.referenced_endpoints(),
            nonces: BTreeMap::new(),
        };
        for t in [CLUSTER, LISTENER] {
            self.send(&tx, t, &BTreeSet::new(), &current, "", None)
                .await?;
        }
        if !subs.eds.is_empty() {
            self.send(&tx, ENDPOINT, &subs.eds, &current, "", None)
                .await?;
        }
        if !subs.rds.is_empty() {
            self.send(&tx, ROUTE, &subs.rds, &current, "", None).await?;
        }
        info!(address = %self.address, node = %self.node.id, "ADS stream open");
        let mut inbound = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        loop {
            let Some(resp) = inbound.message().await? else {
                return Ok(());
            };
            *got_response = true;
            self.handle(&tx, &mut subs, resp).await?;
        }
    }

    async fn handle(
        &self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        subs: &mut Subscriptions,
        resp: DiscoveryResponse,
    ) -> Result<(), XdsError> {
        let empty = BTreeSet::new();
        let requested = match resp.type_url.as_str() {
            ROUTE => &subs.rds,
            ENDPOINT => &subs.eds,
            _ => &empty,
        };
        let current = self.state.load_full();
        let applied = handlers::apply(&current, &resp, requested);
        let short = handlers::short_name(&resp.type_url).unwrap_or("unknown");
        if let Some(m) = &self.metrics {
            m.record_xds_update(short, applied.errors.is_empty());
        }
        let next = Arc::new(applied.state);
        self.state.store(Arc::clone(&next));
        let error = if applied.errors.is_empty() {
            info!(
                r#type = short,
                version = %resp.version_info,
                resources = applied.accepted,
                "applied xDS response"
            );
            None
        } else {
            let message = applied.errors.join("; ");
            warn!(
                r#type = short,
                version = %resp.version_info,
                accepted = applied.accepted,
                rejected = applied.errors.len(),
                %message,
                "NACK: rejected xDS resources; the others apply and the rejected keep their last good version"
            );
            Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            })
        };
        let names = requested.clone();
        subs.nonces
            .insert(resp.type_url.clone(), resp.nonce.clone());
        self.send(tx, &resp.type_url, &names, &next, &resp.nonce, error)
            .await?;

        // Follow the references of what was accepted.
        let eds = next.referenced_endpoints();
        if eds != subs.eds {
            debug!(names = ?eds, "EDS subscription changed");
            subs.eds = eds;
            self.send(tx, ENDPOINT, &subs.eds, &next, subs.nonce(ENDPOINT), None)
                .await?;
        }
        let rds = next.referenced_routes();
        if rds != subs.rds {
            debug!(names = ?rds, "RDS subscription changed");
            subs.rds = rds;
            self.send(tx, ROUTE, &subs.rds, &next, subs.nonce(ROUTE), None)
                .await?;
        }
        Ok(())
    }

    /// Sends a request for `type_url` carrying the version last accepted,
    /// the nonce of the last response of the type on this stream, and the
    /// NACK's error when there is one.
    async fn send(
        &self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        type_url: &str,
        names: &BTreeSet<String>,
        state: &crate::state::ProxyState,
        nonce: &str,
        error_detail: Option<RpcStatus>,
    ) -> Result<(), XdsError> {
        let status = handlers::short_name(type_url).and_then(|s| state.xds.get(s));
        let version_info = status.map(|s| s.version.clone()).unwrap_or_default();
        let req = DiscoveryRequest {
            version_info,
            node: Some(self.node.clone()),
            resource_names: names.iter().cloned().collect(),
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail,
            ..Default::default()
        };
        tx.send(req).await.map_err(|_| XdsError::RequestsClosed)
    }
}
