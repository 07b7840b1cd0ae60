//! The original destination of a connection redirected to the proxy by
//! iptables (`REDIRECT` in the `nat` table), read with `SO_ORIGINAL_DST`
//! (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).
//!
//! This module owns only the socket option; the `getsockopt` itself lives in
//! `socket2`, so Keel keeps `unsafe_code = "forbid"`. It does not decide what
//! to do without capture: a connection that was not redirected (no conntrack
//! NAT entry) yields [`OrigDstError::NotRedirected`], and the listener falls
//! back to explicit-proxy / `Host` routing.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Why the original destination could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The kernel has no NAT record for this connection.
    #[error(
        "connection from {peer} to {local} has no original destination ({source}): it was not \
         redirected by iptables REDIRECT capture; fall back to explicit-proxy/Host routing or \
         install the capture rules"
    )]
    NotRedirected {
        local: SocketAddr,
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// `getsockopt` failed for another reason.
    #[error(
        "reading the original destination of {local} failed ({source}); it needs iptables \
         REDIRECT capture (else use explicit-proxy/Host routing)"
    )]
    Sockopt {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The socket's own addresses could not be read.
    #[error("reading the socket's addresses failed: {0}")]
    Addresses(#[source] io::Error),
    /// The kernel answered with something other than an IP address.
    #[error("the original destination of {local} is not an IP socket address")]
    NotInet { local: SocketAddr },
    /// This platform has no `SO_ORIGINAL_DST`.
    #[error(
        "original destination needs Linux SO_ORIGINAL_DST with iptables REDIRECT capture; \
         unsupported on this platform (use explicit-proxy/Host routing)"
    )]
    Unsupported,
}

/// The address the client originally connected to, before iptables
/// redirected the connection to the proxy.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn original_dst(stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
    let local = stream.local_addr().map_err(OrigDstError::Addresses)?;
    let sock = socket2::SockRef::from(stream);
    let got = match local {
        // An IPv4-mapped IPv6 local address means an IPv4 flow on a dual-stack
        // socket: its NAT record is an IPv4 one.
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => sock.original_dst_v6(),
        _ => sock.original_dst_v4(),
    };
    match got {
        Ok(addr) => addr
            .as_socket()
            .map(canonical)
            .ok_or(OrigDstError::NotInet { local }),
        // ENOENT: conntrack has no NAT entry; ENOPROTOOPT: the option is not
        // known for this family (no netfilter module).
        Err(source) if matches!(source.raw_os_error(), Some(ENOENT | ENOPROTOOPT)) => {
            let peer = stream.peer_addr().map_err(OrigDstError::Addresses)?;
            Err(OrigDstError::NotRedirected {
                local,
                peer,
                source,
            })
        }
        Err(source) => Err(OrigDstError::Sockopt { local, source }),
    }
}

/// Without Linux netfilter there is no original destination to read.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn original_dst(_stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
    Err(OrigDstError::Unsupported)
}

/// errno: conntrack has no NAT entry for the connection.
#[cfg(any(target_os = "linux", target_os = "android"))]
const ENOENT: i32 = 2;
/// errno: no netfilter module registered the option (value on x86, ARM,
/// RISC-V; mips/sparc differ and land in [`OrigDstError::Sockopt`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
const ENOPROTOOPT: i32 = 92;

/// Reports an IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn accepted(bind: &str) -> Option<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind(bind).await.ok()?;
        let client = TcpStream::connect(listener.local_addr().ok()?).await.ok()?;
        let (server, _) = listener.accept().await.ok()?;
        Some((client, server))
    }

    #[tokio::test]
    async fn plain_ipv4_connection_is_not_redirected() {
        let (_client, server) = accepted("127.0.0.1:0").await.unwrap();
        let err = original_dst(&server).unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(msg.contains("REDIRECT"), "{msg}");
        if cfg!(target_os = "linux") {
            // Without the conntrack/nat modules loaded the kernel may answer
            // ENOPROTOOPT or, on a NAT-less conntrack, ENOENT: both are
            // "not redirected".
            assert!(matches!(err, OrigDstError::NotRedirected { .. }), "{err:?}");
            assert!(msg.contains("127.0.0.1"), "{msg}");
        }
    }

    #[tokio::test]
    async fn plain_ipv6_connection_is_not_redirected() {
        // Skip quietly where the host has no IPv6 loopback.
        let Some((_client, server)) = accepted("[::1]:0").await else {
            return;
        };
        let err = original_dst(&server).unwrap_err();
        eprintln!("{err}");
        assert!(err.to_string().contains("REDIRECT"), "{err}");
    }

    #[test]
    fn mapped_addresses_are_reported_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9080".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:9080".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
