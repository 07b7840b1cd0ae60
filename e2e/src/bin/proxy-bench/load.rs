//! Load generation and measurement: runs `wrk` and `h2load` pinned to the
//! load CPU, parses what they print (and h2load's per-request log), and
//! samples the measured process's CPU time (`/proc/PID/stat`) and resident
//! memory (`/proc/PID/status`) around and during a run. It does not decide
//! what to run or at which rate; `proxy-bench.rs` does.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The `Host` / `:authority` every request carries (keel-proxy routes on it).
pub const AUTHORITY: &str = "bench.test:9080";

/// HTTP/1.1 keep-alive or HTTP/2 (h2c, prior knowledge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// HTTP/1.1 keep-alive.
    H1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2,
}

impl Proto {
    /// The name used in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::H1 => "HTTP/1.1",
            Self::H2 => "HTTP/2 (h2c)",
        }
    }
}

/// How to run the load generator.
#[derive(Clone, Debug)]
pub struct LoadGen {
    /// `taskset`'s path.
    pub taskset: String,
    /// `wrk`'s path.
    pub wrk: String,
    /// `h2load`'s path.
    pub h2load: String,
    /// The CPU the load generator is pinned to.
    pub cpu: usize,
    /// wrk connections (and h2load `--h1` clients at a fixed rate).
    pub h1_connections: u32,
    /// h2load clients (connections) for HTTP/2.
    pub h2_clients: u32,
    /// h2load concurrent streams per HTTP/2 connection.
    pub h2_streams: u32,
    /// The request path (with the body-size query).
    pub path: String,
}

/// What one load run completed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Everything else: non-2xx responses, socket errors, failed streams.
    pub errors: u64,
    /// The measured wall time, in seconds, as the tool reports it.
    pub secs: f64,
}

impl Outcome {
    /// 2xx responses per second.
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Latency percentiles from h2load's per-request log.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Median, in microseconds.
    pub p50_us: u64,
    /// 99th percentile, in microseconds.
    pub p99_us: u64,
}

impl LoadGen {
    /// The saturating run: `wrk -t1 -cN` for HTTP/1.1, `h2load -cN -mM` for
    /// HTTP/2, for `secs` seconds.
    pub fn max_rate(&self, proto: Proto, addr: SocketAddr, secs: u64) -> Result<Outcome> {
        let url = format!("http://{addr}{}", self.path);
        match proto {
            Proto::H1 => {
                let out = self.run(
                    &self.wrk,
                    &[
                        "-t1".to_string(),
                        format!("-c{}", self.h1_connections),
                        format!("-d{secs}s"),
                        "-H".to_string(),
                        format!("Host: {AUTHORITY}"),
                        url,
                    ],
                )?;
                parse_wrk(&out).with_context(|| format!("parsing wrk's output:\n{out}"))
            }
            Proto::H2 => {
                let out = self.run(
                    &self.h2load,
                    &[
                        format!("-c{}", self.h2_clients),
                        format!("-m{}", self.h2_streams),
                        format!("-D{secs}"),
                        "-H".to_string(),
                        format!(":authority: {AUTHORITY}"),
                        url,
                    ],
                )?;
                parse_h2load(&out).with_context(|| format!("parsing h2load's output:\n{out}"))
            }
        }
    }

