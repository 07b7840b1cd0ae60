//! Load balancing as a client of the mesh sees it: keel-pilot serving a
//! ServiceEntry whose endpoints are keel-echo processes, a keel-proxy
//! sidecar in front, and a few hundred requests through its outbound
//! listener, counted by which echo answered (`x-echo-name`). One test per
//! DestinationRule feature; tolerances are stated where they are set.
#![allow(clippy::unwrap_used)]

#[path = "balancing/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::{Duration, Instant};

use keel_e2e::Echo;
use support::{
    Client, Ep, Load, Mesh, SETTLE, destination_rule, echo, ep, failures, first_route,
    plain_virtual_service, service_entry, tally, wait_for,
};

const HOST: &str = "echo.test:9080";
/// The same endpoints under a second name whose route comes from a
/// VirtualService (pilot's hash-policy code path differs from the default
/// route's).
const VS_HOST: &str = "echo-vs.test:9080";

/// Three echoes `e1`, `e2`, `e3` (versions v1, v2, v3), with `slow` extra
/// arguments for `e3`.
fn three_echoes(slow: &[&str]) -> Vec<Echo> {
    vec![
        echo("e1", "v1", &[]),
        echo("e2", "v2", &[]),
        echo("e3", "v3", slow),
    ]
}

fn eps(echoes: &[Echo]) -> Vec<Ep> {
    echoes
        .iter()
        .enumerate()
        .map(|(i, e)| ep(e.addr.port(), &format!("v{}", i + 1)))
        .collect()
}

/// `echo.test` over `echoes` with a DestinationRule `load_balancer`.
fn mesh_with_lb(echoes: &[Echo], load_balancer: &str) -> Mesh {
    let yaml = service_entry("echo", "echo.test", 9080, "HTTP", &eps(echoes))
        + &destination_rule("echo", "echo.test", load_balancer);
    let mesh = Mesh::start(&[("echo.yaml", yaml)], &[]);
    mesh.wait_routable(HOST);
    mesh
}

/// `echo.test` (default route) and `echo-vs.test` (VirtualService route),
/// both over `echoes` and both with the DestinationRule `load_balancer`.
fn mesh_with_hash(echoes: &[Echo], load_balancer: &str) -> Mesh {
    let yaml = service_entry("echo", "echo.test", 9080, "HTTP", &eps(echoes))
        + &destination_rule("echo", "echo.test", load_balancer)
        + &service_entry("echo-vs", "echo-vs.test", 9080, "HTTP", &eps(echoes))
        + &destination_rule("echo-vs", "echo-vs.test", load_balancer)
        + &plain_virtual_service("echo-vs", "echo-vs.test");
    let mesh = Mesh::start(&[("echo.yaml", yaml)], &[]);
    mesh.wait_routable(HOST);
    mesh.wait_routable(VS_HOST);
    mesh
}

/// `n` sequential requests on one connection; every one must be a 200 from
/// an echo. Returns the answering names in order.
fn sequential(mesh: &Mesh, host: &str, n: usize) -> Vec<String> {
    let mut client = Client::new(mesh.outbound());
    (0..n)
        .map(|i| {
            let r = client.get(host, "/", &[]).unwrap();
            r.echo_name()
                .unwrap_or_else(|e| panic!("request {i} to {host} failed: {e}"))
        })
        .collect()
}

/// The hash policies the proxy has on `vhost`'s first route, for messages.
fn hash_policies(mesh: &Mesh, vhost: &str) -> String {
    let dump = mesh.proxy.config_dump().unwrap();
    first_route(&dump, "9080", vhost)["action"]["forward"]["hash_policies"].to_string()
}

