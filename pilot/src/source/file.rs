//! A watched directory of config files.
//!
//! The directory is read recursively (`*.yaml`, `*.yml`, `*.json`; entries
//! whose names start with `.` are skipped, which also skips the `..data`
//! indirection of Kubernetes ConfigMap mounts). It is rescanned every poll
//! interval; changed files are reloaded into the store, deleted files
//! removed. Changes are debounced: a snapshot is published once no change has
//! been seen for the quiet period, or once the first pending change is older
//! than the maximum delay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::store::{ConfigStore, Snapshot};

/// What identifies a file version without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The directory watcher.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    seen: BTreeMap<String, Stamp>,
}

/// Why the config directory could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory is missing or unreadable.
    #[error("cannot read config directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl FileSource {
    /// Watches `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            seen: BTreeMap::new(),
        }
    }

    /// Rescans the directory and applies what changed to `store`. Returns
    /// whether anything changed.
    pub fn sync(&mut self, store: &mut ConfigStore) -> Result<bool, SourceError> {
        let mut now = BTreeMap::new();
        scan(&self.dir, &self.dir, &mut now).map_err(|source| SourceError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut changed = false;
        for (rel, stamp) in &now {
            if self.seen.get(rel) == Some(stamp) {
                continue;
            }
            match std::fs::read(self.dir.join(rel)) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let loaded = store.upsert(rel, &text);
                    for e in &loaded.errors {
                        tracing::warn!(file = %rel, "config rejected: {e}");
                    }
                    for w in &loaded.warnings {
                        tracing::info!(file = %rel, "{w}");
                    }
                    changed = true;
                }
                Err(e) => {
                    // Keep the last good version; try again on the next scan.
                    tracing::warn!(file = %rel, error = %e, "cannot read config file");
                    continue;
                }
            }
            self.seen.insert(rel.clone(), *stamp);
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for rel in gone {
            tracing::info!(file = %rel, "config file removed");
            self.seen.remove(&rel);
            store.remove(&rel);
            changed = true;
        }
        Ok(changed)
    }
}

fn scan(root: &Path, dir: &Path, out: &mut BTreeMap<String, Stamp>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks, as ConfigMap mounts use them.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            scan(root, &path, out)?;
        } else if [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.insert(
                rel,
                Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                },
            );
        }
    }
    Ok(())
}

/// Debounce settings.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Publish once no change was seen for this long.
    pub after: Duration,
    /// Publish at the latest this long after the first pending change.
    pub max: Duration,
    /// How often to scan.
    pub poll: Duration,
}

/// Scans, debounces and publishes snapshots until the process ends.
pub async fn run(
    mut source: FileSource,
    store: Arc<Mutex<ConfigStore>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    debounce: Debounce,
) {
    let mut first_pending: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut ticker = tokio::time::interval(debounce.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let changed = {
            let mut store = lock(&store);
            match source.sync(&mut store) {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::warn!("{e}; serving the last good config");
                    false
                }
            }
        };
        if changed {
            last_change = Instant::now();
            first_pending.get_or_insert(last_change);
        }
        let Some(first) = first_pending else { continue };
        if last_change.elapsed() >= debounce.after || first.elapsed() >= debounce.max {
            first_pending = None;
            let snapshot = publish(&store, &metrics);
            snapshots.send_replace(snapshot);
        }
    }
}

/// Builds a snapshot from the store, logs and counts its errors.
pub fn publish(store: &Mutex<ConfigStore>, metrics: &Metrics) -> Arc<Snapshot> {
    let mut store = lock(store);
    let snapshot = store.snapshot();
    let status = store.status();
    let rejected = status.iter().filter(|f| !f.accepted).count();
    for e in store.errors() {
        metrics.validation_errors.inc(&[e
            .object
            .as_deref()
            .and_then(|o| o.split(' ').next())
            .unwrap_or("document")]);
    }
    metrics.rejected_files.set(rejected as i64);
    metrics
        .services
        .set(snapshot.registry.services.len() as i64);
    metrics
        .virt_services
        .set(snapshot.config.virtual_services.len() as i64);
    metrics
        .reloads
        .inc(&[if rejected == 0 { "ok" } else { "partial" }]);
    for f in status.iter().filter(|f| !f.accepted) {
        for e in &f.errors {
            tracing::warn!(file = %f.file, "config rejected, last good version keeps serving: {e}");
        }
    }
    tracing::info!(
        generation = snapshot.generation,
        files = status.len(),
        rejected,
        services = snapshot.registry.services.len(),
        "config snapshot published"
    );
    Arc::new(snapshot)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The store is only mutated through complete method calls; a panic in one
    // cannot leave it half-updated in a way later calls would trip over.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
