//! Logging setup: a `tracing` subscriber (plain or JSON) whose level filter
//! can be changed at run time through the admin server's `/logging`.

use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Why the log level could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The directive does not parse.
    #[error("invalid log level {level:?}: {source}; use e.g. info, debug or keel_proxy=trace,info")]
    BadLevel {
        /// The directive as given.
        level: String,
        /// The parse error.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The subscriber is gone (process shutting down).
    #[error("the log filter can no longer be changed: {0}")]
    Reload(#[from] reload::Error),
    /// A global subscriber was installed already.
    #[error("installing the log subscriber: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Changes the log filter at run time.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    current: Arc<Mutex<String>>,
}

impl LogLevel {
    /// The current filter directive.
    pub fn get(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the filter with `level` (an `EnvFilter` directive).
    pub fn set(&self, level: &str) -> Result<(), LoggingError> {
        let filter = EnvFilter::try_new(level).map_err(|source| LoggingError::BadLevel {
            level: level.to_string(),
            source,
        })?;
        self.handle.reload(filter)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = level.to_string();
        Ok(())
    }
}

/// Installs the global subscriber, logging to stderr. The initial filter is
/// `RUST_LOG`, or `info`.
pub fn init(format: LogFormat) -> Result<LogLevel, LoggingError> {
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(LogLevel {
        handle,
        current: Arc::new(Mutex::new(initial)),
    })
}
