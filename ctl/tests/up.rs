//! `keelctl up` started as a new user would (from the workspace root, the
//! default config in `examples/bookinfo/`): everything comes up, the printed
//! `curl` is answered by productpage through the ingress gateway and the
//! sidecars, and Ctrl-C stops every process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `GET url` (http://host:port/path): status and body.
fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_once('/').expect("a path");
    let mut s = TcpStream::connect(authority).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked or not, the JSON object is between the outer braces.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    (status, body[start..end].to_string())
}

#[test]
fn up_runs_bookinfo_answers_the_printed_curl_and_stops_on_ctrl_c() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .arg("up")
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("keelctl starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut printed = Vec::new();
    let curl = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!(
                "no curl line within 240 s; keelctl printed:\n{}",
                printed.join("\n")
            );
        };
        printed.push(line.clone());
        if let Some(url) = line.strip_prefix("curl -s ") {
            break url.trim().to_string();
        }
    };
    // The table names every process with its PID.
    let pids: Vec<u32> = printed
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(pids.len() >= 14, "{}", printed.join("\n"));

    for _ in 0..5 {
        let (status, body) = get(&curl);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("keel-echo's JSON");
        assert_eq!(v["name"], "productpage-v1", "{body}");
        let calls = v["downstream"].as_array().expect("productpage's calls");
        assert_eq!(calls.len(), 2, "{body}");
        assert_eq!(calls[0]["status"], 200, "{body}");
        assert_eq!(calls[0]["body"]["name"], "details-v1", "{body}");
        assert_eq!(calls[1]["status"], 200, "{body}");
        // The canary sends reviews to v1 (90%) or v3, which calls ratings.
        let reviews = &calls[1]["body"];
        match reviews["name"].as_str() {
            Some("reviews-v1") => {}
            Some("reviews-v3") => {
                assert_eq!(
                    reviews["downstream"][0]["body"]["name"], "ratings-v1",
                    "{body}"
                );
            }
            other => panic!("reviews answered by {other:?}: {body}"),
        }
        // The sidecars added Envoy's request headers on the way.
        assert!(
            calls[0]["body"]["headers"]["x-request-id"].is_string(),
            "{body}"
        );
    }

    // Ctrl-C: everything stops, keelctl exits 0.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let stop_by = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < stop_by,
            "keelctl did not stop within 30 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "keelctl exited with {status}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} is still running after keelctl stopped"
        );
    }
}
