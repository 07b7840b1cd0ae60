//! `keel-proxy init`: the init container's half of transparent capture.
//!
//! It installs the `nat` table rules that send a pod's outbound TCP to the
//! proxy's outbound port and its inbound TCP to the inbound port, with
//! istio-iptables' include/exclude semantics (Istio's
//! `traffic.sidecar.istio.io/*` annotations), and `--cleanup` removes them.
//! Everything Keel installs lives in four chains (`KEEL_INBOUND`,
//! `KEEL_IN_REDIRECT`, `KEEL_OUTPUT`, `KEEL_REDIRECT`) plus one jump each
//! from `PREROUTING` and `OUTPUT`, so it can be found and removed exactly.
//!
//! The module is three layers: flag validation ([`InitArgs::validate`], which
//! refuses a bad value before anything is touched), pure rule building
//! ([`install`], [`cleanup_from_save`], [`restore_input`]: data in, iptables
//! argument vectors out), and applying them ([`Netfilter`]: one
//! `iptables-restore --noflush` batch, so a change is atomic). It does not
//! capture IPv6 (IPv4 rules only) and does not support TPROXY; docs/capture.md
//! has the ruleset and the reasoning behind each rule.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;

/// The chain `PREROUTING` jumps to: which inbound connections to capture.
pub const INBOUND: &str = "KEEL_INBOUND";
/// The chain that redirects inbound connections to the inbound port.
pub const IN_REDIRECT: &str = "KEEL_IN_REDIRECT";
/// The chain `OUTPUT` jumps to: which outbound connections to capture.
pub const OUTPUT: &str = "KEEL_OUTPUT";
/// The chain that redirects outbound connections to the outbound port.
pub const REDIRECT: &str = "KEEL_REDIRECT";
/// Every chain whose name starts with this is Keel's (`--cleanup` removes it).
pub const CHAIN_PREFIX: &str = "KEEL_";
/// The proxy's own ports (admin, outbound, inbound, readiness, stats): never
/// captured inbound, whatever the flags say.
pub const PROXY_PORTS: [u16; 5] = [15000, 15001, 15006, 15021, 15090];

