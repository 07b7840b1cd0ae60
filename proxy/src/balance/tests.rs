//! Behaviour tests of [`Balancer`]: split ratios, health and panic,
//! priorities and localities, least-request, hashing and retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::state::cluster::{CircuitBreakers, Discovery, UpstreamProtocol};
use crate::state::endpoint::{Locality, LocalityEndpoints};

fn cluster(lb: LbPolicy) -> Cluster {
    Cluster {
        name: "outbound|80||svc.ns.svc.cluster.local".into(),
        discovery: Discovery::Eds {
            service_name: "outbound|80||svc.ns.svc.cluster.local".into(),
        },
        lb,
        connect_timeout: Duration::from_secs(1),
        circuit_breakers: CircuitBreakers::default(),
        outlier_detection: None,
        protocol: UpstreamProtocol::Http1,
        idle_timeout: None,
        max_requests_per_connection: 0,
        healthy_panic_threshold_percent: 50.0,
        istio: None,
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

fn ep(i: u8, weight: u32, health: Health) -> Endpoint {
    Endpoint {
        address: EndpointAddress::Socket(addr(i)),
        weight,
        health,
        labels: Default::default(),
        workload: None,
    }
}

fn locality(zone: &str, weight: u32, priority: u32, endpoints: Vec<Endpoint>) -> LocalityEndpoints {
    LocalityEndpoints {
        locality: Locality {
            region: "r".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        },
        weight,
        priority,
        endpoints,
    }
}

fn flat(endpoints: Vec<Endpoint>) -> Endpoints {
    Endpoints {
        cluster_name: "c".into(),
        localities: vec![locality("a", 0, 0, endpoints)],
    }
}

fn healthy(n: u8) -> Endpoints {
    flat((1..=n).map(|i| ep(i, 1, Health::Healthy)).collect())
}

/// Picks per address over `n` picks, each released at once.
fn spread(b: &Balancer, n: usize, req: &PickRequest<'_>) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let p = b.pick(req).expect("an endpoint");
        *counts.entry(p.addr).or_default() += 1;
    }
    counts
}

#[test]
fn round_robin_spreads_evenly() {
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &healthy(3));
    let c = spread(&b, 3000, &PickRequest::default());
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|&n| n == 1000), "{c:?}");
}

#[test]
fn weights_one_to_three_give_a_quarter_and_three_quarters() {
    fastrand::seed(1);
    let eps = flat(vec![ep(1, 1, Health::Healthy), ep(2, 3, Health::Healthy)]);
    for lb in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::RingHash {
            min_ring_size: 1024,
        },
        LbPolicy::Maglev,
    ] {
        let b = Balancer::new(&cluster(lb), &eps);
        let c = spread(&b, 4000, &PickRequest::default());
        let share = c[&addr(1)] as f64 / 4000.0;
        assert!((0.22..=0.28).contains(&share), "{lb:?}: {share}");
    }
}

#[test]
fn unhealthy_endpoints_are_skipped_until_panic() {
    let mut eps: Vec<Endpoint> = (1..=4).map(|i| ep(i, 1, Health::Healthy)).collect();
    eps.push(ep(5, 1, Health::Unhealthy));
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &flat(eps));
    assert_eq!((b.len(), b.healthy_len(), b.is_panic()), (5, 4, false));
    assert!(!spread(&b, 1000, &PickRequest::default()).contains_key(&addr(5)));

    // 1 of 5 available: 1.4 × 20% = 28% < 50%, so all five share the load.
    let mut eps: Vec<Endpoint> = (1..=4).map(|i| ep(i, 1, Health::Unhealthy)).collect();
    eps.push(ep(5, 1, Health::Healthy));
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &flat(eps.clone()));
    assert!(b.is_panic());
    assert_eq!(spread(&b, 1000, &PickRequest::default()).len(), 5);

    // Threshold 0 disables panic mode.
    let mut c = cluster(LbPolicy::RoundRobin);
    c.healthy_panic_threshold_percent = 0.0;
    let b = Balancer::new(&c, &flat(eps));
    let s = spread(&b, 100, &PickRequest::default());
    assert_eq!(s.keys().collect::<Vec<_>>(), vec![&addr(5)]);

    // Nothing available and no panic: nothing to pick.
    let b = Balancer::new(&c, &flat(vec![ep(1, 1, Health::Unhealthy)]));
    assert!(b.pick(&PickRequest::default()).is_none());
}

