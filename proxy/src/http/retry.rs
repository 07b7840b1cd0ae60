//! Retries (VirtualService `retries`, delivered as Envoy's `RetryPolicy`):
//! which outcomes of an attempt are retried, the jittered back-off between
//! attempts, and the request body kept so it can be sent again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::{Body as _, Frame, SizeHint};

use super::{Body, BoxError};
use crate::state::route::{RetryOn, RetryPolicy};

/// Envoy's default back-off base when the policy sets none.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// The request header naming response headers that make an attempt
/// retriable (`retriable-headers`), as Envoy reads it.
pub(super) const RETRIABLE_HEADER_NAMES: &str = "x-envoy-retriable-header-names";

/// An attempt that got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The connection to the endpoint could not be made: nothing was sent.
    Connect,
    /// The connection or stream broke before a response; `refused` when an
    /// HTTP/2 upstream refused the stream (it did not process it).
    Reset {
        /// `REFUSED_STREAM`.
        refused: bool,
    },
    /// The per-try timeout expired before response headers.
    Timeout,
}

/// Whether `failure` is retried under `policy` (Envoy: `5xx` and
/// `gateway-error` include every failure to get a response, `reset`
/// includes timeouts, `connect-failure` and `reset-before-request` only
/// attempts that sent nothing, `refused-stream` only refused streams).
pub(super) fn retries_failure(policy: &RetryPolicy, failure: Failure) -> bool {
    policy.retry_on.iter().any(|on| match on {
        RetryOn::FiveXx | RetryOn::GatewayError | RetryOn::Reset => true,
        RetryOn::ConnectFailure | RetryOn::ResetBeforeRequest => failure == Failure::Connect,
        RetryOn::RefusedStream => failure == Failure::Reset { refused: true },
        _ => false,
    })
}

/// Whether a response is retried under `policy`; `retriable_headers` are
/// the names the request listed in `x-envoy-retriable-header-names`.
pub(super) fn retries_response(
    policy: &RetryPolicy,
    status: StatusCode,
    headers: &HeaderMap,
    retriable_headers: &[String],
) -> bool {
    let code = status.as_u16();
    // Read only when a gRPC condition asks.
    let mut grpc_status = None;
    let mut grpc = || *grpc_status.get_or_insert_with(|| super::grpc_status(headers));
    policy.retry_on.iter().any(|on| match on {
        RetryOn::FiveXx => status.is_server_error(),
        RetryOn::GatewayError => matches!(code, 502..=504),
        RetryOn::Retriable4xx => code == 409,
        RetryOn::RetriableStatusCodes => policy.retriable_status_codes.contains(&code),
        RetryOn::RetriableHeaders => retriable_headers
            .iter()
            .any(|name| headers.contains_key(name.as_str())),
        RetryOn::EnvoyRatelimited => headers.contains_key("x-envoy-ratelimited"),
        RetryOn::Cancelled => grpc() == Some(1),
        RetryOn::DeadlineExceeded => grpc() == Some(4),
        RetryOn::ResourceExhausted => grpc() == Some(8),
        RetryOn::Internal => grpc() == Some(13),
        RetryOn::Unavailable => grpc() == Some(14),
        RetryOn::Reset
        | RetryOn::ResetBeforeRequest
        | RetryOn::ConnectFailure
        | RetryOn::RefusedStream
        | RetryOn::Http3PostConnectFailure => false,
    })
}

/// The names in the request's `x-envoy-retriable-header-names`.
pub(super) fn retriable_header_names(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(RETRIABLE_HEADER_NAMES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// How long to wait before retry number `retry` (1 for the first retry):
/// fully jittered exponential back-off, uniform in `[0, base × 2^(retry-1))`
/// and at most the policy's maximum (Envoy's default: 25 ms base, 10× it
/// at most).
pub(super) fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let (base, max) = match &policy.backoff {
        Some(b) => (b.base, b.max),
        None => (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_BASE * 10),
    };
    let ceiling = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(..nanos.max(1)))
}

/// A request body kept for replay: every attempt gets a body that yields
/// the bytes earlier attempts already read, then continues from the
/// downstream body. At most `limit` bytes are kept; beyond that the request
/// can no longer be sent again ([`Replay::replayable`]). Mirrors get
/// follower bodies ([`Replay::follower`]) that only ever read what the
/// attempts have read, so a slow mirror cannot hold the real request back.
pub(super) struct Replay {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    limit: usize,
    hint: SizeHint,
}

struct State {
    /// The downstream body, while no attempt is reading it.
    source: Option<Body>,
    /// What was read from it so far (empty once `overflowed`).
    chunks: Vec<Bytes>,
    /// Bytes read from the downstream body.
    read: u64,
    trailers: Option<HeaderMap>,
    /// The downstream body ended.
    done: bool,
    /// More than `limit` bytes were read, or reading failed: no replay.
    overflowed: bool,
    /// Bodies waiting: an attempt for an earlier one to give the
    /// downstream body back, followers for more bytes.
    waiting: Vec<Waker>,
}