/// `keel-proxy init`'s command line. Each flag falls back to the environment
/// variable istio-iptables reads for it.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "keel-proxy init",
    version,
    about = "Install (or with --cleanup remove) the iptables nat rules that redirect a pod's \
             TCP traffic to keel-proxy; run it once per pod, in an init container with NET_ADMIN",
    long_about = None,
    after_help = "Lists are comma-separated. `*` means all; an empty list captures nothing in \
                  that direction. Ports 15000, 15001, 15006, 15021 and 15090 (the proxy's own) \
                  are never captured inbound. Traffic of --proxy-uid, and traffic over the \
                  loopback interface (127.0.0.0/8, the pod's own IPs), is never captured \
                  outbound. See docs/capture.md."
)]
pub struct InitArgs {
    /// The proxy's user id: its connections are never redirected, so its own
    /// upstream connections do not loop back into it (istio-iptables -u).
    #[arg(
        long,
        env = "PROXY_UID",
        value_name = "UID",
        required_unless_present = "cleanup"
    )]
    pub proxy_uid: Option<String>,
    /// Also exempt connections of processes with this group id (istio-iptables -g).
    #[arg(long, env = "PROXY_GID", value_name = "GID")]
    pub proxy_gid: Option<String>,
    /// Where captured outbound connections go: keel-proxy's `--outbound-addr` port.
    #[arg(long, env = "ENVOY_PORT", value_name = "PORT", default_value = "15001")]
    pub outbound_port: String,
    /// Where captured inbound connections go: keel-proxy's `--inbound-addr` port.
    #[arg(
        long,
        env = "INBOUND_CAPTURE_PORT",
        value_name = "PORT",
        default_value = "15006"
    )]
    pub inbound_port: String,
    /// Outbound destinations to capture: CIDRs, `*` for all, empty for none
    /// (traffic.sidecar.istio.io/includeOutboundIPRanges).
    #[arg(
        long,
        env = "ISTIO_SERVICE_CIDR",
        value_name = "CIDRS",
        default_value = "*"
    )]
    pub include_outbound_cidrs: String,
    /// Outbound destinations never captured
    /// (traffic.sidecar.istio.io/excludeOutboundIPRanges).
    #[arg(
        long,
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub exclude_outbound_cidrs: String,
    /// Outbound destination ports never captured
    /// (traffic.sidecar.istio.io/excludeOutboundPorts).
    #[arg(
        long,
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        value_name = "PORTS",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,
    /// Inbound destination ports to capture: ports, `*` for all, empty for
    /// none (traffic.sidecar.istio.io/includeInboundPorts).
    #[arg(
        long,
        env = "ISTIO_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = "*"
    )]
    pub include_inbound_ports: String,
    /// Inbound destination ports never captured, besides the proxy's own
    /// (traffic.sidecar.istio.io/excludeInboundPorts).
    #[arg(
        long,
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub exclude_inbound_ports: String,
    /// Remove every KEEL_ chain and the jumps into them instead of installing.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the iptables-restore input instead of applying it (needs no
    /// privileges and reads nothing from the system).
    #[arg(long)]
    pub dry_run: bool,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag's value is not valid; nothing was changed.
    #[error("--{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag, without its dashes.
        flag: &'static str,
        /// The offending value (one entry of a list).
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A tool is not on `PATH`.
    #[error(
        "keel-proxy init needs {tool} on PATH (install the iptables package in the init \
         container's image): not found in {path:?}"
    )]
    MissingTool {
        /// The missing program.
        tool: &'static str,
        /// The `PATH` searched.
        path: String,
    },
    /// The process may not change the network configuration.
    #[error(
        "keel-proxy init needs CAP_NET_ADMIN (run as root or in an init container with \
         NET_ADMIN): {detail}"
    )]
    Privileges {
        /// What showed it: the capability set, or iptables' own message.
        detail: String,
    },
    /// A tool could not be started.
    #[error("running {tool}: {source}")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Why it could not run.
        source: io::Error,
    },
    /// iptables refused the change; the table is as it was (the batch is atomic).
    #[error("{tool} failed ({status}): {stderr}\nits input was:\n{input}")]
    Iptables {
        /// The program.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
        /// What it was given (empty for iptables-save).
        input: String,
    },
    /// Writing the report failed.
    #[error("writing to standard output: {0}")]
    Output(#[from] io::Error),
}

/// Which destinations (CIDRs or ports) a direction captures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<T> {
    /// `*`: every destination.
    All,
    /// Only these (empty: none).
    Only(Vec<T>),
}

impl<T> Selection<T> {
    /// Whether anything is captured.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Only(v) if v.is_empty())
    }
}

/// An IPv4 network, normalized (host bits cleared), printed as `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length (0-32).
    pub prefix: u8,
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The validated configuration of the capture rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Connections of this uid are never redirected.
    pub proxy_uid: u32,
    /// Connections of this gid are never redirected.
    pub proxy_gid: Option<u32>,
    /// The redirect target of outbound connections.
    pub outbound_port: u16,
    /// The redirect target of inbound connections.
    pub inbound_port: u16,
    /// Outbound destinations captured.
    pub include_outbound: Selection<Ipv4Cidr>,
    /// Outbound destinations not captured (checked first).
    pub exclude_outbound: Vec<Ipv4Cidr>,
    /// Outbound destination ports not captured (checked first).
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports captured, without any excluded one.
    pub include_inbound: Selection<u16>,
    /// Inbound ports never captured: the proxy's own and the user's, sorted.
    pub exclude_inbound: Vec<u16>,
    /// Flag values that were accepted but have no effect, for the log.
    pub notes: Vec<String>,
}

