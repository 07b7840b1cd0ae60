//! Protocol detection on an accepted connection, by peeking at what the
//! client sends first.
//!
//! [`detect`] never consumes bytes: it peeks (`MSG_PEEK`) until [`classify`]
//! can decide between TLS (with SNI and ALPN from the ClientHello), HTTP/2
//! prior knowledge, HTTP/1 (noting `CONNECT` and absolute-form targets, the
//! explicit-proxy modes) and opaque TCP, so the caller then hands the very
//! same stream to hyper, a TLS acceptor or a byte copy. A client that sends
//! nothing within the timeout (server-speaks-first protocols such as MySQL or
//! SMTP) is TCP, as in Istio's protocol sniffing. This module owns only the
//! decision; routing on it, and the `detection time` metric fed from
//! [`Detection::elapsed`], belong to the listeners.

mod http;
mod tls;

use std::io;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

pub use http::H2_PREFACE;
pub use tls::{ClientHello, parse_client_hello};

/// The most bytes detection peeks at: one full TLS record (a ClientHello
/// larger than that is still reported as TLS, without SNI/ALPN).
pub const MAX_PEEK: usize = 16 * 1024 + 5;

/// Istio's default protocol-sniffing timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// The protocol a connection speaks, as far as its first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello.
    Tls {
        /// The server name the client asked for.
        sni: Option<String>,
        /// Application protocols the client offered, in its order.
        alpn: Vec<String>,
    },
    /// The HTTP/2 prior-knowledge preface (h2c).
    Http2,
    /// An HTTP/1.x request line.
    Http1 {
        /// The method token, as sent.
        method: String,
        /// `host:port` of a `CONNECT`, or the authority of an absolute-form
        /// target (`GET http://host/…`); `None` for origin-form requests.
        authority: Option<String>,
        /// The request is `CONNECT` (an explicit-proxy tunnel).
        connect: bool,
    },
    /// Anything else: opaque TCP.
    Tcp {
        /// Why detection settled on TCP (for debug logs).
        reason: &'static str,
    },
}

/// The outcome of [`detect`]: the protocol and how long deciding took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub protocol: Detected,
    pub elapsed: Duration,
}

/// The result of a parser on a byte prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The bytes form a complete message.
    Complete(T),
    /// The bytes so far are a valid prefix: more are needed.
    Incomplete,
    /// The bytes cannot begin this kind of message.
    Invalid(&'static str),
}

const TCP_UNKNOWN: Detected = Detected::Tcp {
    reason: "first bytes match no known protocol",
};

/// Decides the protocol from the bytes the client has sent so far; `None`
/// when more bytes are needed to decide. Pure, so it can be fed any prefix.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let &first = buf.first()?;
    if first == 0x16 {
        return match tls::parse_client_hello(buf) {
            Parse::Complete(h) => Some(Detected::Tls {
                sni: h.sni,
                alpn: h.alpn,
            }),
            Parse::Incomplete => None,
            Parse::Invalid(reason) => Some(Detected::Tcp { reason }),
        };
    }
    if !http::is_tchar(first) {
        return Some(TCP_UNKNOWN);
    }
    if first == b'P' {
        match http::h2_preface(buf) {
            Parse::Complete(()) => return Some(Detected::Http2),
            Parse::Incomplete => return None,
            Parse::Invalid(_) => {}
        }
    }
    match http::parse_request_line(buf) {
        Parse::Complete(l) => Some(Detected::Http1 {
            method: l.method,
            authority: l.authority,
            connect: l.connect,
        }),
        Parse::Incomplete => None,
        Parse::Invalid(_) => Some(TCP_UNKNOWN),
    }
}

/// What [`classify`] concludes when no more bytes will come (EOF, timeout,
/// full buffer) on a prefix it was still waiting on.
fn undecided(buf: &[u8], why: &'static str) -> Detected {
    // A valid ClientHello prefix that fills the whole buffer is TLS for sure;
    // only its extensions are out of reach.
    if buf.len() >= MAX_PEEK && buf.first() == Some(&0x16) {
        return Detected::Tls {
            sni: None,
            alpn: Vec::new(),
        };
    }
    Detected::Tcp { reason: why }
}

/// Peeks at `stream` until its protocol is known, the client stops sending
/// for `timeout` (overall, from the call), or it closes. Never consumes
/// bytes and never fails: an I/O error is reported as TCP (the copy that
/// follows will surface it).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detection {
    let start = Instant::now();
    let mut buf = vec![0u8; MAX_PEEK];
    let protocol = match tokio::time::timeout(timeout, peek_until_decided(stream, &mut buf)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peek failed during protocol detection");
            Detected::Tcp {
                reason: "peek failed",
            }
        }
        Err(_elapsed) => Detected::Tcp {
            reason: "no protocol identified before the detection timeout",
        },
    };
    Detection {
        protocol,
        elapsed: start.elapsed(),
    }
}

async fn peek_until_decided(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Detected> {
    // Fast path: the whole first flight is usually there in one peek.
    let n = stream.peek(buf).await?;
    if n == 0 {
        return Ok(Detected::Tcp {
            reason: "client closed before sending",
        });
    }
    if let Some(p) = classify(&buf[..n]) {
        return Ok(p);
    }
    if n == buf.len() {
        return Ok(undecided(buf, "detection buffer full"));
    }
    // Slow path: the first flight arrives in pieces. A plain peek loop would
    // spin, since peeking leaves the socket readable; instead peek inside
    // `try_io` and report "would block" when nothing new arrived, which
    // clears tokio's readiness so `readable()` waits for the next segment.
    let peeker = std_clone(stream)?;
    let mut seen = n;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let got = stream.try_io(Interest::READABLE, || {
            let n = peeker.peek(buf)?;
            if n == seen {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match got {
            Ok(n) => seen = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    // The client shut down its sending side: nothing more
                    // is coming.
                    return Ok(undecided(&buf[..seen], "client closed mid-detection"));
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        if let Some(p) = classify(&buf[..seen]) {
            return Ok(p);
        }
        if seen == buf.len() {
            return Ok(undecided(buf, "detection buffer full"));
        }
    }
}

/// A std handle on the same socket (a `dup`), for its synchronous,
/// non-blocking `peek` inside [`TcpStream::try_io`]. Dropping it closes only
/// the duplicate descriptor.
fn std_clone(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    #[cfg(unix)]
    let owned = std::os::fd::AsFd::as_fd(stream).try_clone_to_owned()?;
    #[cfg(windows)]
    let owned = std::os::windows::io::AsSocket::as_socket(stream).try_clone_to_owned()?;
    Ok(std::net::TcpStream::from(owned))
}

#[cfg(test)]
mod tests;
