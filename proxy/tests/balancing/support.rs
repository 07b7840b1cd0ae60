//! What `balancing.rs` and `operations.rs` share (the latter includes this
//! file by path): a config directory pilot watches, a pilot/proxy pair built
//! from it, keel-echo backends, a blocking keep-alive HTTP/1.1 client that
//! can pick its source address, a load generator that records every
//! outcome, and Prometheus and config-dump lookups.
//!
//! It owns no scenario: each test writes its own Istio YAML and assertions.
#![allow(dead_code)] // each test crate uses a different part of it

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use keel_e2e::{
    ChildGuard, Echo, Pilot, Proxy, bin_path, http_get, spawn_echo_at, spawn_pilot_with_args,
    spawn_proxy, write_atomic,
};

/// Pilot flags that make a file edit reach proxies within ~50 ms.
pub const FAST_PILOT: [&str; 6] = [
    "--poll-ms",
    "20",
    "--debounce-after-ms",
    "10",
    "--debounce-max-ms",
    "100",
];

/// Generous bound for anything that should take well under a second.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Polls `f` every 25 ms until it holds, panicking after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// A free TCP port on `ip` (bound and released; the caller binds it next).
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------
// Config

/// A directory pilot watches, with a staging directory beside it so every
/// write lands atomically (pilot never reads half a file).
pub struct ConfigDir {
    root: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("config")).expect("mkdir config");
        Self { root }
    }

    /// The watched directory.
    pub fn path(&self) -> PathBuf {
        self.root.path().join("config")
    }

    /// Writes (or replaces) `name` atomically.
    pub fn write(&self, name: &str, yaml: &str) {
        write_atomic(
            &self.root.path().join("stage"),
            &self.path(),
            name,
            yaml.as_bytes(),
        )
        .expect("write config");
    }
}

/// One endpoint of a STATIC ServiceEntry: a loopback port with a
/// `version` label and an optional load-balancing weight.
#[derive(Clone, Debug)]
pub struct Ep {
    pub port: u16,
    pub version: String,
    pub weight: Option<u32>,
}

pub fn ep(port: u16, version: &str) -> Ep {
    Ep {
        port,
        version: version.to_string(),
        weight: None,
    }
}

/// A MESH_INTERNAL, STATIC ServiceEntry `host` with one port
/// (`protocol`, named after it in lower case) whose endpoints are `eps`.
pub fn service_entry(name: &str, host: &str, port: u16, protocol: &str, eps: &[Ep]) -> String {
    let port_name = protocol.to_ascii_lowercase();
    let mut y = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: {port_name}, protocol: {protocol}}}]
  endpoints:
"
    );
    for e in eps {
        let weight = e
            .weight
            .map(|w| format!(", weight: {w}"))
            .unwrap_or_default();
        y.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{{port_name}: {}}}, labels: {{version: {}}}{weight}}}\n",
            e.port, e.version
        ));
    }
    y.push_str("---\n");
    y
}

/// A DestinationRule for `host` with `load_balancer` (a YAML flow map such
/// as `{simple: ROUND_ROBIN}`) and subsets `v1`, `v2` by the version label.
pub fn destination_rule(name: &str, host: &str, load_balancer: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy: {{loadBalancer: {load_balancer}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
"
    )
}

/// A VirtualService routing all of `host` to it (so its routes come from a
/// VirtualService rather than pilot's default route).
pub fn plain_virtual_service(name: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  http:
  - name: all
    route:
    - destination: {{host: {host}}}
---
"
    )
}

// ---------------------------------------------------------------------------
// Processes

/// `keel-echo --name NAME --version VERSION EXTRA…` on an ephemeral port.
pub fn echo(name: &str, version: &str, extra: &[&str]) -> Echo {
    let mut args = vec!["--name", name, "--version", version];
    args.extend_from_slice(extra);
    spawn_echo_at("127.0.0.1:0", &args, &[]).expect("spawn keel-echo")
}