    /// A fixed-rate run with h2load (`--h1` for HTTP/1.1, one request in
    /// flight per connection; HTTP/2 with the configured streams) at `rate`
    /// requests/s in total, for `secs` seconds. Returns what completed and
    /// the latency percentiles from h2load's `--log-file`.
    pub fn fixed_rate(
        &self,
        proto: Proto,
        addr: SocketAddr,
        rate: f64,
        secs: u64,
        log: &Path,
    ) -> Result<(Outcome, Latency)> {
        let (clients, streams, h1) = match proto {
            Proto::H1 => (self.h1_connections, 1, true),
            Proto::H2 => (self.h2_clients, self.h2_streams, false),
        };
        let per_client = rate / f64::from(clients.max(1));
        let mut args = vec![
            format!("-c{clients}"),
            format!("-m{streams}"),
            format!("-D{secs}"),
            format!("--rps={per_client:.3}"),
            format!("--log-file={}", log.display()),
            "-H".to_string(),
            format!(":authority: {AUTHORITY}"),
        ];
        if h1 {
            args.push("--h1".to_string());
        }
        args.push(format!("http://{addr}{}", self.path));
        let out = self.run(&self.h2load, &args)?;
        let outcome =
            parse_h2load(&out).with_context(|| format!("parsing h2load's output:\n{out}"))?;
        let text = std::fs::read_to_string(log)
            .with_context(|| format!("reading h2load's log {}", log.display()))?;
        let latency = parse_h2load_log(&text)
            .with_context(|| format!("parsing h2load's log {}", log.display()))?;
        Ok((outcome, latency))
    }

    /// A few requests, to check that a path answers 2xx: `h2load -n N -c1`.
    pub fn probe(&self, proto: Proto, addr: SocketAddr, n: u32) -> Result<Outcome> {
        let mut args = vec![
            format!("-n{n}"),
            "-c1".to_string(),
            "-H".to_string(),
            format!(":authority: {AUTHORITY}"),
        ];
        if proto == Proto::H1 {
            args.push("--h1".to_string());
        }
        args.push(format!("http://{addr}{}", self.path));
        let out = self.run(&self.h2load, &args)?;
        parse_h2load(&out).with_context(|| format!("parsing h2load's output:\n{out}"))
    }

    /// Runs `tool ARGS` under `taskset -c CPU` and returns its stdout.
    fn run(&self, tool: &str, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(self.cpu.to_string())
            .arg(tool)
            .args(args)
            .stdin(Stdio::null());
        let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "{cmd:?} failed ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }
}

/// Parses wrk's summary: `N requests in 10.00s`, `Non-2xx or 3xx responses:
/// N`, `Socket errors: connect A, read B, write C, timeout D`.
pub fn parse_wrk(out: &str) -> Result<Outcome> {
    let mut total = None;
    let mut secs = None;
    let mut non_2xx = 0;
    let mut socket = 0;
    for line in out.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            total = Some(n.trim().parse::<u64>().context("request count")?);
            let elapsed = rest.split(',').next().unwrap_or_default();
            secs = Some(parse_elapsed(elapsed)?);
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = n.trim().parse().context("Non-2xx count")?;
        } else if let Some(list) = line.strip_prefix("Socket errors:") {
            for part in list.split(',') {
                let n = part.split_whitespace().last().unwrap_or_default();
                socket += n.parse::<u64>().context("socket error count")?;
            }
        }
    }
    let total = total.context("no `N requests in T` line")?;
    Ok(Outcome {
        ok: total.saturating_sub(non_2xx),
        errors: non_2xx + socket,
        secs: secs.context("no elapsed time")?,
    })
}

/// Parses h2load's summary: `finished in 10.00s, …`, `requests: T total, S
/// started, D done, K succeeded, F failed, E errored, O timeout` and
/// `status codes: A 2xx, …`.
pub fn parse_h2load(out: &str) -> Result<Outcome> {
    let mut secs = None;
    let mut succeeded = None;
    let mut failed = 0;
    let mut ok = None;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            secs = Some(parse_elapsed(rest.split(',').next().unwrap_or_default())?);
        } else if let Some(rest) = line.strip_prefix("requests:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().with_context(|| format!("count in {part:?}"))?;
                match what {
                    "succeeded" => succeeded = Some(n),
                    "failed" => failed = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            let n = rest.split(',').find_map(|p| p.trim().strip_suffix(" 2xx"));
            ok = Some(n.context("no 2xx count")?.trim().parse::<u64>()?);
        }
    }
    let ok = ok.context("no `status codes:` line")?;
    let succeeded = succeeded.context("no `requests:` line")?;
    Ok(Outcome {
        ok,
        errors: failed + succeeded.saturating_sub(ok),
        secs: secs.context("no `finished in` line")?,
    })
}

