//! Pilot's Prometheus metrics, under Istio's names so existing control-plane
//! dashboards work unchanged.
//!
//! Istio exposes several counters without the `_total` suffix
//! (`pilot_xds_pushes`, `pilot_total_xds_rejects`), which the OpenMetrics
//! encoder of `prometheus-client` would add; pilot's metrics are few and off
//! any hot path, so it renders Prometheus text format 0.0.4 itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A counter family keyed by label values.
#[derive(Debug)]
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `n` to the series with these label values (in declaration order).
    pub fn add(&self, label_values: &[&str], n: u64) {
        let key = label_values.iter().map(|s| s.to_string()).collect();
        *lock(&self.values).entry(key).or_default() += n;
    }

    /// Adds one.
    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1);
    }

    /// The current value of one series (0 if never incremented).
    pub fn get(&self, label_values: &[&str]) -> u64 {
        let key: Vec<String> = label_values.iter().map(|s| s.to_string()).collect();
        lock(&self.values).get(&key).copied().unwrap_or(0)
    }

    fn encode(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (values, v) in lock(&self.values).iter() {
            series(out, self.name, self.labels, values, &v.to_string());
        }
    }
}

/// A gauge without labels.
#[derive(Debug)]
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicI64::new(0),
        }
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }

    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.value.fetch_add(d, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    fn encode(&self, out: &mut String, labels: &[(&str, &str)]) {
        header(out, self.name, self.help, "gauge");
        let (names, values): (Vec<&str>, Vec<String>) =
            labels.iter().map(|(k, v)| (*k, v.to_string())).unzip();
        series(out, self.name, &names, &values, &self.get().to_string());
    }
}

/// A histogram of seconds without labels.
#[derive(Debug)]
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Self {
            name,
            help,
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation, in seconds.
    pub fn observe(&self, secs: f64) {
        for (b, bucket) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *b {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn encode(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let bucket = format!("{}_bucket", self.name);
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            let le = b.to_string();
            series(
                out,
                &bucket,
                &["le"],
                &[le],
                &n.load(Ordering::Relaxed).to_string(),
            );
        }
        let count = self.count().to_string();
        series(out, &bucket, &["le"], &["+Inf".to_string()], &count);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {count}", self.name);
    }
}

/// Every metric pilot exports.
#[derive(Debug)]
pub struct Metrics {
    /// `pilot_xds`: connected xDS clients.
    pub xds_clients: Gauge,
    /// `pilot_xds_pushes{type}`: xDS responses sent, by type (`lds`, `rds`, `cds`, `eds`).
    pub pushes: CounterVec,
    /// `pilot_total_xds_rejects{type}`: NACKs received from clients, by type.
    pub rejects: CounterVec,
    /// `pilot_total_xds_internal_errors`: streams ended by a malformed or hostile request.
    pub stream_errors: CounterVec,
    /// `pilot_proxy_convergence_time`: seconds from a config change to its push.
    pub convergence: Histogram,
    /// `pilot_services`: services in the registry.
    pub services: Gauge,
    /// `pilot_virt_services`: VirtualServices in the serving config.
    pub virt_services: Gauge,
    /// `pilot_config_rejected_files`: config files currently rejected (their last good version serves).
    pub rejected_files: Gauge,
    /// `pilot_total_config_validation_errors{kind}`: validation errors found, by resource kind.
    pub validation_errors: CounterVec,
    /// `pilot_config_reloads{result}`: config reloads, by result (`ok`, `partial`).
    pub reloads: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metrics, all zero.
    pub fn new() -> Self {
        Self {
            xds_clients: Gauge::new(
                "pilot_xds",
                "Number of endpoints connected to this pilot using XDS.",
            ),
            pushes: CounterVec::new(
                "pilot_xds_pushes",
                "Pilot build and send errors for lds, rds, cds and eds.",
                &["type"],
            ),
            rejects: CounterVec::new(
                "pilot_total_xds_rejects",
                "Total number of XDS responses from pilot rejected by proxy.",
                &["type"],
            ),
            stream_errors: CounterVec::new(
                "pilot_total_xds_internal_errors",
                "Total number of xDS streams ended because of a malformed or invalid request.",
                &["reason"],
            ),
            convergence: Histogram::new(
                "pilot_proxy_convergence_time",
                "Delay in seconds between config change and a proxy receiving all required configuration.",
                &[0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0],
            ),
            services: Gauge::new("pilot_services", "Total services known to pilot."),
            virt_services: Gauge::new(
                "pilot_virt_services",
                "Total virtual services known to pilot.",
            ),
            rejected_files: Gauge::new(
                "pilot_config_rejected_files",
                "Config files currently rejected by validation; their last good version keeps serving.",
            ),
            validation_errors: CounterVec::new(
                "pilot_total_config_validation_errors",
                "Validation errors found in config, by resource kind.",
                &["kind"],
            ),
            reloads: CounterVec::new(
                "pilot_config_reloads",
                "Config reloads, by result.",
                &["result"],
            ),
        }
    }

    /// Renders every metric in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.xds_clients
            .encode(&mut out, &[("version", env!("CARGO_PKG_VERSION"))]);
        self.pushes.encode(&mut out);
        self.rejects.encode(&mut out);
        self.stream_errors.encode(&mut out);
        self.convergence.encode(&mut out);
        self.services.encode(&mut out, &[]);
        self.virt_services.encode(&mut out, &[]);
        self.rejected_files.encode(&mut out, &[]);
        self.validation_errors.encode(&mut out);
        self.reloads.encode(&mut out);
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a counter map inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn series(out: &mut String, name: &str, names: &[&str], values: &[String], value: &str) {
    out.push_str(name);
    if !names.is_empty() {
        out.push('{');
        for (i, (k, v)) in names.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_names_and_labels() {
        let m = Metrics::new();
        m.pushes.inc(&["cds"]);
        m.pushes.add(&["cds"], 2);
        m.rejects.inc(&["rds"]);
        m.xds_clients.set(3);
        m.convergence.observe(0.2);
        let text = m.encode();
        assert!(
            text.contains("pilot_xds_pushes{type=\"cds\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("pilot_total_xds_rejects{type=\"rds\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pilot_xds{version=\""), "{text}");
        assert!(
            text.contains("pilot_proxy_convergence_time_bucket{le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pilot_proxy_convergence_time_bucket{le=\"0.1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("pilot_proxy_convergence_time_count 1\n"),
            "{text}"
        );
    }
}
