//! keel-citadel as a user runs it: a real process on loopback, a bootstrap
//! token from `keel-citadel token`, CSRs over Istio's gRPC API with TLS,
//! chains checked with `openssl verify`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_proto::istio::v1::auth::IstioCertificateRequest;
use keel_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_keel-citadel");

/// A running keel-citadel, killed on drop.
struct Citadel {
    child: Child,
    grpc: SocketAddr,
    monitoring: SocketAddr,
    root: PathBuf,
}

impl Drop for Citadel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Citadel {
    fn start(state: &Path, extra: &[&str]) -> Citadel {
        let mut child = Command::new(BIN)
            .arg("--state-dir")
            .arg(state)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--monitoring-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel-citadel");
        // Its log goes to the test's output (shown when a test fails).
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[keel-citadel] {line}");
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the ready line");
        let rest = line
            .trim()
            .strip_prefix("keel-citadel ready: ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let field = |k: &str| {
            rest.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
                .to_string()
        };
        Citadel {
            grpc: field("grpc").parse().expect("grpc addr"),
            monitoring: field("monitoring").parse().expect("monitoring addr"),
            root: PathBuf::from(field("root")),
            child,
        }
    }

    fn root_pem(&self) -> String {
        std::fs::read_to_string(&self.root).expect("root")
    }

    async fn client(&self, identity: Option<Identity>) -> IstioCertificateServiceClient<Channel> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.root_pem()))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        let channel = Channel::from_shared(format!("https://localhost:{}", self.grpc.port()))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect to citadel");
        IstioCertificateServiceClient::new(channel)
    }

    fn metrics(&self) -> String {
        let mut s = std::net::TcpStream::connect(self.monitoring).expect("monitoring");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .expect("number")
}

fn token(state: &Path, ns: &str, sa: &str, ttl: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--state-dir"])
        .arg(state)
        .args(["--namespace", ns, "--service-account", sa, "--ttl", ttl])
        .output()
        .expect("run keel-citadel token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// A key and a PEM CSR asking for `uri`.
fn csr(uri: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, pem)
}

fn request(csr: String, ttl: i64, bearer: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = bearer {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("metadata"),
        );
    }
    req
}

/// `openssl verify` of `leaf` against `root` (with `untrusted`
/// intermediates); its output when it fails.
fn openssl_verify(dir: &Path, root: &str, chain: &[String]) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let root = write("verify-root.pem", root);
    let leaf = write("verify-leaf.pem", &chain[0]);
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&root);
    if chain.len() > 2 {
        let untrusted = write("verify-untrusted.pem", &chain[1..chain.len() - 1].concat());
        cmd.arg("-untrusted").arg(untrusted);
    }
    let out = cmd.arg(&leaf).output().expect("run openssl verify");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The URI SANs and lifetime of a PEM certificate.
fn inspect(pem: &str) -> (Vec<String>, Duration, bool) {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = p.parse_x509().expect("x509");
    let uris = cert
        .subject_alternative_name()
        .expect("san")
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let v = cert.validity();
    let life = Duration::from_secs(
        u64::try_from(v.not_after.timestamp() - v.not_before.timestamp()).expect("positive"),
    );
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .map(|e| e.value.server_auth && e.value.client_auth)
        .unwrap_or(false);
    (uris, life, eku)
}

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

#[tokio::test]
async fn a_token_gets_its_identity_and_nothing_else() {
    let state = tempfile::tempdir().expect("tempdir");
    let citadel = Citadel::start(state.path(), &[]);
    let tok = token(state.path(), "default", "reviews", "1h");
    let mut client = citadel.client(None).await;

    // The token's own identity: a chain leaf → root, verified by openssl,
    // with the SPIFFE URI, serverAuth+clientAuth, 24 h by default.
    let (key, pem) = csr(REVIEWS);
    let chain = client
        .create_certificate(request(pem, 0, Some(&tok)))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1].trim(), citadel.root_pem().trim(), "root last");
    openssl_verify(state.path(), &citadel.root_pem(), &chain).expect("openssl verify");
    let (uris, life, eku) = inspect(&chain[0]);
    assert_eq!(uris, [REVIEWS]);
    assert!(eku, "serverAuth and clientAuth");
    assert_eq!(
        life,
        Duration::from_secs(24 * 3600 + 60),
        "24 h, backdated a minute"
    );

    // A requested lifetime is honoured.
    let (_, pem) = csr(REVIEWS);
    let chain = client
        .create_certificate(request(pem, 600, Some(&tok)))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    assert_eq!(inspect(&chain[0]).1, Duration::from_secs(660));

    // Another identity than the token's: PERMISSION_DENIED, saying both.
    let (_, pem) = csr("spiffe://cluster.local/ns/default/sa/admin");
    let err = client
        .create_certificate(request(pem, 0, Some(&tok)))
        .await
        .expect_err("another identity");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("sa/admin") && err.message().contains("sa/reviews"),
        "{}",
        err.message()
    );

    // Expired, forged, foreign and missing tokens: UNAUTHENTICATED.
    let expired = token(state.path(), "default", "reviews", "0s");
    let parts: Vec<&str> = tok.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        expired.split('.').nth(1).expect("claims"),
        parts[2]
    );
    let other_state = tempfile::tempdir().expect("tempdir");
    let foreign = token(other_state.path(), "default", "reviews", "1h");
    for (t, why) in [
        (Some(expired.as_str()), "expired"),
        (Some(forged.as_str()), "signature"),
        (Some(foreign.as_str()), "signature"),
        (Some("not-a-token"), "malformed"),
        (None, "no credential"),
    ] {
        let (_, pem) = csr(REVIEWS);
        let err = client
            .create_certificate(request(pem, 0, t))
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::Unauthenticated, "{why}: {err:?}");
        assert!(err.message().contains(why), "{why}: {}", err.message());
    }

    // A CSR that does not parse: INVALID_ARGUMENT.
    let err = client
        .create_certificate(request(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
            0,
            Some(&tok),
        ))
        .await
        .expect_err("bad csr");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Renewal over mTLS with the certificate just issued, no token.
    let identity = Identity::from_pem(chain_of(&citadel, &tok, &key).await, key.serialize_pem());
    let mut mtls = citadel.client(Some(identity)).await;
    let (_, pem) = csr(REVIEWS);
    let renewed = mtls
        .create_certificate(request(pem, 0, None))
        .await
        .expect("renewed with the client certificate")
        .into_inner()
        .cert_chain;
    assert_eq!(inspect(&renewed[0]).0, [REVIEWS]);
    let (_, pem) = csr("spiffe://cluster.local/ns/default/sa/admin");
    let err = mtls
        .create_certificate(request(pem, 0, None))
        .await
        .expect_err("a certificate does not renew into another identity");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The counters say what happened.
    let m = citadel.metrics();
    assert_eq!(
        metric(&m, "citadel_server_success_cert_issuance_count"),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "citadel_server_authentication_failure_count"),
        5.0
    );
    assert_eq!(metric(&m, "citadel_server_id_extraction_err_count"), 2.0);
    assert_eq!(metric(&m, "citadel_server_csr_parsing_err_count"), 1.0);
    assert_eq!(metric(&m, "citadel_server_csr_count"), 12.0);
    let left = metric(&m, "citadel_server_root_cert_expiry_seconds");
    assert!(left > 9.9 * 365.0 * 86400.0, "root expires in {left} s");
}

