//! The HTTP echo handler: answers HTTP/1.1 and HTTP/2 requests with a JSON
//! description of the workload (name, version) and of the request it saw
//! (method, path, query, host, protocol, headers, peer, body size, and the
//! answers of `--downstream` calls), plus `x-echo-name`/`x-echo-version`
//! response headers. It owns the per-request knobs (`x-echo-status`,
//! `x-echo-delay-ms`, `x-echo-fail-percent`, `?size=N`), `/healthz`, and a
//! byte echo on upgraded (WebSocket) connections. gRPC is not handled here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tracing::debug;

use crate::{Peer, Shared, downstream};

/// The largest body `?size=N` produces.
const MAX_SIZE: usize = 64 << 20;

/// Answers one non-gRPC request.
pub async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Response<tonic::body::Body> {
    let config = &shared.config;
    if req.uri().path() == "/healthz" {
        return reply(
            &shared,
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"ok"),
        );
    }
    if req.headers().contains_key(header::UPGRADE) && req.version() == Version::HTTP_11 {
        return upgrade(&shared, &mut req);
    }

    let protocol = protocol(req.version());
    let remote_addr = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    let body_bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(err) => {
            debug!("reading the request body failed: {err}");
            return reply(
                &shared,
                StatusCode::BAD_REQUEST,
                "text/plain",
                Bytes::from(format!("reading the request body failed: {err}\n")),
            );
        }
    };
    let headers = &parts.headers;

    let delay = header_u64(headers, "x-echo-delay-ms")
        .map(Duration::from_millis)
        .unwrap_or(config.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fail_percent = header_f64(headers, "x-echo-fail-percent").unwrap_or(config.fail_percent);
    if shared.roll(fail_percent) {
        let body = json!({
            "name": config.name,
            "version": config.version,
            "error": format!("keel-echo: injected failure ({fail_percent}% of requests)"),
        });
        return reply_json(&shared, StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let status = header_u64(headers, "x-echo-status")
        .filter(|s| (200..600).contains(s))
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);

    let query = parts.uri.query().unwrap_or_default();
    if let Some(size) = query_param(query, "size").and_then(|s| s.parse::<usize>().ok()) {
        let body = Bytes::from(vec![b'a'; size.min(MAX_SIZE)]);
        return reply(&shared, status, "application/octet-stream", body);
    }

    let downstream = downstream::call_all(&shared, headers).await;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let body = json!({
        "name": config.name,
        "version": config.version,
        "hostname": config.hostname,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": query,
        "host": host,
        "protocol": protocol,
        "headers": headers_json(headers),
        "remote_addr": remote_addr,
        "body_bytes": body_bytes,
        "downstream": downstream,
    });
    debug!(
        method = %parts.method,
        path = parts.uri.path(),
        protocol,
        status = status.as_u16(),
        "request"
    );
    reply_json(&shared, status, &body)
}

/// Answers an `Upgrade` request with 101 and echoes the bytes of the
/// upgraded connection back to the client.
fn upgrade(shared: &Shared, req: &mut Request<Incoming>) -> Response<tonic::body::Body> {
    let protocol = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
                match tokio::io::copy(&mut rd, &mut wr).await {
                    Ok(n) => debug!(bytes = n, "upgraded connection closed"),
                    Err(err) => debug!("upgraded connection failed: {err}"),
                }
            }
            Err(err) => debug!("upgrade failed: {err}"),
        }
    });
    let mut resp = reply(shared, StatusCode::SWITCHING_PROTOCOLS, "", Bytes::new());
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp
}

fn reply_json(shared: &Shared, status: StatusCode, body: &Value) -> Response<tonic::body::Body> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    reply(shared, status, "application/json", Bytes::from(bytes))
}

fn reply(
    shared: &Shared,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<tonic::body::Body> {
    let mut resp = Response::new(tonic::body::Body::new(Full::new(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if !content_type.is_empty() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    for (name, value) in [
        ("x-echo-name", &shared.config.name),
        ("x-echo-version", &shared.config.version),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    resp
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// Request headers as a JSON object; repeated headers are joined with ",".
pub fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.insert(name.as_str().to_string(), Value::String(joined));
    }
    out
}

pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_f64(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The first value of `key` in a query string (no percent-decoding).
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}
