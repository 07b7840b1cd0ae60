//! Load balancing: which endpoint of a cluster a request goes to.
//!
//! This module owns [`Balancer`], built once per (cluster, endpoints
//! version) from the xDS state and shared by every task through an `Arc`.
//! A pick takes `&self`, holds no lock, and does not allocate: round robin
//! is an atomic counter over a precomputed schedule, random and
//! least-request draw from a thread-local generator, ring hash and Maglev
//! are a binary search or an index into a table built up front. Each pick
//! returns an [`InFlight`] guard (inside [`Picked`]) that counts active
//! requests per endpoint for least-request; [`Balancer::rebuild`] carries
//! those counts over to the next endpoints version.
//!
//! Semantics follow Envoy's, simplified where noted:
//! - Only `Socket` endpoints are balanced; `Host` endpoints belong to DNS
//!   clusters, resolved at connect time, and are skipped here.
//! - Eligible endpoints are `Healthy`, then `Degraded` ones: the first
//!   priority (lowest number) with a healthy endpoint takes all traffic;
//!   if no priority has one, the first with a degraded one does. Envoy
//!   instead spills load across priorities in proportion to their health.
//!   `Draining` endpoints are used only when nothing is eligible and panic
//!   mode is off.
//! - Panic: availability is Envoy's normalised total, the sum over
//!   priorities of `min(100, 1.4 × eligible%)`, capped at 100. Below
//!   `healthy_panic_threshold_percent` (0 disables) every endpoint of the
//!   first priority is balanced over, whatever its health.
//! - Localities: when any locality of the chosen set has a weight, a
//!   locality is picked by weight × `min(1, 1.4 × eligible share)` (weight
//!   0 localities get nothing), then an endpoint within it. When none has
//!   a weight, all endpoints form one set.
//! - `RoundRobin`: weighted EDF schedule; `Random`: weighted draw;
//!   `LeastRequest`: `choice_count` weighted candidates (two distinct ones
//!   when weights are equal), the lowest `(active + 1) / weight` wins, as
//!   Envoy's active-request bias 1; `RingHash`: see [`ring`]; `Maglev`: a
//!   65537-slot Maglev table. Hash policies without a hash pick at random.
//!   `ClusterProvided` (original destination) picks nothing: the caller
//!   connects to the original destination.
//! - `exclude` (earlier tries) is avoided whenever another endpoint of the
//!   chosen set exists: hash policies walk on to the next point, the others
//!   draw again, then scan.

mod ewma;
mod hash;
mod outlier;
mod ring;
#[cfg(test)]
mod tests;
mod weighted;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::state::cluster::{Cluster, LbPolicy};
use crate::state::endpoint::{Endpoint, EndpointAddress, Endpoints, Health};

pub use hash::hash_key;
pub use outlier::Outcome;
use ring::{Maglev, Ring};
use weighted::Weighted;

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;
/// Extra random draws before scanning when the draw hits `exclude`.
const EXCLUDE_REDRAWS: usize = 3;

/// What the data path knows about a request when it picks an endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickRequest<'a> {
    /// The request's hash (from [`hash_key`]) for ring hash and Maglev.
    pub hash: Option<u64>,
    /// Endpoints already tried: retries go elsewhere when possible.
    pub exclude: &'a [SocketAddr],
}

/// A picked endpoint. Keep it for the request's life: dropping it ends
/// the request for least-request accounting.
#[derive(Debug)]
pub struct Picked {
    /// Where to connect.
    pub addr: SocketAddr,
    guard: InFlight,
}

impl Picked {
    /// The endpoint (labels and workload, for telemetry). A method rather
    /// than a field so a pick costs one reference-count increment, not two.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.guard.host.endpoint
    }

    /// The in-flight guard alone, for callers that keep it elsewhere.
    pub fn into_guard(self) -> InFlight {
        self.guard
    }
}

/// Counts one active request on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight {
    host: Arc<Host>,
}

