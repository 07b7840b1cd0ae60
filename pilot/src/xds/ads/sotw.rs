//! State-of-the-world ADS streams (`StreamAggregatedResources`): every
//! response carries the full set of subscribed resources of one type.
//!
//! Per type the stream tracks the subscription (wildcard or names), the last
//! response sent and the last one the client accepted. A request whose nonce
//! is the latest sent is an ACK, or a NACK when it carries `error_detail`; a
//! request with an older nonce is ignored, as the xDS spec says. A first
//! request or a changed subscription is answered at once, even when empty; a
//! config change is pushed only for types whose content version changed, so a
//! NACKed version is never resent as is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use keel_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{
    Conn, Generation, Shared, StreamError, TypeStatus, check_count, combined_version, end_stream,
    known_type, wildcard_by_default,
};
use crate::xds::{Generator, Resources};
use keel_proto::any::{PUSH_ORDER, short_name};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

/// Serves one SotW stream until the client goes away or misbehaves.
pub(super) async fn run<G: Generator>(
    shared: Arc<Shared<G>>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: Tx,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        Ok(None) | Err(_) => return,
    };
    let conn = match shared.open(first.node.as_ref(), false) {
        Ok(conn) => conn,
        Err(err) => return end_stream(&shared.metrics, &tx, err).await,
    };
    let mut generations = shared.generations.clone();
    let current = Arc::clone(&generations.borrow_and_update());
    conn.set_generation(current.number);
    let mut stream = Stream {
        conn,
        tx,
        current,
        watches: BTreeMap::new(),
    };
    if let Err(err) = stream.serve(first, inbound, generations).await {
        end_stream(&shared.metrics, &stream.tx, err).await;
    }
}

/// What woke the stream up.
enum Event {
    Request(Box<DiscoveryRequest>),
    Config,
    Done,
}

struct Stream<G: Generator> {
    conn: Conn<G>,
    tx: Tx,
    current: Arc<Generation<G::Snapshot>>,
    watches: BTreeMap<&'static str, Watch>,
}

/// One subscribed type.
#[derive(Default)]
struct Watch {
    wildcard: bool,
    names: BTreeSet<String>,
    /// `None` until the first response.
    sent_version: Option<String>,
    sent_nonce: String,
    acked_version: String,
    acked_nonce: String,
    last_nack: Option<String>,
    resources_sent: usize,
}

impl Watch {
    fn status(&self) -> TypeStatus {
        TypeStatus {
            wildcard: self.wildcard,
            subscribed: self.names.iter().cloned().collect(),
            sent_version: self.sent_version.clone().unwrap_or_default(),
            sent_nonce: self.sent_nonce.clone(),
            acked_version: self.acked_version.clone(),
            acked_nonce: self.acked_nonce.clone(),
            last_nack: self.last_nack.clone(),
            resources_sent: self.resources_sent,
        }
    }
}

