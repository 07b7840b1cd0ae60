//! `keel-pilot-bench`: a benchmark (not a test) of keel-pilot's snapshot
//! generation and xDS push at scale.
//!
//! It writes a synthetic mesh (N Kubernetes Services with Pods, spread over
//! namespaces, one file per namespace, with DestinationRules for ~20% and 90/10
//! VirtualServices for ~10% of the services) into a temporary directory,
//! starts the release `keel-pilot` on loopback ports, and connects C simulated
//! Envoy clients that each do the CDS→EDS and LDS→RDS subscription dance over
//! SotW ADS, ACKing every response. It reports the time to full push, the
//! resources and bytes per client, the latency from a one-file edit (a
//! VirtualService weight) to each client's RDS push, and pilot's memory and CPU
//! time, as Markdown table rows on stdout. `--in-process` instead loads the
//! same directory into a `ConfigStore` and times `snapshot()` and the
//! generator per resource type for one node, to show where pilot's time goes.
//! Every phase has a deadline, so the bench always ends; traffic stays on
//! 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use keel_pilot::model::store::ConfigStore;
use keel_pilot::source::file::FileSource;
use keel_pilot::xds::generator::KeelGenerator;
use keel_pilot::xds::node::metadata;
use keel_pilot::xds::{Generator as _, NodeInfo};
use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE, short_name, unpack};
use keel_proto::envoy::config::cluster::v3::Cluster;
use keel_proto::envoy::config::core::v3::Node;
use keel_proto::envoy::config::listener::v3::{Listener, filter};
use keel_proto::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use keel_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use keel_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use keel_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The four xDS types, in the order the tables print them.
const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
/// The HttpConnectionManager network filter's name.
const HCM: &str = "envoy.filters.network.http_connection_manager";
/// The DNS suffix pilot runs with (its default).
const DOMAIN: &str = "cluster.local";
/// Pods per service: two `v1`, one `v2`.
const PODS_PER_SERVICE: usize = 3;