impl InFlight {
    fn new(host: &Arc<Host>) -> Self {
        host.active.fetch_add(1, Relaxed);
        Self { host: host.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.host.active.fetch_sub(1, Relaxed);
    }
}

/// One balanced endpoint.
#[derive(Debug)]
struct Host {
    addr: SocketAddr,
    endpoint: Arc<Endpoint>,
    weight: u64,
    /// Active requests; shared with the same address in later rebuilds.
    active: Arc<AtomicUsize>,
    /// Outlier streaks and ejection; shared like `active`.
    outlier: Arc<outlier::State>,
    /// Peak-EWMA latency; shared like `active`.
    latency: Arc<ewma::PeakEwma>,
}

/// What an endpoint's balancers share across endpoint versions.
#[derive(Clone, Default)]
struct SharedHost {
    active: Arc<AtomicUsize>,
    outlier: Arc<outlier::State>,
    latency: Arc<ewma::PeakEwma>,
}

impl Host {
    fn active(&self) -> u64 {
        self.active.load(Relaxed) as u64
    }
}

/// The endpoints of one locality in [`Inner::hosts`].
#[derive(Debug)]
struct Slot {
    start: usize,
    len: usize,
    pick: Weighted,
}

#[derive(Debug)]
enum Policy {
    OriginalDst,
    RoundRobin,
    Random,
    LeastRequest { choices: usize },
    PeakEwma,
    Ring(Ring),
    Maglev(Maglev),
}

struct Inner {
    cluster: String,
    policy: Policy,
    len: usize,
    healthy_len: usize,
    panic: bool,
    /// The set balanced over, grouped by locality.
    hosts: Vec<Arc<Host>>,
    slots: Vec<Slot>,
    /// Chooses a slot; `None` when there is at most one.
    locality: Option<Weighted>,
    /// Outlier detection, when the cluster has it.
    detect: Option<Detect>,
    /// Host index by address (only with outlier detection).
    index: crate::FastMap<SocketAddr, usize>,
}

/// A cluster's outlier detection settings, as the balancer applies them.
#[derive(Debug, Clone, Copy)]
struct Detect {
    /// `(threshold, enforcing percent)` of the consecutive-5xx detector.
    consecutive_5xx: (u32, u32),
    /// The same for consecutive gateway failures.
    consecutive_gateway: (u32, u32),
    base_ejection_time: std::time::Duration,
    interval: std::time::Duration,
    max_ejection_percent: u32,
    /// Never eject below this share of balanced endpoints (Istio
    /// `minHealthPercent`, the panic threshold).
    min_health_percent: f64,
}

/// The load balancer of one cluster at one endpoints version. Cloning is
/// an `Arc` clone.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("Balancer")
            .field("cluster", &i.cluster)
            .field("policy", &i.policy)
            .field("len", &i.len)
            .field("healthy_len", &i.healthy_len)
            .field("panic", &i.panic)
            .field("balanced", &i.hosts.len())
            .field("localities", &i.slots.len())
            .finish()
    }
}

/// A `Socket` endpoint with where it came from.
struct Candidate<'a> {
    priority: u32,
    /// Index into `Endpoints::localities`.
    locality: usize,
    addr: SocketAddr,
    endpoint: &'a Endpoint,
}

fn eligible(h: Health) -> bool {
    matches!(h, Health::Healthy | Health::Degraded)
}

impl Balancer {
    /// A balancer over the `Socket` endpoints of `endpoints` (`Host`
    /// endpoints are skipped: they belong to DNS clusters).
    pub fn new(cluster: &Cluster, endpoints: &Endpoints) -> Self {
        Self::build(cluster, endpoints, &HashMap::new())
    }

    /// A balancer for a new version of the endpoints (or cluster) that
    /// keeps counting the requests still in flight on this one, so
    /// least-request stays accurate across EDS updates.
    pub fn rebuild(&self, cluster: &Cluster, endpoints: &Endpoints) -> Self {
        let shared = self
            .inner
            .hosts
            .iter()
            .map(|h| {
                let s = SharedHost {
                    active: h.active.clone(),
                    outlier: h.outlier.clone(),
                    latency: h.latency.clone(),
                };
                (h.addr, s)
            })
            .collect();
        Self::build(cluster, endpoints, &shared)
    }

    /// Records how long an attempt at `addr` took to its response headers
    /// (or its failure), for the peak-EWMA balancer; a no-op otherwise.
    pub fn observe(&self, addr: SocketAddr, took: std::time::Duration) {
        let inner = &*self.inner;
        if !matches!(inner.policy, Policy::PeakEwma) {
            return;
        }
        if let Some(&i) = inner.index.get(&addr) {
            inner.hosts[i].latency.observe(took);
        }
    }

