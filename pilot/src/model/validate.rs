//! Validation errors and the checks shared by every kind.
//!
//! A spec's `validate` method walks it and records [`FieldError`]s against
//! field paths rooted at `spec` (`spec.http[0].route[1].weight`). The loader
//! adds the file, document index and `kind namespace/name`.

use std::fmt;

/// One thing wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Field path, for example `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong, said so the user knows how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The errors collected while validating one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    items: Vec<FieldError>,
}

impl Errors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the field at `path` is wrong because of `message`.
    pub fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.items.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The recorded errors, in the order found.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.items
    }

    /// The recorded errors, in the order found.
    pub fn as_slice(&self) -> &[FieldError] {
        &self.items
    }
}

// ---------------------------------------------------------------------------
// Shared checks used by the Istio kinds (networking and security). Each
// `check_*` records at most one error at the path it is given; each `is_*`
// or `*_error` helper only answers.

use std::collections::BTreeMap;

use crate::model::duration::Duration;

/// True for an RFC 1123 label: 1–63 lowercase alphanumerics or '-', starting
/// and ending with an alphanumeric (namespaces, subset and port names).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Why `host` is not a valid DNS name in which only the whole first label may
/// be `*`; `None` when it is valid. `"*"` alone is valid. A trailing dot is
/// allowed and the top-level label must not be all digits (Istio's rules).
pub fn wildcard_host_error(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("host must not be empty".to_string());
    }
    if host.len() > 255 {
        return Some(format!(
            "invalid host {host:?}: must be at most 255 characters, got {}",
            host.len()
        ));
    }
    if host == "*" {
        return None;
    }
    let rest = match host.strip_prefix("*.") {
        Some(rest) => rest,
        None if host.contains('*') => {
            return Some(format!(
                "invalid host {host:?}: a wildcard must be the whole first label (\"*.example.com\")"
            ));
        }
        None => host,
    };
    dns_name_error(host, rest)
}

/// Why `host` is not a DNS name without wildcards; `None` when it is valid.
pub fn fqdn_error(host: &str) -> Option<String> {
    if host.contains('*') {
        return Some(format!(
            "invalid host {host:?}: wildcards are not allowed here"
        ));
    }
    if host.is_empty() {
        return Some("host must not be empty".to_string());
    }
    dns_name_error(host, host)
}

fn dns_name_error(full: &str, name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = name.split('.').collect();
    if let Some(last) = labels.last()
        && !last.is_empty()
        && last.bytes().all(|c| c.is_ascii_digit())
        && labels.len() > 1
    {
        return Some(format!(
            "invalid host {full:?}: the top-level domain {last:?} cannot be all digits"
        ));
    }
    for label in labels {
        if !is_dns1123_label(label) {
            return Some(format!(
                "invalid host {full:?}: label {label:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ));
        }
    }
    None
}

/// Records an error when `host` is not a valid host name that may start with
/// a `*.` wildcard label.
pub fn check_wildcard_host(errs: &mut Errors, path: &str, host: &str) {
    if let Some(msg) = wildcard_host_error(host) {
        errs.at(path, msg);
    }
}

/// Records an error unless `port` is between 1 and 65535.
pub fn check_port(errs: &mut Errors, path: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        errs.at(
            path,
            format!("port number must be between 1 and 65535, got {port}"),
        );
    }
}

/// Records an error unless `value` is a percentage between 0 and 100.
pub fn check_percent(errs: &mut Errors, path: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        errs.at(path, format!("must be between 0 and 100, got {value}"));
    }
}

/// Records an error unless `value` is between 0 and 100 (integer percentages).
pub fn check_percent_int(errs: &mut Errors, path: &str, value: i64) {
    if !(0..=100).contains(&value) {
        errs.at(path, format!("must be between 0 and 100, got {value}"));
    }
}

/// Records an error unless `value` is not negative.
pub fn check_non_negative(errs: &mut Errors, path: &str, value: i64) {
    if value < 0 {
        errs.at(path, format!("must not be negative, got {value}"));
    }
}

/// Istio's rule for most duration fields: at least 1ms, and whole
/// milliseconds (Envoy is configured with millisecond precision).
pub fn check_duration(errs: &mut Errors, path: &str, d: &Duration) {
    let std = d.as_std();
    if std < std::time::Duration::from_millis(1) {
        errs.at(path, format!("duration must be at least 1ms, got {d}"));
    } else if !std.subsec_nanos().is_multiple_of(1_000_000) {
        errs.at(
            path,
            format!("only millisecond precision is supported, got {d}"),
        );
    }
}

/// Records an error when `re` does not compile. Istio uses RE2; the `regex`
/// crate accepts the same syntax family (no backreferences or lookaround).
pub fn check_regex(errs: &mut Errors, path: &str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        errs.at(path, format!("invalid regex: {e}"));
    }
}