/// A pilot (fast file polling) and one proxy connected to it, configured
/// from `files` written before pilot starts.
pub struct Mesh {
    pub cfg: ConfigDir,
    pub pilot: Pilot,
    pub proxy: Proxy,
}

impl Mesh {
    /// Writes `files`, starts pilot and a sidecar (`proxy_args` added) and
    /// waits until the proxy reports ready.
    pub fn start(files: &[(&str, String)], proxy_args: &[&str]) -> Self {
        let cfg = ConfigDir::new();
        for (name, yaml) in files {
            cfg.write(name, yaml);
        }
        let pilot = spawn_pilot_with_args(&cfg.path(), &FAST_PILOT).expect("spawn keel-pilot");
        let mut args = vec!["--pod-name", "client-1"];
        args.extend_from_slice(proxy_args);
        let proxy = spawn_proxy(pilot.xds_addr, &args).expect("spawn keel-proxy");
        proxy.wait_ready(SETTLE).expect("proxy ready");
        Self { cfg, pilot, proxy }
    }

    pub fn outbound(&self) -> SocketAddr {
        self.proxy.addr("outbound")
    }

    /// Waits until `GET /` with `Host: host` through the outbound listener
    /// answers 200.
    pub fn wait_routable(&self, host: &str) {
        let out = self.outbound();
        wait_for(&format!("{host} to answer 200"), SETTLE, || {
            Client::new(out)
                .get(host, "/", &[])
                .is_ok_and(|r| r.status == 200)
        });
    }
}

/// A keel-pilot on a chosen xDS address (to restart it on the same port,
/// which `spawn_pilot_with_args` cannot: it already passes `--xds-addr`
/// and clap refuses the flag twice).
pub struct FixedPilot {
    pub child: ChildGuard,
    pub http: SocketAddr,
}

impl FixedPilot {
    pub fn start(dir: &Path, xds: SocketAddr) -> Self {
        let mut cmd = Command::new(bin_path("keel-pilot", "keel-pilot"));
        cmd.arg("--config-dir")
            .arg(dir)
            .args(["--xds-addr", &xds.to_string(), "--http-addr", "127.0.0.1:0"])
            .args(FAST_PILOT);
        let mut child = ChildGuard::spawn("keel-pilot", &mut cmd, Stdio::piped()).expect("pilot");
        let lines = keel_e2e::line_channel(child.take_stdout().expect("pilot stdout"));
        let http = loop {
            let line = lines
                .recv_timeout(SETTLE)
                .expect("keel-pilot printed its ready line");
            if let Some(addr) = line.strip_prefix("keel-pilot ready: ").and_then(|rest| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix("http="))
            }) {
                break addr.parse().expect("pilot http addr");
            }
        };
        thread::spawn(move || for _ in lines {});
        Self { child, http }
    }

    pub fn syncz(&self) -> Vec<serde_json::Value> {
        syncz_at(self.http)
    }
}