impl InitArgs {
    /// Checks every flag, naming the flag and the value that is wrong.
    /// `proxy_uid` may be absent only for `--cleanup`.
    pub fn validate(&self) -> Result<Capture, InitError> {
        let proxy_uid = match &self.proxy_uid {
            Some(uid) => parse_id("proxy-uid", uid)?,
            None if self.cleanup => 0,
            None => {
                return Err(invalid(
                    "proxy-uid",
                    "",
                    "give the proxy's user id, e.g. --proxy-uid 1337",
                ));
            }
        };
        let proxy_gid = match &self.proxy_gid {
            Some(gid) if !gid.trim().is_empty() => Some(parse_id("proxy-gid", gid)?),
            _ => None,
        };
        let outbound_port = parse_port("outbound-port", self.outbound_port.trim())?;
        let inbound_port = parse_port("inbound-port", self.inbound_port.trim())?;
        if outbound_port == inbound_port {
            return Err(invalid(
                "inbound-port",
                &self.inbound_port,
                "is the same as --outbound-port; inbound and outbound need their own ports \
                 (default 15006 and 15001)",
            ));
        }
        let include_outbound = selection("include-outbound-cidrs", &self.include_outbound_cidrs)?
            .try_map(|v| parse_cidr("include-outbound-cidrs", v))?;
        let include_outbound = match include_outbound {
            Selection::Only(cidrs) => Selection::Only(dedup(cidrs)),
            all => all,
        };
        let exclude_outbound = list("exclude-outbound-cidrs", &self.exclude_outbound_cidrs)?
            .into_iter()
            .map(|v| parse_cidr("exclude-outbound-cidrs", v))
            .collect::<Result<Vec<_>, _>>()?;
        let exclude_outbound_ports = ports("exclude-outbound-ports", &self.exclude_outbound_ports)?;
        let mut exclude_inbound = ports("exclude-inbound-ports", &self.exclude_inbound_ports)?;
        exclude_inbound.extend(PROXY_PORTS);
        exclude_inbound.extend([inbound_port, outbound_port]);
        exclude_inbound.sort_unstable();
        exclude_inbound.dedup();
        let mut notes = Vec::new();
        let include_inbound = match selection("include-inbound-ports", &self.include_inbound_ports)?
            .try_map(|v| parse_port("include-inbound-ports", v))?
        {
            Selection::All => Selection::All,
            Selection::Only(wanted) => {
                let mut kept = Vec::new();
                for port in wanted {
                    if exclude_inbound.contains(&port) {
                        notes.push(format!(
                            "--include-inbound-ports {port}: the port is excluded (the proxy's \
                             own, or in --exclude-inbound-ports), so it is not captured"
                        ));
                    } else if !kept.contains(&port) {
                        kept.push(port);
                    }
                }
                Selection::Only(kept)
            }
        };
        Ok(Capture {
            proxy_uid,
            proxy_gid,
            outbound_port,
            inbound_port,
            include_outbound,
            exclude_outbound: dedup(exclude_outbound),
            exclude_outbound_ports: dedup(exclude_outbound_ports),
            include_inbound,
            exclude_inbound,
            notes,
        })
    }
}

impl<T> Selection<T> {
    fn try_map<U, E>(self, f: impl Fn(&T) -> Result<U, E>) -> Result<Selection<U>, E> {
        Ok(match self {
            Self::All => Selection::All,
            Self::Only(v) => Selection::Only(v.iter().map(f).collect::<Result<Vec<_>, E>>()?),
        })
    }
}

fn invalid(flag: &'static str, value: &str, reason: &str) -> InitError {
    InitError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The entries of a comma-separated list (blank entries skipped); `*` is
/// refused: an exclude list has no "all".
fn list<'a>(flag: &'static str, s: &'a str) -> Result<Vec<&'a str>, InitError> {
    let entries: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.contains(&"*") {
        return Err(invalid(
            flag,
            "*",
            "an exclude list cannot be `*`; to capture nothing, empty the matching --include-* \
             flag instead",
        ));
    }
    Ok(entries)
}

/// An include list: `*` alone is everything, else the entries.
fn selection<'a>(flag: &'static str, s: &'a str) -> Result<Selection<&'a str>, InitError> {
    let entries: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries == ["*"] {
        return Ok(Selection::All);
    }
    if entries.contains(&"*") {
        return Err(invalid(
            flag,
            s,
            "`*` means everything and must be alone; write either `*` or a list",
        ));
    }
    Ok(Selection::Only(entries))
}

fn ports(flag: &'static str, s: &str) -> Result<Vec<u16>, InitError> {
    list(flag, s)?
        .into_iter()
        .map(|v| parse_port(flag, v))
        .collect()
}

fn parse_port(flag: &'static str, v: &str) -> Result<u16, InitError> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid(flag, v, "is not a TCP port (1-65535)")),
    }
}

