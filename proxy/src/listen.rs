//! Listeners: accept connections, find where each was going, detect its
//! protocol, choose the filter chain and hand the connection to HTTP or
//! TCP forwarding.
//!
//! A sidecar binds two ports from its flags, whatever address pilot gives
//! the capture listeners: outbound (`virtualOutbound`, 15001) and inbound
//! (`virtualInbound`, 15006). A connection redirected there by iptables
//! carries its original destination (`SO_ORIGINAL_DST`), which selects the
//! outbound listener (`10.96.0.30_3306`, else `0.0.0.0_9080`) or the
//! inbound chain. A connection that was not redirected (an app using the
//! proxy through `HTTP_PROXY`, or a request addressed to the listener with
//! a `Host` header) is routed per request by its authority's port. A
//! gateway (router mode) binds every listener pilot marks `bind_to_port`,
//! following LDS as it changes.

pub mod chain;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::detect::{self, Detected};
use crate::drain;
use crate::http::access_log::AccessLog;
use crate::http::{self, ConnCtx, Role};
use crate::metrics::DetectionResult;
use crate::metrics::labels::flags;
use crate::orig_dst;
use crate::state::listener::{ChainAction, HttpManager, Listener};
use crate::tcp;
use crate::upstream::{Plane, is_self};
use chain::Sniffed;

/// How long a connection accepted before the first configuration waits
/// for it before being closed.
const CONFIG_WAIT: Duration = Duration::from_secs(10);

/// What every connection needs.
#[derive(Clone, Debug)]
pub struct DataPath {
    /// The data plane.
    pub plane: Arc<Plane>,
    /// The access log, when on.
    pub access_log: Option<AccessLog>,
    /// How long protocol detection may wait for a silent client.
    pub detect_timeout: Duration,
    /// Request body bytes kept so a request can be retried.
    pub retry_buffer: usize,
}

