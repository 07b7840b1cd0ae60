//! Interop with a real xDS client: Python `grpcio` (gRPC C-core's built-in
//! xDS client) as a proxyless gRPC client of pilot, over Istio's bookinfo
//! sample.
//!
//! Pilot reads bookinfo's Services and Deployments, `destination-rule-all.yaml`
//! and one `virtual-service-*.yaml` at a time; `e2e/interop/python/xds_probe.py`
//! resolves `xds:///{productpage,reviews,ratings,details}.default.svc.cluster.local:9080`
//! and stays connected while the test swaps the VirtualService file through
//! every bookinfo sample. There are no real backends: what matters is that
//! grpcio accepts every resource pilot sends (ACK, no NACK), after each swap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_e2e::{
    ChildGuard, Pilot, interop_deps, istio_samples_dir, line_channel, python_path, spawn_pilot,
    wait_until, write_atomic, write_grpc_bootstrap,
};
use serde_json::Value;

const NODE_ID: &str = "sidecar~127.0.0.1~probe-1.default~default.svc.cluster.local";
const HOSTS: [&str; 4] = ["productpage", "reviews", "ratings", "details"];
/// The types grpcio must have ACKed for each target; EDS is checked when sent.
const REQUIRED_TYPES: [&str; 3] = ["lds", "rds", "cds"];

/// Pilot's reload budget (2 s) plus slack for a loaded 2-core machine.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn bookinfo() -> PathBuf {
    istio_samples_dir().join("bookinfo")
}

/// The bookinfo VirtualService samples, in name order (consecutive files
/// always route some host differently, so each swap changes what pilot serves).
fn virtual_service_samples() -> Result<Vec<PathBuf>> {
    let dir = bookinfo().join("networking");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "reading {}: the Istio samples should be in shared/istio beside the workspace",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("virtual-service-") && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no virtual-service-*.yaml in {}", dir.display());
    }
    Ok(files)
}

fn copy_in(stage: &Path, config: &Path, src: &Path, name: &str) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write_atomic(stage, config, name, &bytes)
}

/// The syncz entries (one per ADS stream) of the probe's node.
fn probe_streams(pilot: &Pilot) -> Result<Vec<Value>> {
    Ok(pilot
        .syncz()?
        .into_iter()
        .filter(|c| c["node_id"].as_str() == Some(NODE_ID))
        .collect())
}

/// Why the streams are not all cleanly ACKed yet, or None if they are.
fn not_acked(streams: &[Value]) -> Option<String> {
    if streams.is_empty() {
        return Some(format!("no client with node id {NODE_ID} in /debug/syncz"));
    }
    for (i, s) in streams.iter().enumerate() {
        let Some(types) = s["types"].as_object() else {
            return Some(format!("stream {i}: no `types` map in {s}"));
        };
        for t in REQUIRED_TYPES {
            if !types.contains_key(t) {
                return Some(format!("stream {i}: nothing for {t} yet"));
            }
        }
        for (t, ty) in types {
            if !ty["last_nack"].is_null() {
                return Some(format!("stream {i}: {t} NACKed: {}", ty["last_nack"]));
            }
            let sent = ty["sent_version"].as_str().unwrap_or("");
            if REQUIRED_TYPES.contains(&t.as_str()) && sent.is_empty() {
                return Some(format!("stream {i}: {t} has no sent_version"));
            }
            if ty["acked_version"].as_str().unwrap_or("") != sent {
                return Some(format!(
                    "stream {i}: {t} sent {sent:?}, acked {}",
                    ty["acked_version"]
                ));
            }
        }
    }
    None
}

/// Every (stream, type, sent_version) triple, to notice that pilot pushed.
fn sent_versions(streams: &[Value]) -> BTreeSet<String> {
    streams
        .iter()
        .flat_map(|s| {
            s["types"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(t, ty)| format!("{t}={}", ty["sent_version"]))
        })
        .collect()
}