impl State {
    fn wake_all(&mut self) {
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }
}

impl Replay {
    /// Keeps up to `limit` bytes of `body`.
    pub(super) fn new(body: Body, limit: usize) -> Self {
        let hint = body.size_hint();
        // Known to be too large: not kept at all.
        let overflowed = hint.lower() > limit as u64;
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    source: Some(body),
                    chunks: Vec::new(),
                    read: 0,
                    trailers: None,
                    done: false,
                    overflowed,
                    waiting: Vec::new(),
                }),
                limit,
                hint,
            }),
        }
    }

    /// The body for the next attempt.
    pub(super) fn attempt(&self) -> Body {
        self.body(false)
    }

    /// A body for a mirror: the bytes the attempts read, as they read them;
    /// it fails if they outgrow the buffer before it has them.
    pub(super) fn follower(&self) -> Body {
        self.body(true)
    }

    fn body(&self, follower: bool) -> Body {
        use http_body_util::BodyExt;
        ReplayBody {
            shared: Arc::clone(&self.shared),
            follower,
            next: 0,
            yielded: 0,
            source: None,
            trailers_sent: false,
        }
        .boxed_unsync()
    }

    /// Whether the body can still be sent again in full.
    pub(super) fn replayable(&self) -> bool {
        !lock(&self.shared.state).overflowed
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What polling a body yields.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// One attempt's (or mirror's) view of a [`Replay`].
struct ReplayBody {
    shared: Arc<Shared>,
    /// A mirror's: never reads the downstream body itself.
    follower: bool,
    /// The next kept chunk to yield.
    next: usize,
    /// Bytes yielded so far.
    yielded: u64,
    /// The downstream body, while this attempt reads it.
    source: Option<Body>,
    trailers_sent: bool,
}

impl ReplayBody {
    /// The next frame from memory, or `None`: read the downstream body
    /// (now held by this attempt).
    fn poll_memory(&mut self, st: &mut State, cx: &mut Context<'_>) -> Option<Polled> {
        if !st.overflowed
            && let Some(chunk) = st.chunks.get(self.next)
        {
            self.next += 1;
            self.yielded += chunk.len() as u64;
            return Some(Poll::Ready(Some(Ok(Frame::data(chunk.clone())))));
        }
        if self.yielded != st.read {
            // The bytes between were not kept: this body cannot be whole.
            return Some(Poll::Ready(Some(Err(
                "the request body outgrew the retry buffer; it cannot be sent again".into(),
            ))));
        }
        if st.done {
            return Some(Poll::Ready(match st.trailers.clone() {
                Some(t) if !self.trailers_sent => {
                    self.trailers_sent = true;
                    Some(Ok(Frame::trailers(t)))
                }
                _ => None,
            }));
        }
        if self.follower {
            st.waiting.push(cx.waker().clone());
            return Some(Poll::Pending);
        }
        match st.source.take() {
            Some(s) => {
                self.source = Some(s);
                None
            }
            None => {
                // An earlier attempt still holds it; it gives it back when
                // dropped.
                st.waiting.push(cx.waker().clone());
                Some(Poll::Pending)
            }
        }
    }
}

impl hyper::body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        if this.source.is_none() {
            let shared = Arc::clone(&this.shared);
            let mut st = lock(&shared.state);
            if let Some(ready) = this.poll_memory(&mut st, cx) {
                return ready;
            }
        }
        let Some(source) = this.source.as_mut() else {
            return Poll::Pending;
        };
        let polled = Pin::new(source).poll_frame(cx);
        let mut st = lock(&this.shared.state);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    st.read += data.len() as u64;
                    this.yielded += data.len() as u64;
                    if !st.overflowed {
                        if st.read <= this.shared.limit as u64 {
                            st.chunks.push(data.clone());
                            this.next = st.chunks.len();
                        } else {
                            st.overflowed = true;
                            st.chunks = Vec::new();
                            this.next = 0;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    st.trailers = Some(t.clone());
                    this.trailers_sent = true;
                    st.done = true;
                }
            }
            Poll::Ready(None) => st.done = true,
            Poll::Ready(Some(Err(_))) => st.overflowed = true,
            Poll::Pending => {}
        }
        if st.done {
            // Ended: later attempts replay from the chunks alone.
            this.source = None;
        }
        if !matches!(polled, Poll::Pending) {
            st.wake_all();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let st = lock(&self.shared.state);
        st.done
            && self.source.is_none()
            && self.yielded == st.read
            && (st.overflowed || self.next >= st.chunks.len())
            && (st.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        self.shared.hint
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(source) = self.source.take() {
            let mut st = lock(&self.shared.state);
            st.source = Some(source);
            st.wake_all();
        }
    }
}

#[cfg(test)]
mod tests;