/// Accepts on `listener` in `role` until `drain` fires.
pub async fn serve(dp: DataPath, listener: TcpListener, role: Role, mut drain: drain::Watch) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = drain.signaled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let dp = dp.clone();
                let role = role.clone();
                let drain = drain.clone();
                tokio::spawn(async move { connection(dp, stream, peer, role, drain).await });
            }
            Err(e) => {
                // Out of descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    dp: DataPath,
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    drain: drain::Watch,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    if !dp.plane.is_ready() && !wait_ready(&dp.plane).await {
        tracing::warn!(code = flags::NOT_READY, %peer, "closing a connection: no configuration from pilot yet");
        return;
    }
    let orig_dst = match role {
        Role::Outbound | Role::Inbound => orig_dst::original_dst(&stream)
            .ok()
            .filter(|d| !is_self(*d, local)),
        Role::Gateway(_) => None,
    };
    let detection = detect::detect(&stream, dp.detect_timeout).await;
    let result = match &detection.protocol {
        Detected::Http1 { .. } => DetectionResult::Http1,
        Detected::Http2 => DetectionResult::Http2,
        Detected::Tls { .. } => DetectionResult::Tls,
        Detected::Tcp { reason } if reason.contains("timeout") => DetectionResult::Timeout,
        Detected::Tcp { .. } => DetectionResult::Tcp,
    };
    dp.plane
        .metrics()
        .record_protocol_detection(result, detection.elapsed);

    let snap = dp.plane.snapshot();
    let (listener, dst_port): (Option<&Arc<Listener>>, Option<u16>) = match &role {
        Role::Outbound => match orig_dst {
            Some(d) => (
                snap.outbound_listener(d)
                    .or_else(|| snap.listener("virtualOutbound")),
                Some(d.port()),
            ),
            None => (None, None),
        },
        Role::Inbound => (snap.listener("virtualInbound"), orig_dst.map(|d| d.port())),
        Role::Gateway(name) => (snap.listener(name), Some(local.port())),
    };
    let (sniffed, http_h2) = match &detection.protocol {
        Detected::Http1 { .. } => (Sniffed::http(false), Some(false)),
        Detected::Http2 => (Sniffed::http(true), Some(true)),
        Detected::Tls { sni, alpn } => (
            Sniffed {
                tls: true,
                sni: sni.as_deref(),
                alpn: alpn.iter().map(String::as_str).collect(),
            },
            None,
        ),
        Detected::Tcp { .. } => (Sniffed::tcp(), None),
    };
    let chain = listener.and_then(|l| dst_port.and_then(|p| chain::select(l, Some(p), &sniffed)));

    match (chain.map(|c| &c.action), http_h2) {
        (Some(ChainAction::Tcp { cluster, .. }), _) => {
            if chain.is_some_and(|c| c.tls.is_some()) {
                tracing::info!(
                    code = flags::NO_ROUTE_FOUND,
                    %peer,
                    "TLS termination is not supported yet; closing"
                );
                return;
            }
            let cluster = cluster.clone();
            tcp::proxy(&dp.plane, &snap, stream, peer, local, &cluster, orig_dst).await;
        }
        (Some(ChainAction::Http(HttpManager { routes, .. })), Some(h2)) => {
            let routes = Some(routes.clone());
            drop(snap);
            serve_http(&dp, stream, drain, role, peer, local, orig_dst, routes, h2).await;
        }
        (None, Some(h2)) if dst_port.is_none() || matches!(role, Role::Inbound) => {
            // Not redirected (explicit proxy, Host-addressed): per request.
            drop(snap);
            serve_http(&dp, stream, drain, role, peer, local, orig_dst, None, h2).await;
        }
        (_, _)
            if matches!(
                detection.protocol,
                Detected::Tcp {
                    reason: "client closed before sending"
                }
            ) && dst_port.is_none() =>
        {
            // A port probe (health checkers, load generators): nothing to
            // route and nothing to report.
            tracing::debug!(%peer, "client closed before sending anything");
        }
        (chosen, _) => {
            let what = match (&detection.protocol, chosen) {
                (_, Some(ChainAction::Http(_))) => "an HTTP chain matched a non-HTTP connection",
                (Detected::Tls { .. }, None) => "no filter chain for this TLS connection",
                _ => "no filter chain for this connection",
            };
            let _rec = dp.plane.metrics().tcp(
                dp.plane
                    .unrouted(matches!(role, Role::Inbound))
                    .peer()
                    .clone(),
                flags::NO_ROUTE_FOUND,
            );
            tracing::info!(
                code = flags::NO_ROUTE_FOUND,
                %peer,
                orig_dst = ?orig_dst,
                listener = listener.map(|l| l.name.as_str()),
                "{what}; closing"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_http(
    dp: &DataPath,
    stream: TcpStream,
    drain: drain::Watch,
    role: Role,
    peer: SocketAddr,
    local: SocketAddr,
    orig_dst: Option<SocketAddr>,
    routes: Option<crate::state::listener::RouteSource>,
    h2: bool,
) {
    let ctx = ConnCtx {
        plane: Arc::clone(&dp.plane),
        access_log: dp.access_log.clone(),
        role,
        peer,
        local,
        orig_dst,
        routes,
        h2,
        retry_buffer: dp.retry_buffer,
        route_memo: std::sync::Mutex::default(),
    };
    http::serve(Arc::new(ctx), stream, drain).await;
}

async fn wait_ready(plane: &Plane) -> bool {
    let deadline = tokio::time::Instant::now() + CONFIG_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if plane.is_ready() {
            return true;
        }
    }
    false
}

/// Router mode: binds every listener pilot marks `bind_to_port` and keeps
/// the bound set equal to LDS (a removed listener stops accepting; its
/// connections finish). Bind failures are logged and retried on the next
/// change.
pub async fn gateways(dp: DataPath, mut drain: drain::Watch) {
    let mut bound: HashMap<String, (SocketAddr, drain::Drain)> = HashMap::new();
    let mut last: Option<Arc<crate::state::ProxyState>> = None;
    loop {
        let snap = dp.plane.snapshot();
        if last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &snap.state)) {
            last = Some(Arc::clone(&snap.state));
            let wanted: HashMap<&String, SocketAddr> = snap
                .state
                .listeners
                .iter()
                .filter(|(n, l)| l.bind_to_port && !n.starts_with("virtual"))
                .map(|(n, l)| (n, l.address))
                .collect();
            let gone: Vec<String> = bound
                .iter()
                .filter(|(n, (addr, _))| wanted.get(n) != Some(addr))
                .map(|(n, _)| n.clone())
                .collect();
            for name in gone {
                if let Some((addr, d)) = bound.remove(&name) {
                    tracing::info!(listener = %name, %addr, "listener removed; draining it");
                    tokio::spawn(d.drain(Duration::from_secs(30)));
                }
            }
            for (name, addr) in wanted {
                if bound.contains_key(name) {
                    continue;
                }
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        tracing::info!(listener = %name, %addr, "listening");
                        let (d, w) = drain::channel();
                        let parent = drain.clone();
                        let role = Role::Gateway(name.clone());
                        tokio::spawn(serve_until(dp.clone(), l, role, w, parent));
                        bound.insert(name.clone(), (addr, d));
                    }
                    Err(e) => {
                        tracing::warn!(listener = %name, %addr, error = %e, "cannot bind listener");
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = drain.signaled() => break,
        }
    }
    // Drain the gateway listeners' connections; the proxy's drain waits
    // for these tasks through the watch each one holds.
    for (_, (_, d)) in bound {
        let hold = drain.clone();
        tokio::spawn(async move {
            d.drain(Duration::from_secs(3600)).await;
            drop(hold);
        });
    }
}

/// Serves until the listener's own drain or the proxy's fires.
async fn serve_until(
    dp: DataPath,
    listener: TcpListener,
    role: Role,
    own: drain::Watch,
    mut parent: drain::Watch,
) {
    let mut own_signal = own.clone();
    tokio::select! {
        () = serve(dp, listener, role, own) => {}
        () = parent.signaled() => {}
        () = own_signal.signaled() => {}
    }
}