/// Percentiles of h2load's `--log-file` (tab-separated: start µs since the
/// epoch, status, µs to the end of the response).
pub fn parse_h2load_log(text: &str) -> Result<Latency> {
    let mut micros: Vec<u64> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .nth(2)
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("malformed log line {l:?}"))
        })
        .collect::<Result<_>>()?;
    if micros.is_empty() {
        bail!("the log is empty: no request completed");
    }
    micros.sort_unstable();
    let at = |pct: usize| micros[(micros.len() * pct / 100).min(micros.len() - 1)];
    Ok(Latency {
        p50_us: at(50),
        p99_us: at(99),
    })
}

/// `10.00s`, `30.95ms`, `950us`, `1.00m` (wrk) → seconds.
fn parse_elapsed(text: &str) -> Result<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("no unit in elapsed time {text:?}"))?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n
        .parse()
        .with_context(|| format!("elapsed time {text:?}"))?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("unknown unit in elapsed time {text:?}"),
    };
    Ok(n * scale)
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let (user, sys) = user_sys_ticks(pid)?;
    Ok(user + sys)
}

/// (utime, stime) of process `pid` (all its threads), in clock ticks.
pub fn user_sys_ticks(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // After the parenthesised command name, utime and stime are the 12th and
    // 13th fields (fields 14 and 15 of the whole line).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    Ok((get(11)?, get(12)?))
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK (Debian package libc-bin)")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")
}

/// The processes and CPUs to watch during a run.
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    /// The proxy under test (none for `direct`).
    pub proxy: Option<u32>,
    /// The backend.
    pub backend: u32,
    /// The CPU the proxy is pinned to.
    pub proxy_cpu: usize,
    /// The CPU the load generator and the backend are pinned to.
    pub load_cpu: usize,
}

/// CPU time (clock ticks) and memory used while a run went on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// The run's wall time, seconds.
    pub wall_secs: f64,
    /// The proxy's utime + stime (none for `direct`).
    pub proxy_ticks: Option<u64>,
    /// The proxy's stime alone (in the kernel on its behalf: syscalls,
    /// TCP).
    pub proxy_sys_ticks: Option<u64>,
    /// The largest VmRSS of the proxy sampled every 100 ms, KiB.
    pub proxy_max_rss_kib: Option<u64>,
    /// The backend's utime + stime.
    pub backend_ticks: u64,
    /// The load generator's utime + stime (this process's reaped children).
    pub loadgen_ticks: u64,
    /// Busy time of the proxy's CPU (`/proc/stat`), whoever used it.
    pub proxy_cpu_busy_ticks: u64,
    /// Busy time of the load generator's CPU, whoever used it.
    pub load_cpu_busy_ticks: u64,
}

