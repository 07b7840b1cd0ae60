//! What the data path reads on every connection and request: a
//! [`Snapshot`] derived from the proxy state, with listeners indexed for
//! original-destination lookups and one [`Upstream`] per cluster (its
//! balancer, the connection pools of its endpoints and the metric
//! recorders of each).
//!
//! A snapshot is rebuilt when the xDS state changes, reusing every
//! [`Upstream`] whose cluster and endpoints are the same `Arc`s as before
//! (the xDS handlers keep the `Arc` of a resource pilot re-sent unchanged),
//! and carrying least-request counts over when only endpoints changed.
//! Requests already running keep the snapshot they started with.

pub mod h1;
pub mod pool;

use std::collections::HashMap;

use crate::FastMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::balance::Balancer;
use crate::metrics::labels::{Peer, PeerLabels, Reporter, SecurityPolicy, Workload};
use crate::metrics::{Metrics, RequestRecorder};
use crate::state::cluster::{Cluster, Discovery};
use crate::state::endpoint::{EndpointAddress, Endpoints};
use crate::state::{Listener, ProxyState, SharedState};
use pool::Pool;

/// One cluster, ready for the data path.
#[derive(Debug)]
pub struct Upstream {
    /// The cluster as configured.
    pub cluster: Arc<Cluster>,
    /// The endpoints the balancer was built from.
    pub endpoints: Option<Arc<Endpoints>>,
    /// Picks an endpoint.
    pub balancer: Balancer,
    /// Per endpoint: its pool and telemetry.
    pub hosts: FastMap<SocketAddr, Host>,
    /// Telemetry when no endpoint was picked (or one outside `hosts`,
    /// such as an original destination).
    pub unknown: Host,
    /// Inbound (`inbound|…`) rather than outbound.
    pub inbound: bool,
    /// Requests in flight to this cluster (carried across rebuilds).
    active: Arc<AtomicUsize>,
    /// Retry accounting (carried across rebuilds).
    retries: Arc<Retries>,
    /// HTTP/1.1 exchanges allowed at once (`maxConnections`), when limited.
    connections: Option<Arc<tokio::sync::Semaphore>>,
}

/// A cluster's retries in flight, and for interval retry budgets the
/// requests started recently.
#[derive(Debug, Default)]
struct Retries {
    in_flight: AtomicUsize,
    recent: Mutex<Recent>,
}

/// Requests started in the current and the previous budget interval; the
/// count "within the last interval" weighs the previous one by how much
/// of it the window still covers.
#[derive(Debug, Default)]
struct Recent {
    start: Option<Instant>,
    current: u64,
    previous: u64,
}

impl Recent {
    fn roll(&mut self, now: Instant, interval: Duration) -> f64 {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= interval * 2 {
            self.previous = 0;
            self.current = 0;
            self.start = Some(now);
        } else if elapsed >= interval {
            self.previous = self.current;
            self.current = 0;
            self.start = Some(start + interval);
        }
        let into = now.saturating_duration_since(self.start.unwrap_or(now));
        1.0 - (into.as_secs_f64() / interval.as_secs_f64()).min(1.0)
    }

    fn count(&mut self, now: Instant, interval: Duration) -> u64 {
        let weight = self.roll(now, interval);
        self.current + (self.previous as f64 * weight).round() as u64
    }
}

