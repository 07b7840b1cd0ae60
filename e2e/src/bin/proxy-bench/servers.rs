//! The processes under test and the backend: finding the Debian tools,
//! writing haproxy's and nginx's configuration into the run's temporary
//! directory, the 100-service mesh keel-pilot serves, and starting every
//! server pinned to its CPU with `taskset` (each killed when dropped). It
//! does not generate load or measure; `load.rs` does.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use keel_e2e::{ChildGuard, Pilot};

use crate::KeelPolicy;

/// How long a server may take to listen, or keel-proxy to be configured.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The port the benched ServiceEntry declares (requests say `bench.test:9080`).
const SERVICE_PORT: u16 = 9080;

/// The external tools and the Debian packages that provide them.
pub struct Tools {
    /// `taskset` (util-linux).
    pub taskset: String,
    /// `wrk` (wrk).
    pub wrk: String,
    /// `h2load` (nghttp2-client).
    pub h2load: String,
    /// `haproxy` (haproxy).
    pub haproxy: String,
    /// `nginx` (nginx or nginx-light).
    pub nginx: String,
}

impl Tools {
    /// Finds every tool on `PATH` (plus `/usr/sbin` and `/sbin`, where
    /// Debian puts haproxy and nginx), or fails naming the missing Debian
    /// packages.
    pub fn find() -> Result<Self> {
        let mut missing = Vec::new();
        let mut find = |name: &str, package: &str| {
            which(name).unwrap_or_else(|| {
                missing.push(format!("{name} (Debian package {package})"));
                String::new()
            })
        };
        let tools = Self {
            taskset: find("taskset", "util-linux"),
            wrk: find("wrk", "wrk"),
            h2load: find("h2load", "nghttp2-client"),
            haproxy: find("haproxy", "haproxy"),
            nginx: find("nginx", "nginx"),
        };
        find("getconf", "libc-bin");
        if !missing.is_empty() {
            bail!(
                "missing tools: {}; install them with `apt-get install` and run again",
                missing.join(", ")
            );
        }
        Ok(tools)
    }

    /// One line per tool: its version, for the report.
    pub fn versions(&self) -> Vec<String> {
        let first_line = |cmd: &str, arg: &str| {
            let out = Command::new(cmd).arg(arg).output().ok();
            out.map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
        };
        vec![
            first_line(&self.haproxy, "-v"),
            first_line(&self.nginx, "-v"),
            first_line(&self.wrk, "-v"),
            first_line(&self.h2load, "--version"),
        ]
    }
}

/// The full path of `name` on `PATH`, `/usr/sbin` or `/sbin`.
fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// A free loopback port (bound and released; the short race with other
/// programs picking the same port is accepted).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(l.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running server: its process (killed on drop) and where it listens.
pub struct Server {
    /// The process (killed on drop).
    pub child: ChildGuard,
    /// The HTTP/1.1 listener.
    pub h1: SocketAddr,
    /// The HTTP/2 (h2c prior knowledge) listener; may equal `h1`.
    pub h2: SocketAddr,
}

impl Server {
    /// The server's pid (taskset execs it, so this is the server itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs `program ARGS` as `taskset -c CPU program ARGS`.
fn spawn_pinned(
    tools: &Tools,
    name: &str,
    cpu: usize,
    program: &str,
    args: &[&str],
    stdout: Stdio,
) -> Result<ChildGuard> {
    let mut cmd = Command::new(&tools.taskset);
    cmd.arg("-c").arg(cpu.to_string()).arg(program).args(args);
    ChildGuard::spawn(name, &mut cmd, stdout)
}

/// Waits until every address accepts a TCP connection.
fn wait_listening(name: &str, addrs: &[SocketAddr]) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    for addr in addrs {
        while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "{name} is not listening on {addr} after {START_TIMEOUT:?}; its stderr is above"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The `*_temp_path` directives, so nginx never needs `/var/lib/nginx`.
fn nginx_temp_paths(dir: &Path, name: &str) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {}/{name}-tmp/{t};\n", dir.display()))
        .collect()
}

/// The common head of both nginx configurations: one single-process worker
/// in the foreground, no access log, long keep-alive.
fn nginx_head(dir: &Path, name: &str) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {dir}/{name}.pid;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n{temp}  \
         keepalive_requests 1000000;\n  keepalive_timeout 120s;\n",
        dir = dir.display(),
        temp = nginx_temp_paths(dir, name),
    )
}

