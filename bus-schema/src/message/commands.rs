//! Command requests and their replies: those a monitor answers (`load`,
//! `unload`, `collect`, `configure`, `status`) and those a manager answers
//! (`apps.load`, `apps.unload`, `apps.list`).

use serde::{Deserialize, Serialize};

use super::{BlobRef, DeploymentStats, Filter, LinkInfo, ResultWindow, Value, nil};

// ---------------------------------------------------------------------------
// Monitor commands
// ---------------------------------------------------------------------------

/// `load`: fetch an analyzer blob, verify it, instantiate it and start
/// feeding it packets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// Id of the new deployment (a subject token); chosen by the requester.
    pub deployment: String,
    /// The analyzer module.
    pub analyzer: BlobRef,
    /// Analyzer parameters, passed to its `init`.
    #[serde(default = "nil")]
    pub params: Value,
    /// Which packets the analyzer sees.
    #[serde(default)]
    pub filter: Filter,
    /// Link ids to analyze; empty means every link of the monitor.
    #[serde(default)]
    pub links: Vec<u32>,
    /// Manager (or operator) id that owns the deployment.
    pub owner: String,
    /// If set, publish a result window on `results.{monitor}.{deployment}`
    /// every that many milliseconds.
    #[serde(default)]
    pub report_every_ms: Option<u64>,
}

/// Reply to `load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReply {
    /// The deployment now running.
    pub deployment: String,
    /// The monitor that runs it.
    pub monitor: String,
    /// The links it analyzes.
    pub links: Vec<u32>,
    /// The ABI version the module exports.
    pub abi_version: u32,
    /// This load's run: every window and event of it carries the same run,
    /// and a later load of the same deployment id gets another.
    #[serde(default)]
    pub run: String,
    /// Links of the deployment that are not capturing when it starts
    /// (finished or failed), with why.
    #[serde(default)]
    pub not_capturing: Vec<IdleLink>,
}

/// A link that is not capturing, as a load's reply names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleLink {
    /// Link id.
    pub link: u32,
    /// `finished` (a replay that ended) or `failed`.
    pub state: LinkState,
    /// The error, for a failed link.
    #[serde(default)]
    pub error: Option<String>,
}

/// `unload`: stop and unload a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadRequest {
    /// The deployment to unload.
    pub deployment: String,
    /// Who asks; must be the owner unless `force`.
    pub requester: String,
    /// Unload even if `requester` is not the owner.
    #[serde(default)]
    pub force: bool,
}

/// Reply to `unload`: the deployment's final results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnloadReply {
    /// The deployment that was unloaded.
    pub deployment: String,
    /// Its last results, collected after the last packet it received.
    pub final_results: ResultWindow,
}

/// `collect`: current results, without resetting them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectRequest {
    /// The deployment to collect from.
    pub deployment: String,
}

/// `configure`: new parameters for a running deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigureRequest {
    /// The deployment to re-configure.
    pub deployment: String,
    /// Who asks; must be the owner unless `force`.
    pub requester: String,
    /// The new parameters, passed to the analyzer's `configure`.
    pub params: Value,
    /// Re-configure even if `requester` is not the owner.
    #[serde(default)]
    pub force: bool,
}

/// Reply to `configure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigureReply {
    /// The deployment re-configured.
    pub deployment: String,
    /// How many times it has been configured since it was loaded (1 after
    /// the first `configure`).
    pub config_revision: u64,
}

/// `upgrade`: another module for a running deployment, its state carried
/// over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The deployment to upgrade.
    pub deployment: String,
    /// Who asks; must be the owner unless `force`.
    pub requester: String,
    /// The new module in `tm_blobs` (digest checked as for a load).
    pub analyzer: BlobRef,
    /// Parameters for the new module; absent: the deployment's current
    /// ones. Given, they become the deployment's parameters.
    #[serde(default)]
    pub params: Option<Value>,
    /// Upgrade even if `requester` is not the owner.
    #[serde(default)]
    pub force: bool,
}

/// Reply to `upgrade`: the module that ran before and the one running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReply {
    /// The deployment upgraded.
    pub deployment: String,
    /// The module it ran until the swap.
    pub previous: BlobRef,
    /// The module it runs now.
    pub analyzer: BlobRef,
    /// How long the deployment held its packets for the swap (snapshot,
    /// restore, switch), in microseconds; they were queued, none lost.
    #[serde(default)]
    pub swap_us: u64,
}

/// `status`: the monitor's links and deployments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Only this deployment (all when absent).
    #[serde(default)]
    pub deployment: Option<String>,
}

