//! Operating the mesh, as a client sees it: TCP routes and their byte
//! counts, a gateway routing HTTP by Host and TLS by SNI, server-speaks-first
//! protocols behind protocol detection, config churn and a pilot restart
//! under load, a NACK on pilot's syncz while the last good config serves,
//! draining on SIGTERM, and readiness before pilot exists. Real keel-pilot,
//! keel-proxy and keel-echo processes on loopback ephemeral ports, plus tiny
//! in-test TCP servers.
#![allow(clippy::unwrap_used)]

#[path = "balancing/support.rs"]
mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use keel_e2e::{sigterm, spawn_proxy};
use support::{
    Client, ConfigDir, FixedPilot, Load, Mesh, SETTLE, connect, destination_rule, echo, ep,
    failures, first_route, free_port, fully_acked, metric, service_entry, tally, wait_for,
};

const HOST: &str = "echo.test:9080";
const ROUTER: [&str; 4] = ["--mode", "router", "--labels", "istio=ingressgateway"];

// ---------------------------------------------------------------------------
// In-test TCP servers

/// Echoes every byte back on each connection, then half-closes.
fn tcp_echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Writes `220 hello\r\n` as soon as it accepts (a server-speaks-first
/// protocol such as SMTP), then holds the connection until the client goes.
fn banner_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            thread::spawn(move || {
                let _ = s.write_all(b"220 hello\r\n");
                let _ = io::copy(&mut s, &mut io::sink());
            });
        }
    });
    addr
}

/// Counts connections, reports the first `len` bytes of each, answers
/// `reply` and holds the connection until the client goes.
struct Capture {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    first_flights: Receiver<Vec<u8>>,
}

fn capture_server(len: usize, reply: &'static [u8]) -> Capture {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, first_flights) = mpsc::channel();
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(SETTLE)).unwrap();
                let mut buf = vec![0u8; len];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = tx.send(buf);
                    let _ = s.write_all(reply);
                }
                let _ = io::copy(&mut s, &mut io::sink());
            });
        }
    });
    Capture {
        addr,
        accepted,
        first_flights,
    }
}

/// A minimal TLS 1.2 ClientHello record (one cipher suite, null
/// compression, a server_name extension for `sni`): a TLS client's first
/// flight as far as SNI routing can tell.
fn client_hello(sni: &str) -> Vec<u8> {
    fn with_u16_len(v: &[u8]) -> Vec<u8> {
        let mut out = (v.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(v);
        out
    }
    let mut entry = vec![0u8]; // name_type host_name
    entry.extend(with_u16_len(sni.as_bytes()));
    let mut exts = vec![0u8, 0]; // extension type server_name
    exts.extend(with_u16_len(&with_u16_len(&entry)));
    let mut body = vec![3u8, 3]; // client_version TLS 1.2
    body.extend(0..32u8); // random
    body.push(0); // no session id
    body.extend(with_u16_len(&[0xc0, 0x2f])); // ECDHE_RSA_WITH_AES_128_GCM_SHA256
    body.extend([1, 0]); // null compression
    body.extend(with_u16_len(&exts));
    let mut handshake = vec![1u8]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16u8, 3, 1]; // handshake, TLS 1.0 record version
    record.extend(with_u16_len(&handshake));
    record
}

/// Reads an HTTP response head (up to the blank line) byte by byte, so
/// nothing after it is consumed.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed mid-head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until the peer closes (EOF or reset) or `within` passes; returns
/// the bytes read and whether it closed.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

// ---------------------------------------------------------------------------
// 1. TCP