/// nginx as the backend: a static `200` with `body_size` bytes, HTTP/1.1 on
/// one port and h2c on another (nginx 1.22 cannot serve both on one
/// plaintext port).
pub fn nginx_backend_conf(dir: &Path, h1: u16, h2: u16, body_size: usize) -> String {
    let mut conf = nginx_head(dir, "backend");
    let body = "a".repeat(body_size);
    // `write!` to a String cannot fail.
    let _ = write!(
        conf,
        "  server {{\n    listen 127.0.0.1:{h1};\n    listen 127.0.0.1:{h2} http2;\n    \
         location / {{ default_type text/plain; return 200 \"{body}\"; }}\n  }}\n}}\n"
    );
    conf
}

/// nginx as the proxy: `proxy_pass` to an upstream with keep-alive
/// connections over HTTP/1.1, HTTP/1.1 on one port and h2c on another.
pub fn nginx_proxy_conf(dir: &Path, h1: u16, h2: u16, backend: SocketAddr) -> String {
    let mut conf = nginx_head(dir, "nginx-proxy");
    let _ = write!(
        conf,
        "  upstream backend {{\n    server {backend};\n    keepalive 256;\n    \
         keepalive_requests 1000000;\n    keepalive_timeout 120s;\n  }}\n  server {{\n    \
         listen 127.0.0.1:{h1};\n    listen 127.0.0.1:{h2} http2;\n    location / {{\n      \
         proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    conf
}

/// haproxy in HTTP mode, one thread, keep-alive on both sides (connections
/// to the backend shared between clients), HTTP/1.1 and h2c frontends.
pub fn haproxy_conf(h1: u16, h2: u16, backend: SocketAddr) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\ndefaults\n  mode http\n  \
         option http-keep-alive\n  http-reuse always\n  timeout connect 5s\n  \
         timeout client 120s\n  timeout server 120s\n  timeout http-keep-alive 120s\n\n\
         frontend bench\n  bind 127.0.0.1:{h1}\n  bind 127.0.0.1:{h2} proto h2\n  \
         default_backend backend\n\nbackend backend\n  server b1 {backend}\n"
    )
}

/// Writes `conf` to `dir/file` (and nginx's temp directories) and returns
/// the path.
fn write_conf(dir: &Path, file: &str, conf: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts nginx with `conf` (`-e stderr`, prefix `dir`) on `cpu`.
pub fn start_nginx(
    tools: &Tools,
    dir: &Path,
    name: &str,
    cpu: usize,
    conf: &str,
    h1: u16,
    h2: u16,
) -> Result<Server> {
    std::fs::create_dir_all(dir.join(format!("{name}-tmp")))?;
    let path = write_conf(dir, &format!("{name}.conf"), conf)?;
    let prefix = dir.display().to_string();
    let path = path.display().to_string();
    let child = spawn_pinned(
        tools,
        name,
        cpu,
        &tools.nginx,
        &["-e", "stderr", "-p", &prefix, "-c", &path],
        Stdio::null(),
    )?;
    let server = Server {
        child,
        h1: loopback(h1),
        h2: loopback(h2),
    };
    wait_listening(name, &[server.h1, server.h2])?;
    Ok(server)
}

/// Starts haproxy with `conf` in the foreground (`-db`) on `cpu`.
pub fn start_haproxy(
    tools: &Tools,
    dir: &Path,
    cpu: usize,
    conf: &str,
    h1: u16,
    h2: u16,
) -> Result<Server> {
    let path = write_conf(dir, "haproxy.cfg", conf)?.display().to_string();
    let child = spawn_pinned(
        tools,
        "haproxy",
        cpu,
        &tools.haproxy,
        &["-db", "-f", &path],
        Stdio::null(),
    )?;
    let server = Server {
        child,
        h1: loopback(h1),
        h2: loopback(h2),
    };
    wait_listening("haproxy", &[server.h1, server.h2])?;
    Ok(server)
}

/// Starts keel-echo (HTTP/1.1 and h2c on one port) on `cpu`.
pub fn start_echo(tools: &Tools, cpu: usize) -> Result<Server> {
    let bin = keel_e2e::bin_path("keel-e2e", "keel-echo");
    let port = free_port()?;
    let listen = loopback(port).to_string();
    let bin = bin.display().to_string();
    let child = spawn_pinned(
        tools,
        "keel-echo",
        cpu,
        &bin,
        &["--listen", &listen],
        Stdio::null(),
    )?;
    let addr = loopback(port);
    wait_listening("keel-echo", &[addr])?;
    Ok(Server {
        child,
        h1: addr,
        h2: addr,
    })
}

/// `services` ServiceEntries: `bench.test` (port 9080, HTTP, STATIC, one
/// endpoint `backend`) and `services - 1` others like it that nothing calls.
pub fn mesh_yaml(services: usize, backend: SocketAddr, policy: KeelPolicy) -> String {
    let entry = |name: &str, host: &str, ip: &str, port: u16| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  \
             location: MESH_INTERNAL\n  resolution: STATIC\n  \
             ports: [{{number: {SERVICE_PORT}, name: http, protocol: HTTP}}]\n  \
             endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]\n"
        )
    };
    let mut yaml = entry(
        "bench",
        "bench.test",
        &backend.ip().to_string(),
        backend.port(),
    );
    for i in 1..services {
        let ip = format!("10.200.{}.{}", i >> 8, i & 0xff);
        yaml.push_str(&entry(
            &format!("dummy-{i}"),
            &format!("dummy-{i}.test"),
            &ip,
            8080,
        ));
    }
    yaml.push_str(match policy {
        KeelPolicy::Default => "",
        KeelPolicy::None => {
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {name: bench, namespace: default}\nspec:\n  hosts: [bench.test]\n  http:\n  \
             - retries: {attempts: 0}\n    route: [{destination: {host: bench.test}}]\n"
        }
        KeelPolicy::Resilience => RESILIENCE_YAML,
    });
    yaml
}

