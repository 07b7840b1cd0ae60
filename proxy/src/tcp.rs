//! TCP forwarding: connect to an endpoint of a cluster (or the original
//! destination) and splice bytes both ways, counting them into the
//! `istio_tcp_*` metrics as they flow. Also carries `CONNECT` tunnels,
//! WebSocket upgrades and TLS passthrough (a TLS connection is opaque TCP
//! here; its SNI only chose the chain).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::balance::PickRequest;
use crate::http::authority_port;
use crate::listen::chain::{self, Sniffed};
use crate::metrics::TcpRecorder;
use crate::metrics::labels::flags;
use crate::router;
use crate::state::cluster::Discovery;
use crate::state::listener::{ChainAction, HttpManager, RouteSource};
use crate::state::route::Action;
use crate::upstream::pool::connect;
use crate::upstream::{Plane, Snapshot, is_self};

/// Copy buffer per direction.
const BUF: usize = 16 * 1024;

/// Copies `down` ⇄ `up` until both directions end; bytes from `down` count
/// as received, bytes to it as sent. Each side's end of stream is passed
/// on as a write shutdown, so half-closed protocols work.
pub async fn splice<D, U>(down: D, up: U, rec: &TcpRecorder) -> std::io::Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut dr, mut dw) = tokio::io::split(down);
    let (mut ur, mut uw) = tokio::io::split(up);
    let to_up = copy(&mut dr, &mut uw, |n| rec.received(n));
    let to_down = copy(&mut ur, &mut dw, |n| rec.sent(n));
    let (a, b) = tokio::join!(to_up, to_down);
    a.and(b)
}

async fn copy<R, W, F>(r: &mut R, w: &mut W, count: F) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: Fn(u64),
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = w.shutdown().await;
                return Err(e);
            }
        };
        w.write_all(&buf[..n]).await?;
        count(n as u64);
    }
    w.shutdown().await
}

/// Forwards `down` (from `peer`, accepted on `local`) to `cluster`;
/// original-destination clusters connect to `dst`.
pub async fn proxy<S>(
    plane: &Plane,
    snap: &Snapshot,
    down: S,
    peer: SocketAddr,
    local: SocketAddr,
    cluster: &str,
    dst: Option<SocketAddr>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(upstream) = snap.upstreams.get(cluster) else {
        let rec = plane.metrics().tcp(
            plane.unrouted(false).peer().clone(),
            flags::NO_CLUSTER_FOUND,
        );
        tracing::info!(code = flags::NO_CLUSTER_FOUND, %peer, "TCP: unknown cluster {cluster:?}");
        drop(rec);
        return;
    };
    let c = &upstream.cluster;
    let picked = match &c.discovery {
        Discovery::OriginalDst => match dst {
            Some(d) if !is_self(d, local) => Ok((d, upstream.unknown.peer().clone(), None)),
            Some(d) => Err(format!("{d} is this listener itself")),
            None => Err("no original destination".to_string()),
        },
        Discovery::StrictDns { hosts } if !hosts.is_empty() => {
            let (h, p) = &hosts[fastrand::usize(..hosts.len())];
            lookup(h, *p)
                .await
                .map(|a| (a, upstream.unknown.peer().clone(), None))
        }
        Discovery::LogicalDns { host, port } => lookup(host, *port)
            .await
            .map(|a| (a, upstream.unknown.peer().clone(), None)),
        _ => {
            let hash = crate::balance::hash_key(peer.ip().to_string().as_bytes());
            match upstream.balancer.pick(&PickRequest {
                hash: Some(hash),
                exclude: &[],
            }) {
                Some(p) => {
                    let peer_labels = upstream
                        .hosts
                        .get(&p.addr)
                        .map_or_else(|| upstream.unknown.peer().clone(), |h| h.peer().clone());
                    Ok((p.addr, peer_labels, Some(p)))
                }
                None => Err(format!(
                    "no healthy endpoint ({} known)",
                    upstream.balancer.len()
                )),
            }
        }
    };
    let (addr, labels, _inflight) = match picked {
        Ok(p) => p,
        Err(why) => {
            let _rec = plane
                .metrics()
                .tcp(upstream.unknown.peer().clone(), flags::NO_HEALTHY_UPSTREAM);
            tracing::info!(code = flags::NO_HEALTHY_UPSTREAM, %peer, cluster, "TCP: {why}");
            return;
        }
    };
    let mut rec = plane.metrics().tcp(labels, flags::NONE);
    let up = match connect(addr, c.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            rec.set_close_flags(flags::UPSTREAM_CONNECTION_FAILURE);
            tracing::info!(code = flags::UPSTREAM_CONNECTION_FAILURE, %peer, cluster, "TCP: {e}");
            return;
        }
    };
    if let Err(e) = splice(down, up, &rec).await {
        tracing::debug!(%peer, %addr, cluster, error = %e, "TCP connection ended with an error");
    }
}

async fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host}:{port} resolved to no address")),
        Err(e) => Err(format!("resolving {host}:{port}: {e}")),
    }
}

/// Where a `CONNECT host:port` goes: a cluster of the mesh (and, for an IP
/// target, that address as the original destination), or `(None, None)`
/// when the mesh does not know the target (the caller resolves it).
pub fn connect_target(snap: &Snapshot, target: &str) -> (Option<String>, Option<SocketAddr>) {
    let port = authority_port(target, 443);
    let host = match target.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => target,
    };
    let ip_dst = host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port));
    let listener = match ip_dst {
        Some(d) => snap.outbound_listener(d),
        None => snap.by_port.get(&port),
    };
    if let Some(l) = listener {
        match chain::select(l, Some(port), &Sniffed::tcp()).map(|c| &c.action) {
            Some(ChainAction::Tcp { cluster, .. }) => return (Some(cluster.clone()), ip_dst),
            _ => {
                if let Some(cluster) = http_cluster(snap, l, port, target, host) {
                    return (Some(cluster), ip_dst);
                }
            }
        }
    }
    if let Some(d) = ip_dst {
        return (None, Some(d));
    }
    // A TCP service is keyed by its VIP; find it by its cluster name.
    let prefix = format!("outbound|{port}||");
    let found = snap.upstreams.keys().find(|name| {
        name.strip_prefix(&prefix).is_some_and(|fqdn| {
            fqdn == host || fqdn.strip_prefix(host).is_some_and(|r| r.starts_with('.'))
        })
    });
    (found.cloned(), None)
}

/// The cluster the first forwarding route of `host`'s virtual host picks.
fn http_cluster(
    snap: &Snapshot,
    l: &crate::state::Listener,
    port: u16,
    target: &str,
    host: &str,
) -> Option<String> {
    let chain = chain::select(l, Some(port), &Sniffed::http(false))?;
    let ChainAction::Http(HttpManager { routes, .. }) = &chain.action else {
        return None;
    };
    let table = match routes {
        RouteSource::Rds(name) => snap.state.routes.get(name).cloned(),
        RouteSource::Inline(t) => Some(Arc::clone(t)),
    }?;
    let vh = table
        .virtual_host(target)
        .or_else(|| table.virtual_host(host))?;
    vh.routes.iter().find_map(|r| match &r.action {
        Action::Forward(f) => Some(router::pick_cluster_random(f).name.clone()),
        _ => None,
    })
}
