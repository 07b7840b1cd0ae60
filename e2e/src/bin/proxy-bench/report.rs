//! The report: Markdown tables of one run (per protocol: requests/s, the
//! proxy's CPU per request and memory, latency at a fixed rate), the
//! keel-proxy / haproxy and keel-proxy / nginx ratios, the issue's targets,
//! the machine and commit; and replacing the generated part of
//! `docs/benchmarks.md`. It measures nothing itself.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::TargetKind;
use crate::load::{Latency, Outcome, Proto, Usage};

/// Where the generated section starts in `docs/benchmarks.md`.
pub const BEGIN: &str = "<!-- proxy-bench:begin -->";
/// Where it ends.
pub const END: &str = "<!-- proxy-bench:end -->";
/// The section heading created when the markers are absent.
const HEADING: &str = "## Proxy data path";
/// The issue's memory target for an idle keel-proxy with 100 services.
const RSS_TARGET_MIB: f64 = 10.0;

/// One path under one protocol.
#[derive(Clone, Debug)]
pub struct Row {
    /// Which path.
    pub target: TargetKind,
    /// The saturating run shown: the median round (see
    /// [`Row::take_median_round`]).
    pub max: Outcome,
    /// CPU and memory during it.
    pub max_usage: Usage,
    /// Every saturating round, in order (`None`: that round failed).
    pub rounds: Vec<Option<(Outcome, Usage)>>,
    /// The fixed-rate run.
    pub fixed: Option<Fixed>,
}

impl Row {
    /// Makes the round with the median CPU time per request (median req/s
    /// for `direct`, which has no proxy) the one shown.
    pub fn take_median_round(&mut self) {
        let key = |(o, u): &(Outcome, Usage)| match u.proxy_ticks {
            Some(t) if o.ok > 0 => t as f64 / o.ok as f64,
            _ => -o.rps(),
        };
        let mut done: Vec<&(Outcome, Usage)> = self.rounds.iter().flatten().collect();
        done.sort_by(|a, b| key(a).total_cmp(&key(b)));
        if let Some(&&(max, usage)) = done.get(done.len().saturating_sub(1) / 2) {
            self.max = max;
            self.max_usage = usage;
        }
    }
}

/// The median of `v` (the lower middle for an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// A fixed-rate run.
#[derive(Clone, Copy, Debug)]
pub struct Fixed {
    /// What completed.
    pub outcome: Outcome,
    /// Percentiles from h2load's log.
    pub latency: Latency,
    /// CPU and memory during the run.
    pub usage: Usage,
}

/// Every path under one protocol.
#[derive(Clone, Debug)]
pub struct ProtoResult {
    /// Which protocol.
    pub proto: Proto,
    /// The fixed rate, requests/s in total.
    pub rate: f64,
    /// What the rate was derived from.
    pub rate_basis: String,
    /// One row per path.
    pub rows: Vec<Row>,
}

/// Everything a run found, plus what is needed to describe it.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per protocol.
    pub protos: Vec<ProtoResult>,
    /// Idle VmRSS per proxy, KiB.
    pub idle_rss: Vec<(TargetKind, u64)>,
    /// Clock ticks per second.
    pub ticks: u64,
    /// The command line, as a user would type it.
    pub command: String,
    /// Settings, one line each.
    pub settings: Vec<String>,
    /// Machine, commit, tool versions, one line each.
    pub context: Vec<String>,
    /// Problems seen (errors, a dead proxy), one line each.
    pub problems: Vec<String>,
}

impl Report {
    fn cpu_us(&self, usage: Usage, outcome: Outcome) -> Option<f64> {
        self.per_request(usage.proxy_ticks?, outcome)
    }

    fn per_request(&self, ticks: u64, outcome: Outcome) -> Option<f64> {
        (outcome.ok > 0).then(|| ticks as f64 * 1e6 / self.ticks as f64 / outcome.ok as f64)
    }

    /// `total (user + sys)` µs per request.
    fn cpu_split(&self, usage: Usage, outcome: Outcome) -> String {
        let (Some(total), Some(sys)) = (
            self.cpu_us(usage, outcome),
            usage
                .proxy_sys_ticks
                .and_then(|t| self.per_request(t, outcome)),
        ) else {
            return "—".to_string();
        };
        format!("{total:.1} ({:.1} + {sys:.1})", total - sys)
    }

