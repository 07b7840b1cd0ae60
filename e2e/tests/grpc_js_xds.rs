//! Interop with a real xDS client: grpc-js (`@grpc/grpc-js-xds`) as a
//! proxyless gRPC client of pilot.
//!
//! Each test starts real processes on loopback: two grpc-js echo backends
//! (`e2e/interop/node/backend.js`, versions v1 and v2), `keel-pilot` reading a
//! temp directory of Istio YAML that routes `echo.test:7070` to them, and the
//! grpc-js client (`client.js`) resolving `xds:///echo.test:7070` through
//! pilot. The assertions are what a user of the mesh would notice: the traffic
//! split, header routing, injected faults, a live config change, and that the
//! client NACKed nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use keel_e2e::{ChildGuard, Pilot, interop_deps, line_channel, spawn_pilot, write_atomic};
use serde_json::Value;

const NODE_ID: &str = "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local";

/// The tests in this file run one at a time: each starts five processes, and
/// the live-update test measures a latency that parallel load would distort.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a `client.js --calls N` run saw.
#[derive(Debug)]
struct Summary {
    ok: u64,
    errors: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
    raw: Value,
}

impl Summary {
    fn parse(line: &str) -> Result<Self> {
        let raw: Value =
            serde_json::from_str(line).with_context(|| format!("client.js printed {line:?}"))?;
        let counts = |key: &str| -> BTreeMap<String, u64> {
            raw[key]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Self {
            ok: raw["ok"].as_u64().unwrap_or(0),
            errors: counts("errors"),
            versions: counts("versions"),
            raw,
        })
    }

    fn version(&self, v: &str) -> u64 {
        self.versions.get(v).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// Pilot plus the two echo backends and a config dir routing to them.
struct Mesh {
    // Field order is drop order: pilot first, then the backends, then the dirs.
    pilot: Pilot,
    _backends: ChildGuard,
    interop: PathBuf,
    bootstrap: PathBuf,
    config: PathBuf,
    stage: PathBuf,
    _root: tempfile::TempDir,
}

impl Mesh {
    /// Starts backends v1 and v2, writes the ServiceEntry, WorkloadEntries,
    /// DestinationRule and `virtual_service`, and starts pilot on them.
    fn start(virtual_service: &str) -> Result<Self> {
        let interop = interop_deps()?;
        let root = tempfile::tempdir()?;
        let config = root.path().join("config");
        let stage = root.path().join("stage");
        std::fs::create_dir_all(&config)?;

        let (backends, ports) = start_backends(&interop)?;
        let v1 = ports.get("echo-v1").context("no port for echo-v1")?;
        let v2 = ports.get("echo-v2").context("no port for echo-v2")?;
        write_atomic(
            &stage,
            &config,
            "service-entry.yaml",
            SERVICE_ENTRY.as_bytes(),
        )?;
        write_atomic(
            &stage,
            &config,
            "workload-entries.yaml",
            workload_entries(*v1, *v2).as_bytes(),
        )?;
        write_atomic(
            &stage,
            &config,
            "destination-rule.yaml",
            DESTINATION_RULE.as_bytes(),
        )?;
        write_atomic(
            &stage,
            &config,
            "virtual-service.yaml",
            virtual_service.as_bytes(),
        )?;

        let pilot = spawn_pilot(&config)?;
        let bootstrap = keel_e2e::write_grpc_bootstrap(root.path(), pilot.xds_addr, NODE_ID)?;
        Ok(Self {
            pilot,
            _backends: backends,
            interop,
            bootstrap,
            config,
            stage,
            _root: root,
        })
    }

    fn client_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("node");
        cmd.arg(self.interop.join("node/client.js"))
            .args(args)
            .env("GRPC_XDS_BOOTSTRAP", &self.bootstrap);
        // Set GRPC_TRACE=xds_client,xds_resolver GRPC_VERBOSITY=DEBUG in the
        // test's environment to see the client's xDS exchange on failure.
        cmd
    }

    /// Runs `client.js --calls N ARGS...` to completion and parses its summary.
    fn calls(&self, n: u32, args: &[&str]) -> Result<Summary> {
        let n = n.to_string();
        let mut all = vec!["--calls", n.as_str()];
        all.extend_from_slice(args);
        let mut cmd = self.client_cmd(&all);
        let mut child = ChildGuard::spawn("client.js", &mut cmd, Stdio::piped())?;
        let lines = line_channel(child.take_stdout().context("client stdout not piped")?);
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .context("client.js printed no summary within 60 s; its stderr is above")?;
        child.finish(Duration::from_secs(5))?;
        let summary = Summary::parse(&line)?;
        eprintln!("client.js --calls {n} {args:?}: {line}");
        Ok(summary)
    }

    fn write_virtual_service(&self, yaml: &str) -> Result<()> {
        write_atomic(
            &self.stage,
            &self.config,
            "virtual-service.yaml",
            yaml.as_bytes(),
        )
    }

    /// Fails if pilot counted any NACK; shows what it served if so.
    fn assert_no_rejects(&self) -> Result<()> {
        self.pilot.assert_no_rejects(NODE_ID)
    }

    /// Adds pilot's config dump for the client to an error.
    fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        err.context(format!(
            "config pilot served to {NODE_ID}:\n{}",
            self.pilot.config_dump(NODE_ID)
        ))
    }
}

