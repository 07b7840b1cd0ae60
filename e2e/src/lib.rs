//! keel-e2e: helpers for Keel's multi-process end-to-end tests.
//!
//! It owns the plumbing the tests in `e2e/tests/` share: finding (and if
//! needed building) the workspace's binaries, starting `keel-pilot` on
//! ephemeral loopback ports and talking to its HTTP endpoints, installing the
//! interop harness's npm and pip dependencies under `e2e/interop/`, and small
//! process and polling utilities. It does not own any scenario: what to
//! configure and what to assert lives in the tests themselves, and the real xDS
//! clients live in `e2e/interop/` (grpc-js under `node/`, grpcio under
//! `python/`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

/// How long `spawn_pilot` waits for pilot's ready line.
const PILOT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line pilot prints on stdout once both listeners are bound.
const PILOT_READY_PREFIX: &str = "keel-pilot ready: ";
/// A lock directory older than this is left over from a killed run.
const STALE_LOCK: Duration = Duration::from_secs(15 * 60);

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e).to_path_buf()
}

/// `e2e/interop/`: the harness scripts, protos and their installed deps.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// `shared/istio/` beside the workspace: Istio's samples (bookinfo, ...).
pub fn istio_samples_dir() -> PathBuf {
    workspace_root().join("../shared/istio")
}

/// The path of the workspace binary `bin` of `package`, built for the same
/// profile as the running test executable.
///
/// A test executable lives in `target/<profile>/deps/`; the binary is looked up
/// in `target/<profile>/`. It is built with `cargo build -p PACKAGE --bin BIN`
/// (plus `--release` for the release profile; cargo picks up
/// `CARGO_TARGET_DIR` from the environment) when it is missing, or when it is
/// older than the test executable: keel-e2e links the libraries of the
/// binaries it tests, so a newer test executable means their code may have
/// changed (e.g. `cargo test -p keel-e2e` does not rebuild other packages'
/// binaries). A fresh binary makes that build a quick no-op, run once per
/// process.
///
/// Panics if the binary cannot be found or built: there is nothing a test can
/// do without it, and the message says what failed.
pub fn bin_path(package: &str, bin: &str) -> PathBuf {
    match find_or_build_bin(package, bin) {
        Ok(path) => path,
        Err(err) => panic!("{err:#}"),
    }
}

fn find_or_build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    /// The binaries this process has already built (or found fresh).
    static CHECKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    let exe = std::env::current_exe().context("locating the test executable")?;
    let deps = exe
        .parent()
        .context("test executable has no parent directory")?;
    let profile_dir = if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    // One build per process at a time; cargo's own lock covers other processes.
    let mut checked = CHECKED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if checked.contains(&path) {
        return Ok(path);
    }
    if path.is_file() && modified(&path) >= modified(&exe) {
        checked.push(path.clone());
        return Ok(path);
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", bin]);
    if profile_dir.file_name() == Some(OsStr::new("release")) {
        cmd.arg("--release");
    }
    eprintln!(
        "keel-e2e: {} missing or older than the tests, running {cmd:?}",
        path.display()
    );
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}: is cargo on PATH?"))?;
    // eprint!, not io::stderr(), so the test harness captures it.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}); its output is above: fix the build, or build {bin} by hand",
            output.status
        );
    }
    if !path.is_file() {
        bail!(
            "{cmd:?} succeeded but {} does not exist; if CARGO_TARGET_DIR was changed \
             after the tests were built, rebuild them with the same CARGO_TARGET_DIR",
            path.display()
        );
    }
    checked.push(path.clone());
    Ok(path)
}

/// A child process that is killed when dropped, so a failing test leaves no
/// stray processes behind.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin piped (the interop scripts exit when it closes),
    /// the given stdout, and stderr forwarded to the test's stderr.
    pub fn spawn(name: &str, cmd: &mut Command, stdout: Stdio) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        if let Some(stderr) = child.stderr.take() {
            forward_lines(name.to_string(), stderr);
        }
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    /// The child's stdout, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stdin; dropping it tells the interop scripts to exit.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The process id, for log messages.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin and waits up to `timeout` for the child to exit on its own,
    /// killing it after that.
    pub fn finish(mut self, timeout: Duration) -> Result<ExitStatus> {
        drop(self.child.stdin.take());
        self.wait_exit(timeout)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
        }
        self.child.wait().ok();
    }
}

