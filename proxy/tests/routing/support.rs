//! What the routing tests share: a small mesh of real processes (keel-echo
//! backends, keel-pilot reading a config directory, one keel-proxy), the
//! Istio YAML they are configured with, HTTP/1.1 and h2c clients built on
//! hyper's connection API, and a reader for `/stats/prometheus`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderMap};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_e2e::{Echo, Pilot, Proxy, spawn_echo_at, spawn_pilot, spawn_proxy, wait_until};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one client operation may take before the test fails instead of
/// hanging.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// keel-echo backends, pilot and one sidecar proxy, killed on drop.
pub struct Mesh {
    /// The backends, in the order they were asked for.
    pub echoes: Vec<Echo>,
    _pilot: Pilot,
    /// keel-proxy, configured and ready.
    pub proxy: Proxy,
    /// The access log file (written only with `--access-log`).
    pub access_log: PathBuf,
    /// Holds [`Ports::refused`].
    _refused: socket2::Socket,
    config_dir: PathBuf,
    _dir: TempDir,
}

impl Mesh {
    /// Starts one keel-echo per `echoes` entry (its flags), writes the YAML
    /// that `config` builds from their ports and [`Ports::refused`] to
    /// pilot's config directory, starts pilot and a sidecar proxy (writing
    /// [`Mesh::access_log`] when `access_log`), and waits until the proxy is
    /// ready and pilot saw no rejected file or NACK.
    pub fn start(
        echoes: &[&[&str]],
        config: impl FnOnce(&Ports) -> String,
        access_log: bool,
    ) -> Result<Self> {
        let echoes = echoes
            .iter()
            .map(|args| spawn_echo_at("127.0.0.1:0", args, &[]))
            .collect::<Result<Vec<_>>>()?;
        let refused = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        refused.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let refused_port = refused
            .local_addr()?
            .as_socket()
            .context("the refusing socket has an IP address")?
            .port();
        let ports = Ports {
            echo: echoes.iter().map(|e| e.addr.port()).collect(),
            refused: refused_port,
        };

        let dir = tempfile::tempdir()?;
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir)?;
        std::fs::write(config_dir.join("mesh.yaml"), config(&ports))?;
        let pilot = spawn_pilot(&config_dir)?;
        let log = dir.path().join("access.log");
        let log_arg = log.display().to_string();
        let args: &[&str] = if access_log {
            &["--access-log", &log_arg]
        } else {
            &[]
        };
        let proxy = spawn_proxy(pilot.xds_addr, args)?;
        proxy.wait_ready(Duration::from_secs(20))?;
        let node = pilot
            .syncz()?
            .first()
            .and_then(|c| c["node_id"].as_str())
            .unwrap_or_default()
            .to_string();
        pilot.assert_no_rejects(&node)?;
        Ok(Self {
            echoes,
            _pilot: pilot,
            proxy,
            access_log: log,
            _refused: refused,
            config_dir,
            _dir: dir,
        })
    }

    /// Replaces pilot's configuration with `yaml` (written aside, then
    /// renamed, so pilot never reads half a file).
    pub fn reconfigure(&self, yaml: &str) -> Result<()> {
        let staged = self.config_dir.with_extension("next.yaml");
        std::fs::write(&staged, yaml)?;
        std::fs::rename(&staged, self.config_dir.join("mesh.yaml"))?;
        Ok(())
    }

    /// The proxy's outbound listener.
    pub fn outbound(&self) -> SocketAddr {
        self.proxy.addr("outbound")
    }

    /// The sum of the `istio_requests_total` series carrying every label of
    /// `labels`.
    pub fn requests(&self, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_sum(
            &self.proxy.stats()?,
            "istio_requests_total",
            labels,
        ))
    }

    /// Waits (up to 5 s: a request is counted when its response body ends)
    /// for [`Mesh::requests`] to reach `want`, then checks that it is exactly
    /// `want`, listing every `istio_requests_total` series when not.
    pub fn expect_requests(&self, labels: &[(&str, &str)], want: u64) -> Result<()> {
        let want = want as f64;
        wait_until(Duration::from_secs(5), || {
            self.requests(labels).is_ok_and(|n| n >= want)
        });
        let stats = self.proxy.stats()?;
        let got = metric_sum(&stats, "istio_requests_total", labels);
        ensure!(
            got == want,
            "istio_requests_total{labels:?} is {got}, want {want}; series:\n{}",
            stats
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    }
}

/// The ports a configuration is written with.
pub struct Ports {
    /// Each keel-echo's port, in the order they were asked for.
    pub echo: Vec<u16>,
    /// A loopback port where connections are refused.
    pub refused: u16,
}