#[test]
fn degraded_is_used_only_without_healthy() {
    let eps = flat(vec![ep(1, 1, Health::Healthy), ep(2, 1, Health::Degraded)]);
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &eps);
    assert_eq!(b.healthy_len(), 2);
    assert_eq!(spread(&b, 100, &PickRequest::default()).len(), 1);
    let eps = flat(vec![
        ep(1, 1, Health::Unhealthy),
        ep(2, 1, Health::Degraded),
    ]);
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &eps);
    assert!(!b.is_panic());
    assert_eq!(
        b.pick(&PickRequest::default()).map(|p| p.addr),
        Some(addr(2))
    );
}

#[test]
fn higher_priorities_take_over_only_when_priority_zero_is_down() {
    let mut eps = Endpoints {
        cluster_name: "c".into(),
        localities: vec![
            locality(
                "a",
                0,
                0,
                vec![ep(1, 1, Health::Healthy), ep(2, 1, Health::Unhealthy)],
            ),
            locality("b", 0, 1, vec![ep(3, 1, Health::Healthy)]),
        ],
    };
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &eps);
    let s = spread(&b, 100, &PickRequest::default());
    assert_eq!(s.keys().collect::<Vec<_>>(), vec![&addr(1)]);

    eps.localities[0].endpoints[0].health = Health::Unhealthy;
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &eps);
    assert!(!b.is_panic(), "priority 1 is fully available");
    let s = spread(&b, 100, &PickRequest::default());
    assert_eq!(s.keys().collect::<Vec<_>>(), vec![&addr(3)]);
}

#[test]
fn locality_weights_one_to_four() {
    fastrand::seed(2);
    let eps = Endpoints {
        cluster_name: "c".into(),
        localities: vec![
            locality(
                "a",
                1,
                0,
                vec![ep(1, 1, Health::Healthy), ep(2, 1, Health::Healthy)],
            ),
            locality(
                "b",
                4,
                0,
                vec![ep(3, 1, Health::Healthy), ep(4, 1, Health::Healthy)],
            ),
        ],
    };
    for lb in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest { choice_count: 2 },
    ] {
        let b = Balancer::new(&cluster(lb), &eps);
        let c = spread(&b, 5000, &PickRequest::default());
        let a = (c.get(&addr(1)).unwrap_or(&0) + c.get(&addr(2)).unwrap_or(&0)) as f64 / 5000.0;
        assert!((0.17..=0.23).contains(&a), "{lb:?}: {a}");
    }
}

#[test]
fn unhealthy_share_lowers_a_locality_weight() {
    // Locality a: 1 of 4 available, so 1.4 × 25% = 35% of its weight.
    let mut a: Vec<Endpoint> = (1..=3).map(|i| ep(i, 1, Health::Unhealthy)).collect();
    a.push(ep(4, 1, Health::Healthy));
    let eps = Endpoints {
        cluster_name: "c".into(),
        localities: vec![
            locality("a", 1, 0, a),
            locality(
                "b",
                1,
                0,
                vec![ep(5, 1, Health::Healthy), ep(6, 1, Health::Healthy)],
            ),
        ],
    };
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &eps);
    let c = spread(&b, 1350, &PickRequest::default());
    assert_eq!(c[&addr(4)], 350, "{c:?}");
}

#[test]
fn least_request_prefers_fewer_in_flight() {
    fastrand::seed(3);
    let b = Balancer::new(
        &cluster(LbPolicy::LeastRequest { choice_count: 2 }),
        &healthy(2),
    );
    let held: Vec<Picked> = (0..3)
        .map(|_| b.pick(&PickRequest::default()).expect("an endpoint"))
        .collect();
    // Three picks with releases kept: 2 on one endpoint, 1 on the other.
    let busy = if held.iter().filter(|p| p.addr == addr(1)).count() >= 2 {
        addr(1)
    } else {
        addr(2)
    };
    let c = spread(&b, 200, &PickRequest::default());
    assert_eq!(c.get(&busy), None, "{c:?}");
    drop(held);
    let c = spread(&b, 200, &PickRequest::default());
    assert_eq!(c.len(), 2);
}

