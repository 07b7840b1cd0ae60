//! A bounds-checked parser for the first flight of a TLS client: the
//! ClientHello, read only for what routing needs (SNI and ALPN).
//!
//! It owns nothing but byte arithmetic: every read goes through [`Reader`],
//! which returns `None` instead of indexing past the end, so garbage or a
//! truncated hello yields [`Parse::Incomplete`] or [`Parse::Invalid`], never
//! a panic. It does not validate cryptographic content (cipher suites, key
//! shares) and does not decide what to do with the result; that is
//! [`super::detect`].
//!
//! A ClientHello may be split across several TLS records (large post-quantum
//! key shares); the fragments of consecutive handshake records are
//! reassembled before parsing.

use std::borrow::Cow;

use super::Parse;

/// TLS record content type `handshake`.
const CONTENT_HANDSHAKE: u8 = 0x16;
/// Handshake message type `client_hello`.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest record payload a peer may send (RFC 8446 §5.1, plus the 2 KiB
/// TLS 1.2 allowance for compressed/encrypted records).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
/// Largest ClientHello we are willing to reassemble.
const MAX_HELLO_LEN: usize = 1 << 16;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, if present and ASCII.
    pub sni: Option<String>,
    /// The protocols offered in the ALPN extension, in the client's order.
    pub alpn: Vec<String>,
}

/// Parses the TLS record(s) at the start of `buf` as a ClientHello.
///
/// Returns [`Parse::Incomplete`] while `buf` is a valid prefix of a
/// ClientHello, so the caller can wait for more bytes, and
/// [`Parse::Invalid`] as soon as a byte rules TLS out.
pub fn parse_client_hello(buf: &[u8]) -> Parse<ClientHello> {
    match reassemble(buf) {
        Parse::Complete(hello) => match parse_body(&hello) {
            Some(parsed) => Parse::Complete(parsed),
            None => Parse::Invalid("malformed TLS ClientHello"),
        },
        Parse::Incomplete => Parse::Incomplete,
        Parse::Invalid(why) => Parse::Invalid(why),
    }
}

/// Checks a record header (as much of it as `hdr` holds).
fn check_record_header(hdr: &[u8]) -> Result<(), &'static str> {
    match hdr {
        [t, ..] if *t != CONTENT_HANDSHAKE => Err("TLS record is not a handshake"),
        [_, major, ..] if *major != 3 => Err("not a TLS record version"),
        [_, _, minor, ..] if *minor > 4 => Err("not a TLS record version"),
        [_, _, _, hi, lo, ..] if usize::from(u16::from_be_bytes([*hi, *lo])) > MAX_RECORD_LEN => {
            Err("TLS record too long")
        }
        [_, _, _, 0, 0, ..] => Err("empty TLS record"),
        _ => Ok(()),
    }
}

/// Collects the ClientHello handshake message body (without the 4-byte
/// handshake header) from one or more records.
fn reassemble(buf: &[u8]) -> Parse<Cow<'_, [u8]>> {
    let mut fragments: Option<Vec<u8>> = None;
    let mut first: &[u8] = &[];
    let mut rest = buf;
    loop {
        if let Err(why) = check_record_header(rest) {
            return Parse::Invalid(why);
        }
        let Some(&[_, _, _, hi, lo]) = rest.get(..5) else {
            return Parse::Incomplete;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let avail = &rest[5..];
        let payload = &avail[..len.min(avail.len())];
        // Check the handshake header as early as its bytes arrive.
        if first.is_empty() && fragments.is_none() {
            first = payload;
            if let Some(&t) = payload.first()
                && t != HANDSHAKE_CLIENT_HELLO
            {
                return Parse::Invalid("TLS handshake is not a ClientHello");
            }
        } else {
            fragments
                .get_or_insert_with(|| first.to_vec())
                .extend_from_slice(payload);
        }
        let so_far: &[u8] = fragments.as_deref().unwrap_or(first);
        if let Some(&[_, a, b, c]) = so_far.get(..4) {
            let hs_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            if hs_len > MAX_HELLO_LEN {
                return Parse::Invalid("TLS ClientHello too long");
            }
            if so_far.len() >= 4 + hs_len {
                return Parse::Complete(match fragments {
                    Some(mut v) => {
                        v.truncate(4 + hs_len);
                        v.drain(..4);
                        Cow::Owned(v)
                    }
                    None => Cow::Borrowed(&first[4..4 + hs_len]),
                });
            }
        }
        if payload.len() < len {
            return Parse::Incomplete;
        }
        // The message continues in the next record.
        rest = &avail[len..];
        if rest.is_empty() {
            return Parse::Incomplete;
        }
    }
}