/// A `STATIC` ServiceEntry for `host` on `port` (`protocol`: `HTTP`,
/// `GRPC`, ...) whose endpoints are loopback ports, each labelled
/// `version: V`.
pub fn service_entry(host: &str, port: u16, protocol: &str, endpoints: &[(u16, &str)]) -> String {
    let name = host.replace('.', "-");
    let port_name = protocol.to_ascii_lowercase();
    let mut yaml = format!(
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
    for (target, version) in endpoints {
        yaml.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{{port_name}: {target}}}, labels: {{version: {version}}}}}\n"
        ));
    }
    yaml
}

/// A DestinationRule for `host` with one subset per version (subset name =
/// version label).
pub fn subsets(host: &str, versions: &[&str]) -> String {
    let name = host.replace('.', "-");
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  subsets:
"
    );
    for v in versions {
        yaml.push_str(&format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"));
    }
    yaml
}

/// Joins the non-empty YAML documents of `parts`.
pub fn docs(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|d| !d.trim().is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// What one request got back.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version of the response.
    pub version: Version,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (keel-echo's description of the request it saw).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{} with a body that is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A response header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request for `path` on `host` with extra `headers` and an empty body.
pub fn request(
    method: Method,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Request<Full<Bytes>>> {
    request_with_body(method, path, host, headers, Bytes::new())
}

/// [`request`] with a body.
pub fn request_with_body(
    method: Method,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>> {
    let mut req = Request::builder().method(method).uri(path);
    if !host.is_empty() {
        req = req.header(HOST, host);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.body(Full::new(body))?)
}

/// `GET path` with `Host: host`.
pub fn get(path: &str, host: &str) -> Result<Request<Full<Bytes>>> {
    request(Method::GET, path, host, &[])
}

/// A client connection, HTTP/1.1 or h2c (prior knowledge).
pub enum Client {
    /// HTTP/1.1, keep-alive.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2 over cleartext.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// An HTTP/1.1 connection to `addr`.
    pub async fn h1(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(Self::H1(sender))
    }

    /// An HTTP/2 prior-knowledge connection to `addr`.
    pub async fn h2(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(Self::H2(sender))
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let resp = match self {
                Self::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Self::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            anyhow::Ok(Answer {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: body.collect().await?.to_bytes(),
            })
        };
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{what}: no answer within {CLIENT_TIMEOUT:?}"))?
            .with_context(|| what)
    }
}

/// Reads a response head (through the blank line) byte by byte, so nothing
/// after it is consumed; returns the status and the head.
pub async fn read_head(stream: &mut TcpStream) -> Result<(u16, String)> {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(
                stream.read(&mut byte).await? == 1,
                "connection closed inside a response head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        anyhow::Ok(String::from_utf8_lossy(&head).into_owned())
    };
    let head = tokio::time::timeout(CLIENT_TIMEOUT, read)
        .await
        .context("no response head")??;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((status, head))
}

/// Writes `bytes` and reads back exactly as many.
pub async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> Result<Vec<u8>> {
    stream.write_all(bytes).await?;
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(CLIENT_TIMEOUT, stream.read_exact(&mut back))
        .await
        .context("the bytes did not come back")??;
    Ok(back)
}

/// The sum of the samples of `metric` (`name{labels} value` lines) whose
/// labels include every pair of `want`.
pub fn metric_sum(stats: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    stats
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = parse_labels(labels);
            want.iter()
                .all(|(k, v)| labels.get(*k).is_some_and(|have| have == v))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `a="x",b="y,z"` → {a: x, b: "y,z"} (values hold no escaped quotes).
fn parse_labels(mut s: &str) -> BTreeMap<&str, &str> {
    let mut out = BTreeMap::new();
    while let Some((key, rest)) = s.split_once("=\"") {
        let Some((value, rest)) = rest.split_once('"') else {
            break;
        };
        out.insert(key.trim_start_matches(','), value);
        s = rest;
    }
    out
}

/// Reads the access log's lines as JSON objects.
pub fn access_log_lines(path: &std::path::Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("reading {}: {e}", path.display()),
    };
    // Only whole lines: the writer may be in the middle of one.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("access log line {l:?}")))
        .collect()
}

#[test]
fn parses_prometheus_labels() {
    let stats = "istio_requests_total{a=\"1\",response_flags=\"x,y\",b=\"\"} 3\n\
                 istio_requests_total{a=\"1\",response_flags=\"-\",b=\"\"} 4\n\
                 istio_requests_total_other{a=\"1\"} 100\n";
    assert_eq!(
        metric_sum(stats, "istio_requests_total", &[("a", "1")]),
        7.0
    );
    assert_eq!(
        metric_sum(stats, "istio_requests_total", &[("response_flags", "x,y")]),
        3.0
    );
    assert_eq!(metric_sum(stats, "istio_requests_total", &[("b", "")]), 7.0);
}