/// Copies every line of `input` to the test's stderr, prefixed with `name`.
/// Test output capture is inherited by spawned threads, so this shows up with
/// a failing test's output and stays quiet for a passing one.
fn forward_lines(name: String, input: impl Read + Send + 'static) {
    thread::spawn(move || {
        for line in BufReader::new(input).lines() {
            match line {
                Ok(line) => eprintln!("[{name}] {line}"),
                Err(_) => break,
            }
        }
    });
}

/// Reads `input` line by line on a thread, so a test can wait for the next
/// line with a timeout.
pub fn line_channel(input: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(input).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `keel-pilot`, killed on drop.
pub struct Pilot {
    child: ChildGuard,
    /// Where pilot serves ADS (gRPC).
    pub xds_addr: SocketAddr,
    /// Where pilot serves `/metrics`, `/ready` and `/debug/*`.
    pub http_addr: SocketAddr,
}

/// Starts `keel-pilot --config-dir CONFIG_DIR` on ephemeral loopback ports and
/// waits (up to 30 s) for its ready line. Pilot's stderr (its logs) is
/// forwarded to the test's stderr.
pub fn spawn_pilot(config_dir: &Path) -> Result<Pilot> {
    spawn_pilot_with_args(config_dir, &[])
}

/// [`spawn_pilot`] with extra command-line arguments, e.g.
/// `["--domain-suffix", "cluster.local"]`.
pub fn spawn_pilot_with_args(config_dir: &Path, extra: &[&str]) -> Result<Pilot> {
    spawn_pilot_in(None, config_dir, extra)
}

/// A command running `bin`, inside network namespace `netns` when given
/// (through `ip netns exec`, which needs root).
pub fn command_in(netns: Option<&str>, bin: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// [`spawn_pilot_with_args`] inside network namespace `netns` (if given).
pub fn spawn_pilot_in(netns: Option<&str>, config_dir: &Path, extra: &[&str]) -> Result<Pilot> {
    spawn_pilot_on(
        netns,
        std::net::Ipv4Addr::LOCALHOST.into(),
        config_dir,
        extra,
    )
}

/// Parses `xds=127.0.0.1:PORT http=127.0.0.1:PORT`.
fn parse_ready(rest: &str) -> Result<(SocketAddr, SocketAddr)> {
    let mut xds = None;
    let mut http = None;
    for part in rest.split_whitespace() {
        match part.split_once('=') {
            Some(("xds", addr)) => xds = Some(addr.parse::<SocketAddr>()?),
            Some(("http", addr)) => http = Some(addr.parse::<SocketAddr>()?),
            _ => {}
        }
    }
    Ok((xds.context("no xds=ADDR")?, http.context("no http=ADDR")?))
}

impl Pilot {
    /// `GET PATH` on pilot's HTTP listener.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.http_addr, path)
    }

    /// The pid of the pilot process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/debug/syncz` parsed: one object per connected xDS client.
    pub fn syncz(&self) -> Result<Vec<serde_json::Value>> {
        let (status, body) = self.get("/debug/syncz")?;
        if status != 200 {
            bail!("/debug/syncz answered {status}: {body}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("/debug/syncz is not a JSON array: {body}"))
    }

    /// `/debug/config_dump?proxyID=NODE_ID` as text, for failure messages.
    pub fn config_dump(&self, node_id: &str) -> String {
        match self.get(&format!("/debug/config_dump?proxyID={node_id}")) {
            Ok((status, body)) => format!("HTTP {status}\n{body}"),
            Err(err) => format!("(fetching config_dump failed: {err:#})"),
        }
    }

    /// Every `pilot_total_xds_rejects*` sample in `/metrics` whose value is
    /// not 0, as `(series, value)`: empty when no client NACKed anything.
    pub fn xds_rejects(&self) -> Result<Vec<(String, f64)>> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(nonzero_samples(&body, "pilot_total_xds_rejects"))
    }

    /// Fails, listing the offending series and the client node's config dump,
    /// if pilot counted any xDS rejects (NACKs) or is refusing any config file
    /// (`pilot_config_rejected_files`: it would keep serving the file's last
    /// good version, so a test would see stale config).
    pub fn assert_no_rejects(&self, node_id: &str) -> Result<()> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        let bad_files = nonzero_samples(&body, "pilot_config_rejected_files");
        if !bad_files.is_empty() {
            bail!("pilot rejected config files: {bad_files:?}; its log above says why");
        }
        let rejects = nonzero_samples(&body, "pilot_total_xds_rejects");
        if !rejects.is_empty() {
            bail!(
                "pilot counted xDS NACKs: {rejects:?}\nconfig served to {node_id}:\n{}",
                self.config_dump(node_id)
            );
        }
        Ok(())
    }
}

/// The non-zero samples of metric family `name` in Prometheus text `body`
/// (prometheus-client adds `_total` to counters, so this matches by prefix).
pub fn nonzero_samples(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            (value != 0.0).then(|| (series.to_string(), value))
        })
        .collect()
}

