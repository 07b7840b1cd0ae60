//! Citadel's metrics, under Istio's names (`citadel_server_*`), so its
//! dashboards and alerts work unchanged. Rendered in the Prometheus text
//! format by hand: Istio's counters are named `…_count`, which a client
//! library would suffix with `_total`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Counters of certificate requests and their outcomes.
#[derive(Debug, Default)]
pub struct Metrics {
    /// CSRs received.
    pub csr: AtomicU64,
    /// Callers not authenticated.
    pub authentication_failure: AtomicU64,
    /// CSRs that did not parse or whose signature did not verify.
    pub csr_parsing_err: AtomicU64,
    /// CSRs asking for another identity than the caller's.
    pub id_extraction_err: AtomicU64,
    /// Signing failures.
    pub csr_sign_err: AtomicU64,
    /// Certificates issued.
    pub success_cert_issuance: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format; the expiry gauges are
    /// computed at `now`.
    pub fn render(
        &self,
        root_expiry: SystemTime,
        chain_expiry: SystemTime,
        now: SystemTime,
    ) -> String {
        let mut out = String::new();
        let counters = [
            (
                "citadel_server_csr_count",
                "The number of CSRs received by Citadel server.",
                &self.csr,
            ),
            (
                "citadel_server_authentication_failure_count",
                "The number of authentication failures.",
                &self.authentication_failure,
            ),
            (
                "citadel_server_csr_parsing_err_count",
                "The number of errors occurred when parsing the CSR.",
                &self.csr_parsing_err,
            ),
            (
                "citadel_server_id_extraction_err_count",
                "The number of CSRs whose requested identity is not the caller's.",
                &self.id_extraction_err,
            ),
            (
                "citadel_server_csr_sign_err_count",
                "The number of errors occurred when signing the CSR.",
                &self.csr_sign_err,
            ),
            (
                "citadel_server_success_cert_issuance_count",
                "The number of certificates issuances that have succeeded.",
                &self.success_cert_issuance,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let gauges = [
            (
                "citadel_server_root_cert_expiry_timestamp",
                "The unix timestamp, in seconds, when the root cert will expire.",
                unix(root_expiry),
            ),
            (
                "citadel_server_root_cert_expiry_seconds",
                "The time remaining, in seconds, before the root cert will expire.",
                unix(root_expiry) - unix(now),
            ),
            (
                "citadel_server_cert_chain_expiry_timestamp",
                "The unix timestamp, in seconds, when the signing cert will expire.",
                unix(chain_expiry),
            ),
            (
                "citadel_server_cert_chain_expiry_seconds",
                "The time remaining, in seconds, before the signing cert will expire.",
                unix(chain_expiry) - unix(now),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