/// Waits until every probe stream has ACKed lds/rds/cds (and anything else
/// sent) with no NACK, and, if `before` is given, pilot has sent something
/// new since then. Fails with the last syncz seen and the config dump.
fn wait_acked(
    pilot: &Pilot,
    scenario: &str,
    before: Option<&BTreeSet<String>>,
) -> Result<BTreeSet<String>> {
    let mut why = String::new();
    let mut seen = Vec::new();
    let done = wait_until(PUSH_TIMEOUT, || {
        seen = match probe_streams(pilot) {
            Ok(s) => s,
            Err(err) => {
                why = format!("{err:#}");
                return false;
            }
        };
        if let Some(reason) = not_acked(&seen) {
            why = reason;
            return false;
        }
        if before.is_some_and(|b| *b == sent_versions(&seen)) {
            why = "pilot sent no new version after the VirtualService changed".into();
            return false;
        }
        true
    });
    if !done {
        bail!(
            "{scenario}: grpcio did not ACK pilot's config within {PUSH_TIMEOUT:?}: {why}\n\
             /debug/syncz for {NODE_ID}: {}\nconfig served:\n{}",
            serde_json::to_string_pretty(&seen).unwrap_or_default(),
            pilot.config_dump(NODE_ID)
        );
    }
    Ok(sent_versions(&seen))
}

#[test]
fn grpcio_acks_bookinfo_through_every_virtual_service_sample() -> Result<()> {
    let interop = interop_deps()?;
    let samples = virtual_service_samples()?;
    let root = tempfile::tempdir()?;
    let config = root.path().join("config");
    let stage = root.path().join("stage");
    std::fs::create_dir_all(&config)?;
    copy_in(
        &stage,
        &config,
        &bookinfo().join("platform/kube/bookinfo.yaml"),
        "bookinfo.yaml",
    )?;
    copy_in(
        &stage,
        &config,
        &bookinfo().join("networking/destination-rule-all.yaml"),
        "destination-rule-all.yaml",
    )?;
    copy_in(&stage, &config, &samples[0], "virtual-service.yaml")?;

    let pilot = spawn_pilot(&config)?;
    let bootstrap = write_grpc_bootstrap(root.path(), pilot.xds_addr, NODE_ID)?;
    let targets: Vec<String> = HOSTS
        .iter()
        .map(|h| format!("xds:///{h}.default.svc.cluster.local:9080"))
        .collect();
    let mut cmd = Command::new("python3");
    cmd.arg(interop.join("python/xds_probe.py"))
        .args(["--timeout", "1", "--linger", "120"])
        .args(&targets)
        .env("PYTHONPATH", python_path())
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap);
    // Set GRPC_TRACE=xds_client GRPC_VERBOSITY=debug in the test's environment
    // to see grpcio's xDS exchange (and NACK reasons) on failure.
    let mut probe = ChildGuard::spawn("xds_probe.py", &mut cmd, Stdio::piped())?;
    let lines = line_channel(probe.take_stdout().context("probe stdout not piped")?);
    let report = lines
        .recv_timeout(Duration::from_secs(30))
        .context("xds_probe.py printed no report within 30 s; its stderr is above")?;
    eprintln!("xds_probe.py: {report}");

    let first = samples[0].file_name().unwrap_or_default().to_string_lossy();
    let mut versions = wait_acked(&pilot, &first, None)?;
    pilot
        .assert_no_rejects(NODE_ID)
        .with_context(|| first.to_string())?;
    eprintln!(
        "{first}: ACKed by {} stream(s)",
        probe_streams(&pilot)?.len()
    );

    for sample in &samples[1..] {
        let name = sample.file_name().unwrap_or_default().to_string_lossy();
        copy_in(&stage, &config, sample, "virtual-service.yaml")?;
        versions = wait_acked(&pilot, &name, Some(&versions))?;
        pilot
            .assert_no_rejects(NODE_ID)
            .with_context(|| name.to_string())?;
        eprintln!("{name}: ACKed");
    }

    probe.finish(Duration::from_secs(5))?;
    Ok(())
}
