//! `keel-proxy-bench`: a benchmark (not a test) of keel-proxy's data path
//! against haproxy and nginx.
//!
//! In one run it reaches the same backend four ways: directly, through
//! keel-proxy (configured by a real keel-pilot with 100 ServiceEntries, the
//! benched `bench.test:9080` among them, requests addressed to the outbound
//! listener with `Host`/`:authority: bench.test:9080`), through haproxy and
//! through nginx (the Debian packages; configurations written to a temporary
//! directory, one thread/worker each, keep-alive on both sides). Each proxy
//! is pinned with `taskset` to the proxy CPU (default 0); the load generator,
//! the backend (nginx serving a static 200, or `--backend echo`) sit on the
//! load CPU (default 1). For HTTP/1.1 keep-alive (`wrk`) and HTTP/2 h2c
//! (`h2load`) it reports the maximum requests/s, the proxy process's CPU time
//! per request (`utime+stime` from `/proc/PID/stat`), its VmRSS idle and under
//! load, and p50/p99 latency and CPU per request at a fixed rate below
//! saturation (h2load `--rps`, by default half of haproxy's maximum), as
//! Markdown on stdout; `--write-docs` also replaces the generated part of
//! `docs/benchmarks.md`. Every process it starts is killed when it ends, and
//! all traffic stays on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;

#[path = "proxy-bench/load.rs"]
mod load;
#[path = "proxy-bench/report.rs"]
mod report;
#[path = "proxy-bench/servers.rs"]
mod servers;

use load::{LoadGen, Proto, Watch};
use report::{Fixed, ProtoResult, Report, Row};
use servers::{Server, Tools};

/// A way to reach the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// No proxy: the load generator talks to the backend.
    Direct,
    /// keel-proxy's outbound listener.
    Keel,
    /// haproxy.
    Haproxy,
    /// nginx.
    Nginx,
}

impl TargetKind {
    /// The name used in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (no proxy)",
            Self::Keel => "keel-proxy",
            Self::Haproxy => "haproxy",
            Self::Nginx => "nginx",
        }
    }
}

/// The backend every path reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// nginx (one worker) answering a static 200.
    Nginx,
    /// keel-echo (hyper), answering `?size=N` with N bytes.
    Echo,
}

/// The resilience configuration keel-proxy gets for `bench.test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeelPolicy {
    /// No VirtualService or DestinationRule: Istio's default route retry
    /// policy (2 attempts on connect-failure, refused-stream, unavailable,
    /// cancelled, 503) and nothing else.
    Default,
    /// A VirtualService turning retries off (`attempts: 0`).
    None,
    /// Retries (3 on 5xx/reset, per-try timeout, route timeout), a retry
    /// budget, connection-pool limits, outlier detection.
    Resilience,
}

/// Flags.
#[derive(Debug, Parser)]
#[command(
    name = "keel-proxy-bench",
    about = "Benchmark keel-proxy's data path against haproxy and nginx (HTTP/1.1 and h2c)"
)]
struct Args {
    /// Length of each maximum-rate run: whole seconds, `10s`, `1m` or `10`.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    duration: u64,
    /// Length of each fixed-rate (latency) run.
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    latency_duration: u64,
    /// Unmeasured run before each maximum-rate run; `0s` skips it.
    #[arg(long, default_value = "1s", value_parser = parse_secs)]
    warmup: u64,
    /// wrk connections for HTTP/1.1 (h2load `--h1` uses as many at the
    /// fixed rate, one request in flight each).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// h2load clients (connections) for HTTP/2.
    #[arg(long, default_value_t = 16)]
    h2_clients: u32,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 16)]
    h2_streams: u32,
    /// The fixed rate, as a fraction of haproxy's maximum req/s for the same
    /// protocol (of the slowest proxy measured when haproxy is not).
    #[arg(long, default_value_t = 0.5)]
    rate_fraction: f64,
    /// The CPU keel-proxy, haproxy and nginx are pinned to.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// The CPU the load generator and the backend are pinned to.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// ServiceEntries keel-pilot serves keel-proxy, the benched one included.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Response body size, bytes.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// The backend.
    #[arg(long, value_enum, default_value = "nginx")]
    backend: Backend,
    /// Maximum-rate runs per path and protocol, interleaved across the
    /// paths (round 1: every path, round 2: every path, ...). Each table
    /// row shows the path's median round; the ratios are the medians of
    /// the ratios within each round, so slow drift on a shared machine
    /// cancels out.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The resilience configuration of keel-proxy's benched service.
    #[arg(long, value_enum, default_value = "default")]
    keel_policy: KeelPolicy,
    /// Paths to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,keel,haproxy,nginx"
    )]
    targets: Vec<TargetKind>,
    /// Protocols to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "h1,h2")]
    protocols: Vec<Proto>,
    /// Replace the generated part of docs/benchmarks.md with this run's results.
    #[arg(long)]
    write_docs: bool,
}