    /// CPU cores used during a run: on the proxy's CPU, the proxy (plus
    /// anything else that ran there); on the load CPU, the load generator +
    /// the backend (plus anything else).
    fn cores(&self, u: Usage) -> String {
        let cores = |ticks: u64| ticks as f64 / self.ticks as f64 / u.wall_secs.max(1e-9);
        let proxy = u.proxy_ticks.unwrap_or(0);
        let ours = u.loadgen_ticks + u.backend_ticks;
        format!(
            "{} (+{:.2}) / {:.2} + {:.2} (+{:.2})",
            u.proxy_ticks
                .map_or("—".to_string(), |t| format!("{:.2}", cores(t))),
            cores(u.proxy_cpu_busy_ticks.saturating_sub(proxy)),
            cores(u.loadgen_ticks),
            cores(u.backend_ticks),
            cores(u.load_cpu_busy_ticks.saturating_sub(ours)),
        )
    }

    fn idle_rss(&self, target: TargetKind) -> Option<u64> {
        self.idle_rss
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, kib)| *kib)
    }

    fn row(&self, proto: Proto, target: TargetKind) -> Option<&Row> {
        self.protos
            .iter()
            .find(|p| p.proto == proto)?
            .rows
            .iter()
            .find(|r| r.target == target)
    }

    /// The tables, ratios and targets, as Markdown.
    pub fn tables(&self) -> String {
        let mut out = String::new();
        for p in &self.protos {
            self.proto_table(&mut out, p);
        }
        self.ratios(&mut out);
        out
    }

    fn proto_table(&self, out: &mut String, p: &ProtoResult) {
        // `write!` to a String cannot fail.
        let _ = writeln!(out, "#### {}\n", p.proto.label());
        let rate = group(p.rate);
        let _ = writeln!(
            out,
            "Fixed rate: {rate} req/s ({}).\n\n\
             | path | req/s (max) | proxy CPU µs/req (max): total (user + sys) | CPU cores (max): proxy (+other) / load gen + \
             backend (+other) | proxy RSS idle / under load | p50 / p99 at {rate} req/s | \
             proxy CPU µs/req at {rate} req/s | errors (max / fixed) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|",
            p.rate_basis
        );
        for row in &p.rows {
            let cpu = self.cpu_split(row.max_usage, row.max);
            let rss = match (self.idle_rss(row.target), row.max_usage.proxy_max_rss_kib) {
                (Some(idle), Some(load)) => format!("{} / {} MiB", mib(idle), mib(load)),
                _ => "—".to_string(),
            };
            let (latency, fixed_cpu, fixed_errors) = match &row.fixed {
                Some(f) => {
                    let mut lat = format!(
                        "{} / {}",
                        micros(f.latency.p50_us),
                        micros(f.latency.p99_us)
                    );
                    if f.outcome.rps() < 0.95 * p.rate {
                        let _ = write!(lat, " (only {} req/s)", group(f.outcome.rps()));
                    }
                    (
                        lat,
                        fmt_opt(self.cpu_us(f.usage, f.outcome)),
                        f.outcome.errors.to_string(),
                    )
                }
                None => ("—".to_string(), "—".to_string(), "—".to_string()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {rss} | {latency} | {fixed_cpu} | {} / {fixed_errors} |",
                row.target.label(),
                group(row.max.rps()),
                cpu,
                self.cores(row.max_usage),
                row.max.errors,
            );
        }
        out.push('\n');
    }

    fn ratios(&self, out: &mut String) {
        let protos: Vec<Proto> = self.protos.iter().map(|p| p.proto).collect();
        let mut header = "| keel-proxy ÷ |".to_string();
        let mut rule = "|---|".to_string();
        for p in &protos {
            let _ = write!(
                header,
                " {l} req/s | {l} CPU/req (max) | {l} CPU/req (fixed rate) |",
                l = p.label()
            );
            rule.push_str("---:|---:|---:|");
        }
        let mut lines = Vec::new();
        for other in [TargetKind::Haproxy, TargetKind::Nginx] {
            let mut line = format!("| {} |", other.label());
            let mut any = false;
            for &p in &protos {
                let (Some(k), Some(o)) = (self.row(p, TargetKind::Keel), self.row(p, other)) else {
                    line.push_str(" — | — | — |");
                    continue;
                };
                any = true;
                let (rps, cpu) = self.paired(k, o);
                let (rps, cpu) = (spread(&rps), spread(&cpu));
                let fixed = |r: &Row| r.fixed.and_then(|f| self.cpu_us(f.usage, f.outcome));
                let fixed_cpu = ratio(fixed(k), fixed(o));
                let _ = write!(line, " {rps} | {cpu} | {fixed_cpu} |");
            }
            if any {
                lines.push(line);
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(
                out,
                "#### Ratios\n\n\
                 Maximum rate: the median of the ratios within each round, and their range \
                 (min–max) over the rounds. Fixed rate: one run each.\n\n{header}\n{rule}"
            );
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            out.push('\n');
        }
        self.targets(out, &protos);
    }

    /// keel-proxy's req/s and CPU per request over `other`'s, round by
    /// round (rounds where either failed are left out).
    fn paired(&self, keel: &Row, other: &Row) -> (Vec<f64>, Vec<f64>) {
        let mut rps = Vec::new();
        let mut cpu = Vec::new();
        for (k, o) in keel.rounds.iter().zip(&other.rounds) {
            let (Some((ko, ku)), Some((oo, ou))) = (k, o) else {
                continue;
            };
            if oo.rps() > 0.0 {
                rps.push(ko.rps() / oo.rps());
            }
            if let (Some(kc), Some(oc)) = (self.cpu_us(*ku, *ko), self.cpu_us(*ou, *oo)) {
                cpu.push(kc / oc);
            }
        }
        (rps, cpu)
    }

    /// The issue's targets, met or missed.
    fn targets(&self, out: &mut String, protos: &[Proto]) {
        let mut lines = Vec::new();
        for &p in protos {
            let (Some(k), Some(h)) = (
                self.row(p, TargetKind::Keel),
                self.row(p, TargetKind::Haproxy),
            ) else {
                continue;
            };
            let (rps, cpu) = self.paired(k, h);
            let (Some(rps), Some(cpu)) = (median(rps), median(cpu)) else {
                continue;
            };
            let verdict = |r: f64, c: f64| {
                if rps >= r && cpu <= c {
                    "met"
                } else {
                    "missed"
                }
            };
            lines.push(format!(
                "- {}: ≥ haproxy's req/s at ≤ its CPU/request: **{}** ({rps:.2}× req/s, {cpu:.2}× CPU, \
                 medians of the rounds); stretch 1.2× / 0.8×: **{}**.",
                p.label(),
                verdict(1.0, 1.0),
                verdict(1.2, 0.8),
            ));
        }
        if let Some(kib) = self.idle_rss(TargetKind::Keel) {
            let m = kib as f64 / 1024.0;
            lines.push(format!(
                "- keel-proxy RSS idle with the services configured ≤ {RSS_TARGET_MIB} MiB: **{}** ({m:.1} MiB).",
                if m <= RSS_TARGET_MIB { "met" } else { "missed" }
            ));
        }
        if !lines.is_empty() {
            let _ = writeln!(
                out,
                "#### Targets (from the issue)\n\n{}\n",
                lines.join("\n")
            );
        }
    }

    /// The generated part of the docs section: run details, tables,
    /// problems.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Results (generated by `keel-proxy-bench --write-docs`)\n"
        );
        let _ = writeln!(out, "```sh\n{}\n```\n", self.command);
        for line in self.context.iter().chain(&self.settings) {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        out.push_str(&self.tables());
        if self.problems.is_empty() {
            let _ = writeln!(out, "No errors: every request of every run answered 2xx.\n");
        } else {
            let _ = writeln!(out, "#### Problems seen\n");
            for p in &self.problems {
                let _ = writeln!(out, "- {p}");
            }
            out.push('\n');
        }
        out
    }
}

