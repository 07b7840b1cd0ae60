//! The optional JSON access log: one object per request, with the field
//! names of Istio's JSON access-log format, written by a background task
//! so a slow disk never slows a request. When the writer falls behind by
//! more than [`QUEUE`] entries, entries are dropped and counted in the log.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::metrics::labels::RequestOutcome;

/// Entries waiting for the writer before new ones are dropped.
pub const QUEUE: usize = 8192;

/// A handle to the access log. Cloning shares the writer.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: Arc<AtomicU64>,
}

/// One request, filled in as it proceeds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Entry {
    /// When the request arrived (RFC 3339).
    pub start_time: String,
    /// The method.
    pub method: String,
    /// The path as received.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The status sent downstream.
    pub response_code: u16,
    /// Keel's reason code (`-` when the upstream answered).
    pub response_flags: &'static str,
    /// Request bytes (headers and body).
    pub bytes_received: u64,
    /// Response bytes (headers and body).
    pub bytes_sent: u64,
    /// Milliseconds from first byte in to last byte out.
    pub duration: u64,
    /// The `:authority`.
    pub authority: String,
    /// `x-request-id`.
    pub request_id: String,
    /// `user-agent`.
    pub user_agent: String,
    /// `x-forwarded-for`.
    pub x_forwarded_for: String,
    /// The client address.
    pub downstream_remote_address: String,
    /// The address the client connected to.
    pub downstream_local_address: String,
    /// The endpoint picked.
    pub upstream_host: String,
    /// The cluster.
    pub upstream_cluster: String,
    /// The route name.
    pub route_name: String,
    /// Why the proxy answered itself, in words.
    pub response_code_details: String,
    /// The gRPC status, when gRPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

impl Entry {
    /// Fills in what is known when the response ends.
    pub fn finish(
        &mut self,
        outcome: RequestOutcome,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.response_code = outcome.response_code;
        self.response_flags = outcome.response_flags;
        self.grpc_status = outcome.grpc_response_status;
        self.duration = duration.as_millis() as u64;
        self.bytes_received = request_bytes;
        self.bytes_sent = response_bytes;
    }
}

/// Formats `t` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl AccessLog {
    /// Starts the writer appending to `path` (`-` or `/dev/stdout` for
    /// standard output). Fails when the file cannot be opened.
    pub fn start(path: PathBuf) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_w = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Some(entry) = rx.blocking_recv() {
                    let lost = dropped_w.swap(0, Relaxed);
                    if lost > 0 {
                        let _ = writeln!(out, "{{\"dropped_entries\":{lost}}}");
                    }
                    if let Ok(line) = serde_json::to_string(&entry) {
                        let _ = writeln!(out, "{line}");
                    }
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
                let _ = out.flush();
            })?;
        Ok(Self { tx, dropped })
    }

    /// Queues `entry`; drops it when the writer is behind.
    pub fn write(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