/// Flags.
#[derive(Debug, Parser)]
#[command(
    name = "keel-pilot-bench",
    about = "Benchmark keel-pilot's snapshot generation and xDS push at scale"
)]
struct Args {
    /// Kubernetes Services to generate.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Simulated Envoy (SotW ADS) clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Namespaces (one config file each); default: services/100, clamped to 10..=50.
    #[arg(long)]
    namespaces: Option<usize>,
    /// HTTP/2 connections the clients share; 0 gives every client its own.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// One-file edits to time.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Pilot's `--poll-ms`.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// Pilot's `--debounce-after-ms`.
    #[arg(long, default_value_t = 20)]
    debounce_after_ms: u64,
    /// Pilot's `--debounce-max-ms`.
    #[arg(long, default_value_t = 1000)]
    debounce_max_ms: u64,
    /// Deadline for every client to be fully pushed, in seconds.
    #[arg(long, default_value_t = 300)]
    push_timeout_secs: u64,
    /// Deadline for one edit to reach every client, in seconds.
    #[arg(long, default_value_t = 60)]
    change_timeout_secs: u64,
    /// Deadline for pilot's ready line (it loads and snapshots first), in seconds.
    #[arg(long, default_value_t = 600)]
    ready_timeout_secs: u64,
    /// Time snapshot() and the generator in this process instead of running
    /// pilot and clients.
    #[arg(long)]
    in_process: bool,
    /// Runs of each in-process measurement (the fastest is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.services == 0 || args.clients == 0 {
        bail!("--services and --clients must be at least 1");
    }
    let namespaces = args
        .namespaces
        .unwrap_or((args.services / 100).clamp(10, 50))
        .clamp(1, args.services);
    let mesh = Mesh {
        services: args.services,
        namespaces,
    };
    let dir = tempfile::tempdir().context("creating the config tempdir")?;
    let stage = tempfile::tempdir().context("creating the staging tempdir")?;
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir)?;
    let started = Instant::now();
    let bytes = mesh.write_all(&config_dir, &BTreeMap::new())?;
    eprintln!(
        "bench: wrote {} services in {namespaces} files ({:.1} MiB) in {:.2?}",
        args.services,
        bytes as f64 / (1024.0 * 1024.0),
        started.elapsed()
    );
    if args.in_process {
        return in_process(&args, &mesh, &config_dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(over_ads(&args, &mesh, &config_dir, stage.path()))
}

/// The synthetic mesh: service `i` is `svc-i` in namespace `ns-(i % namespaces)`.
struct Mesh {
    services: usize,
    namespaces: usize,
}

impl Mesh {
    fn namespace(&self, svc: usize) -> String {
        format!("ns-{}", svc % self.namespaces)
    }

    fn has_grpc_port(svc: usize) -> bool {
        svc.is_multiple_of(3)
    }

    fn has_rule(svc: usize) -> bool {
        svc.is_multiple_of(5)
    }

    fn has_split(svc: usize) -> bool {
        svc.is_multiple_of(10)
    }

    fn fqdn(&self, svc: usize) -> String {
        format!("svc-{svc}.{}.svc.{DOMAIN}", self.namespace(svc))
    }

    /// Pod `k` of service `svc`: (name, IP, version).
    fn pod(svc: usize, k: usize) -> (String, String, &'static str) {
        let n = svc * PODS_PER_SERVICE + k;
        let ip = format!("10.{}.{}.{}", 1 + (n >> 16), (n >> 8) & 0xff, n & 0xff);
        let version = if k == PODS_PER_SERVICE - 1 {
            "v2"
        } else {
            "v1"
        };
        (format!("svc-{svc}-{version}-{k}"), ip, version)
    }

    fn file_name(ns: usize) -> String {
        format!("ns-{ns}.yaml")
    }

    /// The YAML of namespace `ns`; `weights` overrides the v2 weight of a
    /// split service (default 10).
    fn render(&self, ns: usize, weights: &BTreeMap<usize, u32>) -> String {
        let mut out = String::new();
        let namespace = format!("ns-{ns}");
        for svc in (ns..self.services).step_by(self.namespaces) {
            let ip = format!("10.96.{}.{}", svc >> 8, svc & 0xff);
            let grpc = if Self::has_grpc_port(svc) {
                ", {name: grpc, port: 9090, targetPort: 9090}"
            } else {
                ""
            };
            // `write!` to a String cannot fail.
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{svc}, namespace: {namespace}}}\n\
                 spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  selector: {{app: svc-{svc}}}\n  \
                 ports: [{{name: http, port: 8080, targetPort: 8080}}{grpc}]\n"
            );
            for k in 0..PODS_PER_SERVICE {
                let (name, pod_ip, version) = Self::pod(svc, k);
                let _ = write!(
                    out,
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, \
                     labels: {{app: svc-{svc}, version: {version}}}}}\n\
                     status: {{phase: Running, podIP: {pod_ip}}}\n"
                );
            }
            if Self::has_rule(svc) {
                let _ = write!(
                    out,
                    "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                     metadata: {{name: svc-{svc}, namespace: {namespace}}}\n\
                     spec:\n  host: svc-{svc}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  \
                     - {{name: v2, labels: {{version: v2}}}}\n"
                );
            }
            if Self::has_split(svc) {
                let v2 = weights.get(&svc).copied().unwrap_or(10);
                let v1 = 100 - v2;
                let _ = write!(
                    out,
                    "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                     metadata: {{name: svc-{svc}, namespace: {namespace}}}\n\
                     spec:\n  hosts: [svc-{svc}]\n  http:\n  - route:\n    \
                     - {{destination: {{host: svc-{svc}, subset: v1}}, weight: {v1}}}\n    \
                     - {{destination: {{host: svc-{svc}, subset: v2}}, weight: {v2}}}\n"
                );
            }
        }
        out
    }

    /// Writes every namespace's file; returns the bytes written.
    fn write_all(&self, dir: &Path, weights: &BTreeMap<usize, u32>) -> Result<usize> {
        let mut total = 0;
        for ns in 0..self.namespaces {
            let text = self.render(ns, weights);
            total += text.len();
            let path = dir.join(Self::file_name(ns));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(total)
    }

    /// Client `c` runs as pod 0 of service `c % services`.
    fn node(&self, client: usize) -> Node {
        let svc = client % self.services;
        let ns = self.namespace(svc);
        let (pod, ip, version) = Self::pod(svc, 0);
        let app = format!("svc-{svc}");
        Node {
            // Several clients may share a pod when clients > services; the id
            // stays unique with the client number appended to the pod name.
            id: format!("sidecar~{ip}~{pod}-c{client}.{ns}~{ns}.svc.{DOMAIN}"),
            metadata: Some(metadata(
                &[("NAMESPACE", ns.as_str())],
                &[("app", app.as_str()), ("version", version)],
            )),
            ..Default::default()
        }
    }

    /// The split services: the candidates for an edit.
    fn splits(&self) -> Vec<usize> {
        (0..self.services).filter(|s| Self::has_split(*s)).collect()
    }
}

