//! `tm-manager`'s library, also used by `tmctl` and the tests.
//!
//! * [`topology`]: the figure-5 table, its graph and queries, its KV record.
//! * [`control`]: deployments as desired state in KV, and the monitor
//!   commands scattered with per-monitor timeouts.
//! * [`apps`]: management apps in wasmtime with async host calls.
//! * [`archive`]: collected results as JSON lines through `object_store`.
//! * [`service`]: the manager's NATS service and liveness record.
//! * [`console`]: `tm-console`, the live web view, an outside client of
//!   the bus.

pub mod apps;
pub mod archive;
pub mod console;
pub mod control;
pub mod export;
pub mod metrics;
pub mod service;
pub mod topology;

/// Logs to stderr, as every binary of this crate does: `filter` (an
/// `EnvFilter` directive such as `info` or `manager=debug`) if given, else
/// `RUST_LOG`, else `info`.
pub fn log_to_stderr(filter: Option<&str>) {
    let filter = match filter {
        Some(f) => tracing_subscriber::EnvFilter::new(f),
        None => {
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
