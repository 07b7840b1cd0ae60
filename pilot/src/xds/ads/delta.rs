//! Incremental ADS streams (`DeltaAggregatedResources`): responses carry only
//! the resources that changed, each with its own version, and the names of
//! the ones that went away.
//!
//! Per type the stream tracks the subscription (wildcard via `*`, or an empty
//! first subscribe for LDS and CDS; plus named resources) and the version of
//! every resource the client holds, seeded from `initial_resource_versions` on
//! the first request for the type after a reconnect. Newly subscribed names
//! are always answered, even if the client seems to hold them (the spec's
//! remove-then-add case); a subscribed name that does not exist is reported
//! in `removed_resources`. ACK and NACK work as in SotW, by nonce; a NACKed
//! resource is not resent until it changes again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use keel_proto::any::{PUSH_ORDER, short_name};
use keel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{
    Conn, Generation, Shared, StreamError, TypeStatus, check_count, combined_version, end_stream,
    known_type, wildcard_by_default,
};
use crate::xds::{Generator, Resources};

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// Serves one delta stream until the client goes away or misbehaves.
pub(super) async fn run<G: Generator>(
    shared: Arc<Shared<G>>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        Ok(None) | Err(_) => return,
    };
    let conn = match shared.open(first.node.as_ref(), true) {
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

enum Event {
    Request(Box<DeltaDiscoveryRequest>),
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
    /// What the client holds: resource name → version.
    held: BTreeMap<String, String>,
    sent_version: String,
    sent_nonce: String,
    acked_version: String,
    acked_nonce: String,
    last_nack: Option<String>,
}

impl Watch {
    fn status(&self) -> TypeStatus {
        TypeStatus {
            wildcard: self.wildcard,
            subscribed: self.names.iter().cloned().collect(),
            sent_version: self.sent_version.clone(),
            sent_nonce: self.sent_nonce.clone(),
            acked_version: self.acked_version.clone(),
            acked_nonce: self.acked_nonce.clone(),
            last_nack: self.last_nack.clone(),
            resources_sent: self.held.len(),
        }
    }
}

impl<G: Generator> Stream<G> {
    async fn serve(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
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

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), StreamError> {
        let type_url = known_type(&req.type_url)?;
        check_count(
            type_url,
            req.resource_names_subscribe.len() + req.initial_resource_versions.len(),
        )?;
        let first = !self.watches.contains_key(type_url);
        let w = self.watches.entry(type_url).or_default();

        let nonce = req.response_nonce;
        if !nonce.is_empty() && !first {
            let latest = nonce == w.sent_nonce;
            match &req.error_detail {
                // Every delta response matters, so a NACK of an older one counts too.
                Some(err) => {
                    let rejected = if latest {
                        w.sent_version.clone()
                    } else {
                        format!("(older response, nonce {nonce})")
                    };
                    w.last_nack = Some(self.conn.nack(type_url, &rejected, &err.message));
                }
                None if latest => {
                    w.acked_version = w.sent_version.clone();
                    w.acked_nonce = nonce;
                }
                None => {}
            }
        }

        if first {
            w.wildcard = req.resource_names_subscribe.is_empty() && wildcard_by_default(type_url);
            w.held = req.initial_resource_versions.into_iter().collect();
        }
        let mut added = BTreeSet::new();
        for name in req.resource_names_subscribe {
            if name == "*" {
                w.wildcard = true;
                continue;
            }
            if !first {
                // The client may have dropped it: always send it again.
                w.held.remove(&name);
            }
            w.names.insert(name.clone());
            added.insert(name);
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                w.wildcard = false;
            } else {
                w.names.remove(&name);
                added.remove(&name);
            }
        }
        check_count(type_url, w.names.len())?;
        if !w.wildcard {
            // Unsubscribed resources are forgotten by the client.
            let names = &w.names;
            w.held.retain(|n, _| names.contains(n));
        }
        if first || !added.is_empty() {
            return self.push(type_url, Some(added), None).await;
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
                self.push(type_url, None, Some(since)).await?;
            }
        }
        Ok(())
    }

    /// Sends what changed for `type_url` since the client's state. With
    /// `requested` (names just subscribed to) a response is sent even if
    /// nothing changed, and requested names that do not exist are listed as
    /// removed so the client stops waiting for them.
    async fn push(
        &mut self,
        type_url: &'static str,
        requested: Option<BTreeSet<String>>,
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
        let Some(w) = self.watches.get_mut(type_url) else {
            return Ok(());
        };
        let mut removed: BTreeSet<String> = w
            .held
            .keys()
            .filter(|n| !resources.contains_key(*n))
            .cloned()
            .collect();
        if let Some(requested) = &requested {
            removed.extend(
                requested
                    .iter()
                    .filter(|n| !resources.contains_key(*n))
                    .cloned(),
            );
        }
        let changed: Vec<WireResource> = resources
            .into_values()
            .filter(|r| w.held.get(&r.name) != Some(&r.version))
            .map(|r| WireResource {
                name: r.name,
                version: r.version,
                resource: Some(Arc::unwrap_or_clone(r.any)),
                ..Default::default()
            })
            .collect();
        if requested.is_none() && changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        for name in &removed {
            w.held.remove(name);
        }
        for r in &changed {
            w.held.insert(r.name.clone(), r.version.clone());
        }
        let nonce = self.conn.shared.nonce();
        w.sent_version = combined_version(&w.held);
        w.sent_nonce = nonce.clone();
        let status = w.status();
        self.conn.set_type_status(type_url, status);
        tracing::debug!(
            connection = %self.conn.id,
            type_url = short_name(type_url),
            changed = changed.len(),
            removed = removed.len(),
            "delta push"
        );
        let response = DeltaDiscoveryResponse {
            system_version_info: w.sent_version.clone(),
            resources: changed,
            type_url: type_url.to_string(),
            removed_resources: removed.into_iter().collect(),
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