/// Starts `backend.js` with echo-v1/v1 and echo-v2/v2; returns it and the
/// port of each backend by name.
fn start_backends(interop: &Path) -> Result<(ChildGuard, BTreeMap<String, u16>)> {
    let mut cmd = Command::new("node");
    cmd.arg(interop.join("node/backend.js")).args([
        "--name",
        "echo-v1",
        "--version",
        "v1",
        "--name",
        "echo-v2",
        "--version",
        "v2",
    ]);
    let mut child = ChildGuard::spawn("backend.js", &mut cmd, Stdio::piped())?;
    let lines = line_channel(child.take_stdout().context("backend stdout not piped")?);
    let mut ports = BTreeMap::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .context("backend.js did not print `ready` within 30 s; its stderr is above")?;
        if line == "ready" {
            break;
        }
        let mut words = line.split_whitespace();
        if let (Some("listening"), Some(name), Some(port)) =
            (words.next(), words.next(), words.next())
        {
            ports.insert(name.to_string(), port.parse()?);
        }
    }
    Ok((child, ports))
}

const SERVICE_ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo.test
  ports:
  - number: 7070
    name: grpc
    protocol: GRPC
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector:
    labels:
      app: echo
";

fn workload_entries(v1_port: u16, v2_port: u16) -> String {
    let entry = |version: &str, port: u16| {
        format!(
            "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: echo-{version}
  namespace: default
spec:
  address: 127.0.0.1
  ports:
    grpc: {port}
  labels:
    app: echo
    version: {version}
"
        )
    };
    format!("{}---\n{}", entry("v1", v1_port), entry("v2", v2_port))
}

const DESTINATION_RULE: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: default
spec:
  host: echo.test
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

/// A VirtualService sending `v1_weight`% to subset v1 and the rest to v2.
fn weighted_vs(v1_weight: u32) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo.test
  http:
  - route:
    - destination:
        host: echo.test
        subset: v1
      weight: {v1_weight}
    - destination:
        host: echo.test
        subset: v2
      weight: {}
",
        100 - v1_weight
    )
}

const HEADER_VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo.test
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: echo.test
        subset: v2
  - route:
    - destination:
        host: echo.test
        subset: v1
";

const ABORT_VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo.test
  http:
  - fault:
      abort:
        percentage:
          value: 100
        httpStatus: 503
    route:
    - destination:
        host: echo.test
        subset: v1
";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn weighted_split_90_10() -> Result<()> {
    let _serial = serial();
    let mesh = Mesh::start(&weighted_vs(90))?;
    let s = mesh.calls(1000, &[])?;
    let check = || -> Result<()> {
        ensure!(s.errors.is_empty(), "calls failed: {}", s.raw);
        ensure!(s.ok == 1000, "expected 1000 answers: {}", s.raw);
        let v1_pct = s.version("v1") as f64 / 10.0;
        let v2_pct = s.version("v2") as f64 / 10.0;
        ensure!(
            (86.0..=94.0).contains(&v1_pct) && (6.0..=14.0).contains(&v2_pct),
            "split v1 {v1_pct}% / v2 {v2_pct}%, want 90/10 ± 4: {}",
            s.raw
        );
        Ok(())
    };
    check().map_err(|e| mesh.explain(e))?;
    mesh.assert_no_rejects()
}

#[test]
fn header_match_routes_jason_to_v2() -> Result<()> {
    let _serial = serial();
    let mesh = Mesh::start(HEADER_VS)?;
    let jason = mesh.calls(200, &["--metadata", "end-user=jason"])?;
    let others = mesh.calls(200, &["--metadata", "end-user=alice"])?;
    let check = || -> Result<()> {
        ensure!(
            jason.errors.is_empty() && jason.version("v2") == 200,
            "end-user: jason should all reach v2: {}",
            jason.raw
        );
        ensure!(
            others.errors.is_empty() && others.version("v1") == 200,
            "other users should all reach v1: {}",
            others.raw
        );
        Ok(())
    };
    check().map_err(|e| mesh.explain(e))?;
    mesh.assert_no_rejects()
}

#[test]
fn fault_abort_503_fails_every_call_with_unavailable() -> Result<()> {
    let _serial = serial();
    let mesh = Mesh::start(ABORT_VS)?;
    let s = mesh.calls(200, &["--deadline-ms", "3000"])?;
    let check = || -> Result<()> {
        let unavailable = s.errors.get("UNAVAILABLE").copied().unwrap_or(0);
        ensure!(
            s.ok == 0 && unavailable == 200 && s.total() == 200,
            "every call should fail with UNAVAILABLE (HTTP 503 abort): {}",
            s.raw
        );
        Ok(())
    };
    check().map_err(|e| mesh.explain(e))?;
    mesh.assert_no_rejects()
}

/// One `client.js --watch` line: the outcome of one window of calls.
struct Window {
    ok: u64,
    errors: u64,
    v1: u64,
    v2: u64,
    at_ms: u64,
}