#[test]
fn round_robin_spreads_exactly_evenly_over_three_endpoints() {
    let echoes = three_echoes(&[]);
    let mesh = mesh_with_lb(&echoes, "{simple: ROUND_ROBIN}");
    const N: usize = 300;
    let names = sequential(&mesh, HOST, N);
    let counts = tally(names);
    eprintln!("ROUND_ROBIN over {N}: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    // Round robin is deterministic: each gets N/3, ±2 for where the
    // schedule stood after the warm-up request.
    for (name, n) in &counts {
        assert!(n.abs_diff(N / 3) <= 2, "{name} got {n} of {N}: {counts:?}");
    }
}

#[test]
fn least_request_sends_clearly_less_to_a_slow_endpoint() {
    let echoes = three_echoes(&["--delay-ms", "200"]);
    let mesh = mesh_with_lb(&echoes, "{simple: LEAST_REQUEST}");
    let counts = concurrent_counts(&mesh, HOST);
    eprintln!("LEAST_REQUEST over {CONCURRENT_N}: {counts:?}");
    assert_slow_avoided(&counts);
}

/// Istio's default load balancer (no `simple`, or no DestinationRule at all)
/// is LEAST_REQUEST, so a slow endpoint is avoided by default too.
#[test]
fn default_policy_is_least_request() {
    let echoes = three_echoes(&["--delay-ms", "200"]);
    let yaml = service_entry("echo", "echo.test", 9080, "HTTP", &eps(&echoes));
    let mesh = Mesh::start(&[("echo.yaml", yaml)], &[]);
    mesh.wait_routable(HOST);
    let counts = concurrent_counts(&mesh, HOST);
    let dump = mesh.proxy.config_dump().unwrap();
    assert!(
        counts.get("e3").copied().unwrap_or(0) <= CONCURRENT_N / 6,
        "without a DestinationRule the slow endpoint e3 still got {counts:?} of {CONCURRENT_N}; \
         the cluster's balancer is {} (Istio defaults to LEAST_REQUEST)",
        dump["clusters"]["outbound|9080||echo.test"]["lb"]
    );
}

/// Requests from 8 threads at once, 40 each.
const CONCURRENT_N: usize = 8 * 40;

fn concurrent_counts(mesh: &Mesh, host: &str) -> BTreeMap<String, usize> {
    let out = mesh.outbound();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let host = host.to_string();
            thread::spawn(move || {
                let mut c = Client::new(out);
                (0..CONCURRENT_N / 8)
                    .map(|_| c.get(&host, "/", &[]).unwrap().echo_name())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Result<String, String>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    tally(results.into_iter().flatten())
}

fn assert_slow_avoided(counts: &BTreeMap<String, usize>) {
    let slow = counts.get("e3").copied().unwrap_or(0);
    // Round robin would give the slow one a third (~107). Least request
    // keeps its active requests level with the fast ones', a handful per
    // 200 ms: typically ~5 %. Half of round robin's share is the bound.
    assert!(
        slow <= CONCURRENT_N / 6,
        "slow endpoint e3 got {slow} of {CONCURRENT_N}: {counts:?}"
    );
    for fast in ["e1", "e2"] {
        let n = counts.get(fast).copied().unwrap_or(0);
        assert!(
            n >= CONCURRENT_N * 7 / 20,
            "fast endpoint {fast} got only {n} of {CONCURRENT_N}: {counts:?}"
        );
    }
}

#[test]
fn random_is_roughly_uniform_and_not_a_fixed_cycle() {
    let echoes = three_echoes(&[]);
    let mesh = mesh_with_lb(&echoes, "{simple: RANDOM}");
    const N: usize = 450;
    let names = sequential(&mesh, HOST, N);
    let counts = tally(names.iter().cloned());
    eprintln!("RANDOM over {N}: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    // Expected 150 each, σ = 10: ±45 is 4.5σ.
    for (name, n) in &counts {
        assert!(n.abs_diff(N / 3) <= 45, "{name} got {n} of {N}: {counts:?}");
    }
    // Round robin would repeat with period 3.
    assert!(
        names.windows(4).any(|w| w[0] != w[3]),
        "RANDOM picked a strict 3-cycle: {:?}",
        &names[..12]
    );
}

/// For each of 30 keys: `per_key` requests built by `request` all reach
/// the same endpoint. Returns key → endpoint.
fn sticky_by_key(
    host: &str,
    per_key: usize,
    mut request: impl FnMut(usize) -> Result<String, String>,
) -> BTreeMap<usize, String> {
    let mut by_key = BTreeMap::new();
    for key in 0..30 {
        let got: BTreeSet<String> = (0..per_key)
            .map(|_| request(key).unwrap_or_else(|e| panic!("{host} key {key}: {e}")))
            .collect();
        assert_eq!(
            got.len(),
            1,
            "{host}: key {key} was answered by several endpoints: {got:?}"
        );
        by_key.insert(key, got.into_iter().next().unwrap());
    }
    by_key
}

/// 30 keys on a 3-endpoint ring of ≥1024 points: each endpoint owns about
/// a third, so one owning none has probability ~3·(2/3)^30 ≈ 2e-5.
fn assert_spread(mesh: &Mesh, host: &str, by_key: &BTreeMap<usize, String>) {
    let used: BTreeSet<&String> = by_key.values().collect();
    assert_eq!(
        used.len(),
        3,
        "{host}: 30 different hash keys all went to {used:?}; the proxy's route has \
         hash_policies {}",
        hash_policies(mesh, host)
    );
}

// The consistent-hash tests check each key first on `echo-vs.test` (route
// from a VirtualService), then on `echo.test` (pilot's default route): Istio
// puts the DestinationRule's hash policy on both.

#[test]
fn ring_hash_by_header_is_sticky_per_value_and_spreads_values() {
    let echoes = three_echoes(&[]);
    let mesh = mesh_with_hash(&echoes, "{consistentHash: {httpHeaderName: x-user}}");
    let out = mesh.outbound();
    for host in [VS_HOST, HOST] {
        let mut client = Client::new(out);
        let by_user = sticky_by_key(host, 5, |key| {
            let user = format!("user-{key}");
            client
                .get(host, "/", &[("x-user", &user)])
                .unwrap()
                .echo_name()
        });
        assert_spread(&mesh, host, &by_user);
    }
}

#[test]
fn ring_hash_by_cookie_sets_the_cookie_and_sticks_to_it() {
    let echoes = three_echoes(&[]);
    let mesh = mesh_with_hash(
        &echoes,
        "{consistentHash: {httpCookie: {name: user, ttl: 10s}}}",
    );
    let out = mesh.outbound();
    for host in [VS_HOST, HOST] {
        let mut client = Client::new(out);
        let by_cookie = sticky_by_key(host, 1, |_| {
            // First visit: no cookie; the proxy picks one and sets it.
            let first = client.get(host, "/", &[]).unwrap();
            let first_name = first.echo_name()?;
            let set = first.header("set-cookie").unwrap_or_else(|| {
                panic!(
                    "{host}: the first response has no Set-Cookie ({}); the proxy's route \
                     has hash_policies {}",
                    first.describe(),
                    hash_policies(&mesh, host)
                )
            });
            assert!(
                set.starts_with("user=") && set.contains("Max-Age=10"),
                "{host}: Set-Cookie {set:?}"
            );
            let cookie = set.split(';').next().unwrap().to_string();
            // Replays stick to the endpoint that answered the first visit.
            for _ in 0..5 {
                let again = client.get(host, "/", &[("cookie", &cookie)]).unwrap();
                assert!(
                    again.header("set-cookie").is_none(),
                    "{host}: a request carrying {cookie} got a new cookie"
                );
                assert_eq!(
                    again.echo_name()?,
                    first_name,
                    "{host}: {cookie} moved endpoints"
                );
            }
            Ok(first_name)
        });
        assert_spread(&mesh, host, &by_cookie);
    }
}

#[test]
fn ring_hash_by_source_ip_is_stable_per_client_across_connections() {
    let echoes = three_echoes(&[]);
    let mesh = mesh_with_hash(&echoes, "{consistentHash: {useSourceIp: true}}");
    let out = mesh.outbound();
    for host in [VS_HOST, HOST] {
        let by_ip = sticky_by_key(host, 4, |key| {
            // A new connection per request, from 127.0.0.(10+key).
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + key as u8));
            Client::from_ip(out, ip)
                .get(host, "/", &[])
                .unwrap()
                .echo_name()
        });
        assert_spread(&mesh, host, &by_ip);
    }
}

/// Endpoint weights from a ServiceEntry's inline endpoints and from
/// WorkloadEntries: weight 3 against weight 1 under round robin is 3:1.
#[test]
fn endpoint_weights_split_round_robin_three_to_one() {
    let heavy = echo("heavy", "v1", &[]);
    let light = echo("light", "v2", &[]);
    let mut inline = vec![ep(heavy.addr.port(), "v1"), ep(light.addr.port(), "v2")];
    inline[0].weight = Some(3);
    inline[1].weight = Some(1);
    let workload_entries = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: weighted-we, namespace: default}}
spec:
  hosts: [weighted-we.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: weighted}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: heavy, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: weighted, version: v1}}, weight: 3}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: light, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: weighted, version: v2}}, weight: 1}}