/// A minimal HTTP/1.1 `GET` over a plain TCP connection: returns the status
/// code and the body (de-chunked if needed). Times out after 10 s.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to http://{addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET http://{addr}{path}"))?;
    parse_response(&raw).with_context(|| format!("GET http://{addr}{path}"))
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().context("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size line")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk: want {size} bytes, have {}", data.len());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns
/// whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Writes an xDS bootstrap for a proxyless gRPC client (grpc-js or grpcio)
/// that talks ADS to `xds_addr` as Istio node `node_id`, and returns its path.
///
/// `locality` is required by grpc-js-xds's bootstrap parser even when empty.
pub fn write_grpc_bootstrap(dir: &Path, xds_addr: SocketAddr, node_id: &str) -> Result<PathBuf> {
    let namespace = node_namespace(node_id).unwrap_or("default");
    let bootstrap = serde_json::json!({
        "xds_servers": [{
            "server_uri": xds_addr.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id,
            "locality": {},
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": namespace},
        },
    });
    let path = dir.join("xds-bootstrap.json");
    fs::write(&path, serde_json::to_vec_pretty(&bootstrap)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The namespace of an Istio node id `TYPE~IP~POD.NAMESPACE~DOMAIN`.
fn node_namespace(node_id: &str) -> Option<&str> {
    node_id.split('~').nth(2)?.split_once('.').map(|(_, ns)| ns)
}

/// Writes `contents` to `dir/name` atomically: it is written under `stage`
/// (a directory on the same filesystem, outside any watched directory) and
/// renamed into place, so a watcher never sees a half-written file.
pub fn write_atomic(stage: &Path, dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    fs::create_dir_all(stage)?;
    let tmp = stage.join(name);
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

/// Makes sure the interop harness's dependencies are installed and returns
/// `e2e/interop/`.
///
/// - `node/node_modules` via `npm ci` (or `npm install` without a lockfile),
///   when missing or older than `package-lock.json`;
/// - `.deps/python` via `python3 -m pip install --target .deps/python -r
///   python/requirements.txt`, when missing or installed from other
///   requirements.
///
/// A lock directory (`.deps/install.lock`) keeps concurrent test processes
/// from installing at once.
pub fn interop_deps() -> Result<PathBuf> {
    static DONE: OnceLock<()> = OnceLock::new();
    static IN_PROCESS: Mutex<()> = Mutex::new(());

    let dir = interop_dir();
    if DONE.get().is_some() {
        return Ok(dir);
    }
    let _guard = IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if DONE.get().is_some() {
        return Ok(dir);
    }
    let deps = dir.join(".deps");
    fs::create_dir_all(&deps).with_context(|| format!("creating {}", deps.display()))?;
    let _lock = DirLock::acquire(&deps.join("install.lock"), Duration::from_secs(600))?;
    install_node_deps(&dir.join("node"))?;
    install_python_deps(&dir)?;
    DONE.set(()).ok();
    Ok(dir)
}

/// `PYTHONPATH` value that makes the harness's pip-installed packages visible.
pub fn python_path() -> PathBuf {
    interop_dir().join(".deps/python")
}

fn install_node_deps(node_dir: &Path) -> Result<()> {
    let lockfile = node_dir.join("package-lock.json");
    // npm ci and npm install both write this marker last.
    let marker = node_dir.join("node_modules/.package-lock.json");
    if marker.is_file() && modified(&marker) >= modified(&lockfile) {
        return Ok(());
    }
    run_tool(
        Command::new("node").arg("--version"),
        "Node.js 18 or newer is needed by the grpc-js interop tests: install it \
         (Debian: apt-get install nodejs npm)",
    )?;
    let mut cmd = Command::new("npm");
    if lockfile.is_file() {
        cmd.arg("ci");
    } else {
        cmd.arg("install");
    }
    cmd.args(["--no-audit", "--no-fund"]).current_dir(node_dir);
    run_tool(
        &mut cmd,
        &format!(
            "installing the grpc-js harness's npm packages failed; install npm \
             (Debian: apt-get install npm) and run `npm ci --prefix {}`",
            node_dir.display()
        ),
    )
}

fn install_python_deps(dir: &Path) -> Result<()> {
    let target = dir.join(".deps/python");
    let requirements = dir.join("python/requirements.txt");
    let wanted =
        fs::read(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    // A copy of the requirements installed, to notice when they change.
    let stamp = target.join("keel-requirements.txt");
    if fs::read(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    if target.exists() {
        fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    }
    let staging = dir.join(".deps/python.partial");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--target",
    ])
    .arg(&staging)
    .arg("-r")
    .arg(&requirements);
    run_tool(
        &mut cmd,
        &format!(
            "installing the grpcio harness's pip packages failed; install python3 \
             with pip (Debian: apt-get install python3 python3-pip) and run \
             `python3 -m pip install --target {} -r {}`",
            target.display(),
            requirements.display()
        ),
    )?;
    fs::write(staging.join("keel-requirements.txt"), &wanted)?;
    // Rename last, so an interrupted install is retried rather than trusted.
    fs::rename(&staging, &target)
        .with_context(|| format!("renaming {} to {}", staging.display(), target.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs `cmd`, sending its output to the test's stderr; `hint` says what to
/// do when it cannot be run or fails.
fn run_tool(cmd: &mut Command, hint: &str) -> Result<()> {
    eprintln!("keel-e2e: running {cmd:?}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|err| anyhow!("{hint}\n(could not run {cmd:?}: {err})"))?;
    // eprint!, not io::stderr(), so the test harness captures it.
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("{hint}\n({cmd:?} exited with {})", output.status);
    }
    Ok(())
}

/// A lock held by creating a directory (atomic on every filesystem), removed
/// on drop. A lock older than 15 minutes is assumed abandoned and broken.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match fs::create_dir(path) {
                Ok(()) => return Ok(Self(path.to_path_buf())),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = modified(path)
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        eprintln!("keel-e2e: breaking stale lock {}", path.display());
                        fs::remove_dir(path).ok();
                        continue;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "waited {timeout:?} for {}; if no other test is installing \
                             the interop deps, remove it",
                            path.display()
                        );
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("creating lock {}", path.display()));
                }
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        fs::remove_dir(&self.0).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_line() -> Result<()> {
        let (xds, http) = parse_ready("xds=127.0.0.1:15010 http=127.0.0.1:8080")?;
        assert_eq!(xds.port(), 15010);
        assert_eq!(http.port(), 8080);
        assert!(parse_ready("xds=127.0.0.1:1").is_err());
        Ok(())
    }

    #[test]
    fn parses_plain_and_chunked_responses() -> Result<()> {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain)?, (200, "ok".to_string()));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked)?, (503, "abcde".to_string()));
        Ok(())
    }

    #[test]
    fn finds_nonzero_rejects() {
        let body = "# TYPE pilot_total_xds_rejects counter\n\
                    pilot_total_xds_rejects_total{type=\"lds\"} 0\n\
                    pilot_total_xds_rejects_total{type=\"rds\"} 2\n\
                    pilot_xds 1\n";
        assert_eq!(
            nonzero_samples(body, "pilot_total_xds_rejects"),
            vec![(
                "pilot_total_xds_rejects_total{type=\"rds\"}".to_string(),
                2.0
            )]
        );
    }

    #[test]
    fn node_namespace_from_istio_node_id() {
        let id = "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local";
        assert_eq!(node_namespace(id), Some("default"));
        assert_eq!(node_namespace("plain"), None);
    }
}