/// Runs `f` (one load-generator run) while watching the proxy and the
/// backend: their CPU time before and after, the proxy's VmRSS every 100 ms
/// in between, the load generator's CPU time (this process's reaped
/// children) and the busy time of both CPUs (to see other users' work).
pub fn watched<T>(watch: Watch, f: impl FnOnce() -> Result<T>) -> Result<(T, Usage)> {
    let proxy_before = watch.proxy.map(user_sys_ticks).transpose()?;
    let backend_before = cpu_ticks(watch.backend)?;
    let children_before = own_children_ticks()?;
    let cpus_before = [
        cpu_busy_ticks(watch.proxy_cpu)?,
        cpu_busy_ticks(watch.load_cpu)?,
    ];
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let (result, max_rss) = thread::scope(|s| {
        let sampler = s.spawn(|| {
            let pid = watch.proxy?;
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(rss_kib(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(100));
            }
            Some(max.max(rss_kib(pid).unwrap_or(0)))
        });
        let result = f();
        stop.store(true, Ordering::Relaxed);
        (result, sampler.join().ok().flatten())
    });
    let wall_secs = started.elapsed().as_secs_f64();
    let result = result?;
    let (proxy_ticks, proxy_sys_ticks) = match (watch.proxy, proxy_before) {
        (Some(pid), Some((user, sys))) => {
            let (user_after, sys_after) = user_sys_ticks(pid).with_context(|| {
                format!("the proxy (pid {pid}) is gone: it died during the run")
            })?;
            let sys = sys_after.saturating_sub(sys);
            (Some(user_after.saturating_sub(user) + sys), Some(sys))
        }
        _ => (None, None),
    };
    let usage = Usage {
        wall_secs,
        proxy_ticks,
        proxy_sys_ticks,
        proxy_max_rss_kib: max_rss,
        backend_ticks: cpu_ticks(watch.backend)
            .context("the backend died during the run")?
            .saturating_sub(backend_before),
        loadgen_ticks: own_children_ticks()?.saturating_sub(children_before),
        proxy_cpu_busy_ticks: cpu_busy_ticks(watch.proxy_cpu)?.saturating_sub(cpus_before[0]),
        load_cpu_busy_ticks: cpu_busy_ticks(watch.load_cpu)?.saturating_sub(cpus_before[1]),
    };
    Ok((result, usage))
}

/// cutime + cstime of this process: the CPU time of its children that have
/// been waited for (wrk and h2load, which `taskset` execs into).
fn own_children_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/self/stat")
    };
    Ok(get(13)? + get(14)?)
}

/// Busy time (user, nice, system, irq, softirq) of CPU `cpu`, from its
/// `cpuN` line of `/proc/stat`, in clock ticks.
fn cpu_busy_ticks(cpu: usize) -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let prefix = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("no cpu{cpu} line in /proc/stat"))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("malformed /proc/stat"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal …: busy is user, nice,
    // system, irq and softirq (guest time is already counted in user; steal
    // is time the hypervisor gave to someone else).
    Ok([0, 1, 2, 5, 6]
        .iter()
        .map(|&i| values.get(i).copied().unwrap_or(0))
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() -> Result<()> {
        let out = "Running 1s test @ http://127.0.0.1:31091/\n  1 threads and 8 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   131.57us  \
                   167.36us   3.47ms   98.36%\n  68955 requests in 1.10s, 8.48MB read\n  \
                   Non-2xx or 3xx responses: 5\n  Socket errors: connect 0, read 2, write 0, \
                   timeout 1\nRequests/sec:  62696.40\nTransfer/sec:      7.71MB\n";
        let o = parse_wrk(out)?;
        assert_eq!(o.ok, 68950);
        assert_eq!(o.errors, 8);
        assert!((o.secs - 1.10).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_err());
        Ok(())
    }

    #[test]
    fn parses_h2load() -> Result<()> {
        let out = "finished in 30.95ms, 32312.27 req/s, 3.98MB/s\n\
                   requests: 1000 total, 1000 started, 1000 done, 998 succeeded, 2 failed, \
                   2 errored, 0 timeout\nstatus codes: 990 2xx, 0 3xx, 8 4xx, 0 5xx\n";
        let o = parse_h2load(out)?;
        assert_eq!(o.ok, 990);
        assert_eq!(o.errors, 10);
        assert!((o.secs - 0.03095).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn log_percentiles() -> Result<()> {
        let log: String = (1..=100).map(|i| format!("17955\t200\t{i}\n")).collect();
        let l = parse_h2load_log(&log)?;
        assert_eq!((l.p50_us, l.p99_us), (51, 100));
        assert!(parse_h2load_log("").is_err());
        Ok(())
    }

    #[test]
    fn reads_own_process() -> Result<()> {
        let me = std::process::id();
        assert!(alive(me));
        assert!(rss_kib(me)? > 0);
        cpu_ticks(me)?;
        own_children_ticks()?;
        cpu_busy_ticks(0)?;
        Ok(())
    }
}