/// What one client reports to the coordinator.
enum Event {
    /// Every type received and ACKed, with what was received.
    Ready {
        client: usize,
        at: Instant,
        resources: [usize; 4],
        bytes: usize,
    },
    /// An RDS response after the full push; `probe_weight` is the v2 weight
    /// of the probed host (client 0 only).
    Route {
        client: usize,
        at: Instant,
        probe_weight: Option<u32>,
    },
    /// The client's stream failed.
    Failed { client: usize, error: String },
}

/// What the coordinator tells client 0 to look for in RDS responses.
type Probe = Arc<Mutex<Option<String>>>;

async fn over_ads(args: &Args, mesh: &Mesh, config_dir: &Path, stage: &Path) -> Result<()> {
    let pilot_args = vec![
        "--config-dir".to_string(),
        config_dir.to_string_lossy().into_owned(),
        "--xds-addr".to_string(),
        "127.0.0.1:0".to_string(),
        "--http-addr".to_string(),
        "127.0.0.1:0".to_string(),
        "--poll-ms".to_string(),
        args.poll_ms.to_string(),
        "--debounce-after-ms".to_string(),
        args.debounce_after_ms.to_string(),
        "--debounce-max-ms".to_string(),
        args.debounce_max_ms.to_string(),
    ];
    let ready_timeout = Duration::from_secs(args.ready_timeout_secs);
    // Find (or build) pilot before the clock starts.
    let bin = tokio::task::spawn_blocking(|| keel_e2e::bin_path("keel-pilot", "keel-pilot"))
        .await
        .context("finding keel-pilot")?;
    let t = Instant::now();
    let (pilot, addr) =
        tokio::task::spawn_blocking(move || spawn_pilot(&bin, &pilot_args, ready_timeout))
            .await
            .context("starting pilot")??;
    let startup = t.elapsed();
    let pid = pilot.id();
    let ticks = clock_ticks();
    let cpu_loaded = cpu_seconds(&format!("/proc/{pid}/stat"), ticks)?;
    let mem_loaded = memory(pid)?;
    eprintln!(
        "bench: pilot {pid} ready on {addr} after {startup:.2?}; cpu {cpu_loaded:.2}s, RSS {} MiB after loading",
        mem_loaded.0 / 1024
    );

    // Channels: one per client, or `connections` shared round-robin.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let shared: Vec<Channel> = (0..args.connections)
        .map(|_| endpoint.connect_lazy())
        .collect();

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let probe: Probe = Arc::new(Mutex::new(None));
    let bench_cpu_start = cpu_seconds("/proc/self/stat", ticks)?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let channel = match shared.get(client % shared.len().max(1)) {
            Some(c) => c.clone(),
            None => endpoint.connect_lazy(),
        };
        let node = mesh.node(client);
        let events = events_tx.clone();
        let stop = stop_rx.clone();
        let probe = (client == 0).then(|| probe.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_client(client, channel, node, &events, stop, probe).await {
                let _ = events.send(Event::Failed {
                    client,
                    error: format!("{e:#}"),
                });
            }
        }));
    }
    drop(events_tx);

    // Phase 1: time to full push.
    let deadline = start + Duration::from_secs(args.push_timeout_secs);
    let mut ready: BTreeMap<usize, (Duration, [usize; 4], usize)> = BTreeMap::new();
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    while ready.len() + failed.len() < args.clients {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Ready {
                client,
                at,
                resources,
                bytes,
            })) => {
                ready.insert(client, (at - start, resources, bytes));
                if ready.len().is_multiple_of(10) {
                    eprintln!(
                        "bench: {} clients fully pushed after {:.2?}",
                        ready.len(),
                        start.elapsed()
                    );
                }
            }
            Ok(Some(Event::Failed { client, error })) => {
                eprintln!("bench: client {client} failed: {error}");
                failed.insert(client, error);
            }
            Ok(Some(Event::Route { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let push_wall = start.elapsed();
    let cpu_pushed = cpu_seconds(&format!("/proc/{pid}/stat"), ticks)?;
    let bench_cpu = cpu_seconds("/proc/self/stat", ticks)? - bench_cpu_start;
    let (rss_kib, hwm_kib) = memory(pid)?;
    let push_cpu = cpu_pushed - cpu_loaded;

    let mut times: Vec<Duration> = ready.values().map(|r| r.0).collect();
    times.sort();
    let first = ready.values().next().map(|r| (r.1, r.2));
    let connections = if args.connections == 0 {
        format!("{} (one per client)", args.clients)
    } else {
        format!("{} shared", args.connections)
    };
    println!();
    println!(
        "### {} services × {} clients ({} namespaces/files, {connections} HTTP/2 connections, pilot --poll-ms {} --debounce-after-ms {} --debounce-max-ms {})",
        args.services,
        args.clients,
        mesh.namespaces,
        args.poll_ms,
        args.debounce_after_ms,
        args.debounce_max_ms
    );
    println!();
    println!(
        "| pilot start (load + first snapshot) | full push | clients done | p50 | p99 | max (total) | pilot CPU | bench CPU | pilot RSS | pilot HWM |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} ({cpu_loaded:.2} s CPU) | {} | {}/{} | {} | {} | {} | {push_cpu:.1} s | {bench_cpu:.1} s | {} MiB | {} MiB |",
        fmt_d(startup),
        if ready.len() == args.clients {
            "complete"
        } else {
            "INCOMPLETE"
        },
        ready.len(),
        args.clients,
        fmt_pct(&times, 50),
        fmt_pct(&times, 99),
        times.last().map_or("-".into(), |d| fmt_d(*d)),
        rss_kib / 1024,
        hwm_kib / 1024,
    );
    if let Some((resources, bytes)) = first {
        println!();
        println!("| per client (client 0) | CDS | EDS | LDS | RDS | bytes received |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| resources | {} | {} | {} | {} | {:.2} MiB |",
            resources[0],
            resources[1],
            resources[2],
            resources[3],
            bytes as f64 / (1024.0 * 1024.0)
        );
        let all: usize = ready.values().map(|r| r.2).sum();
        println!(
            "| all clients | | | | | {:.1} MiB |",
            all as f64 / (1024.0 * 1024.0)
        );
    }
    if ready.len() < args.clients {
        println!();
        println!(
            "Only {} of {} clients were fully pushed within {push_wall:.0?}; {} failed. Per-change latency is measured over the clients that were.",
            ready.len(),
            args.clients,
            failed.len()
        );
    }

    // Phase 2: per-change push latency.
    let mut latencies: Vec<Duration> = Vec::new();
    let mut per_change: Vec<(usize, Duration, Duration, usize)> = Vec::new();
    let mut weights = BTreeMap::new();
    let splits = mesh.splits();
    let cpu_before_changes = cpu_seconds(&format!("/proc/{pid}/stat"), ticks)?;
    let changes_start = Instant::now();
    let mut probe_mismatch = 0;
    for k in 0..args.changes {
        if ready.is_empty() || splits.is_empty() {
            break;
        }
        let svc = splits[(k * 7919) % splits.len()];
        let ns = svc % mesh.namespaces;
        let v2 = 11 + (k as u32 % 80);
        weights.insert(svc, v2);
        *lock(&probe) = Some(mesh.fqdn(svc));
        // Drain anything left from the previous change.
        while events.try_recv().is_ok() {}
        let text = mesh.render(ns, &weights);
        keel_e2e::write_atomic(stage, config_dir, &Mesh::file_name(ns), text.as_bytes())?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(args.change_timeout_secs);
        let mut got: BTreeMap<usize, Duration> = BTreeMap::new();
        let mut probe_ok = false;
        while got.len() < ready.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(Event::Route {
                    client,
                    at,
                    probe_weight,
                })) if at >= t0 && ready.contains_key(&client) => {
                    got.entry(client).or_insert(at - t0);
                    if client == 0 {
                        probe_ok |= probe_weight == Some(v2);
                    }
                }
                Ok(Some(Event::Failed { client, error })) => {
                    eprintln!("bench: client {client} failed: {error}");
                    failed.insert(client, error);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if ready.contains_key(&0) && !probe_ok {
            probe_mismatch += 1;
        }
        let mut these: Vec<Duration> = got.values().copied().collect();
        these.sort();
        let max = these.last().copied().unwrap_or_default();
        let min = these.first().copied().unwrap_or_default();
        eprintln!(
            "bench: change {k} (svc-{svc} v2 weight {v2} in {}): {}/{} clients, first {min:.2?}, last {max:.2?}",
            Mesh::file_name(ns),
            these.len(),
            ready.len()
        );
        per_change.push((these.len(), min, max, ready.len()));
        latencies.extend(these);
        // Let the push settle before the next edit.
        tokio::time::sleep(Duration::from_millis(200 + args.debounce_after_ms)).await;
    }
    let change_wall = changes_start.elapsed();
    let change_cpu = cpu_seconds(&format!("/proc/{pid}/stat"), ticks)? - cpu_before_changes;
    let (_, hwm_after) = memory(pid)?;
    latencies.sort();
    if !per_change.is_empty() {
        let complete = per_change.iter().filter(|c| c.0 == c.3).count();
        println!();
        println!(
            "| per-change push (file write → RDS at client) | changes | samples | p50 | p99 | max | pilot CPU per change | pilot HWM after |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| weight edit, one namespace file | {}/{} reached all | {} | {} | {} | {} | {:.2} s | {} MiB |",
            complete,
            per_change.len(),
            latencies.len(),
            fmt_pct(&latencies, 50),
            fmt_pct(&latencies, 99),
            latencies.last().map_or("-".into(), |d| fmt_d(*d)),
            change_cpu / per_change.len() as f64,
            hwm_after / 1024,
        );
        if probe_mismatch > 0 {
            println!();
            println!(
                "Client 0 did not see the expected weight in {probe_mismatch} of {} changes.",
                per_change.len()
            );
        }
        eprintln!("bench: change phase took {change_wall:.2?}");
    }

    let _ = stop_tx.send(true);
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    for task in tasks {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            break;
        }
    }
    drop(pilot);
    Ok(())
}

/// Starts `bin` (the release `keel-pilot` beside this binary, which
/// `keel_e2e::bin_path` builds when missing or stale) with `args`, and waits
/// up to `timeout` for its ready line. Returns the process (killed on drop)
/// and its xDS address.
fn spawn_pilot(
    bin: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<(keel_e2e::ChildGuard, std::net::SocketAddr)> {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args);
    let mut child = keel_e2e::ChildGuard::spawn("keel-pilot", &mut cmd, Stdio::piped())?;
    let stdout = child.take_stdout().context("pilot's stdout is not piped")?;
    let lines = keel_e2e::line_channel(stdout);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).with_context(|| {
            format!("{} printed no ready line within {timeout:?}", bin.display())
        })?;
        let Some(rest) = line.strip_prefix("keel-pilot ready: ") else {
            continue;
        };
        let xds = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("xds="))
            .with_context(|| format!("no xds= in {line:?}"))?
            .parse()
            .with_context(|| format!("bad xds address in {line:?}"))?;
        // Keep draining stdout so pilot never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        return Ok((child, xds));
    }
}

