//! One request: find its route table and route, then answer directly,
//! redirect, or forward to an endpoint of the chosen cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;

use super::access_log::{Entry, rfc3339};
use super::body::{Completion, Counted, Observed};
use super::error::{self, ErrorCode};
use super::{Body, ConnCtx, Role, cors, full, is_grpc, retry};
use crate::balance::{InFlight, Outcome, PickRequest};
use crate::listen::chain;
use crate::metrics::labels::{RequestOutcome, flags};
use crate::router::{self, RequestInfo};
use crate::state::cluster::{Discovery, LbPolicy, UpstreamProtocol};
use crate::state::listener::{ChainAction, HttpManager, RouteSource};
use crate::state::route::{
    Action, Forward, Mirror, RetryOn, RetryPolicy, Route, RouteTable, VirtualHost,
};
use crate::tcp;
use crate::upstream::pool::{ConnLimits, SendError};
use crate::upstream::{Active, Host, Snapshot, Upstream, is_self};

/// Hop-by-hop headers, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// A downstream request body: hyper's (HTTP/1.1) or Keel's HTTP/2 server's.
pub(super) trait ReqBody:
    hyper::body::Body<Data = bytes::Bytes, Error: Into<super::BoxError>> + Send + Unpin + 'static
{
}

impl<B> ReqBody for B where
    B: hyper::body::Body<Data = bytes::Bytes, Error: Into<super::BoxError>>
        + Send
        + Unpin
        + 'static
{
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// Why a retriable response was not retried (e.g. `request_body_too_large`).
const X_KEEL_RETRY_SKIPPED: HeaderName = HeaderName::from_static("x-keel-retry-skipped");

/// What the handler carries from the request to its completion record.
struct Ctx<'a> {
    conn: &'a ConnCtx,
    start: Instant,
    grpc: bool,
    request_bytes: Arc<AtomicU64>,
    /// Boxed: it is large, and only there when access logging is on.
    log: Option<Box<Entry>>,
    /// Counts the request as active on its endpoint (least request).
    inflight: Option<InFlight>,
    /// Counts the request against its cluster's circuit breakers.
    active: Option<Active>,
}

pub(super) async fn handle<B>(conn: Arc<ConnCtx>, req: Request<B>) -> Response<Body>
where
    B: ReqBody,
{
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let header_bytes = header_size(req.headers()) + req.uri().path().len() as u64 + 16;
    let mut ctx = Ctx {
        conn: &conn,
        start,
        grpc,
        request_bytes: Arc::new(AtomicU64::new(header_bytes)),
        log: conn
            .access_log
            .as_ref()
            .map(|_| Box::new(entry(&conn, &req))),
        inflight: None,
        active: None,
    };
    let snap = conn.plane.snapshot();
    if req.method() == Method::CONNECT {
        return connect_tunnel(&mut ctx, snap, req);
    }
    let authority = authority_of(&req).to_ascii_lowercase();
    let Some(table) = route_table(&conn, &snap, &authority) else {
        let detail = format!("no listener routes HTTP for {authority:?}");
        return proxy_error(&mut ctx, None, ErrorCode::NoRoute, &detail);
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let scheme = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
        "https"
    } else {
        "http"
    };
    let info = RequestInfo {
        method: req.method(),
        scheme,
        authority: &authority,
        path_and_query: &path_and_query,
        headers: req.headers(),
        source_ip: conn.peer.ip(),
    };
    let Some((vh, route)) = router::select_route(&table, &info) else {
        let detail = format!(
            "route table {:?} has no route for {authority:?} {path_and_query}",
            table.name
        );
        return proxy_error(&mut ctx, None, ErrorCode::NoRoute, &detail);
    };
    if let Some(e) = ctx.log.as_mut() {
        e.route_name = route.name.clone();
    }
    let cors = route
        .cors
        .as_ref()
        .and_then(|c| cors::allowed_origin(c, req.headers()).map(|origin| (c, origin)));
    if let Some((c, origin)) = &cors
        && cors::is_preflight(req.method(), req.headers())
    {
        return local_response(&mut ctx, cors::preflight(c, origin.clone()), flags::NONE);
    }
    let mut resp = match &route.action {
        Action::Direct { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let mut resp = Response::new(body.clone().map_or_else(super::empty, full));
            *resp.status_mut() = status;
            router::apply_headers(
                resp.headers_mut(),
                &[&route.response_headers, &vh.response_headers],
            );
            local_response(&mut ctx, resp, flags::NONE)
        }
        Action::Redirect(r) => {
            let (status, location) = router::redirect(r, route, &info);
            let mut resp = Response::new(super::empty());
            *resp.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            router::apply_headers(
                resp.headers_mut(),
                &[&route.response_headers, &vh.response_headers],
            );
            local_response(&mut ctx, resp, flags::NONE)
        }
        Action::Forward(fwd) => {
            let hash = router::request_hash(&fwd.hash_policies, &info);
            // Boxed: the forwarding future is large, and the request's
            // future is moved (into hyper's slot, an HTTP/2 stream's) before
            // it runs. Bound before the await, so the unboxed future is not
            // kept in this one's state as a temporary of the await.
            let f = Box::pin(forward(ctx, &snap, vh, route, fwd, req, authority, hash));
            f.await
        }
    };
    if let Some((c, origin)) = cors {
        cors::decorate(c, origin, resp.headers_mut());
    }
    resp
}

