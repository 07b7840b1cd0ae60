//! Detection over real loopback sockets.
//!
//! The ClientHello is built by hand ([`tls::build_client_hello`]): rustls is
//! not a workspace dependency yet, and the parser only reads the record
//! framing, SNI and ALPN, which the hand-built hello lays out exactly as a
//! TLS 1.3 client does.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const SNI: &str = "reviews.default.svc.cluster.local";
const GENEROUS: Duration = Duration::from_secs(5);

/// A connected (client, server) pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

/// Sends `bytes` in one write and runs detection on the server side.
async fn detect_sent(bytes: &[u8], timeout: Duration) -> (Detection, TcpStream, TcpStream) {
    let (mut client, server) = pair().await;
    client.write_all(bytes).await.unwrap();
    let d = detect(&server, timeout).await;
    eprintln!("{:?} detected in {:?}", d.protocol, d.elapsed);
    (d, client, server)
}

/// Asserts the server can still read exactly `expected` (peek consumed
/// nothing).
async fn assert_all_readable(server: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn tls_client_hello_yields_sni_and_alpn() {
    let hello = tls::build_client_hello(Some(SNI), &["h2", "http/1.1"]);
    let (d, _client, mut server) = detect_sent(&hello, GENEROUS).await;
    assert_eq!(
        d.protocol,
        Detected::Tls {
            sni: Some(SNI.into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
        }
    );
    assert_all_readable(&mut server, &hello).await;
}

#[tokio::test]
async fn tls_client_hello_split_across_writes() {
    let hello = tls::build_client_hello(Some(SNI), &["h2"]);
    let (mut client, mut server) = pair().await;
    let (head, tail) = hello.split_at(40);
    client.write_all(head).await.unwrap();
    let tail = tail.to_vec();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(&tail).await.unwrap();
        client
    });
    let d = detect(&server, GENEROUS).await;
    eprintln!("split ClientHello detected in {:?}", d.elapsed);
    assert!(matches!(&d.protocol, Detected::Tls { sni: Some(s), .. } if s == SNI));
    let _client = writer.await.unwrap();
    assert_all_readable(&mut server, &hello).await;
}

#[tokio::test]
async fn http2_prior_knowledge_preface() {
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS frame
    let (d, _client, mut server) = detect_sent(&bytes, GENEROUS).await;
    assert_eq!(d.protocol, Detected::Http2);
    assert_all_readable(&mut server, &bytes).await;
}

#[tokio::test]
async fn http1_origin_form() {
    let req = b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n";
    let (d, _client, mut server) = detect_sent(req, GENEROUS).await;
    assert_eq!(
        d.protocol,
        Detected::Http1 {
            method: "GET".into(),
            authority: None,
            connect: false,
        }
    );
    assert_all_readable(&mut server, req).await;
}

#[tokio::test]
async fn http1_connect_is_an_explicit_proxy_tunnel() {
    let req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let (d, _client, _server) = detect_sent(req, GENEROUS).await;
    assert_eq!(
        d.protocol,
        Detected::Http1 {
            method: "CONNECT".into(),
            authority: Some("example.com:443".into()),
            connect: true,
        }
    );
}

#[tokio::test]
async fn http1_absolute_form_names_the_host() {
    let req = b"GET http://reviews:9080/x HTTP/1.1\r\nHost: reviews:9080\r\n\r\n";
    let (d, _client, _server) = detect_sent(req, GENEROUS).await;
    assert_eq!(
        d.protocol,
        Detected::Http1 {
            method: "GET".into(),
            authority: Some("reviews:9080".into()),
            connect: false,
        }
    );
}

#[tokio::test]
async fn silent_client_is_tcp_after_the_timeout() {
    // Server-speaks-first protocols (MySQL, SMTP): the client waits.
    let (_client, server) = pair().await;
    let d = detect(&server, DEFAULT_TIMEOUT).await;
    eprintln!("silent client: {:?} after {:?}", d.protocol, d.elapsed);
    assert!(matches!(d.protocol, Detected::Tcp { .. }));
    assert!(
        d.elapsed >= Duration::from_millis(90) && d.elapsed <= Duration::from_millis(500),
        "took {:?}",
        d.elapsed
    );
}