/// One simulated Envoy: CDS and LDS wildcard, then EDS for the EDS clusters
/// and RDS for the HCM route names, ACKing everything, until `stop`.
async fn run_client(
    client: usize,
    channel: Channel,
    node: Node,
    events: &mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
    probe: Option<Probe>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    for type_url in [CLUSTER, LISTENER] {
        tx.send(DiscoveryRequest {
            node: (type_url == CLUSTER).then(|| node.clone()),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await?;
    }
    let mut ads = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut stream = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .context("opening the ADS stream")?
        .into_inner();

    // Per type: subscribed names (None: wildcard), and whether a response
    // answering the latest subscription arrived.
    let mut names: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut answered: BTreeSet<&str> = BTreeSet::new();
    let mut resources = [0usize; 4];
    let mut bytes = 0usize;
    let mut is_ready = false;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.context("reading the ADS stream")?,
            _ = stop.changed() => return Ok(()),
        };
        let Some(r) = msg else {
            bail!("pilot closed the stream");
        };
        let at = Instant::now();
        bytes += r.encoded_len();
        let Some(t) = TYPES.iter().position(|t| *t == r.type_url) else {
            bail!("unexpected type {}", r.type_url);
        };
        let type_url = TYPES[t];
        resources[t] = r.resources.len();
        answered.insert(type_url);
        let ack = |names: Option<&Vec<String>>| DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.cloned().unwrap_or_default(),
            ..Default::default()
        };
        tx.send(ack(names.get(type_url))).await?;
        // A new subscription for the dependent type, if its names changed.
        let next = match type_url {
            CLUSTER => Some((ENDPOINT, eds_names(&r)?)),
            LISTENER => Some((ROUTE, route_names(&r)?)),
            _ => None,
        };
        if let Some((dep, wanted)) = next
            && names.get(dep) != Some(&wanted)
        {
            names.insert(dep, wanted.clone());
            answered.remove(dep);
            tx.send(DiscoveryRequest {
                type_url: dep.into(),
                resource_names: wanted,
                ..Default::default()
            })
            .await?;
        }
        if type_url == ROUTE && is_ready {
            let host = probe.as_ref().and_then(|p| lock(p).clone());
            let probe_weight = match host {
                Some(host) => v2_weight(&r, &host)?,
                None => None,
            };
            let _ = events.send(Event::Route {
                client,
                at,
                probe_weight,
            });
        }
        if !is_ready && TYPES.iter().all(|t| answered.contains(t)) {
            is_ready = true;
            let _ = events.send(Event::Ready {
                client,
                at: Instant::now(),
                resources,
                bytes,
            });
        }
    }
}