/// The authority a request addresses: the URI's (absolute-form, HTTP/2),
/// else the `Host` header.
fn authority_of<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The route table for a request: the one the connection's chain names,
/// or (explicit proxy, `Host`-addressed, unredirected inbound) the one of
/// the listener serving the authority's port. Remembered per connection
/// while the snapshot stays the same (`super::RouteMemo`).
fn route_table(conn: &ConnCtx, snap: &Arc<Snapshot>, authority: &str) -> Option<Arc<RouteTable>> {
    let port = match conn.routes {
        Some(_) => 0,
        None => super::authority_port(authority, 80),
    };
    let mut memo = conn
        .route_memo
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(m) = memo.as_ref()
        && m.port == port
        && std::ptr::eq(m.snap.as_ptr(), Arc::as_ptr(snap))
    {
        return Some(Arc::clone(&m.table));
    }
    let table = find_route_table(conn, snap, port)?;
    *memo = Some(super::RouteMemo {
        snap: Arc::downgrade(snap),
        port,
        table: Arc::clone(&table),
    });
    Some(table)
}

fn find_route_table(conn: &ConnCtx, snap: &Snapshot, port: u16) -> Option<Arc<RouteTable>> {
    let source = match &conn.routes {
        Some(s) => s.clone(),
        None => {
            let listener = match &conn.role {
                Role::Outbound => snap.by_port.get(&port)?,
                Role::Inbound => snap.listener("virtualInbound")?,
                Role::Gateway(name) => snap.listener(name)?,
            };
            let chain = chain::select(listener, Some(port), &chain::Sniffed::http(conn.h2))?;
            match &chain.action {
                ChainAction::Http(HttpManager { routes, .. }) => routes.clone(),
                ChainAction::Tcp { .. } => return None,
            }
        }
    };
    match source {
        RouteSource::Rds(name) => snap.state.routes.get(&name).cloned(),
        RouteSource::Inline(t) => Some(t),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward<B: ReqBody>(
    mut ctx: Ctx<'_>,
    snap: &Arc<Snapshot>,
    vh: &VirtualHost,
    route: &Route,
    fwd: &Forward,
    req: Request<B>,
    authority: String,
    hash: router::HashOutcome,
) -> Response<Body> {
    let wc = router::pick_cluster_random(fwd);
    let Some(upstream) = snap.upstreams.get(&wc.name) else {
        let detail = format!("route {:?} names unknown cluster {:?}", route.name, wc.name);
        return proxy_error(&mut ctx, None, ErrorCode::NoCluster, &detail);
    };
    // Fault injection comes first, as Envoy's fault filter runs before the
    // router: a delay, then maybe an abort.
    let mut fault_flags = flags::NONE;
    if let Some(f) = &route.fault {
        if let Some(d) = &f.delay
            && dice(d.fraction_ppm)
        {
            tokio::time::sleep(d.duration).await;
            fault_flags = flags::DELAY_INJECTED;
        }
        if let Some(a) = &f.abort
            && dice(a.fraction_ppm)
        {
            tracing::debug!(route = %route.name, status = ?a.status, "fault injection: aborted");
            let resp = error::fault_abort(a.status, ctx.grpc);
            return finish(ctx, &upstream.unknown, resp, flags::FAULT_INJECTED);
        }
    }
    let h2 = match upstream.cluster.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::UseDownstream => ctx.conn.h2,
    };
    match upstream.admit(h2) {
        Ok(mut a) => {
            if !h2 {
                upstream.connection_slot(&mut a).await;
            }
            ctx.active = Some(a);
        }
        Err(detail) => {
            return proxy_error(&mut ctx, Some(upstream), ErrorCode::Overflow, &detail);
        }
    }
    upstream.note_request();
    // Balanced clusters pick synchronously; the resolving kinds (original
    // destination, DNS) are boxed so their futures do not grow this one.
    let picked = match &upstream.cluster.discovery {
        Discovery::Eds { .. } | Discovery::Static(_) => balanced(upstream, hash.hash, &[]),
        _ => {
            let f = Box::pin(pick(&ctx, upstream, hash.hash, &authority, &[]));
            f.await
        }
    };
    let first = match picked {
        Ok(p) => p,
        Err((code, detail)) => return proxy_error(&mut ctx, Some(upstream), code, &detail),
    };

    let (mut parts, body) = req.into_parts();
    let upgrade = (!ctx.conn.h2 && parts.headers.contains_key(header::UPGRADE))
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers, upgrade.is_some());
    router::apply_headers(
        &mut headers,
        &[
            &wc.request_headers,
            &route.request_headers,
            &vh.request_headers,
        ],
    );
    prepare_headers(&mut headers);
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let rewritten_path = router::rewrite_path(route, fwd, original);
    let rewritten_authority = wc
        .host_rewrite
        .clone()
        .or_else(|| router::rewrite_authority(fwd, &headers, None));
    if let Some(e) = ctx.log.as_mut() {
        e.request_id = header_str(&headers, "x-request-id");
    }

    let uri = match (h2, rewritten_path) {
        // HTTP/1.1 goes out origin-form: an unrewritten origin-form URI is
        // reused as it came; an absolute-form one (explicit proxy) keeps
        // only its path, as hyper's client (upgrades) would send it whole.
        (false, None) if parts.uri.authority().is_none() => Ok(parts.uri.clone()),
        (false, None) => Uri::try_from(original).map_err(|_| ()),
        (false, Some(path)) => Uri::try_from(path).map_err(|_| ()),
        (true, path) => {
            let authority = rewritten_authority.as_deref().unwrap_or(&authority);
            let path = path.as_deref().unwrap_or(original);
            Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| ())
        }
    };
    let Ok(uri) = uri else {
        let detail = format!(
            "cannot form an upstream URI from {authority:?} {:?}",
            parts.uri
        );
        return proxy_error(&mut ctx, Some(upstream), ErrorCode::NoRoute, &detail);
    };
    if h2 {
        headers.remove(header::HOST);
    } else {
        // `Host` carries the authority: the rewritten one, else the
        // request's (an HTTP/2 or absolute-form request may have none).
        let host = match &rewritten_authority {
            Some(a) => HeaderValue::from_str(a).ok(),
            None if parts.uri.authority().is_some() || !headers.contains_key(header::HOST) => {
                HeaderValue::from_str(&authority).ok()
            }
            None => None,
        };
        if let Some(v) = host {
            headers.insert(header::HOST, v);
        }
    }
    // Upgrades are never retried: the connection becomes the tunnel.
    let policy = fwd
        .retry
        .as_ref()
        .filter(|p| p.num_retries > 0 && upgrade.is_none());
    let mirrors: Vec<&Mirror> = fwd
        .mirrors
        .iter()
        .filter(|m| dice(m.fraction_ppm))
        .collect();
    // An empty body (most requests) needs no counting and no replay buffer.
    let bodies = if hyper::body::Body::is_end_stream(&body) {
        Bodies::Empty
    } else {
        let counted = Counted::new(body, Arc::clone(&ctx.request_bytes))
            .map_err(super::BoxError::from)
            .boxed_unsync();
        if policy.is_some() || !mirrors.is_empty() {
            Bodies::Replay(retry::Replay::new(counted, ctx.conn.retry_buffer))
        } else {
            Bodies::Once(Some(counted))
        }
    };
    for m in mirrors {
        if let Some(body) = bodies.follower() {
            let shadow = Shadow {
                method: &parts.method,
                path: uri.path_and_query().map_or("/", |p| p.as_str()),
                headers: &headers,
                authority: rewritten_authority.as_deref().unwrap_or(&authority),
                timeout: fwd.timeout.unwrap_or(MIRROR_TIMEOUT),
            };
            shadow.send(&ctx, snap, m, body);
        }
    }
    let plan = Plan {
        upstream,
        h2,
        method: parts.method,
        uri,
        retriable_headers: policy
            .filter(|p| p.retry_on.contains(&RetryOn::RetriableHeaders))
            .map(|_| retry::retriable_header_names(&headers))
            .unwrap_or_default(),
        headers,
        bodies,
        policy,
        hash: hash.hash,
        authority: &authority,
        attempt_count: vh.include_attempt_count,
        upgrade: upgrade.is_some(),
        // The route timeout spans every attempt, as Envoy's does.
        deadline: fwd.timeout.map(|t| (tokio::time::Instant::now() + t, t)),
    };
    let attempted = attempts(&mut ctx, plan, first).await;
    let Attempted {
        outcome,
        host,
        exhausted,
        skipped,
    } = attempted;
    let cluster = &upstream.cluster;
    let mut resp = match outcome {
        Ok(r) => r,
        Err(AttemptError::Pick(code, detail)) => {
            return proxy_error(&mut ctx, Some(upstream), code, &detail);
        }
        Err(AttemptError::PerTryTimeout(addr, t)) => {
            let detail = format!(
                "no response from {addr} ({}) within the per-try timeout {t:?}",
                cluster.name
            );
            return proxy_error(&mut ctx, Some(upstream), ErrorCode::Timeout, &detail);
        }
        Err(AttemptError::RouteTimeout(t)) => {
            let detail = format!(
                "no response from {} within the route timeout {t:?}",
                cluster.name
            );
            return proxy_error(&mut ctx, Some(upstream), ErrorCode::Timeout, &detail);
        }
        Err(AttemptError::Send(e)) => {
            let code = if e.is_connect_failure() {
                ErrorCode::ConnectFailure
            } else {
                ErrorCode::UpstreamReset
            };
            let detail = format!("{} ({})", e, cluster.name);
            return proxy_error(&mut ctx, Some(upstream), code, &detail);
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        let peer = host.peer().clone();
        let metrics = ctx.conn.plane.metrics().clone();
        tokio::spawn(async move {
            match (down.await, up.await) {
                (Ok(d), Ok(u)) => {
                    let rec = metrics.tcp(peer, flags::NONE);
                    let _ = tcp::splice(
                        hyper_util::rt::TokioIo::new(d),
                        hyper_util::rt::TokioIo::new(u),
                        &rec,
                    )
                    .await;
                }
                (d, u) => tracing::debug!(
                    downstream_ok = d.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade did not complete"
                ),
            }
        });
    }

    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), upgraded);
    let headers = resp.headers_mut();
    router::apply_headers(
        headers,
        &[
            &wc.response_headers,
            &route.response_headers,
            &vh.response_headers,
        ],
    );
    if let Some(why) = skipped {
        headers.insert(X_KEEL_RETRY_SKIPPED, HeaderValue::from_static(why));
    }
    if let Some(c) = hash.set_cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    let flags = match skipped {
        _ if exhausted => flags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
        Some("retry_budget_exhausted" | "max_retries") => flags::UPSTREAM_OVERFLOW,
        _ => fault_flags,
    };
    finish(ctx, &host, resp, flags)
}