---
",
        heavy.addr.port(),
        light.addr.port()
    );
    let yaml = service_entry("weighted", "weighted.test", 9080, "HTTP", &inline)
        + &destination_rule("weighted", "weighted.test", "{simple: ROUND_ROBIN}")
        + &workload_entries
        + &destination_rule("weighted-we", "weighted-we.test", "{simple: ROUND_ROBIN}");
    let mesh = Mesh::start(&[("weighted.yaml", yaml)], &[]);
    for host in ["weighted.test:9080", "weighted-we.test:9080"] {
        mesh.wait_routable(host);
        const N: usize = 400;
        let counts = tally(sequential(&mesh, host, N));
        // Weighted round robin is deterministic: 300/100, ±2 for where the
        // schedule stood after the warm-up request.
        let heavy_n = counts.get("heavy").copied().unwrap_or(0);
        let light_n = counts.get("light").copied().unwrap_or(0);
        assert!(
            heavy_n.abs_diff(N * 3 / 4) <= 2 && light_n.abs_diff(N / 4) <= 2,
            "{host}: weights 3:1 gave {counts:?} of {N}"
        );
    }
}

/// No active health checks: an endpoint goes away when its ServiceEntry
/// stops listing it. Removed endpoints must stop getting traffic within a
/// few seconds, without a single failed request, and may then shut down.
#[test]
fn removed_endpoints_stop_receiving_traffic_without_failures() {
    let mut echoes = three_echoes(&[]);
    let mesh = mesh_with_lb(&echoes, "{simple: ROUND_ROBIN}");
    let load = Load::start(mesh.outbound(), HOST, 2);
    thread::sleep(Duration::from_millis(300));

    let edited = Instant::now();
    let yaml = service_entry("echo", "echo.test", 9080, "HTTP", &eps(&echoes[..1]))
        + &destination_rule("echo", "echo.test", "{simple: ROUND_ROBIN}");
    mesh.cfg.write("echo.yaml", &yaml);
    wait_for("the proxy to have one endpoint", SETTLE, || {
        let dump = mesh.proxy.config_dump().unwrap();
        dump["endpoints"]["outbound|9080||echo.test"]["localities"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    });
    thread::sleep(Duration::from_millis(200));
    // The removed endpoints go away entirely; nothing may notice.
    let removed: Vec<Echo> = echoes.drain(1..).collect();
    drop(removed);
    let killed = Instant::now();
    thread::sleep(Duration::from_millis(300));
    let outcomes = load.stop();

    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    let last_removed = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|n| n != "e1"))
        .map(|o| o.at)
        .max()
        .unwrap();
    assert!(
        last_removed.saturating_duration_since(edited) < Duration::from_secs(3),
        "removed endpoints answered until {:?} after the edit",
        last_removed - edited
    );
    let after_kill = outcomes.iter().filter(|o| o.at > killed).count();
    assert!(
        after_kill > 0,
        "no requests ran after the removed echoes exited"
    );
    let before_edit = tally(
        outcomes
            .iter()
            .filter(|o| o.at < edited)
            .filter_map(|o| o.result.clone().ok()),
    );
    assert_eq!(before_edit.len(), 3, "before the edit: {before_edit:?}");
}
