//! Turns a decoded request header block into `http` request parts, checking
//! what RFC 9113 §8.3.1 and §8.2.2 require of a request: the pseudo-header
//! fields (each once, before the regular fields, the right set for
//! `CONNECT`), lowercase names, no connection-specific fields, `te` only
//! `trailers`. Cookie crumbs are joined back into one field (§8.2.3), as an
//! HTTP/1.1 upstream expects.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri};

use crate::http2::hpack::{Field, Name};

/// Collects one request's fields as the decoder yields them.
#[derive(Default)]
pub struct Builder {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    cookies: Vec<Bytes>,
    regular_seen: bool,
    error: Option<String>,
}

/// A valid request head.
pub struct Head {
    /// `:method`.
    pub method: Method,
    /// From `:scheme`, `:authority` and `:path`.
    pub uri: Uri,
    /// The regular fields.
    pub headers: HeaderMap,
}

impl Builder {
    /// A builder whose header map has room for `capacity` fields.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            headers: HeaderMap::with_capacity(capacity),
            ..Self::default()
        }
    }

    fn fail(&mut self, why: impl FnOnce() -> String) {
        if self.error.is_none() {
            self.error = Some(why());
        }
    }

    fn pseudo(&mut self, name: &str, value: Bytes, slot: fn(&mut Self) -> &mut Option<Bytes>) {
        if self.regular_seen {
            return self.fail(|| format!("pseudo-header {name} after a regular header field"));
        }
        let slot = slot(self);
        if slot.is_some() {
            return self.fail(|| format!("pseudo-header {name} repeated"));
        }
        *slot = Some(value);
    }

    /// Takes the next field.
    pub fn field(&mut self, f: Field) {
        match f.name {
            Name::Method => self.pseudo(":method", f.value, |s| &mut s.method),
            Name::Scheme => self.pseudo(":scheme", f.value, |s| &mut s.scheme),
            Name::Authority => self.pseudo(":authority", f.value, |s| &mut s.authority),
            Name::Path => self.pseudo(":path", f.value, |s| &mut s.path),
            Name::Status => self.fail(|| "a request carries :status".to_string()),
            Name::Protocol => {
                self.fail(|| ":protocol (extended CONNECT) is not enabled".to_string());
            }
            Name::Header(name) => {
                self.regular_seen = true;
                self.regular(name, f.value);
            }
            Name::Malformed(raw) => {
                self.fail(|| format!("invalid field name {:?}", String::from_utf8_lossy(&raw)));
            }
        }
    }

    fn regular(&mut self, name: HeaderName, value: Bytes) {
        if is_connection_specific(&name) {
            return self.fail(|| format!("connection-specific header field {name}"));
        }
        if name == header::TE && !value.eq_ignore_ascii_case(b"trailers") {
            return self.fail(|| "te other than \"trailers\"".to_string());
        }
        if name == header::COOKIE {
            self.cookies.push(value);
            return;
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(v) => {
                self.headers.append(name, v);
            }
            Err(_) => self.fail(|| format!("invalid value for header field {name}")),
        }
    }

    /// Checks the fields and builds the head, or says what is wrong.
    pub fn finish(mut self) -> Result<Head, String> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match self.cookies.len() {
            0 => {}
            1 => {
                let v = self.cookies.pop().unwrap_or_default();
                self.cookie(v)?;
            }
            _ => {
                let mut joined = BytesMut::new();
                for (i, c) in self.cookies.iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(b"; ");
                    }
                    joined.extend_from_slice(c);
                }
                self.cookie(joined.freeze())?;
            }
        }
        let method = self.method.ok_or(":method missing")?;
        let method =
            Method::from_bytes(&method).map_err(|_| format!("invalid :method {method:?}"))?;
        let authority = match self.authority {
            Some(a) => Some(
                Authority::from_maybe_shared(a.clone())
                    .map_err(|_| format!("invalid :authority {a:?}"))?,
            ),
            None => None,
        };
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err("CONNECT with :scheme or :path".to_string());
            }
            parts.authority = Some(authority.ok_or("CONNECT without :authority")?);
        } else {
            let scheme = self.scheme.ok_or(":scheme missing")?;
            let path = self.path.ok_or(":path missing")?;
            if path.is_empty() {
                return Err(":path empty".to_string());
            }
            let path = PathAndQuery::from_maybe_shared(path.clone())
                .map_err(|_| format!("invalid :path {path:?}"))?;
            if authority.is_some() {
                parts.scheme = Some(
                    Scheme::try_from(&scheme[..])
                        .map_err(|_| format!("invalid :scheme {scheme:?}"))?,
                );
                parts.authority = authority;
            }
            parts.path_and_query = Some(path);
        }
        let uri = Uri::from_parts(parts).map_err(|e| format!("invalid request target: {e}"))?;
        Ok(Head {
            method,
            uri,
            headers: self.headers,
        })
    }

    fn cookie(&mut self, v: Bytes) -> Result<(), String> {
        let v = HeaderValue::from_maybe_shared(v)
            .map_err(|_| "invalid value for header field cookie".to_string())?;
        self.headers.insert(header::COOKIE, v);
        Ok(())
    }
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2).
pub fn is_connection_specific(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == "keep-alive"
        || *name == "proxy-connection"
}

/// Builds a trailer map from fields: regular fields only.
#[derive(Default)]
pub struct Trailers {
    /// The fields so far.
    pub headers: HeaderMap,
    /// The first problem.
    pub error: Option<String>,
}

impl Trailers {
    /// Takes the next field.
    pub fn field(&mut self, f: Field) {
        match f.name {
            Name::Header(name) => {
                if is_connection_specific(&name) {
                    self.error
                        .get_or_insert_with(|| format!("connection-specific trailer {name}"));
                    return;
                }
                match HeaderValue::from_maybe_shared(f.value) {
                    Ok(v) => {
                        self.headers.append(name, v);
                    }
                    Err(_) => {
                        self.error
                            .get_or_insert_with(|| format!("invalid value for trailer {name}"));
                    }
                }
            }
            Name::Malformed(raw) => {
                self.error.get_or_insert_with(|| {
                    format!("invalid trailer name {:?}", String::from_utf8_lossy(&raw))
                });
            }
            _ => {
                self.error
                    .get_or_insert_with(|| "pseudo-header in trailers".to_string());
            }
        }
    }
}