/// `10s`, `1m` or `10` → whole seconds.
fn parse_secs(s: &str) -> Result<u64, String> {
    let (n, scale) = if let Some(m) = s.strip_suffix('m') {
        (m, 60)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1)
    };
    n.parse::<u64>()
        .map(|n| n * scale)
        .map_err(|_| format!("{s:?} is not a whole number of seconds: write e.g. 10s, 1m or 10"))
}

/// A path the load generator can take to the backend.
struct Target {
    kind: TargetKind,
    h1: SocketAddr,
    h2: SocketAddr,
    /// The proxy process to measure (none for `direct`).
    pid: Option<u32>,
}

impl Target {
    fn addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::H1 => self.h1,
            Proto::H2 => self.h2,
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.duration == 0 || args.latency_duration == 0 {
        bail!("--duration and --latency-duration must be at least 1s");
    }
    if !(args.rate_fraction > 0.0 && args.rate_fraction <= 1.0) {
        bail!("--rate-fraction must be in (0, 1]");
    }
    if args.services == 0 || args.targets.is_empty() || args.protocols.is_empty() {
        bail!("--services, --targets and --protocols must not be empty");
    }
    let tools = Tools::find()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if args.proxy_cpu.max(args.load_cpu) >= cpus {
        bail!(
            "--proxy-cpu {} / --load-cpu {} do not exist: this process may use {cpus} CPU(s); \
             pick CPUs below {cpus} (the same one for both if there is only one)",
            args.proxy_cpu,
            args.load_cpu
        );
    }
    if args.proxy_cpu == args.load_cpu {
        eprintln!(
            "bench: warning: the proxy and the load generator share CPU {}",
            args.proxy_cpu
        );
    }
    let ticks = load::clock_ticks()?;
    let context = report::context_lines();
    let dir = tempfile::tempdir().context("creating the temporary directory")?;

    let backend = start_backend(&args, &tools, dir.path())?;
    let mut servers: Vec<Server> = Vec::new();
    let mut keel = None;
    let mut keel_concurrency_one = false;
    let mut targets = Vec::new();
    for &kind in &args.targets {
        if targets.iter().any(|t: &Target| t.kind == kind) {
            continue;
        }
        let server = match kind {
            TargetKind::Direct => {
                targets.push(Target {
                    kind,
                    h1: backend.h1,
                    h2: backend.h2,
                    pid: None,
                });
                continue;
            }
            TargetKind::Keel => {
                let k = servers::start_keel(
                    &tools,
                    dir.path(),
                    args.proxy_cpu,
                    args.services,
                    backend.h1,
                    args.keel_policy,
                )?;
                let target = Target {
                    kind,
                    h1: k.proxy.h1,
                    h2: k.proxy.h2,
                    pid: Some(k.proxy.pid()),
                };
                keel_concurrency_one = k.concurrency_one;
                keel = Some(k);
                targets.push(target);
                continue;
            }
            TargetKind::Haproxy => {
                let (h1, h2) = (servers::free_port()?, servers::free_port()?);
                let conf = servers::haproxy_conf(h1, h2, backend.h1);
                servers::start_haproxy(&tools, dir.path(), args.proxy_cpu, &conf, h1, h2)?
            }
            TargetKind::Nginx => {
                let (h1, h2) = (servers::free_port()?, servers::free_port()?);
                let conf = servers::nginx_proxy_conf(dir.path(), h1, h2, backend.h1);
                servers::start_nginx(
                    &tools,
                    dir.path(),
                    "nginx-proxy",
                    args.proxy_cpu,
                    &conf,
                    h1,
                    h2,
                )?
            }
        };
        targets.push(Target {
            kind,
            h1: server.h1,
            h2: server.h2,
            pid: Some(server.pid()),
        });
        servers.push(server);
    }

    let path = match args.backend {
        Backend::Nginx => "/".to_string(),
        Backend::Echo => format!("/?size={}", args.body_size),
    };
    let loadgen = LoadGen {
        taskset: tools.taskset.clone(),
        wrk: tools.wrk.clone(),
        h2load: tools.h2load.clone(),
        cpu: args.load_cpu,
        h1_connections: args.connections,
        h2_clients: args.h2_clients,
        h2_streams: args.h2_streams,
        path,
    };
    for t in &targets {
        for &proto in &args.protocols {
            probe(&loadgen, t, proto)?;
        }
    }
    // Let the probes' connections settle before the idle reading.
    std::thread::sleep(Duration::from_secs(1));
    let mut idle_rss = Vec::new();
    for t in &targets {
        if let Some(pid) = t.pid {
            idle_rss.push((t.kind, load::rss_kib(pid)?));
        }
    }