/// `median× (min–max)` of per-round ratios; just `median×` for one round.
fn spread(v: &[f64]) -> String {
    let Some(m) = median(v.to_vec()) else {
        return "—".to_string();
    };
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() < 2 {
        format!("{m:.2}×")
    } else {
        format!("{m:.2}× ({lo:.2}–{hi:.2})")
    }
}

/// Replaces the text between [`BEGIN`] and [`END`] in `path` with `body`,
/// or appends a "Proxy data path" section holding them.
pub fn write_docs(path: &Path, body: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let updated = replace_section(&text, body);
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn replace_section(text: &str, body: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", body.trim_end());
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &text[..b], &text[e + END.len()..]),
        _ => format!(
            "{}\n\n{HEADING}\n\nMeasured by `keel-proxy-bench` (`e2e/src/bin/proxy-bench.rs`; its doc \
             comment says how).\n\n{block}\n",
            text.trim_end()
        ),
    }
}

/// Machine, kernel, load, commit and date lines for the report.
pub fn context_lines() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = run("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = run(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "proxy",
            "common",
            "proto",
            "pilot",
        ],
    );
    let changed: Vec<&str> = dirty.lines().map(|l| l.get(3..).unwrap_or(l)).collect();
    let commit = if changed.is_empty() {
        format!("commit `{commit}`")
    } else {
        format!(
            "commit `{commit}` plus uncommitted changes to {}",
            changed
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    vec![
        format!("{}, {commit}", run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        format!("machine: nproc {cpus}, {model}, Linux {}", kernel.trim()),
        format!("load average before the run: {}", load_average()),
    ]
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line of `cmd ARGS`' stdout ("?" if it cannot run), from the
/// workspace root.
fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(keel_e2e::workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".to_string(),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.1}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn micros(us: u64) -> String {
    if us < 10_000 {
        format!("{us} µs")
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

/// `12345.6` → `12 346`.
pub fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(12345.6), "12 346");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1_000_000.0), "1 000 000");
    }

    #[test]
    fn replaces_or_appends_the_section() {
        let doc = "# B\n\ntext\n";
        let appended = replace_section(doc, "one");
        assert!(appended.starts_with("# B\n\ntext\n\n## Proxy data path\n"));
        assert!(appended.contains(&format!("{BEGIN}\none\n{END}\n")));
        let with_tail = format!("{appended}\n## Later\n");
        let replaced = replace_section(&with_tail, "two");
        assert!(replaced.contains(&format!("{BEGIN}\ntwo\n{END}")));
        assert!(!replaced.contains("one"));
        assert!(replaced.ends_with("## Later\n"));
    }

    fn run(ok: u64, ticks: u64) -> Option<(Outcome, Usage)> {
        let outcome = Outcome {
            ok,
            errors: 0,
            secs: 1.0,
        };
        let usage = Usage {
            proxy_ticks: Some(ticks),
            ..Usage::default()
        };
        Some((outcome, usage))
    }

    #[test]
    fn rows_show_the_median_round_and_ratios_pair_rounds() {
        let mut keel = Row {
            target: TargetKind::Keel,
            max: Outcome::default(),
            max_usage: Usage::default(),
            // 3.0, 1.0, 2.0 ticks per request; round 4 failed.
            rounds: vec![run(100, 300), run(100, 100), run(100, 200), None],
            fixed: None,
        };
        keel.take_median_round();
        assert_eq!(keel.max_usage.proxy_ticks, Some(200));
        let haproxy = Row {
            target: TargetKind::Haproxy,
            rounds: vec![run(50, 300), run(100, 200), run(200, 200), run(100, 100)],
            ..keel.clone()
        };
        let report = Report {
            protos: Vec::new(),
            idle_rss: Vec::new(),
            ticks: 100,
            command: String::new(),
            settings: Vec::new(),
            context: Vec::new(),
            problems: Vec::new(),
        };
        let (rps, cpu) = report.paired(&keel, &haproxy);
        assert_eq!(rps, [2.0, 1.0, 0.5]);
        assert_eq!(cpu, [0.5, 0.5, 2.0]);
        assert_eq!(spread(&rps), "1.00× (0.50–2.00)");
        assert_eq!(spread(&cpu[..1]), "0.50×");
        assert_eq!(spread(&[]), "—");
    }
}