impl<G: Generator> Stream<G> {
    async fn serve(
        &mut self,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
        mut generations: watch::Receiver<Arc<Generation<G::Snapshot>>>,
    ) -> Result<(), StreamError> {
        self.on_request(first).await?;
        let mut watching = true;
        let mut shutdown = self.conn.shared.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return Err(StreamError::ShuttingDown);
        }
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => return Err(StreamError::ShuttingDown),
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => Event::Request(Box::new(req)),
                    Ok(None) => Event::Done,
                    Err(status) => {
                        tracing::debug!(connection = %self.conn.id, %status, "xDS stream read failed");
                        // Tell the client why (an oversized or undecodable
                        // message); if it is gone, nobody is listening anyway.
                        let _ = self.tx.try_send(Err(status));
                        Event::Done
                    }
                },
                changed = generations.changed(), if watching => match changed {
                    Ok(()) => {
                        self.current = Arc::clone(&generations.borrow_and_update());
                        Event::Config
                    }
                    Err(_) => {
                        watching = false;
                        continue;
                    }
                },
                () = self.tx.closed() => Event::Done,
            };
            match event {
                Event::Request(req) => self.on_request(*req).await?,
                Event::Config => self.on_config().await?,
                Event::Done => return Ok(()),
            }
        }
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), StreamError> {
        let type_url = known_type(&req.type_url)?;
        check_count(type_url, req.resource_names.len())?;
        let was_wildcard = self.watches.get(type_url).map(|w| w.wildcard);
        let (wildcard, names) = subscription(type_url, req.resource_names, was_wildcard);
        let Some(w) = self.watches.get_mut(type_url) else {
            self.watches.insert(
                type_url,
                Watch {
                    wildcard,
                    names,
                    ..Watch::default()
                },
            );
            return self.push(type_url, true, None).await;
        };
        let nonce = req.response_nonce;
        if !nonce.is_empty() {
            if nonce != w.sent_nonce {
                tracing::debug!(
                    connection = %self.conn.id,
                    type_url = short_name(type_url),
                    nonce,
                    latest = w.sent_nonce,
                    "ignoring request with a stale nonce"
                );
                return Ok(());
            }
            let sent = w.sent_version.clone().unwrap_or_default();
            match &req.error_detail {
                Some(err) => w.last_nack = Some(self.conn.nack(type_url, &sent, &err.message)),
                None => {
                    w.acked_version = sent;
                    w.acked_nonce = nonce.clone();
                }
            }
        }
        let changed = w.wildcard != wildcard || w.names != names;
        w.wildcard = wildcard;
        w.names = names;
        if changed || nonce.is_empty() {
            return self.push(type_url, true, None).await;
        }
        let status = w.status();
        self.conn.set_type_status(type_url, status);
        Ok(())
    }

    async fn on_config(&mut self) -> Result<(), StreamError> {
        self.conn.set_generation(self.current.number);
        let since = self.current.since;
        for type_url in PUSH_ORDER {
            if self.watches.contains_key(type_url) {
                self.push(type_url, false, Some(since)).await?;
            }
        }
        Ok(())
    }

    /// Sends the current resources of `type_url`: always when `forced`,
    /// otherwise only if their version differs from the last one sent.
    async fn push(
        &mut self,
        type_url: &'static str,
        forced: bool,
        since: Option<Instant>,
    ) -> Result<(), StreamError> {
        let Some(w) = self.watches.get(type_url) else {
            return Ok(());
        };
        let resources = if !w.wildcard && w.names.is_empty() {
            Resources::new()
        } else {
            let names = (!w.wildcard).then(|| w.names.clone());
            let snapshot = Arc::clone(&self.current.snapshot);
            let node = Arc::clone(&self.conn.node);
            self.conn
                .shared
                .generate(snapshot, node, type_url, names)
                .await?
        };
        let version = combined_version(resources.iter().map(|(n, r)| (n, &r.version)));
        let Some(w) = self.watches.get_mut(type_url) else {
            return Ok(());
        };
        if !forced && w.sent_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let nonce = self.conn.shared.nonce();
        w.sent_version = Some(version.clone());
        w.sent_nonce = nonce.clone();
        w.resources_sent = resources.len();
        let status = w.status();
        self.conn.set_type_status(type_url, status);
        let response = DiscoveryResponse {
            version_info: version,
            resources: resources
                .into_values()
                .map(|r| Arc::unwrap_or_clone(r.any))
                .collect(),
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        };
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| StreamError::Closed)?;
        self.conn.pushed(type_url, since);
        Ok(())
    }
}

/// Interprets a request's `resource_names` as (wildcard, named resources).
///
/// `*` always means wildcard. An empty list means wildcard on the first
/// request for LDS and CDS (legacy wildcard) and keeps a wildcard that is
/// already on; otherwise it means nothing.
fn subscription(
    type_url: &str,
    names: Vec<String>,
    was_wildcard: Option<bool>,
) -> (bool, BTreeSet<String>) {
    let mut star = false;
    let names: BTreeSet<String> = names
        .into_iter()
        .filter(|n| {
            let is_star = n == "*";
            star |= is_star;
            !is_star
        })
        .collect();
    let legacy = names.is_empty()
        && match was_wildcard {
            None => wildcard_by_default(type_url),
            Some(was) => was,
        };
    (star || legacy, names)
}
