//! Pods as network namespaces: a "node" namespace holds a bridge
//! (10.244.0.1/24) and keel-pilot; three pod namespaces (productpage,
//! reviews-v1, reviews-v2) hang off it by veth pairs, each with its own IP
//! and a default route via the bridge. In each pod `keel-proxy init`
//! installs the capture rules, keel-proxy runs as uid 1337 (the uid the
//! rules exempt), and an unmodified keel-echo runs as root. Service names
//! resolve to their VIPs through `/etc/netns/<ns>/hosts`.
//!
//! What a user would notice is asserted: a call by name, with no
//! `HTTP_PROXY`, goes through the caller's outbound sidecar and the
//! callee's inbound sidecar (both count it, the callee sees the proxy's
//! headers and a connection from its own sidecar), the VirtualService picks
//! the version, the proxy's own connections are not captured, a bad flag or
//! missing privileges change nothing, and `--cleanup` leaves no KEEL_ chain.
//!
//! Needs root, `ip`, `iptables`, `iptables-save`, `iptables-restore`,
//! `curl` and util-linux `setpriv`: skipped (with a message) when they are
//! missing, except under CI (`CI=true`), where that is a failure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use keel_e2e::{
    bin_path, command_as, nonzero_samples, run_cmd, skip_unless_ci, spawn_echo_in, spawn_pilot_on,
    spawn_proxy_as, wait_until,
};

/// The uid the sidecars run as and the capture rules exempt (Istio's).
const PROXY_UID: u32 = 1337;
/// The bridge's address in the node namespace: the pods' gateway, pilot's address.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const PRODUCTPAGE_VIP: &str = "10.96.0.10";
const REVIEWS_VIP: &str = "10.96.0.20";
const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// A pod of the test mesh.
struct Pod {
    name: &'static str,
    ip: &'static str,
    app: &'static str,
    version: &'static str,
}

const PODS: [Pod; 3] = [
    Pod {
        name: "productpage-v1",
        ip: "10.244.0.10",
        app: "productpage",
        version: "v1",
    },
    Pod {
        name: "reviews-v1",
        ip: "10.244.0.21",
        app: "reviews",
        version: "v1",
    },
    Pod {
        name: "reviews-v2",
        ip: "10.244.0.22",
        app: "reviews",
        version: "v2",
    },
];

