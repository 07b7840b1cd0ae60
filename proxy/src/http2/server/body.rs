//! A request body as the handler sees it: DATA frames the connection has
//! received for the stream, handed over through a small shared queue.
//! Reading a chunk tells the connection (through the stream's waker) so it
//! can reopen the peer's flow-control window; dropping the body unread
//! lets the connection discard what is buffered and what still comes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Frame, SizeHint};

/// Why a request body ended early.
#[derive(Clone, Debug, thiserror::Error)]
#[error("HTTP/2 request body: {0}")]
pub struct RecvError(pub String);

/// The connection's side of a streaming request body.
#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    end: bool,
    error: Option<RecvError>,
    reader: Option<Waker>,
    /// Read by the handler, not yet returned to the peer's windows.
    released: usize,
    /// The handler dropped the body.
    dropped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a DATA payload; `false` (and nothing queued) when the handler
    /// has dropped the body, so the caller releases the window at once.
    pub fn push(&self, data: Bytes, end: bool) -> bool {
        let mut s = self.lock();
        if s.dropped {
            return false;
        }
        if !data.is_empty() {
            s.chunks.push_back(data);
        }
        s.end |= end;
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
        true
    }

    /// Ends the body with trailers.
    pub fn trailers(&self, trailers: HeaderMap) {
        let mut s = self.lock();
        s.trailers = Some(trailers);
        s.end = true;
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Ends the body with an error (the peer reset the stream, the
    /// connection failed, or the stream was closed).
    pub fn fail(&self, why: impl FnOnce() -> String) {
        let mut s = self.lock();
        if s.end && s.chunks.is_empty() && s.trailers.is_none() {
            return;
        }
        s.error.get_or_insert_with(|| RecvError(why()));
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Closes the queue (the stream is gone): a reader gets `why` as an
    /// error unless the body was complete; buffered data is dropped. Returns
    /// the octets read or dropped since the last release.
    pub fn close(&self, why: impl FnOnce() -> String) -> usize {
        let mut s = self.lock();
        let buffered: usize = s.chunks.drain(..).map(|c| c.len()).sum();
        let released = std::mem::take(&mut s.released) + buffered;
        let complete = s.end && s.error.is_none() && buffered == 0;
        if !complete {
            s.error.get_or_insert_with(|| RecvError(why()));
        }
        s.end = true;
        s.dropped = true;
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
        released
    }

    /// Octets read (or discarded) since the last call.
    pub fn take_released(&self) -> usize {
        std::mem::take(&mut self.lock().released)
    }
}

/// A request body: empty, or fed by the connection.
pub struct RecvBody {
    shared: Option<Arc<Shared>>,
    /// Wakes the connection's record of this stream.
    conn: Option<Waker>,
    /// What `content-length` says is left.
    remaining: Option<u64>,
}

impl RecvBody {
    /// A body that has ended (the request's HEADERS had END_STREAM).
    pub fn empty() -> Self {
        Self {
            shared: None,
            conn: None,
            remaining: Some(0),
        }
    }

    /// A body fed through `shared`; reads wake `conn`.
    pub fn streaming(shared: Arc<Shared>, conn: Waker, content_length: Option<u64>) -> Self {
        Self {
            shared: Some(shared),
            conn: Some(conn),
            remaining: content_length,
        }
    }
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let Some(shared) = &self.shared else {
            return Poll::Ready(None);
        };
        let mut s = shared.lock();
        if let Some(chunk) = s.chunks.pop_front() {
            s.released += chunk.len();
            drop(s);
            if let Some(w) = &self.conn {
                w.wake_by_ref();
            }
            if let Some(r) = self.remaining.as_mut() {
                *r = r.saturating_sub(chunk.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(e) = s.error.take() {
            s.end = true;
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if s.end {
            return Poll::Ready(None);
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.shared.as_ref().is_none_or(|shared| {
            let s = shared.lock();
            s.end && s.chunks.is_empty() && s.trailers.is_none() && s.error.is_none()
        })
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let mut s = shared.lock();
        s.dropped = true;
        let buffered: usize = s.chunks.drain(..).map(|c| c.len()).sum();
        s.released += buffered;
        drop(s);
        if let Some(w) = &self.conn {
            w.wake_by_ref();
        }
    }
}