/// True for an RFC 7230 token, the characters allowed in a header name.
pub fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Records an error unless `name` is a valid HTTP header name (an RFC 7230
/// token). Pseudo-headers (`:authority`, `:method`, `:path`, `:scheme`) are
/// accepted only when `allow_pseudo` is set.
pub fn check_header_name(errs: &mut Errors, path: &str, name: &str, allow_pseudo: bool) {
    if name.is_empty() {
        errs.at(path, "header name must not be empty");
        return;
    }
    if let Some(pseudo) = name.strip_prefix(':') {
        if !allow_pseudo {
            errs.at(
                path,
                format!("invalid header name {name:?}: pseudo-headers (starting with ':') cannot be used here"),
            );
        } else if !matches!(pseudo, "authority" | "method" | "path" | "scheme") {
            errs.at(
                path,
                format!("invalid header name {name:?}: the only pseudo-headers are :authority, :method, :path and :scheme"),
            );
        }
        return;
    }
    if !is_header_token(name) {
        errs.at(
            path,
            format!(
                "invalid header name {name:?}: only letters, digits and !#$%&'*+-.^_`|~ are allowed"
            ),
        );
    }
}

/// Records errors in an `exportTo` list: each entry is `.` (this namespace),
/// `*` (all), `~` (none, and alone) or a namespace name, without duplicates.
pub fn check_export_to(errs: &mut Errors, path: &str, export_to: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !(matches!(e.as_str(), "." | "*" | "~") || is_dns1123_label(e)) {
            errs.at(
                &p,
                format!("invalid exportTo {e:?}: must be \".\", \"*\", \"~\" or a namespace name"),
            );
        }
        if !seen.insert(e.as_str()) {
            errs.at(&p, format!("exportTo {e:?} is listed twice"));
        }
    }
    if export_to.len() > 1 && seen.contains("~") {
        errs.at(
            path,
            "exportTo \"~\" (visible nowhere) cannot be combined with other values",
        );
    }
}

/// Records errors in a label map: keys are Kubernetes qualified names
/// (`[prefix/]name`, name 1–63 alphanumerics, '-', '_', '.'), values are empty
/// or 1–63 of the same characters starting and ending with an alphanumeric.
pub fn check_labels(errs: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    fn is_label_value(v: &str) -> bool {
        let b = v.as_bytes();
        b.is_empty()
            || (b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric())
    }
    for (k, v) in labels {
        let name = match k.rsplit_once('/') {
            Some((prefix, name)) => {
                if prefix.is_empty() || prefix.len() > 253 || fqdn_error(prefix).is_some() {
                    errs.at(
                        format!("{path}.{k}"),
                        format!("invalid label key {k:?}: the prefix must be a DNS subdomain"),
                    );
                    continue;
                }
                name
            }
            None => k.as_str(),
        };
        if name.is_empty() || !is_label_value(name) {
            errs.at(
                format!("{path}.{k}"),
                format!("invalid label key {k:?}: must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
        }
        if !is_label_value(v) {
            errs.at(
                format!("{path}.{k}"),
                format!("invalid label value {v:?}: must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
        }
    }
}

/// True for an IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
pub fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

/// Records an error unless `name` is a valid gateway reference: `mesh`, a
/// gateway name, or `namespace/name`. Names may be DNS subdomains
/// (`gw.ns.svc.cluster.local`).
pub fn check_gateway_name(errs: &mut Errors, path: &str, name: &str) {
    if name == "mesh" {
        return;
    }
    let (ns, gw) = match name.split_once('/') {
        Some((ns, gw)) => (Some(ns), gw),
        None => (None, name),
    };
    if gw.contains('/') {
        errs.at(
            path,
            format!("invalid gateway {name:?}: must be \"name\" or \"namespace/name\", with at most one '/'"),
        );
        return;
    }
    if let Some(ns) = ns
        && !is_dns1123_label(ns)
    {
        errs.at(
            path,
            format!("invalid gateway {name:?}: namespace {ns:?} is not a valid namespace name"),
        );
        return;
    }
    if gw == "mesh" && ns.is_some() {
        errs.at(
            path,
            format!("invalid gateway {name:?}: the reserved gateway \"mesh\" takes no namespace"),
        );
        return;
    }
    if gw.is_empty() || gw.len() > 253 || fqdn_error(gw).is_some() {
        errs.at(
            path,
            format!(
                "invalid gateway {name:?}: the name must be lowercase letters, digits, '-' and '.'"
            ),
        );
    }
}

/// Records an error unless `host` has the `namespace/dnsName` form used by
/// Gateway servers and Sidecar egress listeners. The namespace is `*`, `.`, a
/// namespace name or, when `allow_tilde`, `~`; the DNS name is `*` or a host
/// that may start with `*.`. Without a `/`, the host is accepted only when
/// `require_namespace` is false (Gateway servers).
pub fn check_namespaced_host(
    errs: &mut Errors,
    path: &str,
    host: &str,
    require_namespace: bool,
    allow_tilde: bool,
) {
    let Some((ns, name)) = host.split_once('/') else {
        if require_namespace {
            errs.at(
                path,
                format!("invalid host {host:?}: must be \"namespace/dnsName\" (namespace \"*\", \".\", \"~\" or a name)"),
            );
        } else {
            check_wildcard_host(errs, path, host);
        }
        return;
    };
    let ns_ok = matches!(ns, "*" | ".") || (allow_tilde && ns == "~") || is_dns1123_label(ns);
    if !ns_ok {
        let allowed = if allow_tilde {
            "\"*\", \".\", \"~\" or a namespace name"
        } else {
            "\"*\", \".\" or a namespace name"
        };
        errs.at(
            path,
            format!("invalid host {host:?}: namespace {ns:?} must be {allowed}"),
        );
        return;
    }
    check_wildcard_host(errs, path, name);
}