/// A fresh leaf for `key` (PEM chain without the root).
async fn chain_of(citadel: &Citadel, tok: &str, key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(REVIEWS.try_into().expect("uri"))];
    let pem = params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem");
    let chain = citadel
        .client(None)
        .await
        .create_certificate(request(pem, 0, Some(tok)))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    chain[..chain.len() - 1].concat()
}

#[tokio::test]
async fn a_restart_keeps_the_root_and_the_token_key() {
    let state = tempfile::tempdir().expect("tempdir");
    let tok = token(state.path(), "prod", "api", "1h");
    let first = Citadel::start(state.path(), &["--max-workload-cert-ttl", "2h"]);
    let root = first.root_pem();
    drop(first);
    let second = Citadel::start(state.path(), &["--max-workload-cert-ttl", "2h"]);
    assert_eq!(second.root_pem(), root, "the same root after a restart");
    let (_, pem) = csr("spiffe://cluster.local/ns/prod/sa/api");
    let chain = second
        .client(None)
        .await
        .create_certificate(request(pem, 10 * 3600, Some(&tok)))
        .await
        .expect("a token from before the restart still works")
        .into_inner()
        .cert_chain;
    openssl_verify(state.path(), &root, &chain).expect("verifies against the old root");
    assert_eq!(
        inspect(&chain[0]).1,
        Duration::from_secs(2 * 3600 + 60),
        "10 h asked, capped to --max-workload-cert-ttl"
    );
}

#[tokio::test]
async fn a_plugged_in_intermediate_signs_and_is_sent_with_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("cacerts");
    std::fs::create_dir_all(&ca_dir).expect("mkdir");
    // An offline root and an intermediate for this cluster, as an operator
    // makes them with openssl.
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&ca_dir)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout root-key.pem \
        -out root-cert.pem -days 3650 -subj '/O=Example/CN=Offline Root' \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -out ca.csr \
        -subj '/O=Example/CN=Cluster 1 Intermediate' 2>/dev/null
        printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\\n' > ext.cnf
        openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
        -out ca-cert.pem -days 730 -extfile ext.cnf 2>/dev/null
        cp ca-cert.pem cert-chain.pem");
    let p = |f: &str| ca_dir.join(f).display().to_string();
    let state = dir.path().join("state");
    let citadel = Citadel::start(
        &state,
        &[
            "--ca-cert",
            &p("ca-cert.pem"),
            "--ca-key",
            &p("ca-key.pem"),
            "--cert-chain",
            &p("cert-chain.pem"),
            "--root-cert",
            &p("root-cert.pem"),
        ],
    );
    let tok = token(&state, "default", "reviews", "1h");
    let (_, pem) = csr(REVIEWS);
    let chain = citadel
        .client(None)
        .await
        .create_certificate(request(pem, 0, Some(&tok)))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    let root = std::fs::read_to_string(ca_dir.join("root-cert.pem")).expect("root");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[2].trim(), root.trim());
    openssl_verify(dir.path(), &root, &chain).expect("verifies through the intermediate");
    let m = citadel.metrics();
    let chain_left = metric(&m, "citadel_server_cert_chain_expiry_seconds");
    assert!(
        (729.0 * 86400.0..=731.0 * 86400.0).contains(&chain_left),
        "the intermediate's expiry, {chain_left} s"
    );

    // A key that is not the certificate's: citadel refuses to start and
    // names the file.
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--monitoring-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--ca-cert",
            &p("ca-cert.pem"),
            "--ca-key",
            &p("root-key.pem"),
        ])
        .args(["--root-cert", &p("root-cert.pem")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ca-cert.pem") && err.contains("does not match the private key"),
        "{err}"
    );
}