/// Pilot's `/debug/syncz` at `http` (empty when unreachable).
pub fn syncz_at(http: SocketAddr) -> Vec<serde_json::Value> {
    match http_get(http, "/debug/syncz") {
        Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Whether `client` (a syncz entry) has ACKed the latest of all four types.
pub fn fully_acked(client: &serde_json::Value) -> bool {
    ["lds", "rds", "cds", "eds"].iter().all(|t| {
        let s = &client["types"][t];
        s["sent_nonce"] != "" && s["acked_nonce"] == s["sent_nonce"]
    })
}

// ---------------------------------------------------------------------------
// HTTP client

/// A response as the client saw it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Which keel-echo answered (`x-echo-name`), or a description of the
    /// failure for messages.
    pub fn echo_name(&self) -> Result<String, String> {
        match (self.status, self.header("x-echo-name")) {
            (200, Some(n)) => Ok(n.to_string()),
            _ => Err(self.describe()),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "HTTP {} x-keel-error={:?} body={:?}",
            self.status,
            self.header("x-keel-error"),
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
        )
    }
}

/// A blocking HTTP/1.1 client with one keep-alive connection, optionally
/// bound to a source IP (any 127.0.0.0/8 address works on loopback).
pub struct Client {
    target: SocketAddr,
    source: Option<IpAddr>,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            source: None,
            conn: None,
        }
    }

    pub fn from_ip(target: SocketAddr, source: IpAddr) -> Self {
        Self {
            target,
            source: Some(source),
            conn: None,
        }
    }

    /// Closes the connection; the next request opens a new one.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// `GET path` (origin-form) with `Host: host`.
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        self.send("GET", path, host, headers)
    }

    /// One request; the connection is kept unless either side closes it.
    /// Any error drops the connection.
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => BufReader::new(connect(self.target, self.source)?),
        };
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.get_mut().write_all(head.as_bytes())?;
        let (resp, keep) = read_response(&mut conn, method == "HEAD")?;
        if keep {
            self.conn = Some(conn);
        }
        Ok(resp)
    }
}

/// Connects to `target`, from `source` when given; 10 s I/O timeouts.
pub fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_timeout(&target, SETTLE)?,
        Some(ip) => {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(target),
                socket2::Type::STREAM,
                None,
            )?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&target.into(), SETTLE)?;
            sock.into()
        }
    };
    stream.set_read_timeout(Some(SETTLE))?;
    stream.set_write_timeout(Some(SETTLE))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn read_response(r: &mut BufReader<TcpStream>, head_only: bool) -> io::Result<(Response, bool)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut keep = !get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if head_only || status < 200 || status == 204 || status == 304 {
    } else if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep,
    ))
}

// ---------------------------------------------------------------------------
// Load

/// What one request of a load run ended as.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Instant,
    /// The answering keel-echo's name, or what went wrong.
    pub result: Result<String, String>,
}

/// Client threads sending `GET /` to one host back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    pub fn start(target: SocketAddr, host: &str, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let host = host.to_string();
                thread::spawn(move || {
                    let mut client = Client::new(target);
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let result = match client.get(&host, "/", &[]) {
                            Ok(r) => r.echo_name(),
                            Err(e) => Err(format!("I/O error: {e}")),
                        };
                        out.push(Outcome {
                            at: Instant::now(),
                            result,
                        });
                        // Leave some CPU to pilot and the proxy's control
                        // plane on small machines.
                        thread::sleep(Duration::from_millis(1));
                    }
                    out
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the threads and returns every outcome, oldest first.
    pub fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Outcome> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        all.sort_by_key(|o| o.at);
        all
    }
}

/// The failures among `outcomes`, for assertion messages.
pub fn failures(outcomes: &[Outcome]) -> Vec<&String> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect()
}

/// How many of `names` each name is.
pub fn tally<I: IntoIterator<Item = String>>(names: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// Telemetry and config dumps

/// The sum of the samples of `name` (exact metric name, e.g.
/// `istio_tcp_sent_bytes_total`) whose labels include every `labels` pair.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let has = |(k, v): &(&str, &str)| {
                let pair = format!("{k}=\"{v}\"");
                rest.starts_with(&pair) || rest.contains(&format!(",{pair}"))
            };
            (n == name && labels.iter().all(has))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The first route of virtual host `vhost` in route table `table` of a
/// proxy config dump (`Null` when absent).
pub fn first_route<'a>(
    dump: &'a serde_json::Value,
    table: &str,
    vhost: &str,
) -> &'a serde_json::Value {
    dump["routes"][table]["virtual_hosts"]
        .as_array()
        .and_then(|vhs| vhs.iter().find(|vh| vh["name"] == vhost))
        .map_or(&serde_json::Value::Null, |vh| &vh["routes"][0])
}