/// Parses a complete ClientHello body; `None` when it is malformed.
fn parse_body(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id_len = r.u8()?;
    if session_id_len > 32 {
        return None;
    }
    r.take(usize::from(session_id_len))?;
    let suites = r.u16()?;
    if suites < 2 || suites % 2 != 0 {
        return None;
    }
    r.take(usize::from(suites))?;
    let compression = r.u8()?;
    if compression < 1 {
        return None;
    }
    r.take(usize::from(compression))?;
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        // Pre-TLS-1.2 clients may omit extensions entirely.
        return Some(hello);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len))?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(usize::from(len))?;
        match ty {
            EXT_SERVER_NAME => hello.sni = parse_sni(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

/// server_name extension: a list of (type, name); the first `host_name` wins.
/// A non-ASCII name is not an error for detection, just not usable.
fn parse_sni(data: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(data);
    let list_len = r.u16()?;
    let mut list = Reader(r.take(usize::from(list_len))?);
    let mut sni = None;
    while !list.0.is_empty() {
        let ty = list.u8()?;
        let len = list.u16()?;
        let name = list.take(usize::from(len))?;
        if ty == SNI_HOST_NAME && sni.is_none() && !name.is_empty() && name.is_ascii() {
            sni = std::str::from_utf8(name).ok().map(str::to_owned);
        }
    }
    Some(sni)
}

/// ALPN extension: a list of length-prefixed protocol names.
fn parse_alpn(data: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(data);
    let list_len = r.u16()?;
    let mut list = Reader(r.take(usize::from(list_len))?);
    let mut protocols = Vec::new();
    while !list.0.is_empty() {
        let len = list.u8()?;
        if len == 0 {
            return None;
        }
        let name = list.take(usize::from(len))?;
        protocols.push(String::from_utf8_lossy(name).into_owned());
    }
    Some(protocols)
}

/// A cursor over a byte slice whose reads return `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Builds a ClientHello record the way a TLS 1.3 client lays it out; shared
/// with the socket tests in [`super`].
#[cfg(test)]
pub(crate) fn build_client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    fn u16_prefixed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }
    let mut exts = Vec::new();
    if let Some(sni) = sni {
        let mut entry = vec![SNI_HOST_NAME];
        entry.extend(u16_prefixed(sni.as_bytes()));
        exts.extend(EXT_SERVER_NAME.to_be_bytes());
        exts.extend(u16_prefixed(&u16_prefixed(&entry)));
    }
    // An extension we skip: supported_versions (TLS 1.3, 1.2).
    exts.extend([0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        exts.extend(EXT_ALPN.to_be_bytes());
        exts.extend(u16_prefixed(&u16_prefixed(&list)));
    }
    let mut body = vec![0x03, 0x03];
    body.extend([0x5a; 32]); // random
    body.push(32);
    body.extend([0xa5; 32]); // legacy session id
    body.extend(u16_prefixed(&[0x13, 0x01, 0x13, 0x02, 0x13, 0x03]));
    body.extend([1, 0]); // null compression
    body.extend(u16_prefixed(&exts));
    let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![CONTENT_HANDSHAKE, 3, 1];
    record.extend(u16_prefixed(&hs));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNI: &str = "reviews.default.svc.cluster.local";

    fn complete(buf: &[u8]) -> ClientHello {
        match parse_client_hello(buf) {
            Parse::Complete(h) => h,
            other => panic!("expected a complete hello, got {other:?}"),
        }
    }

    #[test]
    fn parses_sni_and_alpn() {
        let hello = complete(&build_client_hello(Some(SNI), &["h2", "http/1.1"]));
        assert_eq!(hello.sni.as_deref(), Some(SNI));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    }

    #[test]
    fn parses_hello_without_sni_or_alpn() {
        assert_eq!(
            complete(&build_client_hello(None, &[])),
            ClientHello::default()
        );
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let full = build_client_hello(Some(SNI), &["h2"]);
        for n in 0..full.len() {
            assert_eq!(
                parse_client_hello(&full[..n]),
                Parse::Incomplete,
                "prefix of {n} bytes"
            );
        }
        // Trailing bytes (the next record) do not matter.
        let mut more = full.clone();
        more.extend([0x17, 3, 3, 0, 1, 0]);
        assert_eq!(complete(&more).sni.as_deref(), Some(SNI));
    }

    #[test]
    fn reassembles_a_hello_split_across_records() {
        let full = build_client_hello(Some(SNI), &["h2", "http/1.1"]);
        let hs = &full[5..];
        for split in [1, 4, 10, hs.len() / 2, hs.len() - 1] {
            let mut buf = Vec::new();
            for part in [&hs[..split], &hs[split..]] {
                buf.extend([CONTENT_HANDSHAKE, 3, 3]);
                buf.extend((part.len() as u16).to_be_bytes());
                buf.extend(part);
            }
            let hello = complete(&buf);
            assert_eq!(hello.sni.as_deref(), Some(SNI), "split at {split}");
            assert_eq!(hello.alpn, ["h2", "http/1.1"]);
            for n in 0..buf.len() {
                assert_eq!(parse_client_hello(&buf[..n]), Parse::Incomplete);
            }
        }
    }

    #[test]
    fn rejects_early_on_wrong_header_bytes() {
        assert!(matches!(parse_client_hello(&[0x15]), Parse::Invalid(_)));
        assert!(matches!(
            parse_client_hello(&[0x16, 0x02]),
            Parse::Invalid(_)
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 9]),
            Parse::Invalid(_)
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0xff, 0xff]),
            Parse::Invalid(_)
        ));
        // A ServerHello (type 2) is not what a client sends first.
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 40, 2]),
            Parse::Invalid(_)
        ));
    }

    #[test]
    fn inconsistent_inner_lengths_are_invalid() {
        let full = build_client_hello(Some(SNI), &["h2"]);
        // Corrupt each byte after the headers in turn: never a panic, and a
        // structural corruption is reported rather than waited on forever.
        for i in 9..full.len() {
            for v in [0x00, 0xff, 0x7f] {
                let mut bad = full.clone();
                bad[i] = v;
                let _ = parse_client_hello(&bad);
            }
        }
        // Extensions length larger than the message.
        let mut bad = full.clone();
        let ext_len_at = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2;
        bad[ext_len_at] = 0xff;
        assert!(matches!(parse_client_hello(&bad), Parse::Invalid(_)));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x6b65656c);
        let valid = build_client_hello(Some(SNI), &["h2", "http/1.1"]);
        for _ in 0..20_000 {
            let len = rng.usize(0..600);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Half the time keep a plausible header so the parser goes deep.
            if rng.bool() && buf.len() > 9 {
                buf[..9].copy_from_slice(&valid[..9]);
                if rng.bool() {
                    let n = rng.usize(..valid.len());
                    buf = valid[..n].iter().copied().chain(buf).collect();
                }
            }
            let _ = parse_client_hello(&buf);
        }
        // Random single-byte mutations of a valid hello.
        for _ in 0..20_000 {
            let mut buf = valid.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..buf.len());
                buf[i] = rng.u8(..);
            }
            buf.truncate(rng.usize(..=buf.len()));
            let _ = parse_client_hello(&buf);
        }
    }
}