/// True with probability `ppm` parts per million.
fn dice(ppm: u32) -> bool {
    ppm >= 1_000_000 || fastrand::u32(..1_000_000) < ppm
}

/// The request body, as each attempt gets it.
enum Bodies {
    /// None: every attempt sends an empty body.
    Empty,
    /// No retries: the one attempt takes it.
    Once(Option<Body>),
    /// Kept for replay, up to the proxy's retry buffer.
    Replay(retry::Replay),
}

impl Bodies {
    fn next(&mut self) -> Body {
        match self {
            Self::Empty => super::empty(),
            Self::Once(b) => b.take().unwrap_or_else(super::empty),
            Self::Replay(r) => r.attempt(),
        }
    }

    fn replayable(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Once(_) => false,
            Self::Replay(r) => r.replayable(),
        }
    }

    /// A mirror's copy of the body (`None`: it cannot have one).
    fn follower(&self) -> Option<Body> {
        match self {
            Self::Empty => Some(super::empty()),
            Self::Once(_) => None,
            Self::Replay(r) => Some(r.follower()),
        }
    }
}

/// How long a mirrored request may take when its route sets no timeout.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A copy of a request for a mirror (Istio `mirror`/`mirrors`): sent on a
/// task of its own, its response read and dropped. It never delays or
/// fails the real request: its body only follows what the real request's
/// attempts read, and a copy that cannot be made whole is abandoned.
struct Shadow<'a> {
    method: &'a Method,
    /// The path (and query) the real request is sent with.
    path: &'a str,
    headers: &'a HeaderMap,
    /// The real request's authority; the copy's gets `-shadow` on its host.
    authority: &'a str,
    timeout: std::time::Duration,
}