#[test]
fn least_request_counts_survive_rebuilds() {
    let c = cluster(LbPolicy::LeastRequest { choice_count: 2 });
    let b = Balancer::new(&c, &healthy(2));
    let held = b.pick(&PickRequest::default()).expect("an endpoint");
    let next = b.rebuild(&c, &healthy(2));
    for _ in 0..50 {
        assert_ne!(
            next.pick(&PickRequest::default()).map(|p| p.addr),
            Some(held.addr)
        );
    }
}

#[test]
fn ring_hash_is_consistent() {
    let c = cluster(LbPolicy::RingHash {
        min_ring_size: 1024,
    });
    let b = Balancer::new(&c, &healthy(4));
    let again = Balancer::new(&c, &healthy(4));
    let pick = |b: &Balancer, k: u64| {
        b.pick(&PickRequest {
            hash: Some(hash_key(&k.to_le_bytes())),
            exclude: &[],
        })
        .map(|p| p.addr)
    };
    for k in 0..200 {
        assert_eq!(pick(&b, k), pick(&b, k));
        assert_eq!(pick(&b, k), pick(&again, k));
    }
    let fewer = Balancer::new(&c, &healthy(3));
    let moved = (0..1000)
        .filter(|&k| pick(&b, k) != pick(&fewer, k))
        .count();
    assert!((150..=350).contains(&moved), "{moved} of 1000 keys moved");
    let on_removed = (0..1000).filter(|&k| pick(&b, k) == Some(addr(4))).count();
    assert_eq!(moved, on_removed, "only the removed endpoint's keys move");
}

#[test]
fn maglev_is_consistent() {
    let c = cluster(LbPolicy::Maglev);
    let b = Balancer::new(&c, &healthy(4));
    let again = Balancer::new(&c, &healthy(4));
    for k in 0..200u64 {
        let req = PickRequest {
            hash: Some(hash_key(&k.to_le_bytes())),
            exclude: &[],
        };
        assert_eq!(
            b.pick(&req).map(|p| p.addr),
            again.pick(&req).map(|p| p.addr)
        );
    }
}

#[test]
fn exclude_is_honoured_when_possible() {
    fastrand::seed(4);
    for lb in [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest { choice_count: 2 },
        LbPolicy::RingHash {
            min_ring_size: 1024,
        },
        LbPolicy::Maglev,
    ] {
        let b = Balancer::new(&cluster(lb), &healthy(3));
        let exclude = [addr(1), addr(2)];
        for k in 0..100u64 {
            let req = PickRequest {
                hash: Some(k),
                exclude: &exclude,
            };
            assert_eq!(b.pick(&req).map(|p| p.addr), Some(addr(3)), "{lb:?}");
        }
        // Everything excluded: still pick rather than fail.
        let all = [addr(1), addr(2), addr(3)];
        let req = PickRequest {
            hash: None,
            exclude: &all,
        };
        assert!(b.pick(&req).is_some(), "{lb:?}");
    }
}

#[test]
fn cluster_provided_picks_nothing() {
    let b = Balancer::new(&cluster(LbPolicy::ClusterProvided), &healthy(3));
    assert!(b.pick(&PickRequest::default()).is_none());
}

#[test]
fn host_endpoints_are_skipped_and_metadata_is_kept() {
    let mut named = ep(9, 1, Health::Healthy);
    named.address = EndpointAddress::Host {
        host: "db.example.com".into(),
        port: 5432,
    };
    let mut labelled = ep(1, 1, Health::Healthy);
    labelled.labels.insert("version".into(), "v1".into());
    let b = Balancer::new(&cluster(LbPolicy::RoundRobin), &flat(vec![named, labelled]));
    assert_eq!((b.len(), b.healthy_len()), (1, 1));
    let p = b.pick(&PickRequest::default()).expect("an endpoint");
    assert_eq!(p.endpoint().labels["version"], "v1");
    let ring = Balancer::new(&cluster(LbPolicy::Maglev), &healthy(3));
    assert!(format!("{ring:?}").len() < 300, "Debug stays a summary");
    assert!(
        Balancer::new(&cluster(LbPolicy::RoundRobin), &Endpoints::default())
            .pick(&PickRequest::default())
            .is_none()
    );
}
