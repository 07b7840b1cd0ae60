//! Responses the proxy produces itself: a status, `x-keel-error: CODE`, a
//! one-line text body saying why, and for gRPC requests the equivalent
//! gRPC status as a trailers-only response.

use http::{HeaderValue, Response, StatusCode};

use super::{Body, full};
use crate::metrics::labels::flags;
use crate::state::route::AbortStatus;

/// Why the proxy answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// No listener, virtual host or route matched.
    NoRoute,
    /// The route names a cluster the proxy does not have.
    NoCluster,
    /// The cluster has no endpoint to send to.
    NoHealthyUpstream,
    /// Connecting to the endpoint failed.
    ConnectFailure,
    /// The upstream connection broke before a response.
    UpstreamReset,
    /// The route's timeout expired.
    Timeout,
    /// A circuit breaker of the cluster is full.
    Overflow,
}

impl ErrorCode {
    /// The code: the `x-keel-error` value and the `response_flags` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => flags::NO_ROUTE_FOUND,
            Self::NoCluster => flags::NO_CLUSTER_FOUND,
            Self::NoHealthyUpstream => flags::NO_HEALTHY_UPSTREAM,
            Self::ConnectFailure => flags::UPSTREAM_CONNECTION_FAILURE,
            Self::UpstreamReset => flags::UPSTREAM_CONNECTION_TERMINATION,
            Self::Timeout => flags::UPSTREAM_REQUEST_TIMEOUT,
            Self::Overflow => flags::UPSTREAM_OVERFLOW,
        }
    }

    /// The HTTP status Envoy answers with for the same cause.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoCluster
            | Self::NoHealthyUpstream
            | Self::ConnectFailure
            | Self::UpstreamReset
            | Self::Overflow => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status for a gRPC request (gRPC's HTTP-to-gRPC mapping).
    pub fn grpc_status(self) -> u32 {
        match self.status() {
            StatusCode::NOT_FOUND => 12, // UNIMPLEMENTED
            _ => 14,                     // UNAVAILABLE
        }
    }
}

/// The response for `code`, explained by `detail`.
pub fn respond(code: ErrorCode, detail: &str, grpc: bool) -> Response<Body> {
    let mut resp = if grpc {
        let mut r = Response::new(super::empty());
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code.grpc_status()));
        if let Ok(v) =
            HeaderValue::from_str(&percent_encode(&format!("{}: {detail}", code.as_str())))
        {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(full(format!("{}: {detail}\n", code.as_str())));
        *r.status_mut() = code.status();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    resp.headers_mut()
        .insert("x-keel-error", HeaderValue::from_static(code.as_str()));
    resp
}

/// The answer to a request aborted by fault injection: the configured HTTP
/// status, or for gRPC requests (and gRPC aborts) a trailers-only response
/// with the gRPC status; `x-keel-error: fault_abort` either way.
pub fn fault_abort(status: AbortStatus, grpc: bool) -> Response<Body> {
    let mut resp = match (status, grpc) {
        (AbortStatus::Grpc(code), _) => grpc_abort(code),
        (AbortStatus::Http(http), true) => grpc_abort(grpc_from_http(http)),
        (AbortStatus::Http(http), false) => {
            let mut r = Response::new(full("fault filter abort\n"));
            *r.status_mut() = StatusCode::from_u16(http).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
    };
    resp.headers_mut().insert(
        "x-keel-error",
        HeaderValue::from_static(flags::FAULT_INJECTED),
    );
    resp
}

/// A trailers-only gRPC response with `code`.
fn grpc_abort(code: u32) -> Response<Body> {
    let mut r = Response::new(super::empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert(
        "grpc-message",
        HeaderValue::from_static("fault filter abort"),
    );
    r
}

/// gRPC's mapping of HTTP statuses to gRPC codes.
fn grpc_from_http(status: u16) -> u32 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// gRPC's `grpc-message` percent-encoding (RFC 3986 unreserved and
/// printable ASCII except `%` pass through).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_carry_code_and_reason() {
        let r = respond(ErrorCode::NoRoute, "no virtual host for \"x\"", false);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["x-keel-error"], "no_route");
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = respond(
            ErrorCode::ConnectFailure,
            "connecting to 10.0.0.1:80: refused é",
            true,
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["x-keel-error"], "connect_failure");
        assert!(
            r.headers()["grpc-message"]
                .to_str()
                .is_ok_and(|m| m.ends_with("refused %C3%A9"))
        );
    }
}