impl Shadow<'_> {
    fn send(&self, ctx: &Ctx<'_>, snap: &Snapshot, mirror: &Mirror, body: Body) {
        let Some(upstream) = snap.upstreams.get(&mirror.cluster) else {
            tracing::debug!(cluster = %mirror.cluster, "mirror: no such cluster");
            return;
        };
        let picked = match &upstream.cluster.discovery {
            Discovery::Eds { .. } | Discovery::Static(_) => balanced(upstream, None, &[]),
            _ => Err((
                ErrorCode::NoHealthyUpstream,
                "not a balanced cluster".to_string(),
            )),
        };
        let (addr, host, inflight) = match picked {
            Ok(p) => p,
            Err((_, detail)) => {
                tracing::debug!(cluster = %mirror.cluster, "mirror: {detail}");
                return;
            }
        };
        let pool = match &host.pool {
            Some(p) => Arc::clone(p),
            None => ctx.conn.plane.pools().get(addr),
        };
        let h2 = match upstream.cluster.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::UseDownstream => ctx.conn.h2,
        };
        let authority = shadow_authority(self.authority);
        let uri = if h2 {
            Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(self.path)
                .build()
                .ok()
        } else {
            Uri::try_from(self.path).ok()
        };
        let (Some(uri), Ok(host_value)) = (uri, HeaderValue::from_str(&authority)) else {
            tracing::debug!(%authority, "mirror: cannot form the copy's URI");
            return;
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        *req.headers_mut() = self.headers.clone();
        if h2 {
            req.headers_mut().remove(header::HOST);
        } else {
            req.headers_mut().insert(header::HOST, host_value);
        }
        let limits = ConnLimits::from(&*upstream.cluster);
        let timeout = self.timeout;
        let cluster = mirror.cluster.clone();
        tokio::spawn(async move {
            let exchange = async {
                let resp = pool.send(req, h2, limits).await?;
                let status = resp.status();
                // Read to the end, so an HTTP/1.1 connection is reused.
                let _ = resp.into_body().collect().await;
                Ok::<_, SendError>(status)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(status)) => tracing::debug!(%cluster, %addr, %status, "mirrored"),
                Ok(Err(e)) => tracing::debug!(%cluster, %addr, error = %e, "mirror failed"),
                Err(_) => tracing::debug!(%cluster, %addr, ?timeout, "mirror timed out"),
            }
            drop(inflight);
        });
    }
}

/// `host-shadow[:port]`, as Envoy names a mirrored request's authority.
fn shadow_authority(authority: &str) -> String {
    let (host, port) = match authority.rsplit_once(':') {
        // A bare IPv6 address: no port to keep apart.
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, ""),
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, &authority[h.len()..]),
        _ => (authority, ""),
    };
    format!("{host}-shadow{port}")
}