#[tokio::test]
async fn binary_first_bytes_are_tcp_at_once() {
    // A MySQL-style packet header (3-byte length, sequence id) and a few
    // protocol bytes.
    let bytes = [0x4a, 0x00, 0x00, 0x01, 0x85, 0xa6, 0xff, 0x01];
    let (d, _client, mut server) = detect_sent(&bytes, GENEROUS).await;
    assert!(matches!(d.protocol, Detected::Tcp { .. }));
    assert!(
        d.elapsed < Duration::from_millis(20),
        "took {:?}",
        d.elapsed
    );
    assert_all_readable(&mut server, &bytes).await;

    let (d, _client, _server) = detect_sent(&[0x00, 0x01], GENEROUS).await;
    assert_eq!(
        d.protocol,
        Detected::Tcp {
            reason: "first bytes match no known protocol"
        }
    );
    assert!(
        d.elapsed < Duration::from_millis(20),
        "took {:?}",
        d.elapsed
    );
}

/// Writes `bytes` one at a time with a pause between, so each arrives as its
/// own segment.
async fn trickle(mut client: TcpStream, bytes: Vec<u8>) -> TcpStream {
    for b in bytes {
        client.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    client
}

#[tokio::test]
async fn one_byte_chunks_are_still_detected() {
    type Check = fn(&Detected) -> bool;
    let cases: Vec<(Vec<u8>, Check)> = vec![
        (
            b"GET http://reviews:9080/x HTTP/1.1\r\n\r\n".to_vec(),
            |d| matches!(d, Detected::Http1 { authority: Some(a), .. } if a == "reviews:9080"),
        ),
        (H2_PREFACE.to_vec(), |d| *d == Detected::Http2),
        (
            tls::build_client_hello(Some(SNI), &["h2"]),
            |d| matches!(d, Detected::Tls { sni: Some(s), .. } if s == SNI),
        ),
    ];
    for (bytes, check) in cases {
        let (client, mut server) = pair().await;
        let writer = tokio::spawn(trickle(client, bytes.clone()));
        let d = detect(&server, GENEROUS).await;
        eprintln!("1-byte chunks: {:?} in {:?}", d.protocol, d.elapsed);
        assert!(check(&d.protocol), "{:?}", d.protocol);
        let _client = writer.await.unwrap();
        assert_all_readable(&mut server, &bytes).await;
    }
}

#[tokio::test]
async fn single_ambiguous_byte_waits_for_more() {
    // "G" could begin GET: detection must not decide on it alone.
    let (mut client, server) = pair().await;
    client.write_all(b"G").await.unwrap();
    let d = detect(&server, Duration::from_millis(50)).await;
    assert!(matches!(d.protocol, Detected::Tcp { reason } if reason.contains("timeout")));
}

#[tokio::test]
async fn close_mid_detection_is_tcp_without_waiting() {
    let (mut client, server) = pair().await;
    client.write_all(b"GE").await.unwrap();
    client.shutdown().await.unwrap();
    let d = detect(&server, GENEROUS).await;
    eprintln!("half-close: {:?} in {:?}", d.protocol, d.elapsed);
    assert!(matches!(d.protocol, Detected::Tcp { .. }));
    assert!(d.elapsed < Duration::from_secs(1), "took {:?}", d.elapsed);

    let (client, server) = pair().await;
    drop(client);
    let d = detect(&server, GENEROUS).await;
    assert!(matches!(d.protocol, Detected::Tcp { .. }));
    assert!(d.elapsed < Duration::from_secs(1), "took {:?}", d.elapsed);
}

#[test]
fn classify_decides_as_early_as_the_bytes_allow() {
    assert_eq!(classify(b""), None);
    assert_eq!(classify(b"G"), None);
    assert_eq!(classify(b"GET / HTTP/1."), None);
    assert!(matches!(
        classify(b"GET / HTTP/1.1"),
        Some(Detected::Http1 { .. })
    ));
    assert_eq!(classify(b"P"), None);
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
    assert!(matches!(
        classify(b"POST / HTTP/1.0\r\n"),
        Some(Detected::Http1 { .. })
    ));
    assert_eq!(classify(b"\x16\x03"), None);
    assert!(matches!(classify(b"\x16\x07"), Some(Detected::Tcp { .. })));
    assert!(matches!(classify(b"\xff"), Some(Detected::Tcp { .. })));
    assert!(matches!(classify(b"{\"a\""), Some(Detected::Tcp { .. })));
}

#[test]
fn classify_never_panics_on_random_input() {
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..50_000 {
        let len = rng.usize(0..200);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if let Some(b) = buf.first_mut() {
            *b = [0x16, b'P', b'G', b'C', *b][rng.usize(..5)];
        }
        let _ = classify(&buf);
    }
}