#[test]
fn tcp_route_over_connect_counts_every_byte_and_connection() {
    let backend = tcp_echo_server();
    let yaml = service_entry("tcp", "tcp.test", 7070, "TCP", &[ep(backend.port(), "v1")]);
    let mesh = Mesh::start(&[("tcp.yaml", yaml)], &[]);

    let mut s = connect(mesh.outbound(), None).unwrap();
    s.write_all(b"CONNECT tcp.test:7070 HTTP/1.1\r\nHost: tcp.test:7070\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT answered {head:?}"
    );

    const K: usize = 100_000;
    let data: Vec<u8> = (0..K).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let (back, closed) = read_until_closed(&mut s, SETTLE);
    writer.join().unwrap();
    assert!(closed, "the tunnel did not close after the backend did");
    assert!(
        back == data,
        "read back {} bytes, not the {K} sent",
        back.len()
    );
    drop(s);

    let svc = [("destination_service", "tcp.test")];
    let mut stats = String::new();
    wait_for("the TCP connection to be counted closed", SETTLE, || {
        stats = mesh.proxy.stats().unwrap();
        metric(&stats, "istio_tcp_connections_closed_total", &svc) >= 1.0
    });
    let got = |name: &str| metric(&stats, name, &svc);
    let report = stats
        .lines()
        .filter(|l| l.starts_with("istio_tcp_"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(got("istio_tcp_received_bytes_total"), K as f64, "{report}");
    assert_eq!(got("istio_tcp_sent_bytes_total"), K as f64, "{report}");
    assert_eq!(got("istio_tcp_connections_opened_total"), 1.0, "{report}");
    assert_eq!(got("istio_tcp_connections_closed_total"), 1.0, "{report}");
}

// ---------------------------------------------------------------------------
// 2, 3. Gateway

fn gateway_yaml(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}---
"
    )
}

#[test]
fn gateway_routes_http_by_host_and_passes_tls_through_by_sni() {
    let web = echo("web", "v1", &[]);
    let hello = client_hello("a.test");
    let backend = capture_server(hello.len(), b"from a.backend");
    let http_port = free_port("0.0.0.0");
    let tls_port = free_port("0.0.0.0");
    let servers = format!(
        "  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: [echo.test]
  - port: {{number: {tls_port}, name: tls, protocol: TLS}}
    hosts: [a.test]
    tls: {{mode: PASSTHROUGH}}
"
    );
    let routes = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-gw, namespace: default}}
spec:
  hosts: [echo.test]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: echo.test, port: {{number: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: a-tls, namespace: default}}
spec:
  hosts: [a.test]
  gateways: [gw]
  tls:
  - match: [{{sniHosts: [a.test], port: {tls_port}}}]
    route:
    - destination: {{host: a.backend, port: {{number: 8443}}}}
---
"
    );
    let yaml = gateway_yaml(&servers)
        + &routes
        + &service_entry(
            "echo",
            "echo.test",
            9080,
            "HTTP",
            &[ep(web.addr.port(), "v1")],
        )
        + &service_entry(
            "a",
            "a.backend",
            8443,
            "TLS",
            &[ep(backend.addr.port(), "v1")],
        );
    let mesh = Mesh::start(&[("gateway.yaml", yaml)], &ROUTER);

    // HTTP by Host.
    let http_addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let mut last = String::new();
    let routed = keel_e2e::wait_until(SETTLE, || {
        let r = Client::new(http_addr).get("echo.test", "/gw", &[]);
        last = format!("{r:?}");
        r.is_ok_and(|r| r.header("x-echo-name") == Some("web"))
    });
    assert!(
        routed,
        "the gateway did not route Host echo.test to the echo: last {last}\nlisteners: {}",
        mesh.proxy.config_dump().unwrap()["listeners"]
    );
    let other = Client::new(http_addr).get("other.test", "/", &[]).unwrap();
    assert_eq!(other.status, 404, "unknown Host: {}", other.describe());

    // TLS passthrough by SNI: the backend gets the ClientHello byte for byte.
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let mut s = connect(tls_addr, None).unwrap();
    s.write_all(&hello).unwrap();
    let first = backend
        .first_flights
        .recv_timeout(SETTLE)
        .unwrap_or_else(|_| {
            panic!(
                "a.backend got no ClientHello through {tls_addr}; listeners: {}",
                mesh.proxy.config_dump().unwrap()["listeners"]
            )
        });
    assert!(first == hello, "a.backend got different bytes: {first:?}");
    let mut reply = [0u8; 14];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"from a.backend");
    drop(s);

    // Another SNI has no route: closed, and a.backend never hears of it.
    let mut s = connect(tls_addr, None).unwrap();
    s.write_all(&client_hello("b.test")).unwrap();
    let (got, closed) = read_until_closed(&mut s, SETTLE);
    assert!(
        closed && got.is_empty(),
        "SNI b.test: got {got:?}, closed={closed}"
    );
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn server_first_protocol_gets_its_banner_after_the_detection_timeout() {
    let banner = banner_server();
    let tcp_port = free_port("0.0.0.0");
    let servers = format!(
        "  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    hosts: ['*']
"
    );
    let vs = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: banner, namespace: default}}