    let mut problems = Vec::new();
    let mut protos = Vec::new();
    for &proto in &args.protocols {
        protos.push(bench_proto(
            &args,
            &loadgen,
            &targets,
            proto,
            backend.pid(),
            dir.path(),
            &mut problems,
        )?);
    }
    for t in &targets {
        if let Some(pid) = t.pid
            && !load::alive(pid)
        {
            problems.push(format!(
                "{} (pid {pid}) is no longer running at the end",
                t.kind.label()
            ));
        }
    }

    let settings = vec![
        format!(
            "pinning (`taskset`): the proxy under test on CPU {}; wrk/h2load and the backend on CPU {}; \
             keel-pilot unpinned (idle after its first push)",
            args.proxy_cpu, args.load_cpu
        ),
        match args.backend {
            Backend::Nginx => format!(
                "backend: nginx, 1 worker, `return 200` with a {}-byte body; HTTP/1.1 and h2c on two ports",
                args.body_size
            ),
            Backend::Echo => format!("backend: keel-echo, `?size={}`", args.body_size),
        },
        format!(
            "max rate: HTTP/1.1 `wrk -t1 -c{} -d{}s`, HTTP/2 `h2load -c{} -m{} -D{}`, each after a {} s \
             unmeasured warm-up; CPU/request = the proxy's utime+stime over the run ÷ 2xx responses",
            args.connections,
            args.duration,
            args.h2_clients,
            args.h2_streams,
            args.duration,
            args.warmup
        ),
        format!(
            "fixed rate: h2load `--rps`, HTTP/1.1 `--h1 -c{} -m1`, HTTP/2 `-c{} -m{}`, {} s, at {:.0}% of \
             haproxy's max req/s for the protocol; p50/p99 from h2load's `--log-file`",
            args.connections,
            args.h2_clients,
            args.h2_streams,
            args.latency_duration,
            args.rate_fraction * 100.0
        ),
        format!(
            "keel-proxy: sidecar, {} ServiceEntries from keel-pilot (the benched `bench.test:9080` and \
             {} others), default flags{}; resilience config of `bench.test`: {}",
            args.services,
            args.services - 1,
            if keel_concurrency_one {
                " plus `--concurrency 1`"
            } else {
                ""
            },
            servers::policy_summary(args.keel_policy),
        ),
        format!("tools: {}", tools.versions().join("; ")),
        format!("load average after the run: {}", report::load_average()),
    ];
    let command =
        std::iter::once("cargo run --release -p keel-e2e --bin keel-proxy-bench --".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
    let report = Report {
        protos,
        idle_rss,
        ticks,
        command,
        settings,
        context,
        problems,
    };
    print!("{}", report.markdown());
    if args.write_docs {
        let path = keel_e2e::workspace_root().join("docs/benchmarks.md");
        report::write_docs(&path, &report.markdown())?;
        eprintln!("bench: wrote {}", path.display());
    }
    drop(servers);
    drop(keel);
    drop(backend);
    Ok(())
}

/// Starts the backend on the load CPU.
fn start_backend(args: &Args, tools: &Tools, dir: &std::path::Path) -> Result<Server> {
    match args.backend {
        Backend::Nginx => {
            let (h1, h2) = (servers::free_port()?, servers::free_port()?);
            let conf = servers::nginx_backend_conf(dir, h1, h2, args.body_size);
            servers::start_nginx(tools, dir, "backend", args.load_cpu, &conf, h1, h2)
        }
        Backend::Echo => servers::start_echo(tools, args.load_cpu),
    }
}

/// Waits (up to 20 s) until 20 requests through `t` all answer 2xx.
fn probe(loadgen: &LoadGen, t: &Target, proto: Proto) -> Result<()> {
    let addr = t.addr(proto);
    let mut last = None;
    let ok = keel_e2e::wait_until(Duration::from_secs(20), || {
        let r = loadgen.probe(proto, addr, 20);
        let good = r.as_ref().is_ok_and(|o| o.ok == 20 && o.errors == 0);
        last = Some(r);
        good
    });
    if !ok {
        bail!(
            "{} over {} ({addr}) does not answer 2xx to `:authority: {}`: last probe {last:?}",
            t.kind.label(),
            proto.label(),
            load::AUTHORITY
        );
    }
    Ok(())
}

/// The maximum-rate runs, then the fixed-rate runs, of every target for one
/// protocol. A failed run is recorded in `problems` and skipped.
fn bench_proto(
    args: &Args,
    loadgen: &LoadGen,
    targets: &[Target],
    proto: Proto,
    backend_pid: u32,
    dir: &std::path::Path,
    problems: &mut Vec<String>,
) -> Result<ProtoResult> {
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=args.rounds {
        for t in targets {
            let addr = t.addr(proto);
            let name = format!("{} {} (round {round})", proto.label(), t.kind.label());
            if t.pid.is_some_and(|pid| !load::alive(pid)) {
                problems.push(format!("{name}: not running, skipped"));
                continue;
            }
            if round == 1
                && args.warmup > 0
                && let Err(e) = loadgen.max_rate(proto, addr, args.warmup)
            {
                problems.push(format!("{name}: warm-up failed: {e:#}"));
            }
            let watch = Watch {
                proxy: t.pid,
                backend: backend_pid,
                proxy_cpu: args.proxy_cpu,
                load_cpu: args.load_cpu,
            };
            match load::watched(watch, || loadgen.max_rate(proto, addr, args.duration)) {
                Ok((max, usage)) => {
                    eprintln!(
                        "bench: {name}: {:.0} req/s, {} errors{}",
                        max.rps(),
                        max.errors,
                        usage
                            .proxy_ticks
                            .map_or(String::new(), |t| format!(", proxy {t} CPU ticks"))
                    );
                    if max.errors > 0 {
                        problems.push(format!(
                            "{name}, max rate: {} of {} requests failed (non-2xx or socket errors)",
                            max.errors,
                            max.errors + max.ok
                        ));
                    }
                    match rows.iter_mut().find(|r| r.target == t.kind) {
                        Some(row) => row.rounds.push(Some((max, usage))),
                        None => rows.push(Row {
                            target: t.kind,
                            max,
                            max_usage: usage,
                            rounds: std::iter::repeat_n(None, round as usize - 1)
                                .chain([Some((max, usage))])
                                .collect(),
                            fixed: None,
                        }),
                    }
                }
                Err(e) => problems.push(format!("{name}, max rate: run failed: {e:#}")),
            }
        }
        // A path that failed this round keeps its place in later ones.
        for row in &mut rows {
            row.rounds.resize(round as usize, None);
        }
    }
    for row in &mut rows {
        row.take_median_round();
    }

    let basis = rows
        .iter()
        .find(|r| r.target == TargetKind::Haproxy)
        .map(|r| (r.max.rps(), "haproxy".to_string()))
        .or_else(|| {
            rows.iter()
                .filter(|r| r.max_usage.proxy_ticks.is_some())
                .map(|r| (r.max.rps(), r.target.label().to_string()))
                .min_by(|a, b| a.0.total_cmp(&b.0))
        })
        .or_else(|| {
            rows.first()
                .map(|r| (r.max.rps(), r.target.label().to_string()))
        });
    let Some((max, basis)) = basis else {
        return Ok(ProtoResult {
            proto,
            rate: 0.0,
            rate_basis: "no maximum-rate run succeeded".to_string(),
            rows,
        });
    };
    let rate = (max * args.rate_fraction).max(1.0);
    let rate_basis = format!(
        "{:.0}% of {basis}'s {} req/s",
        args.rate_fraction * 100.0,
        report::group(max)
    );
    for row in &mut rows {
        let Some(t) = targets.iter().find(|t| t.kind == row.target) else {
            continue;
        };
        let name = format!("{} {}", proto.label(), t.kind.label());
        if t.pid.is_some_and(|pid| !load::alive(pid)) {
            problems.push(format!("{name}: not running, fixed-rate run skipped"));
            continue;
        }
        let log = dir.join(format!("h2load-{proto:?}-{:?}.log", t.kind));
        let run = || loadgen.fixed_rate(proto, t.addr(proto), rate, args.latency_duration, &log);
        let watch = Watch {
            proxy: t.pid,
            backend: backend_pid,
            proxy_cpu: args.proxy_cpu,
            load_cpu: args.load_cpu,
        };
        match load::watched(watch, run) {
            Ok(((outcome, latency), usage)) => {
                eprintln!(
                    "bench: {name} at {rate:.0} req/s: p50 {} µs, p99 {} µs, {} errors",
                    latency.p50_us, latency.p99_us, outcome.errors
                );
                if outcome.errors > 0 {
                    problems.push(format!(
                        "{name}, fixed rate: {} of {} requests failed",
                        outcome.errors,
                        outcome.errors + outcome.ok
                    ));
                }
                row.fixed = Some(Fixed {
                    outcome,
                    latency,
                    usage,
                });
            }
            Err(e) => problems.push(format!("{name}, fixed rate: run failed: {e:#}")),
        }
    }
    Ok(ProtoResult {
        proto,
        rate,
        rate_basis,
        rows,
    })
}