/// The EDS service names of the clusters in a CDS response.
fn eds_names(r: &DiscoveryResponse) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for any in &r.resources {
        let c: Cluster = unpack(any)?;
        if let Some(eds) = c.eds_cluster_config {
            out.insert(if eds.service_name.is_empty() {
                c.name
            } else {
                eds.service_name
            });
        }
    }
    Ok(out.into_iter().collect())
}

/// The RDS route names of the HttpConnectionManagers in an LDS response.
fn route_names(r: &DiscoveryResponse) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for any in &r.resources {
        let l: Listener = unpack(any)?;
        let chains = l
            .filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref());
        for f in chains.flat_map(|c| &c.filters) {
            let Some(filter::ConfigType::TypedConfig(cfg)) = &f.config_type else {
                continue;
            };
            if f.name != HCM {
                continue;
            }
            let hcm: HttpConnectionManager = unpack(cfg)?;
            if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                out.insert(rds.route_config_name);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The weight of the `v2` subset cluster routed to for `host` in an RDS
/// response, if any.
fn v2_weight(r: &DiscoveryResponse, host: &str) -> Result<Option<u32>> {
    let needle = format!("|v2|{host}");
    for any in &r.resources {
        let rc: RouteConfiguration = unpack(any)?;
        for vh in rc.virtual_hosts.iter().filter(|vh| {
            vh.domains
                .iter()
                .any(|d| d == host || d.starts_with(&format!("{host}:")))
        }) {
            for route in &vh.routes {
                let Some(route::Action::Route(action)) = &route.action else {
                    continue;
                };
                let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) =
                    &action.cluster_specifier
                else {
                    continue;
                };
                if let Some(w) = wc.clusters.iter().find(|c| c.name.ends_with(&needle)) {
                    return Ok(w.weight.as_ref().map(|v| v.value));
                }
            }
        }
    }
    Ok(None)
}

