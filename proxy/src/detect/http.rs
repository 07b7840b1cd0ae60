//! Recognises plaintext HTTP from its first bytes: the HTTP/2 prior-knowledge
//! preface and an HTTP/1.x request line.
//!
//! The request-line parser is incremental in the sense detection needs: on a
//! prefix it answers [`Parse::Incomplete`] only while the bytes so far can
//! still begin a request line, and [`Parse::Invalid`] at the first byte that
//! cannot (a binary protocol is rejected on its first non-token byte). It
//! reads only the request line: headers are hyper's business once the
//! connection is served.

use super::Parse;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token we accept (`VERSION-CONTROL` and friends fit).
const MAX_METHOD_LEN: usize = 24;
const VERSION_PREFIX: &[u8] = b"HTTP/1.";

/// What routing needs from an HTTP/1 request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    /// The method token, as sent (methods are case-sensitive).
    pub method: String,
    /// `host:port` of a `CONNECT`, or the authority of an absolute-form
    /// target (`http://host[:port]/…`) without userinfo; `None` for
    /// origin-form (`/path`) and `*`.
    pub authority: Option<String>,
    /// The method is `CONNECT` (an explicit-proxy tunnel).
    pub connect: bool,
}

/// Whether `buf` starts with (or, if shorter, is a prefix of) the HTTP/2
/// preface.
pub fn h2_preface(buf: &[u8]) -> Parse<()> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Parse::Invalid("not the HTTP/2 preface")
    } else if n < H2_PREFACE.len() {
        Parse::Incomplete
    } else {
        Parse::Complete(())
    }
}

/// Parses `METHOD SP TARGET SP HTTP/1.x` at the start of `buf`. The line is
/// complete once the version digit is in, provided the next byte (if any)
/// ends the line.
pub fn parse_request_line(buf: &[u8]) -> Parse<RequestLine> {
    // Method: one or more token characters, then a single space.
    let Some(method_end) = buf.iter().position(|&b| !is_tchar(b)) else {
        return if buf.len() > MAX_METHOD_LEN {
            Parse::Invalid("HTTP method token too long")
        } else {
            Parse::Incomplete
        };
    };
    if method_end == 0 || buf[method_end] != b' ' {
        return Parse::Invalid("no HTTP method token");
    }
    if method_end > MAX_METHOD_LEN {
        return Parse::Invalid("HTTP method token too long");
    }
    let method = &buf[..method_end];

    // Target: visible characters, then a single space.
    let rest = &buf[method_end + 1..];
    let Some(target_end) = rest.iter().position(|&b| !is_target_char(b)) else {
        return Parse::Incomplete;
    };
    if target_end == 0 || rest[target_end] != b' ' {
        return Parse::Invalid("malformed HTTP request target");
    }
    let target = &rest[..target_end];

    // Version: HTTP/1.<digit>, then the end of the line.
    let version = &rest[target_end + 1..];
    let n = version.len().min(VERSION_PREFIX.len());
    if version[..n] != VERSION_PREFIX[..n] {
        return Parse::Invalid("not an HTTP/1.x request line");
    }
    match version.get(VERSION_PREFIX.len()) {
        None => return Parse::Incomplete,
        Some(d) if !d.is_ascii_digit() => return Parse::Invalid("not an HTTP/1.x version"),
        Some(_) => {}
    }
    match version.get(VERSION_PREFIX.len() + 1) {
        None | Some(b'\r' | b'\n') => {}
        Some(_) => return Parse::Invalid("HTTP/1.x request line does not end after the version"),
    }

    // Method and target bytes were checked to be ASCII above.
    let method = String::from_utf8_lossy(method).into_owned();
    let connect = method == "CONNECT";
    let authority = if connect {
        Some(String::from_utf8_lossy(target).into_owned())
    } else {
        absolute_form_authority(target)
    };
    Parse::Complete(RequestLine {
        method,
        authority,
        connect,
    })
}

/// The authority of an absolute-form target, e.g. `reviews:9080` of
/// `http://user@reviews:9080/x?y`; `None` for other forms.
fn absolute_form_authority(target: &[u8]) -> Option<String> {
    let scheme_end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..scheme_end];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        return None;
    }
    let after = &target[scheme_end + 3..];
    let end = after
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(after.len());
    let mut authority = &after[..end];
    if let Some(at) = authority.iter().rposition(|&b| b == b'@') {
        authority = &authority[at + 1..];
    }
    if authority.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(authority).into_owned())
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a request target: visible ASCII (no controls or
/// spaces); hyper does the full URI validation later.
fn is_target_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(buf: &[u8]) -> RequestLine {
        match parse_request_line(buf) {
            Parse::Complete(l) => l,
            other => panic!("expected a request line from {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn origin_form() {
        let l = line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(l.method, "GET");
        assert_eq!(l.authority, None);
        assert!(!l.connect);
        assert_eq!(line(b"OPTIONS * HTTP/1.0\r\n").authority, None);
    }

    #[test]
    fn connect_and_absolute_form() {
        let l = line(b"CONNECT example.com:443 HTTP/1.1\r\n");
        assert!(l.connect);
        assert_eq!(l.authority.as_deref(), Some("example.com:443"));
        let l = line(b"GET http://reviews:9080/x HTTP/1.1\r\n");
        assert!(!l.connect);
        assert_eq!(l.authority.as_deref(), Some("reviews:9080"));
        let l = line(b"POST https://u:p@ratings?q=1 HTTP/1.1\r\n");
        assert_eq!(l.authority.as_deref(), Some("ratings"));
        // A path that merely contains "://" is still origin-form.
        assert_eq!(line(b"GET /a://b HTTP/1.1\r\n").authority, None);
    }

    #[test]
    fn token_methods_are_accepted() {
        assert_eq!(line(b"PROPFIND /x HTTP/1.1\r\n").method, "PROPFIND");
    }

    #[test]
    fn every_prefix_of_a_request_line_waits() {
        let full = b"GET http://reviews:9080/x HTTP/1.1";
        for n in 0..full.len() {
            assert_eq!(parse_request_line(&full[..n]), Parse::Incomplete, "{n}");
        }
        line(full);
    }

    #[test]
    fn rejects_at_the_first_impossible_byte() {
        for bad in [
            &b"\x00"[..],
            b" GET",
            b"J\x00\x00\x00\x0a",
            b"PING\r\n",
            b"GET  / HTTP/1.1",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTX",
            b"GET / HTTP/1.1x",
            b"GET /\x01 HTTP/1.1",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        ] {
            assert!(
                matches!(parse_request_line(bad), Parse::Invalid(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn h2_preface_prefixes() {
        assert_eq!(h2_preface(b"PRI * HT"), Parse::Incomplete);
        assert_eq!(h2_preface(H2_PREFACE), Parse::Complete(()));
        assert!(matches!(h2_preface(b"POST"), Parse::Invalid(_)));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"GET /:HTP1.\r\n x\x00";
        for _ in 0..50_000 {
            let len = rng.usize(0..40);
            let buf: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = parse_request_line(&buf);
            let _ = h2_preface(&buf);
        }
    }
}
