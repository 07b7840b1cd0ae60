//! Runs an HTTP/2 connection's streams on the connection's own task.
//!
//! hyper hands every accepted HTTP/2 stream to an executor. The usual one
//! (`TokioExecutor`) spawns a tokio task per stream, which costs a task
//! allocation, its registration and scheduling, a copy of the stream's
//! future, and a cross-task wake-up each time the connection has news for
//! the stream. [`StreamExec`] instead collects the streams, and
//! [`serve_with_streams`] polls them next to the connection: one task per
//! connection, as the connection's frames are read and written by that
//! task anyway. Streams of one connection then share a core, which is what
//! a proxy pinned to one core (`--concurrency 1`) does in any case;
//! connections still spread over the runtime's workers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt as _};

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper's HTTP/2 server: it queues what hyper would
/// spawn (each stream, and the send half of an upgraded stream) for
/// [`serve_with_streams`] to poll.
#[derive(Clone, Default)]
pub struct StreamExec {
    queued: Arc<Mutex<Vec<Task>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper calls this only while the connection or one of its streams
        // is being polled, i.e. from inside `Serve::poll`, which drains the
        // queue before it returns: no wake-up is needed.
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(fut));
    }
}

impl StreamExec {
    fn take_queued(&self, into: &mut FuturesUnordered<Task>) {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        for task in queued.drain(..) {
            into.push(task);
        }
    }

    fn has_queued(&self) -> bool {
        !self
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// Polls `conn` (a hyper HTTP/2 server connection built with `exec`) and
/// the streams it hands `exec`, until the connection has ended and every
/// stream has finished. Resolves to the connection's result.
pub fn serve_with_streams<C, T>(exec: StreamExec, conn: Pin<&mut C>) -> Serve<'_, C, T>
where
    C: Future<Output = T>,
{
    Serve {
        exec,
        conn,
        result: None,
        streams: FuturesUnordered::new(),
    }
}

/// The future [`serve_with_streams`] returns.
pub struct Serve<'a, C, T> {
    exec: StreamExec,
    conn: Pin<&'a mut C>,
    result: Option<T>,
    streams: FuturesUnordered<Task>,
}

impl<C, T> Serve<'_, C, T> {
    /// The connection, to ask it for a graceful shutdown.
    pub fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }
}

impl<C, T> Future for Serve<'_, C, T>
where
    C: Future<Output = T>,
    T: Unpin,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if this.result.is_none()
            && let Poll::Ready(result) = this.conn.as_mut().poll(cx)
        {
            this.result = Some(result);
        }
        // The streams hyper accepted during that poll and every stream woken
        // since the last poll (the connection wakes a stream when its frames
        // arrive, an upstream when its response does); again if a stream
        // queued work of its own meanwhile (an upgrade's send half).
        // FuturesUnordered polls each woken stream once per call and yields
        // (waking the task) if streams keep waking themselves.
        loop {
            this.exec.take_queued(&mut this.streams);
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if !this.exec.has_queued() {
                break;
            }
        }
        match this.result.take() {
            Some(result) if this.streams.is_empty() => Poll::Ready(result),
            result => {
                this.result = result;
                Poll::Pending
            }
        }
    }
}
