//! `keelctl up`: the whole mesh on one machine, no Kubernetes and no root.
//!
//! Reads the Pods of the config directory (Kubernetes YAML, as keel-pilot
//! reads them), starts keel-pilot on the directory, then for each Pod its
//! app (keel-echo) and its own keel-proxy sidecar, both on the Pod's
//! `status.podIP` (a loopback address of its own, so every workload can use
//! the standard ports). Sidecars work as explicit proxies: each app reaches
//! other services through `HTTP_PROXY` pointing at its sidecar's outbound
//! listener. A Pod annotated `keel.dev/role: gateway` becomes an ingress
//! gateway (keel-proxy in router mode). When everything is ready it prints
//! what runs where and a `curl` that reaches productpage through the
//! mesh; Ctrl-C (or SIGTERM) stops every process, sidecars draining first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The annotation naming what a Pod's app calls.
const DOWNSTREAM: &str = "keel.dev/echo-downstream";
/// The annotation making a Pod an ingress gateway.
const ROLE: &str = "keel.dev/role";
/// The app port of every workload.
const APP_PORT: u16 = 9080;
/// How long everything may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A Pod of the config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (default `default`).
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `status.podIP`.
    pub ip: IpAddr,
    /// `spec.serviceAccountName` (default `default`).
    pub service_account: String,
    /// `keel.dev/echo-downstream`.
    pub downstream: Vec<String>,
    /// `keel.dev/role: gateway`.
    pub gateway: bool,
}

/// The Pods in `dir` (every `*.yaml`/`*.yml` file, every document).
pub fn workloads(dir: &Path) -> Result<Vec<Workload>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
            if value["kind"].as_str() != Some("Pod") {
                continue;
            }
            let at = || format!("{}: document {}", file.display(), i + 1);
            out.push(workload(&value).with_context(at)?);
        }
    }
    Ok(out)
}

