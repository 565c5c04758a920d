//! Stream payloads: result windows (`TM_RESULTS`), deployment events
//! (`TM_EVENTS`) and management apps' reports (`TM_REPORTS`).

use serde::{Deserialize, Serialize};

use super::{DeploymentStats, Value, nil};

/// One window of an analyzer's results: the answer to `collect`, the final
/// results in `unload`, and what is published periodically to `TM_RESULTS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultWindow {
    /// Monitor that produced it.
    pub monitor: String,
    /// Deployment that produced it.
    pub deployment: String,
    /// Name of the analyzer blob.
    pub analyzer: String,
    /// SHA-256 of the module that made these results: it changes where an
    /// upgrade swapped the module.
    #[serde(default)]
    pub sha256: String,
    /// The load this window belongs to (as in the load's reply): a later
    /// load of the same deployment id has another run and starts again at
    /// seq 1.
    #[serde(default)]
    pub run: String,
    /// Window number within the run, from 1, without gaps (windows shed
    /// while the bus was away excepted: `stats.shed_windows` counts them);
    /// with `deployment`, `monitor` and `run` it is the stream message id,
    /// so a window sent twice is stored once.
    pub seq: u64,
    /// Start of the window (deployment start for cumulative analyzers), Unix ms.
    pub start_unix_ms: u64,
    /// When the results were taken, Unix ms.
    pub end_unix_ms: u64,
    /// True for the window taken at unload.
    #[serde(default)]
    pub last: bool,
    /// Deployment counters at the end of the window.
    pub stats: DeploymentStats,
    /// The deployment's links as captured when the window was taken: with
    /// `stats.dropped` (queue drops) the whole account of what was seen and
    /// lost before the analyzer.
    #[serde(default)]
    pub capture: Vec<LinkCapture>,
    /// The analyzer's own results (schema documented per analyzer).
    pub results: Value,
}

/// A link's capture figures in a [`ResultWindow`] (cumulative, since the
/// link started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCapture {
    /// Link id.
    pub link: u32,
    /// Packets captured.
    pub packets: u64,
    /// Their wire bytes.
    pub bytes: u64,
    /// Packets the kernel dropped before capture (pcap_stats `ps_drop`).
    pub kernel_drops: u64,
    /// Packets the interface dropped (pcap_stats `ps_ifdrop`).
    pub interface_drops: u64,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The analyzer raised an alert through its `emit` import.
    Alert,
    /// The deployment was loaded and started.
    Loaded,
    /// The deployment was re-configured.
    Configured,
    /// The deployment's analyzer was replaced by another module, its state
    /// carried over; `data` holds `previous` and `analyzer` (name, sha256).
    Upgraded,
    /// The deployment was unloaded on request or at shutdown.
    Unloaded,
    /// The guest trapped or hit a limit and was unloaded.
    Failed,
    /// Periodic windows or alerts of the deployment were shed, unpublished,
    /// because the monitor's outbox was full; `data` holds the totals
    /// (`shed_windows`, `shed_events`).
    Shed,
    /// A window or event of the deployment was larger than the bus's max
    /// payload and could not be published; `data` holds `size` and `max`.
    TooLarge,
    /// A link of the deployment stopped capturing on an error (refused,
    /// corrupt or truncated file, interface gone); `data` holds `link` and
    /// `error`. The deployment stays loaded with what it saw.
    LinkFailed,
    /// A replayed link of the deployment reached the end of its file;
    /// `data` holds `link` and `packets`. Windows keep coming (with the
    /// same figures) until the deployment is unloaded.
    LinkFinished,
}

/// An event of a deployment, published to `TM_EVENTS` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monitor that raised it.
    pub monitor: String,
    /// Deployment concerned.
    pub deployment: String,
    /// The load it belongs to (see [`ResultWindow::run`]).
    #[serde(default)]
    pub run: String,
    /// Event number within the run, from 1.
    pub seq: u64,
    /// When it happened, Unix ms.
    pub at_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// One line for humans.
    pub message: String,
    /// Details: the analyzer's alert payload, or error details.
    #[serde(default = "nil")]
    pub data: Value,
}

/// A report or event a management app publishes to `TM_REPORTS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Manager that runs the app.
    pub manager: String,
    /// The app.
    pub app: String,
    /// Report number within the app instance, from 1.
    pub seq: u64,
    /// When it was published, Unix ms.
    pub at_unix_ms: u64,
    /// The app's name for this kind of report (`link-load`, `congested-link`…).
    pub kind: String,
    /// The report itself (schema documented per app).
    pub body: Value,
}