/// What every attempt of one request shares.
struct Plan<'a> {
    upstream: &'a Arc<Upstream>,
    h2: bool,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    bodies: Bodies,
    /// The retry policy, when the request may be retried.
    policy: Option<&'a RetryPolicy>,
    /// `x-envoy-retriable-header-names` (only for `retriable-headers`).
    retriable_headers: Vec<String>,
    hash: Option<u64>,
    authority: &'a str,
    /// Send `x-envoy-attempt-count`.
    attempt_count: bool,
    /// The request asks for an upgrade (never retried; sent by hyper).
    upgrade: bool,
    /// When the route timeout expires, and the timeout.
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
}

/// What bounds an attempt: the route timeout or the per-try one (the
/// earlier; the route's on a tie).
#[derive(Clone, Copy)]
enum Limit {
    Route(std::time::Duration),
    PerTry(std::time::Duration),
}

/// Why the last attempt got no response.
enum AttemptError {
    /// No endpoint to send a retry to.
    Pick(ErrorCode, String),
    /// Sending or the exchange failed.
    Send(SendError),
    /// The per-try timeout expired at this endpoint.
    PerTryTimeout(SocketAddr, std::time::Duration),
    /// The route timeout expired (no further attempt).
    RouteTimeout(std::time::Duration),
}

/// The last attempt's outcome.
struct Attempted {
    outcome: Result<Response<Body>, AttemptError>,
    /// The endpoint it went to (for telemetry).
    host: Host,
    /// It was retriable, but no attempt was left.
    exhausted: bool,
    /// Why it was not retried although retriable (`x-keel-retry-skipped`).
    skipped: Option<&'static str>,
}

/// Sends the request, and again while the retry policy says so: each
/// retry after a jittered back-off, to another endpoint when there is one.
async fn attempts(
    ctx: &mut Ctx<'_>,
    mut plan: Plan<'_>,
    first: (SocketAddr, Host, Option<InFlight>),
) -> Attempted {
    let upstream = plan.upstream;
    let cluster = &upstream.cluster;
    let mut next = Some(first);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    // Counts the retry in flight against the cluster's retry limits.
    let mut _retry_token = None;
    loop {
        attempt += 1;
        let (addr, host, inflight) = match next.take() {
            Some(p) => p,
            None => {
                let avoid = plan.policy.is_some_and(|p| p.avoid_previous_hosts);
                let exclude = if avoid { &tried[..] } else { &[] };
                let picked = match &cluster.discovery {
                    Discovery::Eds { .. } | Discovery::Static(_) => {
                        // Envoy's previous-hosts predicate: another endpoint
                        // when one is left, else any.
                        balanced(upstream, plan.hash, exclude)
                            .or_else(|_| balanced(upstream, plan.hash, &[]))
                    }
                    _ => {
                        let f = Box::pin(pick(ctx, upstream, plan.hash, plan.authority, exclude));
                        match plan.deadline {
                            Some((at, t)) => match tokio::time::timeout_at(at, f).await {
                                Ok(p) => p,
                                Err(_) => return route_timeout(upstream, t),
                            },
                            None => f.await,
                        }
                    }
                };
                match picked {
                    Ok(p) => p,
                    Err((code, detail)) => {
                        return Attempted {
                            outcome: Err(AttemptError::Pick(code, detail)),
                            host: upstream.unknown.clone(),
                            exhausted: false,
                            skipped: None,
                        };
                    }
                }
            }
        };
        ctx.inflight = inflight;
        let pool = match &host.pool {
            Some(p) => Arc::clone(p),
            None => ctx.conn.plane.pools().get(addr),
        };
        if let Some(e) = ctx.log.as_mut() {
            e.upstream_cluster = cluster.name.clone();
            e.upstream_host = addr.to_string();
        }
        // Whether another attempt may follow this one: then the request's
        // parts are kept for it.
        let more = plan.policy.is_some_and(|p| attempt <= p.num_retries);
        let timed = matches!(cluster.lb, LbPolicy::PeakEwma).then(Instant::now);
        let per_try = plan.policy.and_then(|p| p.per_try_timeout);
        let limit = match (plan.deadline, per_try) {
            (route, Some(t)) => {
                let at = tokio::time::Instant::now() + t;
                match route {
                    Some((r, rt)) if r <= at => Some((r, Limit::Route(rt))),
                    _ => Some((at, Limit::PerTry(t))),
                }
            }
            (Some((r, rt)), None) => Some((r, Limit::Route(rt))),
            (None, None) => None,
        };
        // The attempt's future is made in each arm (not bound once and
        // moved), so this future holds one of it, not two.
        let outcome = match limit {
            Some((at, why)) => {
                match tokio::time::timeout_at(at, send_attempt(&pool, &mut plan, attempt, more))
                    .await
                {
                    Ok(r) => r.map_err(AttemptError::Send),
                    Err(_) => Err(match why {
                        Limit::PerTry(t) => AttemptError::PerTryTimeout(addr, t),
                        Limit::Route(t) => AttemptError::RouteTimeout(t),
                    }),
                }
            }
            None => send_attempt(&pool, &mut plan, attempt, more)
                .await
                .map_err(AttemptError::Send),
        };
        if cluster.outlier_detection.is_some() {
            upstream.balancer.record(addr, outlier_outcome(&outcome));
        }
        if let Some(t) = timed {
            upstream.balancer.observe(addr, t.elapsed());
        }
        let Some(policy) = plan
            .policy
            .filter(|_| !matches!(outcome, Err(AttemptError::RouteTimeout(_))))
        else {
            return Attempted {
                outcome,
                host,
                exhausted: false,
                skipped: None,
            };
        };
        let retriable = match &outcome {
            Ok(resp) => retry::retries_response(
                policy,
                resp.status(),
                resp.headers(),
                &plan.retriable_headers,
            ),
            Err(AttemptError::Send(e)) => retry::retries_failure(policy, failure_of(e)),
            Err(AttemptError::PerTryTimeout(..)) => {
                retry::retries_failure(policy, retry::Failure::Timeout)
            }
            Err(AttemptError::Pick(..) | AttemptError::RouteTimeout(_)) => false,
        };
        let done = |exhausted, skipped| Attempted {
            outcome,
            host: host.clone(),
            exhausted,
            skipped,
        };
        if !retriable {
            return done(false, None);
        }
        if !more {
            return done(true, None);
        }
        if !plan.bodies.replayable() {
            tracing::debug!(
                cluster = %cluster.name,
                limit = ctx.conn.retry_buffer,
                "not retried: the request body is larger than the retry buffer"
            );
            return done(false, Some("request_body_too_large"));
        }
        match upstream.admit_retry() {
            // The previous retry (if any) is over: its token goes.
            Ok(token) => _retry_token = Some(token),
            Err(limit) => {
                tracing::debug!(cluster = %cluster.name, limit, "not retried: retry limit reached");
                let why = if limit == "retry_budget" {
                    "retry_budget_exhausted"
                } else {
                    "max_retries"
                };
                return done(false, Some(why));
            }
        }
        tracing::debug!(cluster = %cluster.name, %addr, attempt, "retrying");
        tried.push(addr);
        // The failed attempt's response and connection go before the next.
        drop(done(false, None));
        let wake = tokio::time::Instant::now() + retry::backoff(policy, attempt);
        match plan.deadline {
            Some((at, t)) if at <= wake => {
                tokio::time::sleep_until(at).await;
                return route_timeout(upstream, t);
            }
            _ => tokio::time::sleep_until(wake).await,
        }
    }
}