spec:
  hosts: ['*']
  gateways: [gw]
  tcp:
  - match: [{{port: {tcp_port}}}]
    route:
    - destination: {{host: banner.test, port: {{number: 2525}}}}
---
"
    );
    let yaml = gateway_yaml(&servers)
        + &vs
        + &service_entry(
            "banner",
            "banner.test",
            2525,
            "TCP",
            &[ep(banner.port(), "v1")],
        );
    let mesh = Mesh::start(&[("gateway.yaml", yaml)], &ROUTER);
    let addr: SocketAddr = ([127, 0, 0, 1], tcp_port).into();
    wait_for("the gateway to listen", SETTLE, || {
        TcpStream::connect(addr).is_ok()
    });

    // Send nothing: detection gives up after 100 ms and the connection is
    // TCP; the banner then flows.
    let mut s = connect(addr, None).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = [0u8; 11];
    let read = s.read_exact(&mut got);
    assert!(
        read.is_ok() && &got == b"220 hello\r\n",
        "no banner within 2 s ({read:?}, {got:?}); listeners: {}",
        mesh.proxy.config_dump().unwrap()["listeners"]
    );
    let stats = mesh.proxy.stats().unwrap();
    let timeouts = metric(
        &stats,
        "keel_proxy_protocol_detection_seconds_count",
        &[("result", "timeout")],
    );
    assert!(timeouts >= 1.0, "detection timeouts counted: {timeouts}");
}

// ---------------------------------------------------------------------------
// 4, 5. Config churn and pilot restarts under load

/// `echo.test` with endpoints `v1` and `v2` (echo names = versions),
/// subsets by version, and a VirtualService splitting `v1`/`v2`.
fn split_config(v1: &keel_e2e::Echo, v2: &keel_e2e::Echo) -> String {
    service_entry(
        "echo",
        "echo.test",
        9080,
        "HTTP",
        &[ep(v1.addr.port(), "v1"), ep(v2.addr.port(), "v2")],
    ) + &destination_rule("echo", "echo.test", "{simple: ROUND_ROBIN}")
}

fn split_vs(w1: u32, w2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.test]
  http:
  - name: split
    route:
    - destination: {{host: echo.test, subset: v1}}
      weight: {w1}
    - destination: {{host: echo.test, subset: v2}}
      weight: {w2}
---
"
    )
}

/// The weights of `echo.test`'s first route in the proxy's config dump.
fn route_weights(mesh: &Mesh) -> Vec<u64> {
    let Ok(dump) = mesh.proxy.config_dump() else {
        return Vec::new();
    };
    first_route(&dump, "9080", "echo.test:9080")["action"]["forward"]["clusters"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["weight"].as_u64()).collect())
        .unwrap_or_default()
}