    /// Records what an attempt at `addr` came to; with outlier detection
    /// on, a streak of errors ejects the endpoint (within the cluster's
    /// `maxEjectionPercent` and `minHealthPercent`).
    pub fn record(&self, addr: SocketAddr, outcome: Outcome) {
        let inner = &*self.inner;
        let (Some(d), Some(&i)) = (inner.detect, inner.index.get(&addr)) else {
            return;
        };
        let host = &inner.hosts[i];
        if host
            .outlier
            .record(outcome, d.consecutive_5xx, d.consecutive_gateway)
            != outlier::Verdict::Eject
        {
            return;
        }
        let now = outlier::now_ms();
        if host.outlier.is_ejected(now) {
            return;
        }
        let n = inner.hosts.len();
        let ejected = inner
            .hosts
            .iter()
            .filter(|h| h.outlier.is_ejected(now))
            .count();
        // Envoy ejects at least one endpoint whatever the percentage.
        let max = (n * d.max_ejection_percent as usize / 100).max(1);
        let left = n - ejected - 1;
        if ejected + 1 > max || (left as f64) * 100.0 < d.min_health_percent * n as f64 {
            tracing::debug!(cluster = %inner.cluster, %addr, ejected, "outlier not ejected: ejection limits reached");
            return;
        }
        let length = host.outlier.eject(now, d.base_ejection_time, d.interval);
        tracing::info!(cluster = %inner.cluster, %addr, ?length, "outlier detection: endpoint ejected");
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// The number of `Socket` endpoints, whatever their health.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether there are no `Socket` endpoints.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The number of `Socket` endpoints that are healthy or degraded.
    pub fn healthy_len(&self) -> usize {
        self.inner.healthy_len
    }

    /// Whether too few endpoints are healthy and all are balanced over.
    pub fn is_panic(&self) -> bool {
        self.inner.panic
    }

    /// An endpoint for `req`, or `None` when there is none to pick (no
    /// eligible endpoint, or an original-destination cluster).
    pub fn pick(&self, req: &PickRequest<'_>) -> Option<Picked> {
        let inner = &*self.inner;
        if inner.hosts.is_empty() {
            return None;
        }
        let now = inner.detect.map(|_| outlier::now_ms());
        let ok = |i: usize| {
            !req.exclude.contains(&inner.hosts[i].addr)
                && now.is_none_or(|now| !inner.hosts[i].outlier.is_ejected(now))
        };
        let index = match &inner.policy {
            Policy::OriginalDst => return None,
            Policy::Ring(ring) => ring.pick(req.hash.unwrap_or_else(|| fastrand::u64(..)), ok)?,
            Policy::Maglev(table) => {
                table.pick(req.hash.unwrap_or_else(|| fastrand::u64(..)), ok)?
            }
            Policy::RoundRobin => inner.avoid(ok, || {
                let slot = inner.slot(Weighted::next);
                slot.start + slot.pick.next()
            }),
            Policy::Random => inner.avoid(ok, || {
                let slot = inner.slot(Weighted::random);
                slot.start + slot.pick.random()
            }),
            Policy::LeastRequest { choices } => inner.avoid(ok, || {
                inner.least_request(inner.slot(Weighted::random), *choices)
            }),
            Policy::PeakEwma => inner.avoid(ok, || inner.peak_ewma(inner.slot(Weighted::random))),
        };
        let host = inner.hosts.get(index)?;
        Some(Picked {
            addr: host.addr,
            guard: InFlight::new(host),
        })
    }

    fn build(
        cluster: &Cluster,
        endpoints: &Endpoints,
        shared: &HashMap<SocketAddr, SharedHost>,
    ) -> Self {
        let candidates: Vec<Candidate<'_>> = endpoints
            .localities
            .iter()
            .enumerate()
            .flat_map(|(locality, l)| {
                l.endpoints.iter().filter_map(move |e| match e.address {
                    EndpointAddress::Socket(addr) => Some(Candidate {
                        priority: l.priority,
                        locality,
                        addr,
                        endpoint: e,
                    }),
                    EndpointAddress::Host { .. } => None,
                })
            })
            .collect();
        let healthy_len = candidates
            .iter()
            .filter(|c| eligible(c.endpoint.health))
            .count();

        // Envoy's normalised total availability, in percent.
        let mut per_priority: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for c in &candidates {
            let (total, ok) = per_priority.entry(c.priority).or_default();
            *total += 1;
            *ok += u64::from(eligible(c.endpoint.health));
        }
        let availability: u64 = per_priority
            .values()
            .map(|&(total, ok)| (OVERPROVISIONING * ok / total).min(100))
            .sum::<u64>()
            .min(100);
        let threshold = cluster.healthy_panic_threshold_percent;
        let panic = !candidates.is_empty() && threshold > 0.0 && (availability as f64) < threshold;

        // The set to balance over.
        let first_with = |h: Health| {
            candidates
                .iter()
                .filter(|c| c.endpoint.health == h)
                .map(|c| c.priority)
                .min()
                .map(|p| (p, h))
        };
        let chosen: Vec<&Candidate<'_>> = if panic {
            let first = per_priority.keys().next().copied();
            candidates
                .iter()
                .filter(|c| Some(c.priority) == first)
                .collect()
        } else {
            match first_with(Health::Healthy)
                .or_else(|| first_with(Health::Degraded))
                .or_else(|| first_with(Health::Draining))
            {
                Some((p, h)) => candidates
                    .iter()
                    .filter(|c| c.priority == p && c.endpoint.health == h)
                    .collect(),
                None => Vec::new(),
            }
        };

        // Group by locality; weigh localities when any has a weight.
        let mut groups: BTreeMap<usize, Vec<&Candidate<'_>>> = BTreeMap::new();
        for c in chosen {
            groups.entry(c.locality).or_default().push(c);
        }
        let weighted = groups.keys().any(|&l| endpoints.localities[l].weight > 0);
        let groups: Vec<(u64, Vec<&Candidate<'_>>)> = if weighted {
            groups
                .into_iter()
                .filter_map(|(l, members)| {
                    let total = candidates.iter().filter(|c| c.locality == l).count() as u64;
                    let share =
                        (OVERPROVISIONING * 10 * members.len() as u64 / total.max(1)).min(1000);
                    let w = u64::from(endpoints.localities[l].weight) * share;
                    (w > 0).then_some((w, members))
                })
                .collect()
        } else {
            let all = groups.into_values().flatten().collect();
            vec![(1, all)]
        };

        let policy = match cluster.lb {
            LbPolicy::ClusterProvided => Policy::OriginalDst,
            LbPolicy::RoundRobin => Policy::RoundRobin,
            LbPolicy::Random => Policy::Random,
            LbPolicy::LeastRequest { choice_count } => Policy::LeastRequest {
                choices: choice_count.max(2) as usize,
            },
            LbPolicy::PeakEwma => Policy::PeakEwma,
            // Placeholders: the tables need the hosts, built below.
            LbPolicy::RingHash { .. } | LbPolicy::Maglev => Policy::Random,
        };
        let round_robin = matches!(policy, Policy::RoundRobin);
        let mut hosts = Vec::new();
        let mut slots = Vec::new();
        let mut table_weights = Vec::new();
        let locality_total: u64 = groups.iter().map(|g| g.0).sum();
        for (lw, members) in &groups {
            let start = hosts.len();
            let weights: Vec<u64> = members
                .iter()
                .map(|c| u64::from(c.endpoint.weight.max(1)))
                .collect();
            let sum: u64 = weights.iter().sum();
            for (c, &weight) in members.iter().zip(&weights) {
                let s = shared.get(&c.addr).cloned().unwrap_or_default();
                hosts.push(Arc::new(Host {
                    addr: c.addr,
                    endpoint: Arc::new(c.endpoint.clone()),
                    weight,
                    active: s.active,
                    outlier: s.outlier,
                    latency: s.latency,
                }));
                table_weights.push(
                    weight as f64 / sum.max(1) as f64 * *lw as f64 / locality_total.max(1) as f64,
                );
            }
            if !weights.is_empty() {
                slots.push(Slot {
                    start,
                    len: weights.len(),
                    pick: Weighted::new(&weights, round_robin),
                });
            }
        }
        let locality = (slots.len() > 1).then(|| {
            let w: Vec<u64> = groups.iter().map(|g| g.0).collect();
            Weighted::new(&w, round_robin)
        });
        let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.addr).collect();
        let policy = match cluster.lb {
            LbPolicy::RingHash { min_ring_size } => {
                Policy::Ring(Ring::new(&addrs, &table_weights, min_ring_size))
            }
            LbPolicy::Maglev => Policy::Maglev(Maglev::new(&addrs, &table_weights)),
            _ => policy,
        };
        let detect = cluster.outlier_detection.as_ref().map(|o| Detect {
            consecutive_5xx: (o.consecutive_5xx, o.enforcing_consecutive_5xx),
            consecutive_gateway: (
                o.consecutive_gateway_failure,
                o.enforcing_consecutive_gateway_failure,
            ),
            base_ejection_time: o.base_ejection_time,
            interval: o.interval,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: cluster.healthy_panic_threshold_percent,
        });
        let index = if detect.is_some() || matches!(policy, Policy::PeakEwma) {
            hosts.iter().enumerate().map(|(i, h)| (h.addr, i)).collect()
        } else {
            crate::FastMap::default()
        };
        Self {
            inner: Arc::new(Inner {
                cluster: cluster.name.clone(),
                policy,
                len: candidates.len(),
                healthy_len,
                panic,
                hosts,
                slots,
                locality,
                detect,
                index,
            }),
        }
    }
}