/// Loads the directory into a `ConfigStore` and times `snapshot()` and the
/// generator per type for client 0, then a one-file edit's re-snapshot.
fn in_process(args: &Args, mesh: &Mesh, config_dir: &Path) -> Result<()> {
    let mut store = ConfigStore::new(DOMAIN, "istio-system");
    let mut source = FileSource::new(config_dir);
    let t = Instant::now();
    source.sync(&mut store)?;
    let load = t.elapsed();
    let t = Instant::now();
    let snapshot = store.snapshot();
    let first_snapshot = t.elapsed();
    let node = NodeInfo::from_node(Some(&mesh.node(0))).context("parsing client 0's node")?;
    let mut rows = Vec::new();
    let mut eds: Option<BTreeSet<String>> = None;
    let mut rds: Option<BTreeSet<String>> = None;
    for type_url in TYPES {
        let names = match type_url {
            ENDPOINT => eds.clone(),
            ROUTE => rds.clone(),
            _ => None,
        };
        // Cold: a fresh generator (empty class cache), as for the first
        // client of a class. Warm: the same class again, as for every other.
        let mut best = Duration::MAX;
        let mut warm = Duration::MAX;
        let mut out = Default::default();
        for _ in 0..args.repeat.max(1) {
            let generator = KeelGenerator::new();
            let t = Instant::now();
            out = generator.generate(&snapshot, &node, type_url, names.as_ref());
            best = best.min(t.elapsed());
            let t = Instant::now();
            let _ = generator.generate(&snapshot, &node, type_url, names.as_ref());
            warm = warm.min(t.elapsed());
        }
        let resources: &keel_pilot::xds::Resources = &out;
        let response = DiscoveryResponse {
            resources: resources.values().map(|r| r.any.as_ref().clone()).collect(),
            type_url: type_url.into(),
            ..Default::default()
        };
        match type_url {
            CLUSTER => eds = Some(eds_names(&response)?.into_iter().collect()),
            LISTENER => rds = Some(route_names(&response)?.into_iter().collect()),
            _ => {}
        }
        rows.push((
            short_name(type_url),
            best,
            warm,
            resources.len(),
            response.encoded_len(),
        ));
    }
    // A one-file edit: the same weight change the ADS run makes.
    let svc = mesh.splits().first().copied().unwrap_or(0);
    let ns = svc % mesh.namespaces;
    let text = mesh.render(ns, &BTreeMap::from([(svc, 11)]));
    let t = Instant::now();
    store.upsert(&Mesh::file_name(ns), &text);
    let upsert = t.elapsed();
    let t = Instant::now();
    let _ = store.snapshot();
    let resnapshot = t.elapsed();

    let per_client: Duration = rows.iter().map(|r| r.1).sum();
    let per_warm_client: Duration = rows.iter().map(|r| r.2).sum();
    println!();
    println!(
        "### in-process, {} services ({} namespaces/files), fastest of {}",
        args.services,
        mesh.namespaces,
        args.repeat.max(1)
    );
    println!();
    println!("| step | time (cold) | time (same class, cached) | resources | bytes |");
    println!("|---|---|---|---|---|");
    println!("| read + parse all files | {} | | | |", fmt_d(load));
    println!(
        "| ConfigStore::snapshot() (once) | {} | | {} services | |",
        fmt_d(first_snapshot),
        snapshot.registry.services.len()
    );
    println!(
        "| edit: upsert one file + snapshot() | {} + {} | | | |",
        fmt_d(upsert),
        fmt_d(resnapshot)
    );
    for (name, time, warm, count, bytes) in &rows {
        println!(
            "| generate {name} (one node) | {} | {} | {count} | {:.2} MiB |",
            fmt_d(*time),
            fmt_d(*warm),
            *bytes as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "| generate all four, one node | {} | {} | | |",
        fmt_d(per_client),
        fmt_d(per_warm_client)
    );
    Ok(())
}

/// Nearest-rank percentile of sorted durations.
fn fmt_pct(sorted: &[Duration], pct: usize) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let rank = (pct * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    fmt_d(sorted[rank - 1])
}

fn fmt_d(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

/// (VmRSS, VmHWM) of `pid`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime from a `/proc/PID/stat` file, in seconds.
fn cpu_seconds(path: &str, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name; utime and stime are fields
    // 14 and 15 of the whole line, so 12 and 13 here (0-based 11 and 12).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("malformed {path}"))
    };
    Ok((get(11)? + get(12)?) / ticks)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 if unknown.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The probe is a plain value; a panicked holder cannot leave it torn.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