/// Whether the test can run here; `Err` when it must (CI) but cannot.
fn can_run(what: &str) -> Result<bool> {
    let root = run_cmd("id", &["-u"]).is_ok_and(|u| u.trim() == "0");
    let tools: Vec<&str> = [
        "ip",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "curl",
        "setpriv",
    ]
    .into_iter()
    .filter(|t| Command::new(t).arg("--version").output().is_err())
    .collect();
    if root && tools.is_empty() {
        // The sidecars run as PROXY_UID: that user must be able to reach
        // the binary (not so when the target dir sits under /root).
        let bin = bin_path("keel-proxy", "keel-proxy");
        let out = command_as(None, Some(PROXY_UID), &bin)
            .arg("--version")
            .output()?;
        if out.status.success() {
            return Ok(true);
        }
        let why = format!(
            "uid {PROXY_UID} cannot run {} ({}): put CARGO_TARGET_DIR where every user can \
             read it",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return skip_unless_ci(what, &why);
    }
    let why = format!(
        "needs root (have root: {root}) and ip, iptables, iptables-save, iptables-restore, curl, setpriv (missing: {tools:?})"
    );
    skip_unless_ci(what, &why)
}

/// The network: the node namespace with its bridge, the pod namespaces and
/// their hosts files. Everything is deleted on drop, also after a failure
/// half-way through `create`.
struct Net {
    /// `keel-pods-PID`: the prefix of every name, so parallel runs differ.
    tag: String,
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    /// Whether `/etc/netns` was created by this run (removed if empty).
    made_etc_netns: bool,
}

impl Net {
    fn create() -> Result<Self> {
        sweep_stale();
        let mut net = Self {
            tag: format!("keel-pods-{}", std::process::id()),
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            made_etc_netns: !Path::new("/etc/netns").exists(),
        };
        let node = net.add_namespace("node")?;
        let ip_n = |args: &[&str]| -> Result<String> {
            let mut all = vec!["-n", node.as_str()];
            all.extend_from_slice(args);
            run_cmd("ip", &all)
        };
        ip_n(&["link", "add", "br0", "type", "bridge"])?;
        ip_n(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"])?;
        ip_n(&["link", "set", "br0", "up"])?;
        // The node routes nothing beyond the bridge: with forwarding on, a
        // packet for a VIP that no sidecar captured is answered "network
        // unreachable" at once instead of vanishing.
        net.exec("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;

        let hosts = format!(
            "127.0.0.1 localhost\n{PRODUCTPAGE_VIP} productpage productpage.default \
             productpage.default.svc.cluster.local\n{REVIEWS_VIP} reviews reviews.default {REVIEWS}\n"
        );
        for (i, pod) in PODS.iter().enumerate() {
            // Written before the namespace exists, so `ip netns exec` always
            // finds it.
            let dir = Path::new("/etc/netns").join(net.ns(pod.name));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            net.etc_dirs.push(dir.clone());
            std::fs::write(dir.join("hosts"), &hosts)?;
            let ns = net.add_namespace(pod.name)?;
            let veth = format!("veth{i}");
            ip_n(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip_n(&["link", "set", &veth, "master", "br0", "up"])?;
            let ip_p = |args: &[&str]| -> Result<String> {
                let mut all = vec!["-n", ns.as_str()];
                all.extend_from_slice(args);
                run_cmd("ip", &all)
            };
            ip_p(&["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"])?;
            ip_p(&["link", "set", "eth0", "up"])?;
            ip_p(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        }
        Ok(net)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    fn add_namespace(&mut self, name: &str) -> Result<String> {
        let ns = self.ns(name);
        run_cmd("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run_cmd("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `args` in namespace `name` (as root), failing on a non-zero exit.
    fn exec(&self, name: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(name);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run_cmd("ip", &all)
    }

    /// Runs `bin args` in namespace `name` as `uid` (root if `None`).
    fn output_as(&self, name: &str, uid: Option<u32>, bin: &Path, args: &[&str]) -> Result<Output> {
        let ns = self.ns(name);
        let mut cmd = command_as(Some(&ns), uid, bin);
        cmd.args(args);
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    /// `keel-proxy init ARGS` in pod `name` as `uid`.
    fn init(&self, name: &str, uid: Option<u32>, args: &[&str]) -> Result<Output> {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        self.output_as(name, uid, &bin_path("keel-proxy", "keel-proxy"), &all)
    }

    /// The rules of the pod's nat table (iptables-save without its
    /// timestamped comments).
    fn nat_rules(&self, name: &str) -> Result<String> {
        let save = self.exec(name, &["iptables-save", "-t", "nat"])?;
        Ok(save
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// `curl` in pod `name` as `uid`: `Ok` with the answer, `Err` when no
    /// HTTP answer came (curl's message).
    fn curl(&self, name: &str, uid: Option<u32>, url: &str, headers: &[&str]) -> Result<Answer> {
        let mut args = vec!["-sS", "-i", "--connect-timeout", "3", "--max-time", "10"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(url);
        let out = self.output_as(name, uid, Path::new("curl"), &args)?;
        if !out.status.success() {
            bail!(
                "curl {url} in {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Answer::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// A sidecar's Prometheus text, fetched inside its pod.
    fn stats(&self, name: &str) -> Result<String> {
        let a = self.curl(name, None, "http://127.0.0.1:15090/stats/prometheus", &[])?;
        ensure!(a.status == 200, "stats of {name}: {a:?}");
        Ok(a.body)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run_cmd("ip", &["netns", "del", ns]) {
                eprintln!("cleanup: {e:#}");
            }
        }
        for dir in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.made_etc_netns {
            // Only if empty: a parallel run may be using it.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// Deletes what runs killed before their drop left behind: `keel-pods-PID-*`
/// namespaces and hosts directories whose PID is no longer running.
fn sweep_stale() {
    let Ok(list) = run_cmd("ip", &["netns", "list"]) else {
        return;
    };
    let mut stale: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if let Ok(dirs) = std::fs::read_dir("/etc/netns") {
        stale.extend(
            dirs.flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned()),
        );
    }
    for name in stale {
        let Some(pid) = name
            .strip_prefix("keel-pods-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = run_cmd("ip", &["netns", "del", &name]);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
    }
}

/// An HTTP answer as `curl -i` prints it.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn parse(raw: &str) -> Result<Self> {
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .with_context(|| format!("no end of headers in {raw:?}"))?;
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line in {raw:?}"))?;
        Ok(Self {
            status,
            body: body.to_string(),
        })
    }

    fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {self:?}"))
    }
}

/// The sum of the `istio_requests_total` series having every label in `labels`.
fn requests(stats: &str, labels: &[&str]) -> f64 {
    stats
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn mesh_yaml() -> String {
    let mut yaml = String::new();
    for (name, vip) in [("productpage", PRODUCTPAGE_VIP), ("reviews", REVIEWS_VIP)] {
        yaml += &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: {name}}}
  ports: [{{name: http, port: 9080, targetPort: 9080}}]
---
"
        );
    }
    for pod in &PODS {
        yaml += &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}, version: {version}}}}}
spec:
  serviceAccountName: bookinfo-{app}
  containers: [{{name: app, image: keel-echo}}]
status: {{podIP: {ip}, phase: Running}}
---
",
            name = pod.name,
            app = pod.app,
            version = pod.version,
            ip = pod.ip,
        );
    }
    // Jason gets v1, everyone else v2.
    yaml += "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v2}}]
";
    yaml
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pods_reach_each_other_through_both_sidecars() -> Result<()> {
    if !can_run("the pods test")? {
        return Ok(());
    }
    let net = Net::create()?;
    let node = net.ns("node");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml())?;
    let pilot = spawn_pilot_on(Some(&node), NODE_IP.into(), dir.path(), &[])?;

    let uid = PROXY_UID.to_string();
    let mut running = Vec::new();
    for pod in &PODS {
        let init = net.init(pod.name, None, &["--proxy-uid", &uid])?;
        ensure!(
            init.status.success(),
            "init in {}: {}",
            pod.name,
            stderr_of(&init)
        );
        let ns = net.ns(pod.name);
        let labels = format!("app={},version={}", pod.app, pod.version);
        let sa = format!("bookinfo-{}", pod.app);
        let proxy = spawn_proxy_as(
            Some(&ns),
            Some(PROXY_UID),
            pilot.xds_addr,
            &[
                "--outbound-addr",
                "127.0.0.1:15001",
                "--inbound-addr",
                "0.0.0.0:15006",
                "--admin-addr",
                "127.0.0.1:15000",
                "--stats-addr",
                "0.0.0.0:15090",
                "--ready-addr",
                "0.0.0.0:15021",
                "--namespace",
                "default",
                "--pod-name",
                pod.name,
                "--pod-ip",
                pod.ip,
                "--labels",
                &labels,
                "--service-account",
                &sa,
                "--concurrency",
                "1",
            ],
        )?;
        let mut args = vec!["--name", pod.name, "--version", pod.version];
        if pod.app == "productpage" {
            args.extend(["--downstream", "http://reviews:9080/reviews/0"]);
        }
        let echo = spawn_echo_in(Some(&ns), "0.0.0.0:9080", &args, &[])?;
        running.push((proxy, echo));
    }

    // init again: the same rules, once (it removes its own first).
    let again = net.init("productpage-v1", None, &["--proxy-uid", &uid])?;
    ensure!(again.status.success(), "second init: {}", stderr_of(&again));
    let rules = net.nat_rules("productpage-v1")?;
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j KEEL_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules
            .matches("-A PREROUTING -p tcp -j KEEL_INBOUND")
            .count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules.matches("--uid-owner 1337 -j RETURN").count(),
        1,
        "{rules}"
    );

    for pod in &PODS {
        assert!(
            wait_until(Duration::from_secs(20), || net
                .curl(pod.name, None, "http://127.0.0.1:15021/healthz/ready", &[])
                .is_ok_and(|a| a.status == 200)),
            "the sidecar of {} never became ready",
            pod.name
        );
    }
    // Pilot accepted the config and no sidecar NACKed it.
    let metrics = net.exec(
        "node",
        &[
            "curl",
            "-sS",
            &format!("http://{}/metrics", pilot.http_addr),
        ],
    )?;
    for family in ["pilot_config_rejected_files", "pilot_total_xds_rejects"] {
        let bad = nonzero_samples(&metrics, family);
        assert!(bad.is_empty(), "{family}: {bad:?}");
    }

    // 1. The productpage pod calls reviews by name, plain HTTP, no proxy
    // configured: captured, routed by the VirtualService to v2, and
    // received by reviews' inbound sidecar, which connects to the app from
    // the pod's own IP (a direct call would come from 10.244.0.10).
    let a = net.curl("productpage-v1", None, "http://reviews:9080/reviews/1", &[])?;
    assert_eq!(a.status, 200, "{a:?}");
    let j = a.json()?;
    assert_eq!(j["name"], "reviews-v2", "{j}");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http", "{j}");
    assert!(
        j["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|id| id.len() >= 32),
        "{j}"
    );
    assert!(
        j["remote_addr"]
            .as_str()
            .is_some_and(|r| r.starts_with("10.244.0.22:")),
        "{j}"
    );
    let a = net.curl(
        "productpage-v1",
        None,
        "http://reviews:9080/reviews/1",
        &["end-user: jason"],
    )?;
    assert_eq!(a.json()?["name"], "reviews-v1", "{a:?}");

    // 2. From outside the mesh (the node) to productpage's pod IP: its
    // inbound sidecar takes it, and the app's own downstream call to
    // http://reviews:9080 leaves through its outbound sidecar, the request
    // id travelling along.
    for (header, want) in [
        (None, "reviews-v2"),
        (None, "reviews-v2"),
        (Some("end-user: jason"), "reviews-v1"),
        (None, "reviews-v2"),
    ] {
        let mut args = vec!["curl", "-sS", "--max-time", "10"];
        if let Some(h) = header {
            args.extend(["-H", h]);
        }
        args.push("http://10.244.0.10:9080/productpage");
        let body = net.exec("node", &args)?;
        let j: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("productpage said {body}"))?;
        assert_eq!(j["name"], "productpage-v1", "{j}");
        assert!(
            j["remote_addr"]
                .as_str()
                .is_some_and(|r| r.starts_with("10.244.0.10:")),
            "{j}"
        );
        let down = &j["downstream"][0];
        assert_eq!(down["status"], 200, "{j}");
        assert_eq!(down["body"]["name"], want, "{j}");
        assert_eq!(
            down["body"]["headers"]["x-request-id"], j["headers"]["x-request-id"],
            "the request id did not travel: {j}"
        );
    }

    // Both sidecars of each hop counted it: source side in productpage's,
    // destination side in each reviews pod's.
    let product = net.stats("productpage-v1")?;
    let source_v2 = [
        "reporter=\"source\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "destination_version=\"v2\"",
        "response_code=\"200\"",
    ];
    let source_v1 = [
        "reporter=\"source\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "destination_version=\"v1\"",
        "response_code=\"200\"",
    ];
    assert_eq!(requests(&product, &source_v2), 4.0, "{product}");
    assert_eq!(requests(&product, &source_v1), 2.0, "{product}");
    assert_eq!(
        requests(
            &product,
            &["reporter=\"destination\"", "response_code=\"200\""]
        ),
        4.0,
        "{product}"
    );
    let dest = ["reporter=\"destination\"", "response_code=\"200\""];
    assert_eq!(requests(&net.stats("reviews-v2")?, &dest), 4.0);
    assert_eq!(requests(&net.stats("reviews-v1")?, &dest), 2.0);

    // 3. The proxy's own uid is never captured: the same call by name as
    // uid 1337 is not redirected, so the VIP (which nothing serves) is
    // unreachable ...
    let e = net.curl(
        "productpage-v1",
        Some(PROXY_UID),
        "http://reviews:9080/reviews/1",
        &[],
    );
    assert!(e.is_err(), "uid {PROXY_UID} was captured: {e:?}");
    // ... and a call to a pod IP goes out untouched: productpage's sidecar
    // does not see it, reviews' inbound sidecar does.
    let a = net.curl(
        "productpage-v1",
        Some(PROXY_UID),
        "http://10.244.0.22:9080/direct",
        &[],
    )?;
    assert_eq!(a.json()?["name"], "reviews-v2", "{a:?}");
    let product = net.stats("productpage-v1")?;
    assert_eq!(
        requests(&product, &["reporter=\"source\""]),
        6.0,
        "{product}"
    );
    assert_eq!(requests(&net.stats("reviews-v2")?, &dest), 5.0);

    // 4. An app calling its own pod IP goes over lo, straight to itself
    // (as in Istio): its sidecar counts nothing.
    let before = requests(&net.stats("reviews-v1")?, &[]);
    let a = net.curl("reviews-v1", None, "http://10.244.0.21:9080/self", &[])?;
    assert_eq!(a.json()?["name"], "reviews-v1", "{a:?}");
    assert_eq!(requests(&net.stats("reviews-v1")?, &[]), before);

    // 5. A bad flag, or no privileges: an error naming what is wrong, and
    // the rules stay as they were.
    let rules = net.nat_rules("reviews-v1")?;
    let bad = net.init(
        "reviews-v1",
        None,
        &[
            "--proxy-uid",
            &uid,
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,10.0.0.300/8",
        ],
    )?;
    assert_eq!(bad.status.code(), Some(1), "{}", stderr_of(&bad));
    assert!(
        stderr_of(&bad).contains("--exclude-outbound-cidrs \"10.0.0.300/8\""),
        "{}",
        stderr_of(&bad)
    );
    let unprivileged = net.init("reviews-v1", Some(PROXY_UID), &["--cleanup"])?;
    assert!(!unprivileged.status.success());
    assert!(
        stderr_of(&unprivileged).contains("needs CAP_NET_ADMIN"),
        "{}",
        stderr_of(&unprivileged)
    );
    assert_eq!(net.nat_rules("reviews-v1")?, rules);

    // 6. --cleanup removes every KEEL_ chain and jump: calls by name are no
    // longer captured.
    let clean = net.init("productpage-v1", None, &["--cleanup"])?;
    ensure!(clean.status.success(), "cleanup: {}", stderr_of(&clean));
    let rules = net.nat_rules("productpage-v1")?;
    assert!(!rules.contains("KEEL_"), "{rules}");
    let e = net.curl("productpage-v1", None, "http://reviews:9080/reviews/1", &[]);
    assert!(e.is_err(), "still captured after --cleanup: {e:?}");
    drop(running);
    Ok(())
}

/// `keel-proxy init` refuses bad flags and says what is missing, without a
/// pod and without changing anything: it runs on any machine (as root it
/// drops to uid 1337 to show the privilege error).
#[test]
fn init_says_what_is_wrong_before_touching_anything() -> Result<()> {
    let bin = bin_path("keel-proxy", "keel-proxy");
    let init = |env_path: Option<&str>, args: &[&str]| -> Result<Output> {
        let mut cmd = Command::new(&bin);
        cmd.arg("init").args(args);
        if let Some(p) = env_path {
            cmd.env("PATH", p);
        }
        Ok(cmd.output()?)
    };
    let out = init(
        None,
        &[
            "--proxy-uid",
            "1337",
            "--include-inbound-ports",
            "9080,http",
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("--include-inbound-ports \"http\": is not a TCP port"),
        "{}",
        stderr_of(&out)
    );
    let out = init(
        None,
        &["--proxy-uid", "1337", "--include-outbound-cidrs", "::/0"],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("IPv6"), "{}", stderr_of(&out));

    let out = init(
        None,
        &[
            "--proxy-uid",
            "1337",
            "--dry-run",
            "--exclude-outbound-ports",
            "3306",
        ],
    )?;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "*nat",
        "-A KEEL_OUTPUT -p tcp --dport 3306 -j RETURN",
        "-A KEEL_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A KEEL_INBOUND -p tcp --dport 15090 -j RETURN",
        "-A OUTPUT -p tcp -j KEEL_OUTPUT",
        "COMMIT",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    let out = init(Some("/nonexistent"), &["--proxy-uid", "1337"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("needs iptables-save on PATH"),
        "{}",
        stderr_of(&out)
    );

    let root = run_cmd("id", &["-u"]).is_ok_and(|u| u.trim() == "0");
    let out = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("setpriv (util-linux) is needed under CI");
            }
            eprintln!("skipping the privilege check: no setpriv to drop root with");
            return Ok(());
        }
        let mut cmd = command_as(None, Some(PROXY_UID), &bin);
        cmd.args(["init", "--proxy-uid", "1337"]);
        cmd.output()?
    } else {
        init(None, &["--proxy-uid", "1337"])?
    };
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains(
            "keel-proxy init needs CAP_NET_ADMIN (run as root or in an init container with NET_ADMIN)"
        ),
        "{}",
        stderr_of(&out)
    );

    let help = Command::new(&bin).arg("--help").output()?;
    assert!(String::from_utf8_lossy(&help.stdout).contains("keel-proxy init --help"));
    Ok(())
}
