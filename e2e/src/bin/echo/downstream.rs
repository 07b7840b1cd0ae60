//! Downstream calls: for each incoming HTTP request, keel-echo calls every
//! `--downstream` URL (concurrently, HTTP/1.1) and reports what each
//! answered. With `HTTP_PROXY` set (and the host not in `NO_PROXY`) the call
//! goes to the proxy as an absolute-form request (`GET http://host/path
//! HTTP/1.1`), as curl does, so an app can join the mesh in explicit proxy
//! mode. Tracing and identity headers (`x-request-id`, `end-user`, B3,
//! W3C trace context) are copied from the incoming request. It owns no
//! connection pool: each call opens a fresh connection.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tracing::debug;

use crate::Shared;
use crate::config::Proxy;

/// How long one downstream call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Non-JSON downstream bodies are cut to this many bytes in the report.
const MAX_TEXT_BODY: usize = 4096;

/// Headers copied from the incoming request to downstream calls, besides
/// every `x-b3-*` header.
const PROPAGATED: &[&str] = &[
    "x-request-id",
    "end-user",
    "b3",
    "traceparent",
    "tracestate",
    "x-ot-span-context",
    "x-cloud-trace-context",
];

/// Calls every configured downstream URL and returns one report each:
/// `{"url", "status", "body"}`, or `{"url", "status": null, "error"}`.
pub async fn call_all(shared: &Shared, incoming: &HeaderMap) -> Vec<Value> {
    let config = &shared.config;
    let propagated = propagated_headers(incoming);
    let calls = config.downstream.iter().map(|url| {
        let propagated = propagated.clone();
        async move {
            let result =
                tokio::time::timeout(CALL_TIMEOUT, call(url, config.proxy.as_ref(), propagated))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timed out after {CALL_TIMEOUT:?}")));
            match result {
                Ok((status, body)) => json!({
                    "url": url.to_string(),
                    "status": status.as_u16(),
                    "body": body_json(&body),
                }),
                Err(err) => {
                    debug!(%url, "downstream call failed: {err:#}");
                    json!({ "url": url.to_string(), "status": null, "error": format!("{err:#}") })
                }
            }
        }
    });
    futures::future::join_all(calls).await
}

/// One GET to `url`, directly or through `proxy`.
async fn call(url: &Uri, proxy: Option<&Proxy>, headers: HeaderMap) -> Result<(StatusCode, Bytes)> {
    let host = url.host().context("the URL has no host")?;
    let authority = url.authority().context("the URL has no host")?.as_str();
    let port = url.port_u16().unwrap_or(80);
    let (connect_to, target) = match proxy.filter(|p| p.applies_to(host)) {
        Some(proxy) => (proxy.authority.clone(), url.clone()),
        None => {
            let origin = url
                .path_and_query()
                .map(|pq| pq.as_str())
                .filter(|pq| !pq.is_empty())
                .unwrap_or("/");
            (format!("{host}:{port}"), origin.parse::<Uri>()?)
        }
    };
    let stream = TcpStream::connect(&connect_to)
        .await
        .with_context(|| format!("connecting to {connect_to}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {connect_to}"))?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!("downstream connection failed: {err}");
        }
    });
    let mut req = Request::get(target).body(Empty::<Bytes>::new())?;
    *req.headers_mut() = headers;
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_str(authority)?);
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("sending the request to {connect_to}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer from {connect_to}"))?
        .to_bytes();
    Ok((status, body))
}

fn propagated_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        let name_str = name.as_str();
        if PROPAGATED.contains(&name_str) || name_str.starts_with("x-b3-") {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A downstream body as JSON when it parses, else as (truncated) text.
fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_TEXT_BODY)]);
        Value::String(text.into_owned())
    })
}