fn assert_no_failures(outcomes: &[support::Outcome]) {
    let failed = failures(outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn hundred_config_changes_under_load_fail_no_request() {
    let v1 = echo("v1", "v1", &[]);
    let v2 = echo("v2", "v2", &[]);
    let mesh = Mesh::start(
        &[
            ("echo.yaml", split_config(&v1, &v2)),
            ("vs.yaml", split_vs(90, 10)),
        ],
        &[],
    );
    mesh.wait_routable(HOST);
    let load = Load::start(mesh.outbound(), HOST, 4);

    // Watch the proxy's route weights change while the file is rewritten.
    let watching = Arc::new(AtomicBool::new(true));
    let seen = thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut seen: Vec<Vec<u64>> = Vec::new();
            while watching.load(Ordering::Relaxed) {
                let w = route_weights(&mesh);
                if !w.is_empty() && seen.last() != Some(&w) {
                    seen.push(w);
                }
                thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        for i in 0..100 {
            let (w1, w2) = if i % 2 == 0 { (10, 90) } else { (90, 10) };
            mesh.cfg.write("vs.yaml", &split_vs(w1, w2));
            thread::sleep(Duration::from_millis(60));
        }
        // The last write (i = 99) is 90/10.
        wait_for("the last weights in the proxy", SETTLE, || {
            route_weights(&mesh) == [90, 10]
        });
        watching.store(false, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    let outcomes = load.stop();
    assert_no_failures(&outcomes);
    eprintln!(
        "{} requests during 100 edits; the proxy's weights changed {} times",
        outcomes.len(),
        seen.len() - 1
    );
    // Pilot polls every 20 ms and the edits are 60 ms apart, so nearly
    // every edit becomes its own push; 20 leaves room for a busy machine
    // merging some of them.
    assert!(
        seen.len() > 20,
        "the proxy's route weights changed only {} times: {seen:?}",
        seen.len() - 1
    );

    // The final split is the last one written: 90/10.
    const N: usize = 300;
    let mut client = Client::new(mesh.outbound());
    let names: Vec<String> = (0..N)
        .map(|_| client.get(HOST, "/", &[]).unwrap().echo_name().unwrap())
        .collect();
    let counts = tally(names);
    let v1_share = counts.get("v1").copied().unwrap_or(0) as f64 / N as f64;
    // σ of the share is 1.7 %; ±7 % is 4σ.
    assert!(
        (v1_share - 0.9).abs() <= 0.07,
        "90/10 split gave {counts:?} of {N}"
    );
}

#[test]
fn pilot_killed_and_restarted_on_the_same_port_fails_no_request() {
    let v1 = echo("v1", "v1", &[]);
    let v2 = echo("v2", "v2", &[]);
    let cfg = ConfigDir::new();
    cfg.write("echo.yaml", &split_config(&v1, &v2));
    cfg.write("vs.yaml", &split_vs(50, 50));
    let xds: SocketAddr = ([127, 0, 0, 1], free_port("127.0.0.1")).into();
    let pilot = FixedPilot::start(&cfg.path(), xds);
    let proxy = spawn_proxy(xds, &["--pod-name", "client-1"]).unwrap();
    proxy.wait_ready(SETTLE).unwrap();
    let node = "sidecar~~client-1.default~default.svc.cluster.local";
    let synced = |p: &FixedPilot| {
        p.syncz()
            .iter()
            .any(|c| c["node_id"] == node && fully_acked(c))
    };
    wait_for("syncz to list the proxy", SETTLE, || synced(&pilot));
    let out = proxy.addr("outbound");
    wait_for("echo.test to answer", SETTLE, || {
        Client::new(out)
            .get(HOST, "/", &[])
            .is_ok_and(|r| r.status == 200)
    });

    let load = Load::start(out, HOST, 4);
    thread::sleep(Duration::from_millis(300));
    drop(pilot);
    let killed = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let restarted_at = Instant::now();
    let pilot = FixedPilot::start(&cfg.path(), xds);
    wait_for(
        "the proxy to resync with the new pilot",
        Duration::from_secs(20),
        || synced(&pilot),
    );
    thread::sleep(Duration::from_millis(300));
    let outcomes = load.stop();

    assert_no_failures(&outcomes);
    let during_outage = outcomes
        .iter()
        .filter(|o| o.at > killed && o.at < restarted_at)
        .count();
    assert!(during_outage > 0, "no requests ran while pilot was down");
    let after = tally(
        outcomes
            .iter()
            .filter(|o| o.at > killed)
            .filter_map(|o| o.result.clone().ok()),
    );
    assert_eq!(after.len(), 2, "both subsets kept serving: {after:?}");
}

// ---------------------------------------------------------------------------
// 6. NACK

fn regex_vs(with_huge: bool) -> String {
    let huge = if with_huge {
        "  - name: huge-regex
    match: [{uri: {regex: '(?:a|b|c|d|e|f|g|h){20000}'}}]
    route: [{destination: {host: echo.test}}]
  - name: added
    match: [{uri: {prefix: /added}}]
    route: [{destination: {host: echo.test}}]
"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.test]
  http:
{huge}  - name: ok
    match: [{{uri: {{prefix: /ok}}}}]
    route: [{{destination: {{host: echo.test}}}}]
---
"
    )
}

#[test]
fn oversized_regex_is_nacked_on_syncz_and_the_last_good_routes_keep_serving() {
    let web = echo("web", "v1", &[]);
    let se = service_entry(
        "echo",
        "echo.test",
        9080,
        "HTTP",
        &[ep(web.addr.port(), "v1")],
    );
    let mesh = Mesh::start(&[("echo.yaml", se), ("vs.yaml", regex_vs(false))], &[]);
    let out = mesh.outbound();
    let status = |path: &str| Client::new(out).get(HOST, path, &[]).unwrap().status;
    wait_for("/ok to answer 200", SETTLE, || status("/ok") == 200);
    assert_eq!(status("/added"), 404);

    mesh.cfg.write("vs.yaml", &regex_vs(true));
    let mut rds = serde_json::Value::Null;
    wait_for("an RDS NACK on pilot's syncz", SETTLE, || {
        let syncz = mesh.pilot.syncz().unwrap();
        rds = syncz
            .first()
            .map(|c| c["types"]["rds"].clone())
            .unwrap_or_default();
        rds["last_nack"].is_string()
    });
    let nack = rds["last_nack"].as_str().unwrap();
    assert!(
        nack.contains("huge-regex") && nack.contains("regex program is too large"),
        "the NACK should name the route and say why: {nack}"
    );
    assert_ne!(
        rds["acked_version"], rds["sent_version"],
        "the rejected version must not count as ACKed: {rds}"
    );
    // The last good route table keeps serving, unchanged.
    for _ in 0..20 {
        assert_eq!(status("/ok"), 200);
    }
    assert_eq!(
        status("/added"),
        404,
        "part of the rejected routes was applied"
    );
}

// ---------------------------------------------------------------------------
// 7, 8. Lifecycle

#[test]
fn sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_zero() {
    let slow = echo("slow", "v1", &["--delay-ms", "1500"]);
    let se = service_entry(
        "echo",
        "echo.test",
        9080,
        "HTTP",
        &[ep(slow.addr.port(), "v1")],
    );
    let mut mesh = Mesh::start(&[("echo.yaml", se)], &["--drain-timeout", "5s"]);
    mesh.wait_routable(HOST);
    let out = mesh.outbound();

    let in_flight = thread::spawn(move || Client::new(out).get(HOST, "/", &[]));
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    sigterm(mesh.proxy.pid()).unwrap();
    thread::sleep(Duration::from_millis(200));
    let refused = TcpStream::connect(out);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused),
        "a new connection after SIGTERM: {refused:?}"
    );
    // Load balancers see the proxy leave: readiness fails while draining.
    let (code, body) = keel_e2e::http_get(mesh.proxy.addr("ready"), "/healthz/ready").unwrap();
    assert_eq!(code, 503, "readiness while draining: {body}");
    assert!(body.contains("draining"), "{body}");

    let resp = in_flight.join().unwrap().unwrap();
    assert_eq!(resp.echo_name(), Ok("slow".to_string()));
    let deadline = Duration::from_secs(5);
    let status = mesh
        .proxy
        .child
        .wait_exit(deadline.saturating_sub(signalled.elapsed()))
        .unwrap();
    assert!(status.success(), "keel-proxy exited with {status}");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[test]
fn readiness_is_503_until_pilot_comes_up_then_200() {
    let web = echo("web", "v1", &[]);
    let cfg = ConfigDir::new();
    let se = service_entry(
        "echo",
        "echo.test",
        9080,
        "HTTP",
        &[ep(web.addr.port(), "v1")],
    );
    cfg.write("echo.yaml", &se);
    // Nothing listens on the xDS port yet.
    let xds: SocketAddr = ([127, 0, 0, 1], free_port("127.0.0.1")).into();
    let proxy = spawn_proxy(xds, &["--pod-name", "client-1"]).unwrap();
    let ready = proxy.addr("ready");
    for _ in 0..6 {
        let (code, body) = keel_e2e::http_get(ready, "/healthz/ready").unwrap();
        assert_eq!(code, 503, "ready without pilot: {body}");
        thread::sleep(Duration::from_millis(100));
    }

    let pilot = FixedPilot::start(&cfg.path(), xds);
    proxy.wait_ready(Duration::from_secs(20)).unwrap();
    let r = Client::new(proxy.addr("outbound"))
        .get(HOST, "/", &[])
        .unwrap();
    assert_eq!(r.echo_name(), Ok("web".to_string()));
    assert!(
        pilot.syncz().iter().any(fully_acked),
        "syncz: {:?}",
        pilot.syncz()
    );
}