fn parse_window(line: &str) -> Result<Window> {
    let raw: Value =
        serde_json::from_str(line).with_context(|| format!("client.js printed {line:?}"))?;
    let version = |v: &str| raw["versions"][v].as_u64().unwrap_or(0);
    Ok(Window {
        ok: raw["ok"].as_u64().unwrap_or(0),
        errors: raw["errors"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0),
        v1: version("v1"),
        v2: version("v2"),
        at_ms: raw["at_ms"].as_u64().unwrap_or(0),
    })
}

#[test]
fn live_weight_change_flips_split_within_2s() -> Result<()> {
    let _serial = serial();
    let mesh = Mesh::start(&weighted_vs(90))?;
    let mut cmd = mesh.client_cmd(&["--watch", "--interval-ms", "5", "--window", "100"]);
    let mut client = ChildGuard::spawn("client.js --watch", &mut cmd, Stdio::piped())?;
    let lines = line_channel(client.take_stdout().context("client stdout not piped")?);
    let next = |timeout: Duration| -> Result<(String, Window)> {
        let line = lines
            .recv_timeout(timeout)
            .context("client.js --watch printed no window in time; its stderr is above")?;
        let window = parse_window(&line)?;
        Ok((line, window))
    };

    // Baseline: two consecutive clean windows dominated by v1.
    let baseline_deadline = Instant::now() + Duration::from_secs(20);
    let mut clean = 0;
    let mut window_ms = Vec::new();
    let mut last_at = None;
    while clean < 2 {
        if Instant::now() > baseline_deadline {
            return Err(mesh.explain(anyhow::anyhow!(
                "no two clean 90/10 windows within 20 s of starting the client"
            )));
        }
        let (line, w) = next(Duration::from_secs(20))?;
        eprintln!("before: {line}");
        if let Some(prev) = last_at {
            window_ms.push(w.at_ms.saturating_sub(prev));
        }
        last_at = Some(w.at_ms);
        clean = if w.errors == 0 && w.v1 >= 75 {
            clean + 1
        } else {
            0
        };
    }

    // The client must have ACKed everything it got so far.
    check_client_acked(&mesh.pilot).map_err(|e| mesh.explain(e))?;

    let written = Instant::now();
    mesh.write_virtual_service(&weighted_vs(10))?;
    let window = Duration::from_millis(window_ms.iter().copied().max().unwrap_or(500).max(500));
    let allowed = Duration::from_secs(2) + window;
    let flipped = loop {
        let (line, w) = next(Duration::from_secs(10))?;
        let elapsed = written.elapsed();
        eprintln!("after {elapsed:?}: {line}");
        if w.errors > 0 {
            return Err(mesh.explain(anyhow::anyhow!(
                "calls failed during the config change: {line}"
            )));
        }
        if w.v2 * 4 >= w.ok * 3 && w.ok > 0 {
            break elapsed;
        }
        if elapsed > Duration::from_secs(10) {
            return Err(mesh.explain(anyhow::anyhow!(
                "split did not flip to 10/90 within 10 s of rewriting the VirtualService"
            )));
        }
    };
    eprintln!("split flipped {flipped:?} after the write (allowed {allowed:?})");
    ensure!(
        flipped <= allowed,
        "split flipped only {flipped:?} after the VirtualService was rewritten; want within \
         2 s plus one {window:?} window"
    );

    // Steady state after the change: v2 dominates, no errors.
    let (line, w) = next(Duration::from_secs(10))?;
    ensure!(
        w.errors == 0 && w.v2 >= 75,
        "window after the flip is not 10/90: {line}"
    );
    check_client_acked(&mesh.pilot).map_err(|e| mesh.explain(e))?;
    client.finish(Duration::from_secs(5))?;
    mesh.assert_no_rejects()
}

/// Every type pilot sent to the client is ACKed at the version sent, with no
/// NACK outstanding, per `/debug/syncz` (waits up to 3 s for ACKs in flight).
fn check_client_acked(pilot: &Pilot) -> Result<()> {
    let mut last = String::new();
    let ok = keel_e2e::wait_until(Duration::from_secs(3), || match pilot.syncz() {
        Ok(clients) => {
            let mine: Vec<&Value> = clients
                .iter()
                .filter(|c| c["node_id"].as_str() == Some(NODE_ID))
                .collect();
            last = serde_json::to_string_pretty(&mine).unwrap_or_default();
            !mine.is_empty()
                && mine.iter().all(|c| {
                    ["lds", "rds", "cds", "eds"].iter().all(|t| {
                        let ty = &c["types"][*t];
                        let sent = ty["sent_version"].as_str().unwrap_or("");
                        !sent.is_empty()
                            && ty["acked_version"].as_str() == Some(sent)
                            && ty["last_nack"].is_null()
                    })
                })
        }
        Err(err) => {
            last = format!("{err:#}");
            false
        }
    });
    if !ok {
        bail!(
            "/debug/syncz does not show the grpc-js client with lds/rds/cds/eds all ACKed: {last}"
        );
    }
    Ok(())
}