/// The route timeout expired between attempts.
fn route_timeout(upstream: &Upstream, t: std::time::Duration) -> Attempted {
    Attempted {
        outcome: Err(AttemptError::RouteTimeout(t)),
        host: upstream.unknown.clone(),
        exhausted: false,
        skipped: None,
    }
}

/// Sends one attempt of `plan`. HTTP/1.1 is encoded from the kept parts,
/// so a request that may be retried is not copied; hyper's paths (HTTP/2,
/// upgrades) take a `Request`, a copy when another attempt may follow.
async fn send_attempt(
    pool: &Arc<crate::upstream::pool::Pool>,
    plan: &mut Plan<'_>,
    attempt: u32,
    more: bool,
) -> Result<Response<Body>, SendError> {
    let limits = ConnLimits::from(&*plan.upstream.cluster);
    let body = plan.bodies.next();
    let count = plan.attempt_count.then(|| match attempt {
        1 => HeaderValue::from_static("1"),
        n => HeaderValue::from(n),
    });
    if !plan.h2 && !plan.upgrade {
        static ATTEMPT_COUNT: HeaderName = X_ENVOY_ATTEMPT_COUNT;
        let extra = count.as_ref().map(|v| (&ATTEMPT_COUNT, v));
        let req =
            crate::upstream::h1::encode_parts(&plan.method, &plan.uri, &plan.headers, extra, body)
                .map_err(|source| SendError::Reset {
                    addr: pool.addr(),
                    source,
                })?;
        return pool.send_encoded(req, limits).await;
    }
    let mut up = Request::new(body);
    *up.uri_mut() = plan.uri.clone();
    *up.version_mut() = if plan.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if more {
        *up.method_mut() = plan.method.clone();
        *up.headers_mut() = plan.headers.clone();
    } else {
        *up.method_mut() = std::mem::take(&mut plan.method);
        *up.headers_mut() = std::mem::take(&mut plan.headers);
    }
    if let Some(v) = count {
        up.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT, v);
    }
    pool.send_hyper(up, plan.h2, limits).await
}

/// What an attempt came to, for outlier detection: 5xx answers and no
/// answer at all are errors (502/503/504 and no answer also gateway errors).
fn outlier_outcome(outcome: &Result<Response<Body>, AttemptError>) -> Outcome {
    match outcome {
        Ok(resp) if resp.status().is_server_error() => Outcome::Error {
            gateway: matches!(resp.status().as_u16(), 502..=504),
        },
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Error { gateway: true },
    }
}

/// The retry view of a send failure.
fn failure_of(e: &SendError) -> retry::Failure {
    if e.is_connect_failure() {
        retry::Failure::Connect
    } else {
        retry::Failure::Reset {
            refused: e.is_refused_stream(),
        }
    }
}

