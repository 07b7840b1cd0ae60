//! A `CONNECT` tunnel over an HTTP/2 stream as a byte stream: reads come
//! from the request body (the client's DATA), writes become the response
//! body (DATA to the client), shutdown ends the response. HTTP/1.1 tunnels
//! use hyper's upgrade instead.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;

use super::forward::ReqBody;
use super::{Body, BoxError};

/// Response-body chunks buffered between the tunnel and the connection.
const CHUNKS: usize = 8;

type Chunk = Result<Frame<Bytes>, BoxError>;

/// The tunnel's byte stream.
pub struct H2Tunnel<B> {
    body: B,
    left: Bytes,
    eof: bool,
    tx: PollSender<Chunk>,
}

impl<B: ReqBody> H2Tunnel<B> {
    /// The stream over `body`, and the response body its writes feed.
    pub fn new(body: B) -> (Self, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS);
        let response = StreamBody::new(ReceiverStream::new(rx)).boxed_unsync();
        (
            Self {
                body,
                left: Bytes::new(),
                eof: false,
                tx: PollSender::new(tx),
            },
            response,
        )
    }
}

impl<B: ReqBody> AsyncRead for H2Tunnel<B> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.left.is_empty() && !this.eof {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.left = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e.into()))),
                None => this.eof = true,
            }
        }
        let n = this.left.len().min(buf.remaining());
        buf.put_slice(&this.left[..n]);
        this.left.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<B: ReqBody> AsyncWrite for H2Tunnel<B> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let closed = || io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        self.tx
            .send_item(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The client's DATA reads as the tunnel's bytes; the tunnel's writes
    /// become response DATA; shutdown ends the response.
    #[tokio::test]
    async fn a_tunnel_carries_bytes_both_ways_and_shutdown_ends_the_response() {
        let from_client = Full::new(Bytes::from_static(b"ping from the client"));
        let (mut io, response) = H2Tunnel::new(from_client);
        let mut got = Vec::new();
        io.read_to_end(&mut got)
            .await
            .expect("reads the request body");
        assert_eq!(got, b"ping from the client");

        io.write_all(b"pong ").await.expect("writes");
        io.write_all(b"from upstream").await.expect("writes");
        io.shutdown().await.expect("shuts down");
        drop(io);
        let sent = response.collect().await.expect("the response body ends");
        assert_eq!(&sent.to_bytes()[..], b"pong from upstream");
    }

    /// A reset stream (the request body fails) reads as an I/O error.
    #[tokio::test]
    async fn a_failed_request_body_is_a_read_error() {
        let failing =
            http_body_util::StreamBody::new(futures::stream::iter([
                Err::<Frame<Bytes>, BoxError>("the client reset the stream".into()),
            ]));
        let (mut io, _response) = H2Tunnel::new(failing);
        let mut buf = [0; 8];
        let err = io.read(&mut buf).await.expect_err("the read fails");
        assert!(err.to_string().contains("reset"), "{err}");
    }
}