/// `--keel-policy resilience`: what a careful operator sets on a service.
const RESILIENCE_YAML: &str = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench.test]
  http:
  - timeout: 10s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"5xx,reset,connect-failure\"}
    route: [{destination: {host: bench.test}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench, namespace: default}
spec:
  host: bench.test
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1000, connectTimeout: 1s}
      http: {http1MaxPendingRequests: 1000, http2MaxRequests: 1000, maxRetries: 100, idleTimeout: 60s}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
    retryBudget: {percent: 20, minRetryConcurrency: 3}
";

/// One line describing `policy`, for the report.
pub fn policy_summary(policy: KeelPolicy) -> &'static str {
    match policy {
        KeelPolicy::Default => "none (Istio's default route retry policy)",
        KeelPolicy::None => "a VirtualService with `retries: {attempts: 0}`",
        KeelPolicy::Resilience => {
            "retries (3, per-try timeout, route timeout), retry budget, connection-pool limits \
             (`maxConnections: 1000`), outlier detection (`--keel-policy resilience`)"
        }
    }
}

/// keel-pilot (unpinned: it is idle once it has pushed) and keel-proxy
/// (pinned to `cpu`), configured with the mesh.
pub struct Keel {
    /// keel-proxy; its outbound listener serves both protocols. Declared
    /// first so it is dropped (killed) before pilot.
    pub proxy: Server,
    /// keel-pilot, kept running while the proxy is (killed on drop).
    pub _pilot: Pilot,
    /// Whether it was started with `--concurrency 1` (older builds lack
    /// the flag; the CPU mask gives tokio one worker either way).
    pub concurrency_one: bool,
}