/// One retry counted against its cluster's retry limits until dropped.
#[derive(Debug)]
pub struct RetryToken(Arc<Retries>);

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Counts one request against its cluster's circuit breakers until dropped
/// (and holds its HTTP/1.1 connection slot, once it has one).
#[derive(Debug)]
pub struct Active(Arc<AtomicUsize>, Option<tokio::sync::OwnedSemaphorePermit>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Upstream {
    /// Admits one more request, or says which circuit breaker is full:
    /// `max_requests` (Istio `http2MaxRequests`), or for HTTP/1.1 the
    /// connections plus the requests allowed to wait for one
    /// (`maxConnections` + `http1MaxPendingRequests`).
    pub fn admit(&self, h2: bool) -> Result<Active, String> {
        let cb = &self.cluster.circuit_breakers;
        let mut limit = cb.max_requests as usize;
        if !h2 {
            limit = limit.min(
                (cb.max_connections as usize).saturating_add(cb.max_pending_requests as usize),
            );
        }
        let before = self.active.fetch_add(1, Relaxed);
        let active = Active(Arc::clone(&self.active), None);
        if before >= limit {
            return Err(format!(
                "{} already has {before} requests in flight (limit {limit}: max_requests {}, max_connections {}, max_pending_requests {})",
                self.cluster.name, cb.max_requests, cb.max_connections, cb.max_pending_requests
            ));
        }
        Ok(active)
    }

    /// Waits for one of the cluster's `maxConnections` HTTP/1.1 connection
    /// slots (the request is pending meanwhile; `admit` bounded how many may
    /// wait), held by `active` until the response ends. Immediate when the
    /// cluster has no connection limit.
    pub async fn connection_slot(&self, active: &mut Active) {
        if let Some(slots) = &self.connections
            && let Ok(permit) = Arc::clone(slots).acquire_owned().await
        {
            active.1 = Some(permit);
        }
    }

    /// Notes a new request, for retry budgets over an interval (a no-op
    /// for every other cluster).
    pub fn note_request(&self) {
        if let Some(interval) = self
            .cluster
            .circuit_breakers
            .retry_budget
            .and_then(|b| b.interval)
        {
            let mut recent = self
                .retries
                .recent
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            recent.roll(Instant::now(), interval);
            recent.current += 1;
        }
    }

    /// Admits one more retry, or says why not: the `max_retries` circuit
    /// breaker (Istio `maxRetries`) or the retry budget is full.
    pub fn admit_retry(&self) -> Result<RetryToken, &'static str> {
        let cb = &self.cluster.circuit_breakers;
        let mut limit = u64::from(cb.max_retries);
        let mut reason = "max_retries";
        if let Some(b) = cb.retry_budget {
            let requests = match b.interval {
                Some(interval) => self
                    .retries
                    .recent
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .count(Instant::now(), interval),
                None => self.active.load(Relaxed) as u64,
            };
            let budget = b.allowed(requests);
            if budget < limit {
                limit = budget;
                reason = "retry_budget";
            }
        }
        let before = self.retries.in_flight.fetch_add(1, Relaxed);
        let token = RetryToken(Arc::clone(&self.retries));
        if before as u64 >= limit {
            return Err(reason);
        }
        Ok(token)
    }
}

/// One endpoint of an [`Upstream`].
#[derive(Clone, Debug)]
pub struct Host {
    /// The endpoint's connections (`None` for [`Upstream::unknown`]).
    pub pool: Option<Arc<Pool>>,
    telemetry: Arc<Telemetry>,
}

/// The labels of the requests and connections to one endpoint, with their
/// recorder.
type Made = (Peer, RequestRecorder);

/// An endpoint's telemetry, made on first use: most of the clusters a
/// sidecar knows are never called, and their labels (a dozen strings each)
/// would otherwise sit in memory for nothing.
enum Telemetry {
    Ready(Made),
    Lazy {
        made: std::sync::OnceLock<Made>,
        labels: Box<dyn Fn() -> PeerLabels + Send + Sync>,
        metrics: Arc<Metrics>,
    },
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready((peer, _)) => f.debug_tuple("Ready").field(peer).finish(),
            Self::Lazy { made, .. } => f.debug_struct("Lazy").field("made", made).finish(),
        }
    }
}

impl Host {
    /// A host whose labels are `labels()`, made (with the recorder) when
    /// first needed.
    pub fn lazy(
        pool: Option<Arc<Pool>>,
        metrics: &Arc<Metrics>,
        labels: impl Fn() -> PeerLabels + Send + Sync + 'static,
    ) -> Self {
        Self {
            pool,
            telemetry: Arc::new(Telemetry::Lazy {
                made: std::sync::OnceLock::new(),
                labels: Box::new(labels),
                metrics: Arc::clone(metrics),
            }),
        }
    }

    /// A host with its labels made now.
    pub fn with_labels(pool: Option<Arc<Pool>>, metrics: &Metrics, labels: PeerLabels) -> Self {
        let peer = labels.shared();
        let recorder = metrics.requests(peer.clone());
        Self {
            pool,
            telemetry: Arc::new(Telemetry::Ready((peer, recorder))),
        }
    }

    fn made(&self) -> &Made {
        match &*self.telemetry {
            Telemetry::Ready(m) => m,
            Telemetry::Lazy {
                made,
                labels,
                metrics,
            } => made.get_or_init(|| {
                let peer = labels().shared();
                let recorder = metrics.requests(peer.clone());
                (peer, recorder)
            }),
        }
    }

    /// The labels, for TCP metrics.
    pub fn peer(&self) -> &Peer {
        &self.made().0
    }

    /// Request metrics for this source/destination pair.
    pub fn recorder(&self) -> &RequestRecorder {
        &self.made().1
    }
}