impl Inner {
    /// A locality's slot, chosen by `how` when there are several.
    fn slot(&self, how: fn(&Weighted) -> usize) -> &Slot {
        let i = self.locality.as_ref().map_or(0, how);
        &self.slots[i.min(self.slots.len() - 1)]
    }

    /// `draw()`, drawn again (then scanned) while it lands on an endpoint
    /// `ok` refuses (excluded by a retry, or ejected); the first draw when
    /// every endpoint is refused.
    fn avoid(&self, ok: impl Fn(usize) -> bool, draw: impl Fn() -> usize) -> usize {
        let first = draw();
        if ok(first) {
            return first;
        }
        if let Some(i) = (0..EXCLUDE_REDRAWS).map(|_| draw()).find(|&i| ok(i)) {
            return i;
        }
        let n = self.hosts.len();
        (1..n)
            .map(|k| (first + k) % n)
            .find(|&i| ok(i))
            .unwrap_or(first)
    }

    /// Power of two choices within `slot` (two distinct endpoints when there
    /// are two or more) by peak-EWMA latency × (active + 1) / weight.
    fn peak_ewma(&self, slot: &Slot) -> usize {
        let hosts = &self.hosts[slot.start..slot.start + slot.len];
        let a = slot.pick.random();
        if slot.len < 2 {
            return slot.start + a;
        }
        let b = (a + 1 + fastrand::usize(..slot.len - 1)) % slot.len;
        let cost = |h: &Host| h.latency.cost(h.active()) / h.weight.max(1) as f64;
        let best = if cost(&hosts[b]) < cost(&hosts[a]) {
            b
        } else {
            a
        };
        slot.start + best
    }

    /// Power of `choices` choices within `slot` by `(active + 1) / weight`.
    fn least_request(&self, slot: &Slot, choices: usize) -> usize {
        let hosts = &self.hosts[slot.start..slot.start + slot.len];
        let cost_lt = |a: &Host, b: &Host| {
            u128::from(a.active() + 1) * u128::from(b.weight)
                < u128::from(b.active() + 1) * u128::from(a.weight)
        };
        if choices >= slot.len {
            // Every endpoint is a candidate; start anywhere so ties spread.
            let n = hosts.len();
            let start = fastrand::usize(..n);
            let mut best = start;
            for i in (1..n).map(|k| (start + k) % n) {
                if cost_lt(&hosts[i], &hosts[best]) {
                    best = i;
                }
            }
            return slot.start + best;
        }
        let mut best = slot.pick.random();
        for _ in 1..choices {
            let mut c = slot.pick.random();
            if c == best && slot.pick.is_uniform() {
                // Two distinct candidates when weights are equal.
                c = (best + 1 + fastrand::usize(..slot.len - 1)) % slot.len;
            }
            if cost_lt(&hosts[c], &hosts[best]) {
                best = c;
            }
        }
        slot.start + best
    }
}