fn workload(v: &serde_yaml::Value) -> Result<Workload> {
    let meta = &v["metadata"];
    let name = meta["name"]
        .as_str()
        .context("metadata.name: a Pod needs a name")?
        .to_string();
    let ip = v["status"]["podIP"]
        .as_str()
        .context("status.podIP: keelctl runs each Pod on its podIP")?;
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("status.podIP: {ip:?} is not an IP address"))?;
    if !ip.is_loopback() {
        bail!(
            "status.podIP: {ip} is not a loopback address; keelctl up runs every Pod on this machine"
        );
    }
    let labels = meta["labels"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let annotation = |key: &str| meta["annotations"][key].as_str().map(str::to_string);
    let gateway = match annotation(ROLE).as_deref() {
        None => false,
        Some("gateway") => true,
        Some(other) => {
            bail!("metadata.annotations.{ROLE}: unknown role {other:?} (only \"gateway\")")
        }
    };
    Ok(Workload {
        name,
        namespace: meta["namespace"].as_str().unwrap_or("default").to_string(),
        labels,
        ip,
        service_account: v["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string(),
        downstream: annotation(DOWNSTREAM)
            .map(|d| {
                d.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        gateway,
    })
}

/// The binaries `up` starts.
struct Bins {
    pilot: PathBuf,
    proxy: PathBuf,
    echo: PathBuf,
}

/// keel-pilot, keel-proxy and keel-echo beside keelctl; when one is missing
/// or older than keelctl and this is a source checkout, `cargo build` them
/// (same profile) first.
fn binaries() -> Result<Bins> {
    let exe = std::env::current_exe().context("locating keelctl")?;
    let dir = exe
        .parent()
        .context("keelctl has no directory")?
        .to_path_buf();
    let bin = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let bins = Bins {
        pilot: bin("keel-pilot"),
        proxy: bin("keel-proxy"),
        echo: bin("keel-echo"),
    };
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = [&bins.pilot, &bins.proxy, &bins.echo]
        .iter()
        .any(|p| mtime(p).is_none() || mtime(p) < mtime(&exe));
    if !stale {
        return Ok(bins);
    }
    // The checkout: above the current directory (where `cargo run` is
    // typed), else above the binaries (a target directory inside it).
    let root = std::env::current_dir()
        .ok()
        .and_then(|cwd| workspace_root(&cwd))
        .or_else(|| workspace_root(&dir))
        .with_context(|| {
            format!(
                "keel-pilot, keel-proxy and keel-echo must be in {} (build them with \
             `cargo build --release --bins`)",
                dir.display()
            )
        })?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    eprintln!("keelctl: building keel-pilot, keel-proxy and keel-echo (first run only)...");
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cmd.current_dir(&root).args([
        "build",
        "-p",
        "keel-pilot",
        "-p",
        "keel-proxy",
        "-p",
        "keel-e2e",
        "--bin",
        "keel-pilot",
        "--bin",
        "keel-proxy",
        "--bin",
        "keel-echo",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(bins)
}

/// The workspace above `dir` (a `Cargo.toml` with `[workspace]`).
fn workspace_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// One process `up` started.
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
}

/// Starts `cmd` with its output in `logs/NAME.log`.
fn start(mut cmd: Command, logs: &Path, name: &str, what: String) -> Result<Proc> {
    let log = logs.join(format!("{name}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    cmd.stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    Ok(Proc { what, child, log })
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// `GET path` on `addr`: the status code.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut head))
        .await
        .ok()?
        .ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the command.
pub fn run(config_dir: &Path) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keelctl up: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(up(config_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelctl up: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(config_dir: &Path) -> Result<()> {
    let report = crate::validate::check(config_dir, "cluster.local", "istio-system")?;
    if !report.errors.is_empty() {
        for e in &report.errors {
            eprintln!("{e}");
        }
        bail!(
            "{} has {} error(s); fix them (keelctl validate {0} checks) and run again",
            config_dir.display(),
            report.errors.len()
        );
    }
    let workloads = workloads(config_dir)?;
    if workloads.is_empty() {
        bail!("{} has no Pods to run", config_dir.display());
    }
    let bins = binaries()?;
    let logs = std::env::temp_dir().join(format!("keelctl-up-{}", std::process::id()));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = start_all(config_dir, &bins, &logs, &workloads, &mut procs).await;
    let outcome = match result {
        Ok(gateway) => {
            print_table(&procs, &workloads, &logs, gateway);
            watch(&mut procs).await
        }
        Err(e) => Err(e),
    };
    stop(&mut procs).await;
    outcome
}

/// Starts pilot, then every workload; returns the gateway port, if any.
async fn start_all(
    config_dir: &Path,
    bins: &Bins,
    logs: &Path,
    workloads: &[Workload],
    procs: &mut Vec<Proc>,
) -> Result<Option<u16>> {
    let pilot_ip: IpAddr = [127, 0, 10, 100].into();
    let xds = SocketAddr::new(pilot_ip, 15010);
    let mut cmd = Command::new(&bins.pilot);
    cmd.arg("--config-dir")
        .arg(config_dir)
        .arg("--xds-addr")
        .arg(xds.to_string())
        .arg("--http-addr")
        .arg(SocketAddr::new(pilot_ip, 15014).to_string());
    procs.push(start(
        cmd,
        logs,
        "keel-pilot",
        format!("keel-pilot           xDS {xds}, debug http://{pilot_ip}:15014/debug/syncz"),
    )?);
    wait_log(&procs[0], "keel-pilot ready").await?;

    for w in workloads {
        let labels = w
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let addr = |port: u16| SocketAddr::new(w.ip, port).to_string();
        let mut proxy = Command::new(&bins.proxy);
        proxy
            .args(["--xds-address", &xds.to_string()])
            .args(["--namespace", &w.namespace, "--pod-name", &w.name])
            .args(["--pod-ip", &w.ip.to_string()])
            .args(["--service-account", &w.service_account])
            .args(["--labels", &labels])
            .args(["--mode", if w.gateway { "router" } else { "sidecar" }])
            .args([
                "--outbound-addr",
                &addr(15001),
                "--inbound-addr",
                &addr(15006),
            ])
            .args(["--admin-addr", &addr(15000), "--stats-addr", &addr(15090)])
            .args(["--ready-addr", &addr(15021), "--concurrency", "1"]);
        let role = if w.gateway { "gateway" } else { "sidecar" };
        procs.push(start(
            proxy,
            logs,
            &format!("{}-proxy", w.name),
            format!(
                "{:<20} {role}: outbound {}, stats http://{}/stats/prometheus",
                w.name,
                addr(15001),
                addr(15090)
            ),
        )?);
        if w.gateway {
            continue;
        }
        let mut app = Command::new(&bins.echo);
        app.args(["--listen", &addr(APP_PORT), "--name", &w.name])
            .args([
                "--version",
                w.labels.get("version").map_or("v1", String::as_str),
            ])
            .env("HTTP_PROXY", format!("http://{}", addr(15001)))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for d in &w.downstream {
            app.args(["--downstream", d]);
        }
        let calls = if w.downstream.is_empty() {
            String::new()
        } else {
            format!(", calls {}", w.downstream.join(" "))
        };
        procs.push(start(
            app,
            logs,
            &w.name,
            format!("{:<20} app: keel-echo on {}{calls}", w.name, addr(APP_PORT)),
        )?);
    }

    // Ready: every proxy's /healthz/ready, every app's port, the gateway's
    // listener.
    let deadline = Instant::now() + READY_WITHIN;
    let gateway = workloads.iter().find(|w| w.gateway);
    let gateway_port = if gateway.is_some() {
        Some(gateway_port(config_dir))
    } else {
        None
    }
    .flatten();
    for w in workloads {
        let ready = SocketAddr::new(w.ip, 15021);
        wait_until(
            deadline,
            procs,
            &format!("{}'s proxy to be ready", w.name),
            || async move { http_status(ready, "/healthz/ready").await == Some(200) },
        )
        .await?;
        if !w.gateway {
            let app = SocketAddr::new(w.ip, APP_PORT);
            wait_until(
                deadline,
                procs,
                &format!("{}'s app to listen", w.name),
                || async move { TcpStream::connect(app).await.is_ok() },
            )
            .await?;
        }
    }
    if let Some(port) = gateway_port {
        let gw = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(
            deadline,
            procs,
            "the gateway to answer /productpage",
            || async move { http_status(gw, "/productpage").await == Some(200) },
        )
        .await?;
    }
    Ok(gateway_port)
}

/// The first HTTP server port of a Gateway in the config directory.
fn gateway_port(dir: &Path) -> Option<u16> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        serde_yaml::Deserializer::from_str(&text).find_map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).ok()?;
            (v["kind"].as_str() == Some("Gateway")).then_some(())?;
            v["spec"]["servers"]
                .as_sequence()?
                .iter()
                .find_map(|s| u16::try_from(s["port"]["number"].as_u64()?).ok())
        })
    })
}

/// Waits for a line containing `needle` in a process's log.
async fn wait_log(p: &Proc, needle: &str) -> Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&p.log).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} did not get ready; its log ({}):\n{}",
        p.what.trim(),
        p.log.display(),
        tail(&p.log)
    )
}