/// The listeners and upstreams of one state version.
#[derive(Debug)]
pub struct Snapshot {
    /// The state this was built from.
    pub state: Arc<ProxyState>,
    /// Listeners by exact `ip:port` (`10.96.0.30_3306`).
    pub by_addr: FastMap<SocketAddr, Arc<Listener>>,
    /// Wildcard-address listeners by port (`0.0.0.0_9080`).
    pub by_port: FastMap<u16, Arc<Listener>>,
    /// Clusters by name.
    pub upstreams: FastMap<String, Arc<Upstream>>,
}

impl Snapshot {
    /// A listener by name.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.state.listeners.get(name)
    }

    /// The outbound listener for an original destination: the exact
    /// address, else the wildcard listener of its port.
    pub fn outbound_listener(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        self.by_addr
            .get(&dst)
            .or_else(|| self.by_port.get(&dst.port()))
    }
}

/// Endpoint pools shared across clusters and snapshots, dropped when no
/// snapshot uses their endpoint any more.
#[derive(Debug, Default)]
pub struct Pools {
    map: Mutex<HashMap<SocketAddr, Weak<Pool>>>,
}

impl Pools {
    /// The pool of `addr`, created if needed.
    pub fn get(&self, addr: SocketAddr) -> Arc<Pool> {
        let Ok(mut map) = self.map.lock() else {
            return Arc::new(Pool::new(addr));
        };
        if let Some(p) = map.get(&addr).and_then(Weak::upgrade) {
            return p;
        }
        let p = Arc::new(Pool::new(addr));
        map.insert(addr, Arc::downgrade(&p));
        p
    }

    fn sweep(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, p| p.strong_count() > 0);
        }
    }
}

/// Builds snapshots from the shared state and hands out the current one.
pub struct Plane {
    state: SharedState,
    current: ArcSwap<Snapshot>,
    build: Mutex<()>,
    pools: Pools,
    metrics: Arc<Metrics>,
    own: Arc<Workload>,
    unrouted_out: Host,
    unrouted_in: Host,
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plane").finish_non_exhaustive()
    }
}

impl Plane {
    /// A plane over `state`; `own` is this proxy's workload for telemetry.
    pub fn new(state: SharedState, metrics: Metrics, own: Workload) -> Self {
        let own = Arc::new(own);
        let metrics = Arc::new(metrics);
        let pools = Pools::default();
        let first = build(&state.load_full(), None, &pools, &metrics, &own);
        let unknown = Workload::unknown(&own.trust_domain);
        let host = |labels: PeerLabels| Host::with_labels(None, &metrics, labels);
        let unrouted_out = host(PeerLabels::new(
            Reporter::Source,
            &own,
            &unknown,
            None,
            SecurityPolicy::Unknown,
        ));
        let unrouted_in = host(PeerLabels::inbound(
            &own,
            &unknown,
            None,
            SecurityPolicy::None,
        ));
        Self {
            unrouted_out,
            unrouted_in,
            state,
            current: ArcSwap::from_pointee(first),
            build: Mutex::new(()),
            pools,
            metrics,
            own,
        }
    }