/// Picks the endpoint: by the balancer, or for original-destination and
/// DNS clusters by address.
async fn pick(
    ctx: &Ctx<'_>,
    upstream: &Upstream,
    hash: Option<u64>,
    authority: &str,
    exclude: &[SocketAddr],
) -> Result<(SocketAddr, Host, Option<InFlight>), (ErrorCode, String)> {
    let cluster = &upstream.cluster;
    match &cluster.discovery {
        Discovery::OriginalDst => {
            let dst = match ctx.conn.orig_dst {
                Some(d) => d,
                None => resolve(authority, 80).await.map_err(|e| {
                    (
                        ErrorCode::NoHealthyUpstream,
                        format!("{}: cannot resolve {authority:?}: {e}", cluster.name),
                    )
                })?,
            };
            if is_self(dst, ctx.conn.local) {
                return Err((
                    ErrorCode::NoHealthyUpstream,
                    format!("{}: {dst} is this listener itself", cluster.name),
                ));
            }
            Ok((dst, upstream.unknown.clone(), None))
        }
        Discovery::StrictDns { hosts } if !hosts.is_empty() => {
            let (h, p) = &hosts[fastrand::usize(..hosts.len())];
            dns_pick(upstream, h, *p).await.map(|(a, h)| (a, h, None))
        }
        Discovery::LogicalDns { host, port } => dns_pick(upstream, host, *port)
            .await
            .map(|(a, h)| (a, h, None)),
        _ => balanced(upstream, hash, exclude),
    }
}

/// Picks an endpoint of a balanced (EDS, static) cluster.
fn balanced(
    upstream: &Upstream,
    hash: Option<u64>,
    exclude: &[SocketAddr],
) -> Result<(SocketAddr, Host, Option<InFlight>), (ErrorCode, String)> {
    let cluster = &upstream.cluster;
    {
        {
            // Without a hash (no policy produced one) the balancer picks at
            // random, as Envoy does.
            let hash = match cluster.lb {
                LbPolicy::RingHash { .. } | LbPolicy::Maglev => hash,
                _ => None,
            };
            let picked = upstream
                .balancer
                .pick(&PickRequest { hash, exclude })
                .ok_or_else(|| {
                    (
                        ErrorCode::NoHealthyUpstream,
                        format!(
                            "cluster {} has no healthy endpoint ({} known)",
                            cluster.name,
                            upstream.balancer.len()
                        ),
                    )
                })?;
            let addr = picked.addr;
            let host = upstream
                .hosts
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| upstream.unknown.clone());
            // Least-request counts the request until its response ends.
            Ok((addr, host, Some(picked.into_guard())))
        }
    }
}

async fn dns_pick(
    upstream: &Upstream,
    host: &str,
    port: u16,
) -> Result<(SocketAddr, Host), (ErrorCode, String)> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            (
                ErrorCode::NoHealthyUpstream,
                format!("{}: resolving {host}:{port}: {e}", upstream.cluster.name),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err((
            ErrorCode::NoHealthyUpstream,
            format!(
                "{}: {host}:{port} resolved to no address",
                upstream.cluster.name
            ),
        ));
    }
    Ok((
        addrs[fastrand::usize(..addrs.len())],
        upstream.unknown.clone(),
    ))
}