/// Polls `check` until it holds; fails early, with the log, when a process
/// exits.
async fn wait_until<F, Fut>(
    deadline: Instant,
    procs: &mut [Proc],
    what: &str,
    check: F,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if check().await {
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!(
                    "{} exited ({status}) while waiting for {what}; its log ({}):\n{}",
                    p.what.split_whitespace().next().unwrap_or("a process"),
                    p.log.display(),
                    tail(&p.log)
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {READY_WITHIN:?} waiting for {what}; logs in the directory printed above"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_table(procs: &[Proc], workloads: &[Workload], logs: &Path, gateway: Option<u16>) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keelctl up: {} workloads and keel-pilot are running (logs: {})\n",
        workloads.len(),
        logs.display()
    );
    let _ = writeln!(out, "  {:>7}  WHAT", "PID");
    for p in procs {
        let pid = p.child.id().map_or("-".to_string(), |id| id.to_string());
        let _ = writeln!(out, "  {pid:>7}  {}", p.what);
    }
    match gateway {
        Some(port) => {
            let _ = writeln!(
                out,
                "\nReach productpage through the ingress gateway and the sidecars:\n"
            );
            let _ = writeln!(out, "curl -s http://127.0.0.1:{port}/productpage");
        }
        None => {
            let _ = writeln!(out, "\n(no Gateway in the config: no way in from outside)");
        }
    }
    let _ = writeln!(out, "\nCtrl-C stops everything.");
    print!("{out}");
}

/// Waits for Ctrl-C or SIGTERM; a process exiting on its own is an error.
async fn watch(procs: &mut [Proc]) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for p in procs.iter_mut() {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        bail!("{} exited ({status}); its log ({}):\n{}",
                            p.what.split_whitespace().next().unwrap_or("a process"),
                            p.log.display(), tail(&p.log));
                    }
                }
            }
        }
    }
    println!("\nkeelctl up: stopping...");
    Ok(())
}

/// SIGTERM to every process, last started first (apps, then their
/// sidecars drain, then pilot); SIGKILL to any left after 10 s.
async fn stop(procs: &mut [Proc]) {
    for p in procs.iter().rev() {
        if let Some(id) = p.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &id.to_string()])
                .status();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut().rev() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, p.child.wait()).await.is_err() {
            let _ = p.child.kill().await;
        }
    }
    println!("keelctl up: stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_has_the_bookinfo_workloads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
        let w = workloads(&dir).expect("the example loads");
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        for want in [
            "productpage-v1",
            "details-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
            "ratings-v1",
            "istio-ingressgateway",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let gw = w.iter().find(|w| w.gateway).expect("a gateway");
        assert_eq!(gw.namespace, "istio-system");
        let pp = w
            .iter()
            .find(|w| w.name == "productpage-v1")
            .expect("productpage");
        assert_eq!(pp.downstream.len(), 2);
        assert_eq!(gateway_port(&dir), Some(18080));
    }

    #[test]
    fn pods_keelctl_cannot_run_are_refused_with_the_field() {
        let doc = |yaml: &str| serde_yaml::from_str::<serde_yaml::Value>(yaml).expect("yaml");
        let e = workload(&doc("kind: Pod\nmetadata: {name: a}")).expect_err("no podIP");
        assert!(e.to_string().contains("status.podIP"), "{e}");
        let e = workload(&doc(
            "kind: Pod\nmetadata: {name: a}\nstatus: {podIP: 10.1.2.3}",
        ))
        .expect_err("not loopback");
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        let e = workload(&doc(
            "kind: Pod\nmetadata: {name: a, annotations: {keel.dev/role: waiter}}\nstatus: {podIP: 127.0.10.9}",
        ))
        .expect_err("unknown role");
        assert!(e.to_string().contains("keel.dev/role"), "{e}");
    }
}
