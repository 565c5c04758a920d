//! Management apps in wasmtime: load (S1), timers and events, unload (S8).
//!
//! Each app runs in its own store on its own tokio task; calls into one
//! app never overlap. Host calls that touch NATS are async host functions:
//! while an app waits for a monitor, its task is suspended and everything
//! else (other apps, commands to this manager) carries on. Every guest call
//! has an epoch deadline; time spent waiting inside a host call does not
//! count against it (the deadline is renewed when the host call returns).
//! An app that traps, overruns its deadline or its memory cap is unloaded,
//! marked `failed` in the app list with the reason, and reported on
//! `tm.v1.reports.{manager}.{app}` (kind `app-failed`); other apps carry on.
//!
//! * `lifecycle`: the [`Apps`] registry — load, start, stop, unload.
//! * `fetch`: an app's bytes, from a served file or the object store.
//! * `guest`: the mgmt-app ABI from the host's side — the imports an app
//!   gets and the calls into its exports.
//! * `ops`: one function per host operation an app calls.
//! * `views`: the control plane's and topology's answers as the ABI's
//!   types.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bus_schema::{ErrorBody, ErrorCode, Report, subject};
use wasm_host::Sandbox;
use wasm_host::trust::TrustedKeys;

use crate::archive::Archive;
use crate::control::Control;

mod fetch;
mod guest;
mod lifecycle;
mod ops;
mod views;

pub use lifecycle::Apps;

/// Limits every app runs under.
#[derive(Debug, Clone)]
pub struct AppLimits {
    /// Linear-memory cap, bytes.
    pub memory_bytes: usize,
    /// Deadline of one guest call's computation.
    pub call_timeout: Duration,
    /// Largest request or reply passed through `call`, bytes.
    pub max_message: usize,
    /// Directories whose files `apps.load` may name (`source.file`); a
    /// path elsewhere is refused. Empty: no file is read for a request
    /// over the bus (the manager's own `--app` flags still are).
    pub apps_dirs: Vec<std::path::PathBuf>,
}

/// Largest app module a manager reads, from a file or the object store.
pub const MAX_APP_BYTES: usize = 64 << 20;

impl AppLimits {
    /// Checks the limits as `tm-manager`'s flags give them, naming the flag.
    ///
    /// # Errors
    /// The first limit out of its range, or an apps directory that is not one.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mb = self.memory_bytes >> 20;
        if !(1..=4096).contains(&mb) || !self.memory_bytes.is_multiple_of(1 << 20) {
            anyhow::bail!("--app-memory-mb = {mb}: must be 1 to 4096");
        }
        let ms = self.call_timeout.as_millis();
        if !(1..=600_000).contains(&ms) {
            anyhow::bail!("--app-call-timeout-ms = {ms}: must be 1 to 600000");
        }
        for dir in &self.apps_dirs {
            if !dir.is_dir() {
                anyhow::bail!("--apps-dir {}: not a directory", dir.display());
            }
        }
        Ok(())
    }
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(1),
            max_message: 16 << 20,
            apps_dirs: Vec::new(),
        }
    }
}

/// What every app's host calls share.
struct Shared {
    manager: String,
    control: Control,
    js: jetstream::Context,
    topology: kv::Store,
    archive: Option<Archive>,
    sandbox: Sandbox,
    limits: AppLimits,
    /// Signers whose apps load from the object store.
    trusted: TrustedKeys,
    /// How long the manager's own commands took.
    commands: wasm_host::metrics::CommandTimes,
}

impl Shared {
    /// Publishes an app's report on `tm.v1.reports.{manager}.{app}` with
    /// its message id; a failure is logged, not returned.
    async fn publish_report(&self, report: &Report, msg_id: &str) {
        let Ok(bytes) = bus_schema::encode(report) else {
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let subject = subject::reports(&self.manager, &report.app);
        match self
            .js
            .publish_with_headers(subject, headers, bytes.into())
            .await
        {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!(app = %report.app, error = %e, "report not stored");
                }
            }
            Err(e) => tracing::warn!(app = %report.app, error = %e, "report not published"),
        }
    }
}

/// What an app's task is asked to do.
enum Msg {
    Timer(u32),
    Event(Vec<u8>),
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ErrorBody> {
    Err(ErrorBody::new(code, message))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