/// A running `keel-echo`, killed on drop.
pub struct Echo {
    /// The process.
    pub child: ChildGuard,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts `keel-echo --listen LISTEN ARGS…` (e.g. `127.0.0.1:0`) and waits
/// for its listening line. Proxy and `ECHO_*` variables of the test's own
/// environment are removed so only `env` applies.
pub fn spawn_echo_at(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Echo> {
    spawn_echo_in(None, listen, args, env)
}

/// [`spawn_echo_at`] inside network namespace `netns` (if given).
pub fn spawn_echo_in(
    netns: Option<&str>,
    listen: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Echo> {
    let mut cmd = command_in(netns, &bin_path("keel-e2e", "keel-echo"));
    cmd.args(["--listen", listen]).args(args);
    for key in [
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "ECHO_LISTEN",
        "ECHO_NAME",
        "ECHO_VERSION",
        "ECHO_FAIL_PERCENT",
        "ECHO_DELAY_MS",
        "ECHO_DOWNSTREAM",
    ] {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    let mut child = ChildGuard::spawn("keel-echo", &mut cmd, Stdio::piped())?;
    let lines = line_channel(child.take_stdout().context("keel-echo's stdout")?);
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .context("keel-echo printed no listening line within 30s")?;
    let addr = line
        .strip_prefix("keel-echo listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .parse()
        .with_context(|| format!("parsing the address in {line:?}"))?;
    thread::spawn(move || for _ in lines {});
    Ok(Echo { child, addr })
}

/// A running `keel-proxy`, killed on drop (use [`Proxy::terminate`] for a
/// graceful stop).
pub struct Proxy {
    /// The process.
    pub child: ChildGuard,
    /// Every `key=ADDR` of its ready line (`admin`, `ready`, `stats`,
    /// `outbound`, `inbound`).
    pub addrs: std::collections::BTreeMap<String, SocketAddr>,
}

impl Proxy {
    /// The address printed under `key`.
    pub fn addr(&self, key: &str) -> SocketAddr {
        match self.addrs.get(key) {
            Some(a) => *a,
            None => panic!("keel-proxy printed no {key}= address: {:?}", self.addrs),
        }
    }

    /// `GET /stats/prometheus` on the stats port.
    pub fn stats(&self) -> Result<String> {
        let (status, body) = http_get(self.addr("stats"), "/stats/prometheus")?;
        if status != 200 {
            bail!("/stats/prometheus answered {status}: {body}");
        }
        Ok(body)
    }

    /// `GET /config_dump` on the admin port, parsed.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let (_, body) = http_get(self.addr("admin"), "/config_dump")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits (up to `timeout`) for `/healthz/ready` to answer 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let ready = self.addr("ready");
        if wait_until(timeout, || {
            http_get(ready, "/healthz/ready").is_ok_and(|(s, _)| s == 200)
        }) {
            Ok(())
        } else {
            bail!("keel-proxy was not ready within {timeout:?}")
        }
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `keel-proxy` against pilot's `xds` with every port on
/// `127.0.0.1:0` (sidecar mode; pass `--mode router` in `extra` for a
/// gateway) plus `extra` arguments, and waits for its ready line (not for
/// configuration: see [`Proxy::wait_ready`]). Its stderr goes to the test's.
pub fn spawn_proxy(xds: SocketAddr, extra: &[&str]) -> Result<Proxy> {
    spawn_proxy_in(None, xds, extra)
}

/// [`spawn_proxy`] inside network namespace `netns` (if given); `extra`
/// flags given later override the defaults (e.g. `--outbound-addr`).
pub fn spawn_proxy_in(netns: Option<&str>, xds: SocketAddr, extra: &[&str]) -> Result<Proxy> {
    let bin = bin_path("keel-proxy", "keel-proxy");
    start_proxy(command_in(netns, &bin), xds, extra)
}

/// Adds the default flags (every port on `127.0.0.1:0`, unless `extra`
/// names it), `--xds-address` and `extra` to `cmd`, starts it and waits for
/// keel-proxy's ready line.
fn start_proxy(mut cmd: Command, xds: SocketAddr, extra: &[&str]) -> Result<Proxy> {
    let defaults = [
        "--admin-addr",
        "127.0.0.1:0",
        "--ready-addr",
        "127.0.0.1:0",
        "--stats-addr",
        "127.0.0.1:0",
        "--outbound-addr",
        "127.0.0.1:0",
        "--inbound-addr",
        "127.0.0.1:0",
    ];
    for pair in defaults.chunks(2) {
        if !extra.contains(&pair[0]) {
            cmd.args(pair);
        }
    }
    cmd.arg("--xds-address").arg(xds.to_string()).args(extra);
    let mut child = ChildGuard::spawn("keel-proxy", &mut cmd, Stdio::piped())?;
    let lines = line_channel(child.take_stdout().context("keel-proxy's stdout")?);
    let deadline = Instant::now() + PILOT_READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            bail!(
                "keel-proxy printed no ready line within {PILOT_READY_TIMEOUT:?} (or exited); \
                 its stderr is above (command: {cmd:?})"
            );
        };
        let Some(rest) = line.strip_prefix("keel-proxy ready: ") else {
            println!("[keel-proxy stdout] {line}");
            continue;
        };
        let mut addrs = std::collections::BTreeMap::new();
        for part in rest.split_whitespace() {
            if let Some((k, v)) = part.split_once('=') {
                addrs.insert(k.to_string(), v.parse()?);
            }
        }
        thread::spawn(move || {
            for line in lines {
                println!("[keel-proxy stdout] {line}");
            }
        });
        return Ok(Proxy { child, addrs });
    }
}

/// Sends SIGTERM to `pid` (through `kill(1)`).
pub fn sigterm(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill -TERM")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed: {status}");
    }
    Ok(())
}

impl ChildGuard {
    /// Waits up to `timeout` for the child to exit on its own (stdin left
    /// open), killing it after that.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.child.kill().ok();
                let status = self.child.wait()?;
                bail!(
                    "{} did not exit within {timeout:?}; killed ({status})",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What [`http_send`] got back.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Headers, names lower-cased (the last value of a repeated one).
    pub headers: HashMap<String, String>,
    /// The body (de-chunked).
    pub body: String,
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`):
/// `target` is origin-form (`/path`) or absolute-form for a proxy; the
/// `Host` header is `host` unless `headers` sets it. Times out after 10 s.
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpAnswer> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {target} via {addr}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let headers: HashMap<String, String> = String::from_utf8_lossy(&raw[..split])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let (status, body) = parse_response(&raw)?;
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// [`spawn_pilot_in`] with both of pilot's listeners on `ip` (ephemeral
/// ports) instead of 127.0.0.1, e.g. a bridge address that network-namespace
/// "pods" reach; the addresses in the returned [`Pilot`] are on `ip`.
pub fn spawn_pilot_on(
    netns: Option<&str>,
    ip: std::net::IpAddr,
    config_dir: &Path,
    extra: &[&str],
) -> Result<Pilot> {
    let bin = bin_path("keel-pilot", "keel-pilot");
    let any_port = SocketAddr::new(ip, 0).to_string();
    let mut cmd = command_in(netns, &bin);
    cmd.arg("--config-dir")
        .arg(config_dir)
        .args(["--xds-addr", &any_port, "--http-addr", &any_port])
        .args(extra);
    let mut child = ChildGuard::spawn("keel-pilot", &mut cmd, Stdio::piped())?;
    let stdout = child
        .take_stdout()
        .context("keel-pilot's stdout was not piped")?;
    let lines = line_channel(stdout);

    let deadline = Instant::now() + PILOT_READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(PILOT_READY_PREFIX) {
                    let (xds_addr, http_addr) = parse_ready(rest)
                        .with_context(|| format!("parsing pilot's ready line {line:?}"))?;
                    // Keep draining stdout so pilot never blocks on a full pipe.
                    thread::spawn(move || {
                        for line in lines {
                            eprintln!("[keel-pilot stdout] {line}");
                        }
                    });
                    return Ok(Pilot {
                        child,
                        xds_addr,
                        http_addr,
                    });
                }
                eprintln!("[keel-pilot stdout] {line}");
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "keel-pilot ({}) printed no {PILOT_READY_PREFIX:?} line within \
                 {PILOT_READY_TIMEOUT:?}; its stderr is above",
                bin.display()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.child.wait()?;
                bail!(
                    "keel-pilot exited ({status}) before printing its ready line; \
                     its stderr is above (command: {cmd:?})"
                );
            }
        }
    }
}

/// A command running `bin` inside network namespace `netns` (if given) as
/// user and group `uid` (if given) with no supplementary groups, through
/// `ip netns exec` and util-linux `setpriv` (both need root). Like an app
/// or a sidecar container of a pod running as its own user.
pub fn command_as(netns: Option<&str>, uid: Option<u32>, bin: &Path) -> Command {
    let Some(uid) = uid else {
        return command_in(netns, bin);
    };
    let id = uid.to_string();
    let mut c = command_in(netns, Path::new("setpriv"));
    c.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
        .arg(bin);
    c
}

/// [`spawn_proxy_in`] running as user `uid` (see [`command_as`]), the way a
/// sidecar runs as the user its capture rules exempt. The defaults and the
/// overriding of them by `extra` are [`spawn_proxy_in`]'s.
pub fn spawn_proxy_as(
    netns: Option<&str>,
    uid: Option<u32>,
    xds: SocketAddr,
    extra: &[&str],
) -> Result<Proxy> {
    let bin = bin_path("keel-proxy", "keel-proxy");
    start_proxy(command_as(netns, uid, &bin), xds, extra)
}

/// Runs a system tool (`ip`, `iptables`, ...) and returns its stdout; a
/// non-zero exit is an error carrying its stderr.
pub fn run_cmd(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// For tests that need root or system tools: under CI (`CI=true`) a test
/// that cannot run is an error; elsewhere it is skipped with a message.
/// Returns `Ok(false)` (skip) or the error.
pub fn skip_unless_ci(what: &str, why: &str) -> Result<bool> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("{what} cannot run under CI: {why}");
    }
    eprintln!("skipping {what}: {why}");
    Ok(false)
}

/// A running keel-citadel (killed on drop).
pub struct Citadel {
    _child: ChildGuard,
    /// The certificate API (gRPC over TLS).
    pub grpc_addr: SocketAddr,
    /// `/metrics` and `/ready`.
    pub monitoring_addr: SocketAddr,
    /// The root its chains end with.
    pub root_cert: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl Citadel {
    /// A bootstrap token for `namespace`/`service_account`, valid `ttl`
    /// (`1h`, `5s`), written to a file in the state directory; its path.
    pub fn token_file(&self, namespace: &str, service_account: &str, ttl: &str) -> Result<PathBuf> {
        let out = Command::new(bin_path("keel-citadel", "keel-citadel"))
            .args(["token", "--state-dir"])
            .arg(&self.state_dir)
            .args([
                "--namespace",
                namespace,
                "--service-account",
                service_account,
            ])
            .args(["--ttl", ttl])
            .output()
            .context("running keel-citadel token")?;
        if !out.status.success() {
            bail!(
                "keel-citadel token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = self
            .state_dir
            .join(format!("token-{namespace}-{service_account}-{ttl}"));
        std::fs::write(&path, &out.stdout)?;
        Ok(path)
    }

    /// The value of metric `name` on `/metrics`.
    pub fn metric(&self, name: &str) -> Result<f64> {
        let (_, body) = http_get(self.monitoring_addr, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} on citadel's /metrics:\n{body}"))
    }
}

/// Starts `keel-citadel --state-dir STATE_DIR` on ephemeral loopback ports
/// plus `extra`, and waits for its ready line.
pub fn spawn_citadel(state_dir: &Path, extra: &[&str]) -> Result<Citadel> {
    let bin = bin_path("keel-citadel", "keel-citadel");
    let mut cmd = Command::new(&bin);
    cmd.arg("--state-dir")
        .arg(state_dir)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .args(extra);
    let mut child = ChildGuard::spawn("keel-citadel", &mut cmd, Stdio::piped())?;
    let lines = line_channel(child.take_stdout().context("keel-citadel's stdout")?);
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .context("keel-citadel printed no ready line within 30 s; its stderr is above")?;
    let rest = line
        .strip_prefix("keel-citadel ready: ")
        .with_context(|| format!("unexpected first line {line:?}"))?;
    let field = |k: &str| {
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .with_context(|| format!("no {k}= in {line:?}"))
    };
    Ok(Citadel {
        grpc_addr: field("grpc")?.parse()?,
        monitoring_addr: field("monitoring")?.parse()?,
        root_cert: PathBuf::from(field("root")?),
        state_dir: state_dir.to_path_buf(),
        _child: child,
    })
}
