//! CORS (VirtualService `corsPolicy`, delivered as Envoy's per-route CORS
//! filter config), as Envoy's CORS filter applies it: a preflight from an
//! allowed origin is answered by the proxy; other requests from an allowed
//! origin get the `access-control-allow-*` headers on their response.
//! Requests from other origins pass through untouched, and the browser
//! enforces the missing headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::Body;
use crate::router::string_matches;
use crate::state::route::Cors;

/// The request's `Origin`, when `cors` allows it.
pub(super) fn allowed_origin(cors: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    cors.allow_origins
        .iter()
        .any(|m| string_matches(m, origin.as_bytes()))
        .then(|| origin.clone())
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub(super) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The proxy's answer to a preflight from `origin`, an allowed origin.
pub(super) fn preflight(cors: &Cors, origin: HeaderValue) -> Response<Body> {
    let mut resp = Response::new(super::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let mut set = |name, value: &str| {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_str(value)
        {
            h.insert(name, v);
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods);
    set(header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers);
    set(header::ACCESS_CONTROL_MAX_AGE, &cors.max_age);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// Adds the headers a response to an allowed origin's (non-preflight)
/// request carries.
pub(super) fn decorate(cors: &Cors, origin: HeaderValue, headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers)
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::route::{StringMatch, StringMatcher};

    fn cors() -> Cors {
        Cors {
            allow_origins: vec![
                StringMatcher {
                    pattern: StringMatch::Exact("https://app.example.com".into()),
                    ignore_case: false,
                },
                StringMatcher {
                    pattern: StringMatch::Suffix(".trusted.test".into()),
                    ignore_case: false,
                },
            ],
            allow_methods: "GET,POST".into(),
            allow_headers: "x-token".into(),
            expose_headers: "x-trace".into(),
            max_age: "600".into(),
            allow_credentials: true,
        }
    }

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("ascii"),
        );
        h
    }

    #[test]
    fn origins_are_matched_by_the_policy() {
        let c = cors();
        assert!(allowed_origin(&c, &with_origin("https://app.example.com")).is_some());
        assert!(allowed_origin(&c, &with_origin("https://x.trusted.test")).is_some());
        assert!(allowed_origin(&c, &with_origin("https://evil.test")).is_none());
        assert!(allowed_origin(&c, &HeaderMap::new()).is_none());
    }

    #[test]
    fn preflights_are_answered_and_responses_decorated() {
        let c = cors();
        let mut h = with_origin("https://app.example.com");
        assert!(!is_preflight(&Method::OPTIONS, &h));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        assert!(is_preflight(&Method::OPTIONS, &h));
        assert!(!is_preflight(&Method::GET, &h));
        let origin = allowed_origin(&c, &h).expect("allowed");
        let r = preflight(&c, origin.clone());
        assert_eq!(r.status(), StatusCode::OK);
        let got = |n| r.headers()[n].to_str().expect("text").to_string();
        assert_eq!(
            got(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "https://app.example.com"
        );
        assert_eq!(got(header::ACCESS_CONTROL_ALLOW_METHODS), "GET,POST");
        assert_eq!(got(header::ACCESS_CONTROL_ALLOW_HEADERS), "x-token");
        assert_eq!(got(header::ACCESS_CONTROL_MAX_AGE), "600");
        assert_eq!(got(header::ACCESS_CONTROL_ALLOW_CREDENTIALS), "true");
        let mut resp = HeaderMap::new();
        decorate(&c, origin, &mut resp);
        assert_eq!(
            resp[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(resp[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-trace");
        assert!(!resp.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
    }
}