fn parse_id(flag: &'static str, v: &str) -> Result<u32, InitError> {
    v.trim().parse::<u32>().map_err(|_| {
        invalid(
            flag,
            v,
            "is not a numeric id (write the number, e.g. 1337, not a name)",
        )
    })
}

/// `a.b.c.d/n` or a bare address (`/32`); host bits are cleared.
fn parse_cidr(flag: &'static str, v: &str) -> Result<Ipv4Cidr, InitError> {
    let (ip, prefix) = match v.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (v, None),
    };
    if ip.contains(':') {
        return Err(invalid(
            flag,
            v,
            "is IPv6; keel-proxy init installs IPv4 rules only (IPv6 traffic is not captured)",
        ));
    }
    let bad = || {
        invalid(
            flag,
            v,
            "is not an IPv4 CIDR (write e.g. 10.96.0.0/12 or 10.0.0.1)",
        )
    };
    let addr: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = match prefix {
        None => 32,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= 32 => n,
            _ => return Err(bad()),
        },
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ok(Ipv4Cidr {
        addr: Ipv4Addr::from(u32::from(addr) & mask),
        prefix,
    })
}

/// Runs `keel-proxy init` as `args` ask (validation first: a bad flag changes
/// nothing), reporting to `out`.
pub fn run(args: &InitArgs, nf: &mut dyn Netfilter, out: &mut dyn Write) -> Result<(), InitError> {
    let capture = args.validate()?;
    for note in &capture.notes {
        eprintln!("keel-proxy init: note: {note}");
    }
    if args.cleanup {
        if args.dry_run {
            let input = restore_input(
                &[
                    "keel-proxy init --cleanup --dry-run: the removal of everything init can install;",
                    "a real run removes the KEEL_ chains and jumps iptables-save -t nat shows",
                ],
                &cleanup_all(),
            );
            out.write_all(input.as_bytes())?;
            return Ok(());
        }
        let removal = cleanup_from_save(&nf.save_nat()?);
        if removal.is_empty() {
            writeln!(
                out,
                "keel-proxy init --cleanup: no KEEL_ chains; nothing to remove"
            )?;
            return Ok(());
        }
        let input = restore_input(&[], &removal);
        nf.restore_nat(&input)?;
        write!(out, "keel-proxy init --cleanup: removed\n{input}")?;
        return Ok(());
    }
    let rules = install(&capture);
    if args.dry_run {
        let input = restore_input(
            &[
                "keel-proxy init --dry-run: applied with iptables-restore --noflush, after",
                "removing any KEEL_ chains and jumps iptables-save -t nat shows (same batch)",
            ],
            &rules,
        );
        out.write_all(input.as_bytes())?;
        return Ok(());
    }
    let mut batch = cleanup_from_save(&nf.save_nat()?);
    let replaced = !batch.is_empty();
    batch.extend(rules.iter().cloned());
    if !batch.is_empty() {
        nf.restore_nat(&restore_input(&[], &batch))?;
    }
    let old = if replaced {
        " (the KEEL_ chains that were there are removed)"
    } else {
        ""
    };
    if rules.is_empty() {
        writeln!(
            out,
            "keel-proxy init: nothing to capture in either direction; no rules installed{old}"
        )?;
    } else {
        write!(
            out,
            "keel-proxy init: installed{old}\n{}",
            restore_input(&[], &rules)
        )?;
    }
    Ok(())
}

/// `keel-proxy init ARGS…`: parses `args` (what follows `init`), runs, and
/// prints an error as `keel-proxy init: …` (exit status 1). Usage errors
/// (an unknown flag) exit with clap's status 2.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from("keel-proxy init")).chain(args);
    let args = InitArgs::parse_from(argv);
    let mut stdout = io::stdout().lock();
    match run(&args, &mut SystemIptables::default(), &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string();
            if msg.starts_with("keel-proxy init") {
                eprintln!("{msg}");
            } else {
                eprintln!("keel-proxy init: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

mod rules;
mod system;

pub use rules::*;
pub use system::*;

#[cfg(test)]
mod tests;