/// Resolves `authority` (`host[:port]`).
async fn resolve(authority: &str, default_port: u16) -> std::io::Result<SocketAddr> {
    let port = super::authority_port(authority, default_port);
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Usually there is nothing to strip, or only `connection`: one pass
    // over the names decides, comparing names rather than strings.
    let mut found = false;
    let mut only_connection = true;
    for k in headers.keys() {
        if k == header::UPGRADE || HOP_BY_HOP.contains(k) {
            found = true;
            only_connection &= k == header::CONNECTION;
        }
    }
    if !found && !keep_upgrade {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .filter(|n| n != header::UPGRADE)
        .collect();
    for n in named {
        headers.remove(n);
    }
    if only_connection && !keep_upgrade {
        headers.remove(header::CONNECTION);
        return;
    }
    let is_trailers_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if is_trailers_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Envoy's standard request headers: `x-request-id`, `x-forwarded-proto`
/// (`x-envoy-attempt-count` is set per attempt).
fn prepare_headers(headers: &mut HeaderMap) {
    if let header::Entry::Vacant(slot) = headers.entry(X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_bytes(&request_id())
    {
        slot.insert(v);
    }
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert(HeaderValue::from_static("http"));
}

/// A random UUID (version 4) for `x-request-id`.
fn request_id() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    // Version 4, variant 10xx.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 0xf)];
        o += 2;
    }
    out
}

fn header_size(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

fn header_str(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn entry<B>(conn: &ConnCtx, req: &Request<B>) -> Entry {
    Entry {
        start_time: rfc3339(SystemTime::now()),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        protocol: if conn.h2 { "HTTP/2" } else { "HTTP/1.1" },
        authority: authority_of(req).to_string(),
        request_id: header_str(req.headers(), "x-request-id"),
        user_agent: header_str(req.headers(), "user-agent"),
        x_forwarded_for: header_str(req.headers(), "x-forwarded-for"),
        downstream_remote_address: conn.peer.to_string(),
        downstream_local_address: conn.orig_dst.unwrap_or(conn.local).to_string(),
        response_flags: flags::NONE,
        ..Entry::default()
    }
}

/// Answers with the proxy's own error for `code`, records and logs it.
fn proxy_error(
    ctx: &mut Ctx<'_>,
    upstream: Option<&Arc<Upstream>>,
    code: ErrorCode,
    detail: &str,
) -> Response<Body> {
    tracing::info!(
        code = code.as_str(),
        peer = %ctx.conn.peer,
        "{detail}"
    );
    if let Some(e) = ctx.log.as_mut() {
        e.response_code_details = detail.to_string();
    }
    let resp = error::respond(code, detail, ctx.grpc);
    let host = match upstream {
        Some(u) => u.unknown.clone(),
        None => ctx.conn.plane.unrouted(ctx.conn.role == Role::Inbound),
    };
    finish_with(ctx, &host, resp, code.as_str())
}

/// A response the proxy built (direct response, redirect).
fn local_response(ctx: &mut Ctx<'_>, resp: Response<Body>, flags: &'static str) -> Response<Body> {
    let host = ctx.conn.plane.unrouted(ctx.conn.role == Role::Inbound);
    finish_with(ctx, &host, resp, flags)
}

fn finish(
    mut ctx: Ctx<'_>,
    host: &Host,
    resp: Response<Body>,
    flags: &'static str,
) -> Response<Body> {
    finish_with(&mut ctx, host, resp, flags)
}

fn finish_with(
    ctx: &mut Ctx<'_>,
    host: &Host,
    resp: Response<Body>,
    flags: &'static str,
) -> Response<Body> {
    let status = resp.status().as_u16();
    let outcome = if ctx.grpc {
        // Trailers may override this when the body ends.
        RequestOutcome::grpc(status, super::grpc_status(resp.headers()).unwrap_or(2))
    } else {
        RequestOutcome::http(status)
    }
    .with_flags(flags);
    let done = Completion {
        recorder: host.recorder().clone(),
        outcome,
        start: ctx.start,
        request_bytes: Arc::clone(&ctx.request_bytes),
        response_header_bytes: header_size(resp.headers()) + 17,
        log: ctx.conn.access_log.clone().zip(ctx.log.take()),
        inflight: ctx.inflight.take(),
        active: ctx.active.take(),
    };
    resp.map(|b| Observed::new(b, done).boxed_unsync())
}

/// `CONNECT host:port`: answer 200, then splice the tunnel to the service
/// behind `host:port` (its TCP chain's cluster, or the cluster its HTTP
/// route picks), or straight to `host:port` when the mesh does not know it.
fn connect_tunnel<B: ReqBody>(
    ctx: &mut Ctx<'_>,
    snap: Arc<Snapshot>,
    mut req: Request<B>,
) -> Response<Body> {
    let target = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase());
    let Some(target) = target.filter(|t| t.contains(':')) else {
        ctx.grpc = false;
        return proxy_error(
            ctx,
            None,
            ErrorCode::NoRoute,
            "CONNECT needs a host:port target",
        );
    };
    let plane = Arc::clone(&ctx.conn.plane);
    let peer = ctx.conn.peer;
    let local = ctx.conn.local;
    if ctx.conn.h2 {
        // HTTP/2: the tunnel is the stream itself, its DATA both ways.
        let (io, body) = super::tunnel::H2Tunnel::new(req.into_body());
        tokio::spawn(async move {
            splice_tunnel(&plane, &snap, io, peer, local, &target).await;
        });
        return Response::new(body);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        splice_tunnel(&plane, &snap, io, peer, local, &target).await;
    });
    Response::new(super::empty())
}

/// Splices a `CONNECT` tunnel to the service behind `target`.
async fn splice_tunnel<S>(
    plane: &crate::upstream::Plane,
    snap: &Snapshot,
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    target: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (cluster, dst) = tcp::connect_target(snap, target);
    let dst = match dst {
        Some(d) => Some(d),
        None if cluster.is_none() => match resolve(target, 443).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::info!(code = flags::NO_ROUTE_FOUND, %peer, "CONNECT {target}: cannot resolve: {e}");
                return;
            }
        },
        None => None,
    };
    tcp::proxy(
        plane,
        snap,
        io,
        peer,
        local,
        cluster.as_deref().unwrap_or("PassthroughCluster"),
        dst,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = request_id();
        let s = std::str::from_utf8(&id).expect("ascii");
        let parts: Vec<&str> = s.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{s}"
        );
        assert!(parts[2].starts_with('4'), "{s}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{s}"
        );
        assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn shadow_authority_suffixes_the_host() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(
            shadow_authority("example.com:http"),
            "example.com:http-shadow"
        );
    }
}
#[cfg(test)]
mod future_size {
    fn output_size<F, A, B, R>(_: F) -> usize
    where
        F: FnOnce(A, B) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Each request's future is moved when it is boxed, and hyper moves it
    /// again for HTTP/1.1: the forwarding state is boxed so that what
    /// moves stays small (it was 5.6 KiB before).
    #[test]
    fn the_per_request_future_stays_small() {
        let h1 = output_size(super::handle::<hyper::body::Incoming>);
        assert!(
            h1 <= 1536,
            "forward::handle's future is {h1} bytes (HTTP/1.1)"
        );
        let h2 = output_size(super::handle::<crate::http2::server::RecvBody>);
        assert!(
            h2 <= 1536,
            "forward::handle's future is {h2} bytes (HTTP/2)"
        );
    }
}