    /// Telemetry for requests and connections that reached no cluster.
    pub fn unrouted(&self, inbound: bool) -> Host {
        if inbound {
            self.unrouted_in.clone()
        } else {
            self.unrouted_out.clone()
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This proxy's workload.
    pub fn own(&self) -> &Workload {
        &self.own
    }

    /// The shared pool registry (original-destination connections use it).
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Whether the first complete configuration has arrived.
    pub fn is_ready(&self) -> bool {
        self.state.load().is_ready()
    }

    /// The snapshot of the current state, rebuilt first when the state
    /// changed since the last build. Concurrent callers wait for the one
    /// rebuilding (a rebuild reuses every unchanged upstream, so it is
    /// short) rather than route by a stale snapshot: right after the first
    /// configuration that would be an empty one.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snap = self.current.load_full();
        let state = self.state.load();
        if Arc::ptr_eq(&snap.state, &state) {
            return snap;
        }
        let _building = self
            .build
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Re-read under the lock: another caller may have just built it.
        let snap = self.current.load_full();
        let state = self.state.load_full();
        if Arc::ptr_eq(&snap.state, &state) {
            return snap;
        }
        let next = Arc::new(build(
            &state,
            Some(&snap),
            &self.pools,
            &self.metrics,
            &self.own,
        ));
        self.current.store(Arc::clone(&next));
        self.pools.sweep();
        next
    }
}

fn build(
    state: &Arc<ProxyState>,
    previous: Option<&Snapshot>,
    pools: &Pools,
    metrics: &Arc<Metrics>,
    own: &Arc<Workload>,
) -> Snapshot {
    let mut by_addr = FastMap::default();
    let mut by_port = FastMap::default();
    for l in state.listeners.values() {
        if l.name.starts_with("virtual") {
            continue;
        }
        if l.address.ip().is_unspecified() {
            by_port.insert(l.address.port(), Arc::clone(l));
        } else {
            by_addr.insert(l.address, Arc::clone(l));
        }
    }
    let mut upstreams = FastMap::with_capacity_and_hasher(state.clusters.len(), Default::default());
    for (name, cluster) in &state.clusters {
        let endpoints = match &cluster.discovery {
            Discovery::Eds { service_name } => state.endpoints.get(service_name).cloned(),
            Discovery::Static(e) => Some(Arc::clone(e)),
            _ => None,
        };
        let prev = previous.and_then(|p| p.upstreams.get(name));
        let reuse = prev.filter(|u| {
            Arc::ptr_eq(&u.cluster, cluster)
                && match (&u.endpoints, &endpoints) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        });
        let upstream = match reuse {
            Some(u) => Arc::clone(u),
            None => Arc::new(new_upstream(cluster, endpoints, prev, pools, metrics, own)),
        };
        upstreams.insert(name.clone(), upstream);
    }
    Snapshot {
        state: Arc::clone(state),
        by_addr,
        by_port,
        upstreams,
    }
}

fn new_upstream(
    cluster: &Arc<Cluster>,
    endpoints: Option<Arc<Endpoints>>,
    previous: Option<&Arc<Upstream>>,
    pools: &Pools,
    metrics: &Arc<Metrics>,
    own: &Arc<Workload>,
) -> Upstream {
    let empty = Endpoints::default();
    let eps = endpoints.as_deref().unwrap_or(&empty);
    let balancer = match previous {
        Some(u) => u.balancer.rebuild(cluster, eps),
        None => Balancer::new(cluster, eps),
    };
    let active = previous.map(|u| Arc::clone(&u.active)).unwrap_or_default();
    let retries = previous.map(|u| Arc::clone(&u.retries)).unwrap_or_default();
    let max_connections = cluster.circuit_breakers.max_connections;
    let connections = (max_connections < u32::MAX).then(|| {
        previous
            .filter(|u| u.cluster.circuit_breakers.max_connections == max_connections)
            .and_then(|u| u.connections.clone())
            .unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(max_connections as usize)))
    });
    let inbound = cluster.name.starts_with("inbound|");
    // The labels of endpoint `at` (locality, index) of `endpoints`, or of
    // the cluster's unknown endpoint; made when first used.
    let host = |at: Option<(usize, usize)>, pool: Option<Arc<Pool>>| -> Host {
        let (own, cluster, endpoints) = (Arc::clone(own), Arc::clone(cluster), endpoints.clone());
        Host::lazy(pool, metrics, move || {
            if inbound {
                let service = cluster.istio.as_ref().and_then(|m| m.services.first());
                return PeerLabels::inbound(
                    &own,
                    &Workload::unknown(&own.trust_domain),
                    service,
                    SecurityPolicy::None,
                );
            }
            let endpoint =
                at.and_then(|(l, i)| endpoints.as_deref()?.localities.get(l)?.endpoints.get(i));
            PeerLabels::outbound(&own, &cluster, endpoint)
        })
    };
    let mut hosts = FastMap::default();
    for (l, loc) in eps.localities.iter().enumerate() {
        for (i, ep) in loc.endpoints.iter().enumerate() {
            if let EndpointAddress::Socket(addr) = ep.address {
                hosts
                    .entry(addr)
                    .or_insert_with(|| host(Some((l, i)), Some(pools.get(addr))));
            }
        }
    }
    Upstream {
        unknown: host(None, None),
        cluster: Arc::clone(cluster),
        endpoints,
        balancer,
        hosts,
        inbound,
        active,
        retries,
        connections,
    }
}

/// Whether `dst` is the listener the connection arrived on (a connection
/// that was not redirected): connecting there would loop.
pub fn is_self(dst: SocketAddr, local: SocketAddr) -> bool {
    dst == local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_requests_fade_out_over_the_next_interval() {
        let interval = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.roll(t0, interval);
        r.current += 10;
        assert_eq!(r.count(t0 + Duration::from_secs(5), interval), 10);
        // A new interval: the previous one still counts in full at its
        // start, half of it halfway through, nothing after.
        assert_eq!(r.count(t0 + Duration::from_secs(10), interval), 10);
        r.current += 4;
        assert_eq!(r.count(t0 + Duration::from_secs(15), interval), 9);
        assert_eq!(r.count(t0 + Duration::from_secs(20), interval), 4);
        assert_eq!(r.count(t0 + Duration::from_secs(45), interval), 0);
    }
}