/// Writes the mesh into `dir/mesh`, starts pilot and a sidecar keel-proxy,
/// and waits until the proxy is ready and has the benched service.
pub fn start_keel(
    tools: &Tools,
    dir: &Path,
    cpu: usize,
    services: usize,
    backend: SocketAddr,
    policy: KeelPolicy,
) -> Result<Keel> {
    let mesh = dir.join("mesh");
    std::fs::create_dir_all(&mesh)?;
    std::fs::write(mesh.join("mesh.yaml"), mesh_yaml(services, backend, policy))
        .with_context(|| format!("writing {}", mesh.display()))?;
    let pilot = keel_e2e::spawn_pilot(&mesh)?;
    let bin = keel_e2e::bin_path("keel-proxy", "keel-proxy");
    let xds = pilot.xds_addr.to_string();
    let mut args: Vec<String> = [
        "--xds-address",
        &xds,
        "--admin-addr",
        "127.0.0.1:0",
        "--ready-addr",
        "127.0.0.1:0",
        "--stats-addr",
        "127.0.0.1:0",
        "--outbound-addr",
        "127.0.0.1:0",
        "--inbound-addr",
        "127.0.0.1:0",
        "--pod-name",
        "bench-client",
        "--labels",
        "app=bench-client",
    ]
    .map(String::from)
    .to_vec();
    // One worker thread, like `nbthread 1` and `worker_processes 1`, when
    // this keel-proxy has the flag (the CPU mask allows only one anyway).
    let concurrency_one = help_mentions(&bin, "--concurrency");
    if concurrency_one {
        args.extend(["--concurrency".to_string(), "1".to_string()]);
    }
    let bin = bin.display().to_string();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = spawn_pinned(tools, "keel-proxy", cpu, &bin, &arg_refs, Stdio::piped())?;
    let lines = keel_e2e::line_channel(child.take_stdout().context("keel-proxy's stdout")?);
    let deadline = Instant::now() + START_TIMEOUT;
    let addrs = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .context("keel-proxy printed no `keel-proxy ready:` line; its stderr is above")?;
        if let Some(rest) = line.strip_prefix("keel-proxy ready: ") {
            break parse_ports(rest)?;
        }
        eprintln!("[keel-proxy stdout] {line}");
    };
    // Keep draining stdout so the proxy never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines {
            eprintln!("[keel-proxy stdout] {line}");
        }
    });
    let port = |key: &str| {
        addrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| *a)
            .with_context(|| format!("keel-proxy's ready line has no {key}="))
    };
    let (ready, admin, outbound) = (port("ready")?, port("admin")?, port("outbound")?);
    let configured = keel_e2e::wait_until(START_TIMEOUT, || {
        keel_e2e::http_get(ready, "/healthz/ready").is_ok_and(|(s, _)| s == 200)
    });
    if !configured {
        bail!("keel-proxy's /healthz/ready on {ready} did not answer 200 within {START_TIMEOUT:?}");
    }
    pilot.assert_no_rejects("keel-proxy-bench's keel-proxy")?;
    let last = format!("dummy-{}.test", services.saturating_sub(1));
    let has_all = keel_e2e::wait_until(START_TIMEOUT, || {
        keel_e2e::http_get(admin, "/config_dump")
            .is_ok_and(|(_, body)| body.contains("bench.test") && body.contains(&last))
    });
    if !has_all {
        bail!(
            "keel-proxy's /config_dump on {admin} lacks bench.test or {last} after {START_TIMEOUT:?}"
        );
    }
    Ok(Keel {
        proxy: Server {
            child,
            h1: outbound,
            h2: outbound,
        },
        _pilot: pilot,
        concurrency_one,
    })
}

/// `key=ADDR` pairs of a ready line.
fn parse_ports(rest: &str) -> Result<Vec<(String, SocketAddr)>> {
    rest.split_whitespace()
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| {
            let addr = v
                .parse()
                .with_context(|| format!("address {v:?} in the ready line"))?;
            Ok((k.to_string(), addr))
        })
        .collect()
}

/// Whether `bin --help` mentions `flag`.
fn help_mentions(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_has_every_service() {
        let yaml = mesh_yaml(100, loopback(4242), KeelPolicy::Default);
        assert_eq!(yaml.matches("kind: ServiceEntry").count(), 100);
        assert!(yaml.contains("hosts: [bench.test]"));
        assert!(yaml.contains("endpoints: [{address: 127.0.0.1, ports: {http: 4242}}]"));
        assert!(yaml.contains("hosts: [dummy-99.test]"));
    }

    #[test]
    fn every_policy_is_valid_istio_config() {
        for policy in [
            KeelPolicy::Default,
            KeelPolicy::None,
            KeelPolicy::Resilience,
        ] {
            let mut store =
                keel_pilot::model::store::ConfigStore::new("cluster.local", "istio-system");
            store.upsert("mesh.yaml", &mesh_yaml(3, loopback(4242), policy));
            assert!(
                store.errors().is_empty(),
                "{policy:?}: {:?}",
                store.errors()
            );
        }
    }

    #[test]
    fn configs_name_their_ports() {
        let dir = Path::new("/tmp/x");
        let nginx = nginx_proxy_conf(dir, 1, 2, loopback(3));
        assert!(nginx.contains("listen 127.0.0.1:2 http2;"));
        assert!(nginx.contains("server 127.0.0.1:3;"));
        assert!(nginx.contains("proxy_set_header Connection \"\";"));
        let haproxy = haproxy_conf(1, 2, loopback(3));
        assert!(haproxy.contains("bind 127.0.0.1:2 proto h2"));
        assert!(haproxy.contains("nbthread 1"));
        assert_eq!(nginx_backend_conf(dir, 1, 2, 3).matches("aaa").count(), 1);
    }
}
