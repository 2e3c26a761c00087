//! Logging set-up: one `tracing` subscriber per process, JSON lines for production or a human
//! format for terminals, filtered by `RUST_LOG` when set and by the settings otherwise.
//!
//! It does not decide what is logged; the modules that own an event log it.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to standard error so that commands which print
/// results (`validate`, `dlq peek`, `check-config`) keep standard output clean.
///
/// Returns an error only when a subscriber is already installed.
pub fn init_tracing(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| TelemetryError(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct TelemetryError(String);
