//! Logging: human-readable on a terminal, JSON for Cloud Logging on Cloud Run.

use tracing_subscriber::EnvFilter;

/// `CUSTODY_LOG` (or `RUST_LOG`) sets the filter; `CUSTODY_LOG_FORMAT=json`,
/// or running on Cloud Run (`K_SERVICE` set), selects JSON lines.
pub fn init() {
    let filter = std::env::var("CUSTODY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CUSTODY_LOG_FORMAT")
        .map(|f| f == "json")
        .unwrap_or(false)
        || std::env::var_os("K_SERVICE").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}
