//! keel-echo's configuration: the only place that reads flags and the
//! environment (`ECHO_*` fallbacks for every flag, plus `HTTP_PROXY` and
//! `NO_PROXY` for downstream calls). It owns parsing and validation, not
//! behaviour.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyper::Uri;

/// A sample workload for Keel's tests and demos: answers HTTP/1.1, HTTP/2
/// (h2c) and gRPC on the same port with its name, version and the request it
/// saw.
#[derive(Debug, Parser)]
#[command(name = "keel-echo")]
pub struct Args {
    /// Address to listen on; repeat for several. Port 0 picks a free port
    /// (the real one is printed as `keel-echo listening on ADDR`).
    #[arg(
        long = "listen",
        env = "ECHO_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:8080"
    )]
    pub listen: Vec<SocketAddr>,

    /// The name reported in answers and the `x-echo-name` header
    /// (default: the host name, or "echo").
    #[arg(long, env = "ECHO_NAME")]
    pub name: Option<String>,

    /// The version reported in answers and the `x-echo-version` header.
    #[arg(long = "version", env = "ECHO_VERSION", default_value = "v1")]
    pub version: String,

    /// Percentage of requests (0-100) answered with 503 (gRPC: UNAVAILABLE).
    #[arg(long, env = "ECHO_FAIL_PERCENT", default_value_t = 0.0)]
    pub fail_percent: f64,

    /// Seeds which requests `--fail-percent` fails, so that the same
    /// sequence of requests meets the same failures every run (default: a
    /// new random seed per process).
    #[arg(long, env = "ECHO_SEED")]
    pub seed: Option<u64>,

    /// Milliseconds to wait before answering each request.
    #[arg(long, env = "ECHO_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,

    /// An `http://` URL to call for every HTTP request, its answer included
    /// in the response; repeat for several. Calls go through `HTTP_PROXY`
    /// when it is set.
    #[arg(long = "downstream", env = "ECHO_DOWNSTREAM", value_delimiter = ',')]
    pub downstream: Vec<String>,

    /// How long in-flight requests may take to finish after SIGTERM/Ctrl-C.
    #[arg(long, env = "ECHO_DRAIN_MS", default_value_t = 5000)]
    pub drain_ms: u64,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub name: String,
    pub version: String,
    pub hostname: String,
    pub fail_percent: f64,
    pub seed: Option<u64>,
    pub delay: Duration,
    pub downstream: Vec<Uri>,
    pub proxy: Option<Proxy>,
    pub drain: Duration,
}

/// The explicit HTTP proxy for downstream calls, from `HTTP_PROXY`.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// `host:port` to connect to.
    pub authority: String,
    /// `NO_PROXY` entries: host names or suffixes (`.example.com`), or `*`.
    pub no_proxy: Vec<String>,
}

impl Proxy {
    /// Whether a call to `host` goes through this proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        !self.no_proxy.iter().any(|entry| {
            let entry = entry.trim_start_matches('.');
            entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
        })
    }
}

impl Config {
    /// Parses the command line and the environment.
    pub fn from_env() -> Result<Self> {
        Self::from_args(Args::parse(), |key| std::env::var(key).ok())
    }

    /// Validates `args`; `env` looks up the proxy variables.
    pub fn from_args(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if !(0.0..=100.0).contains(&args.fail_percent) {
            bail!(
                "--fail-percent {} is out of range: give a percentage from 0 to 100",
                args.fail_percent
            );
        }
        if args.listen.is_empty() {
            bail!("no --listen address: give at least one, e.g. --listen 127.0.0.1:8080");
        }
        let hostname = hostname();
        let downstream = args
            .downstream
            .iter()
            .filter(|url| !url.is_empty())
            .map(|url| parse_http_url(url).with_context(|| format!("--downstream {url:?}")))
            .collect::<Result<Vec<_>>>()?;
        let proxy = match env("HTTP_PROXY").or_else(|| env("http_proxy")) {
            Some(url) if !url.is_empty() => {
                let authority = proxy_authority(&url)
                    .with_context(|| format!("HTTP_PROXY={url:?}: expected http://HOST:PORT"))?;
                let no_proxy = env("NO_PROXY")
                    .or_else(|| env("no_proxy"))
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect();
                Some(Proxy {
                    authority,
                    no_proxy,
                })
            }
            _ => None,
        };
        Ok(Self {
            listen: args.listen,
            name: args.name.unwrap_or_else(|| hostname.clone()),
            version: args.version,
            hostname,
            fail_percent: args.fail_percent,
            seed: args.seed,
            delay: Duration::from_millis(args.delay_ms),
            downstream,
            proxy,
            drain: Duration::from_millis(args.drain_ms),
        })
    }
}

/// Parses an absolute `http://` URL with a host (a path defaults to `/`).
fn parse_http_url(url: &str) -> Result<Uri> {
    let uri: Uri = url.parse().context("not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    if uri.host().is_none() {
        bail!("the URL has no host");
    }
    Ok(uri)
}

/// `host:port` of a proxy URL (`http://host:port`, or bare `host:port`);
/// the port defaults to 80.
fn proxy_authority(url: &str) -> Result<String> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri = parse_http_url(&with_scheme)?;
    let host = uri.host().context("the URL has no host")?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// The host name: `HOSTNAME`, then the kernel's, then "echo".
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "echo".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Config> {
        let args = Args::try_parse_from(std::iter::once("keel-echo").chain(args.iter().copied()))?;
        Config::from_args(args, |key| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn proxy_comes_from_http_proxy_and_honours_no_proxy() -> Result<()> {
        let c = config(
            &["--downstream", "http://ratings:9080/x"],
            &[
                ("http_proxy", "http://127.0.0.1:15001"),
                ("NO_PROXY", "localhost,.internal"),
            ],
        )?;
        let proxy = c.proxy.context("proxy")?;
        assert_eq!(proxy.authority, "127.0.0.1:15001");
        assert!(proxy.applies_to("ratings"));
        assert!(!proxy.applies_to("localhost"));
        assert!(!proxy.applies_to("db.internal"));
        assert!(
            config(&[], &[("HTTP_PROXY", "proxy:3128")])?
                .proxy
                .is_some()
        );
        assert!(config(&[], &[])?.proxy.is_none());
        Ok(())
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        let err = |args: &[&str]| match config(args, &[]) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        assert!(err(&["--fail-percent", "101"]).contains("--fail-percent"));
        assert!(err(&["--downstream", "https://x/"]).contains("--downstream"));
        assert!(err(&["--downstream", "/relative"]).contains("--downstream"));
    }
}
