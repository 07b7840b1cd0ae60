//! `keel-citadel-bench`: certificates signed per second per core by
//! keel-citadel, end to end over gRPC with TLS, against the ECDSA P-256
//! ceiling `openssl speed` measures on the same machine.
//!
//! keel-citadel (release build) runs pinned to one CPU with `taskset`; this
//! process pins itself to another, makes the CSRs beforehand (a key and a
//! signature each), then keeps `--concurrency` requests in flight over
//! `--channels` HTTP/2 connections for `--duration`, each with a bootstrap
//! token. CPU per certificate is citadel's utime+stime over the run
//! (`/proc/PID/stat`) divided by the certificates issued.
//!
//! Each issuance costs citadel one ECDSA signature (the certificate) and
//! two verifications (the CSR's self-signature and the token's), besides
//! TLS, HTTP/2 and X.509 encoding: the "ceiling" row is what those three
//! operations alone allow, by `openssl speed ecdsap256`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use keel_proto::istio::v1::auth::IstioCertificateRequest;
use keel_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Debug, Parser)]
#[command(name = "keel-citadel-bench")]
struct Args {
    /// How long to measure.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections they share.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// The CPU keel-citadel is pinned to.
    #[arg(long, default_value_t = 0)]
    citadel_cpu: usize,
    /// The CPU this client is pinned to.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    pin_self(args.client_cpu)?;
    let (sign, verify) = openssl_speed()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (issued, cpu, wall) = runtime.block_on(run(&args))?;
    let per_cpu_s = issued as f64 / cpu.as_secs_f64();
    let ceiling = 1.0 / (1.0 / sign + 2.0 / verify);
    println!();
    println!("| | certificates/s per core | µs of CPU per certificate |");
    println!("|---|---:|---:|");
    println!(
        "| keel-citadel, end to end over gRPC + TLS ({issued} in {:.1} s, {} in flight over {} connections) | {per_cpu_s:.0} | {:.0} |",
        wall.as_secs_f64(),
        args.concurrency,
        args.channels,
        1e6 / per_cpu_s
    );
    println!(
        "| ceiling: 1 ECDSA P-256 sign + 2 verifies (`openssl speed ecdsap256`: {sign:.0} sign/s, {verify:.0} verify/s) | {ceiling:.0} | {:.0} |",
        1e6 / ceiling
    );
    println!(
        "| raw ECDSA P-256 sign alone | {sign:.0} | {:.0} |",
        1e6 / sign
    );
    println!();
    println!(
        "keel-citadel reaches {:.0}% of the ceiling",
        100.0 * per_cpu_s / ceiling
    );
    Ok(())
}

/// Pins this process to `cpu`.
fn pin_self(cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset could not pin the client to CPU {cpu}");
    }
    Ok(())
}

/// Signs and verifies per second for ECDSA P-256, by `openssl speed`.
fn openssl_speed() -> Result<(f64, f64)> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .stderr(Stdio::null())
        .output()
        .context("running openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  13000.0`
    let line = text
        .lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .with_context(|| format!("no nistp256 line in openssl speed's output:\n{text}"))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [.., sign, verify] => Ok((*sign, *verify)),
        _ => bail!("cannot read sign/verify rates from {line:?}"),
    }
}

async fn run(args: &Args) -> Result<(u64, Duration, Duration)> {
    let state = tempfile::tempdir()?;
    let bin = keel_e2e::bin_path("keel-citadel", "keel-citadel");
    let mut child = Command::new("taskset")
        .args(["-c", &args.citadel_cpu.to_string()])
        .arg(&bin)
        .arg("--state-dir")
        .arg(state.path())
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting keel-citadel")?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let grpc_port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .with_context(|| format!("unexpected ready line {line:?}"))?;
    let token = {
        let out = Command::new(&bin)
            .args(["token", "--state-dir"])
            .arg(state.path())
            .args(["--namespace", "bench", "--service-account", "client"])
            .output()?;
        String::from_utf8(out.stdout)?.trim().to_string()
    };
    let root = std::fs::read_to_string(state.path().join("root-cert.pem"))?;

    // CSRs made beforehand: the client's own signing is not measured.
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..256)
            .map(|_| {
                let key = rcgen::KeyPair::generate()?;
                let mut params = rcgen::CertificateParams::default();
                params.subject_alt_names = vec![rcgen::SanType::URI(
                    "spiffe://cluster.local/ns/bench/sa/client".try_into()?,
                )];
                params.serialize_request(&key)?.pem()
            })
            .collect::<Result<_, rcgen::Error>>()?,
    );
    let mut channels = Vec::new();
    for _ in 0..args.channels.max(1) {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root))
            .domain_name("localhost");
        channels.push(
            Channel::from_shared(format!("https://localhost:{grpc_port}"))?
                .tls_config(tls)?
                .connect()
                .await?,
        );
    }
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let send = |client: &mut IstioCertificateServiceClient<Channel>, i: usize| {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csrs[i % csrs.len()].clone(),
            validity_duration: 0,
            metadata: None,
        });
        let value = format!("Bearer {token}").parse();
        if let Ok(v) = value {
            req.metadata_mut().insert("authorization", v);
        }
        let mut client = client.clone();
        async move { client.create_certificate(req).await }
    };
    // Warm-up: the connections' TLS handshakes and the first requests.
    for (i, ch) in channels.iter().enumerate() {
        send(&mut IstioCertificateServiceClient::new(ch.clone()), i)
            .await
            .context("a warm-up request failed")?;
    }
    let cpu_before = cpu_time(pid)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut client = IstioCertificateServiceClient::new(channels[w % channels.len()].clone());
        let (issued, failed) = (Arc::clone(&issued), Arc::clone(&failed));
        let fut = {
            let mut i = w;
            let send = &send;
            async move {
                while Instant::now() < deadline {
                    match send(&mut client, i).await {
                        Ok(_) => issued.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += args.concurrency;
                }
            }
        };
        tasks.push(fut);
    }
    futures::future::join_all(tasks).await;
    let wall = start.elapsed();
    let cpu = cpu_time(pid)? - cpu_before;
    let _ = child.kill();
    let _ = child.wait();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok((issued.load(Ordering::Relaxed), cpu, wall))
}

/// utime + stime of `pid`.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Duration::from_secs_f64(ticks as f64 / 100.0))
}