/// State of a link's capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Capturing or replaying.
    Running,
    /// A replay reached the end of its file.
    Finished,
    /// The capture failed; see `last_error`.
    Failed,
}

/// A link with its capture counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The link.
    pub link: LinkInfo,
    /// State of its capture.
    pub state: LinkState,
    /// Packets captured.
    pub packets: u64,
    /// Bytes on the wire of those packets.
    pub bytes: u64,
    /// Packets that could not be parsed (counted, skipped, still delivered
    /// to deployments without a filter on parsed fields).
    pub parse_errors: u64,
    /// Packets the kernel dropped (pcap_stats `ps_drop`).
    pub kernel_drops: u64,
    /// Packets the interface dropped (pcap_stats `ps_ifdrop`).
    pub interface_drops: u64,
    /// Packets each capture thread read, on a link fanned out over several
    /// (`capture_threads` > 1); empty otherwise. They sum to `packets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thread_packets: Vec<u64>,
    /// Why the capture failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// State of a deployment on a monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Receiving packets.
    Running,
    /// Unloaded after a trap or limit hit; its last good results are kept.
    Failed,
}

/// A deployment with its figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    /// Deployment id.
    pub deployment: String,
    /// The analyzer module.
    pub analyzer: BlobRef,
    /// Owner manager.
    pub owner: String,
    /// State.
    pub state: DeploymentState,
    /// Links it analyzes.
    pub links: Vec<u32>,
    /// Counters.
    pub stats: DeploymentStats,
    /// Current size of the guest's linear memory in bytes.
    pub memory_bytes: u64,
    /// How many times it has been configured.
    pub config_revision: u64,
    /// The trap or limit that stopped it, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Reply to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    /// Monitor id.
    pub monitor: String,
    /// Monitor address (as in the topology's first column).
    pub address: String,
    /// Software version.
    pub version: String,
    /// Seconds since the monitor started.
    pub uptime_s: u64,
    /// Links with counters.
    pub links: Vec<LinkStatus>,
    /// Deployments with figures.
    pub deployments: Vec<DeploymentStatus>,
    /// Results and events waiting for the bus.
    #[serde(default)]
    pub outbox: OutboxStatus,
}

/// The monitor's outbox as `status` reports it: results, events and
/// snapshots waiting for JetStream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Messages waiting.
    pub queued: u64,
    /// Their bytes.
    pub queued_bytes: u64,
    /// The bound on those bytes (`limits.outbox_mb`).
    pub limit_bytes: u64,
    /// Messages published since the monitor started.
    pub published: u64,
    /// Periodic windows shed because the outbox was full.
    pub shed_windows: u64,
    /// Alerts shed because the outbox was full.
    pub shed_events: u64,
    /// Messages refused as larger than the bus's max payload.
    pub too_large: u64,
    /// The bus's last refusal, while messages wait (none once one is
    /// accepted again).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it happened, Unix ms (0: no refusal).
    #[serde(default)]
    pub last_error_unix_ms: u64,
}

// ---------------------------------------------------------------------------
// Manager commands
// ---------------------------------------------------------------------------

/// Where a manager gets a management app's module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppSource {
    /// A blob in the `tm_blobs` object store.
    Object(BlobRef),
    /// A file on the manager's machine.
    File {
        /// Path of the `.wasm` file.
        path: String,
    },
}

/// `apps.load`: load a management app and start it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppLoadRequest {
    /// Instance name of the app on this manager (a subject token).
    pub app: String,
    /// Where the module comes from.
    pub source: AppSource,
    /// Parameters passed to the app's `start`.
    #[serde(default = "nil")]
    pub params: Value,
}

/// `apps.unload`: stop and unload a management app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUnloadRequest {
    /// Instance name of the app.
    pub app: String,
}

/// `apps.list`: the apps a manager runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppListRequest {}

/// State of a management app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Started and handling timers and callbacks.
    Running,
    /// Trapped or overran, and was unloaded.
    Failed,
    /// Unloaded on request.
    Stopped,
}

/// A management app on a manager; the reply to `apps.load` and `apps.unload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Instance name.
    pub app: String,
    /// Manager that runs it.
    pub manager: String,
    /// Where its module came from.
    pub source: AppSource,
    /// SHA-256 of its module.
    pub sha256: String,
    /// State.
    pub state: AppState,
    /// When it started, Unix ms.
    pub started_unix_ms: u64,
    /// Why it failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Reply to `apps.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppList {
    /// Manager id.
    pub manager: String,
    /// Its apps.
    pub apps: Vec<AppStatus>,
}
