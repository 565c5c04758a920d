//! Every message on the bus: command requests and replies, stream payloads
//! and KV records.
//!
//! Field names are part of the contract (they are on the wire). Fields marked
//! `#[serde(default)]` may be left out by a sender. Unknown fields are ignored,
//! so a newer sender can add fields without breaking an older receiver.

use serde::{Deserialize, Serialize};

/// A dynamically typed MessagePack value: analyzer and app parameters,
/// analyzer results, event data. Renders as JSON in `docs/bus.md`.
pub type Value = rmpv::Value;

pub use rmpv;

/// Default of optional [`Value`] fields: nil.
fn nil() -> Value {
    Value::Nil
}

// ---------------------------------------------------------------------------
// Reply envelope
// ---------------------------------------------------------------------------

/// The envelope of every command reply: the answer, or a typed error.
///
/// On the wire: `{"ok": <answer>}` or `{"err": {"code": "...", "message": "..."}}`.
/// Transport failures (no responders, timeouts) are not replies and never
/// appear here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The command succeeded.
    Ok(T),
    /// The command was refused or failed.
    Err(ErrorBody),
}

impl<T> Reply<T> {
    /// Builds an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Err(ErrorBody {
            code,
            message: message.into(),
        })
    }

    /// Converts to a `Result`.
    ///
    /// # Errors
    /// The [`ErrorBody`] of an `Err` reply.
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, ErrorBody>> for Reply<T> {
    fn from(r: Result<T, ErrorBody>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

/// An application error: a machine-readable code and a message for humans
/// that names the field or object at fault and the value refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, naming the field and value.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

/// Machine-readable error codes, a `snake_case` string on the wire. New codes
/// may be added; an older receiver decodes a code it does not know as
/// [`ErrorCode::Unknown`] (but refuses a code that is not a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be decoded, or a field is invalid.
    BadRequest,
    /// No deployment with that id on this monitor.
    UnknownDeployment,
    /// A deployment with that id already exists.
    DeploymentExists,
    /// A link id the monitor does not have.
    UnknownLink,
    /// The named blob is not in the object store.
    BlobNotFound,
    /// The blob's SHA-256 differs from the one requested or recorded.
    DigestMismatch,
    /// The blob's metadata records no SHA-256.
    DigestMissing,
    /// The module speaks an ABI version the host does not.
    AbiMismatch,
    /// The blob is not a valid module, or lacks a required export.
    BadModule,
    /// The analyzer or app refused its parameters.
    BadParams,
    /// The filter is invalid (CIDR, port range, protocol or BPF).
    BadFilter,
    /// The requester does not own the deployment (and did not force).
    NotOwner,
    /// The requester is not allowed to do this.
    Unauthorized,
    /// The host requires signed blobs and this one is not signed.
    UnsignedBlob,
    /// The blob is signed by a key the host does not trust.
    UntrustedSigner,
    /// The blob's signature does not verify (its metadata or signature
    /// changed after signing).
    BadSignature,
    /// The guest trapped.
    GuestTrap,
    /// The guest hit a memory, time or queue limit.
    ResourceLimit,
    /// No management app with that name on this manager.
    UnknownApp,
    /// A management app with that name already runs on this manager.
    AppExists,
    /// A downstream step did not answer in time.
    Timeout,
    /// A dependency (object store, KV, a monitor) is unavailable.
    Unavailable,
    /// A bug or an unexpected failure in the responder.
    Internal,
    /// A code this version does not know.
    Unknown,
}

impl ErrorCode {
    /// Every code, [`ErrorCode::Unknown`] last.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownDeployment,
        ErrorCode::DeploymentExists,
        ErrorCode::UnknownLink,
        ErrorCode::BlobNotFound,
        ErrorCode::DigestMismatch,
        ErrorCode::DigestMissing,
        ErrorCode::AbiMismatch,
        ErrorCode::BadModule,
        ErrorCode::BadParams,
        ErrorCode::BadFilter,
        ErrorCode::NotOwner,
        ErrorCode::Unauthorized,
        ErrorCode::UnsignedBlob,
        ErrorCode::UntrustedSigner,
        ErrorCode::BadSignature,
        ErrorCode::GuestTrap,
        ErrorCode::ResourceLimit,
        ErrorCode::UnknownApp,
        ErrorCode::AppExists,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ];
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unknown))
    }
}

impl ErrorCode {
    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownDeployment => "unknown_deployment",
            ErrorCode::DeploymentExists => "deployment_exists",
            ErrorCode::UnknownLink => "unknown_link",
            ErrorCode::BlobNotFound => "blob_not_found",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::DigestMissing => "digest_missing",
            ErrorCode::AbiMismatch => "abi_mismatch",
            ErrorCode::BadModule => "bad_module",
            ErrorCode::BadParams => "bad_params",
            ErrorCode::BadFilter => "bad_filter",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnsignedBlob => "unsigned_blob",
            ErrorCode::UntrustedSigner => "untrusted_signer",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::GuestTrap => "guest_trap",
            ErrorCode::ResourceLimit => "resource_limit",
            ErrorCode::UnknownApp => "unknown_app",
            ErrorCode::AppExists => "app_exists",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// A WebAssembly blob in the object store, pinned by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Object name in the `tm_blobs` object store.
    pub name: String,
    /// Lower-case hex SHA-256 of the whole blob; the receiver refuses a blob
    /// whose digest differs.
    pub sha256: String,
}

/// An inclusive range of ports; a single port has `from == to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub from: u16,
    /// Last port of the range (inclusive).
    pub to: u16,
}

/// Which packets a deployment sees. Every list left empty matches all;
/// within a list any entry may match; all non-empty lists must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Source address prefixes in CIDR form (`10.0.0.0/8`, `2001:db8::/32`).
    #[serde(default)]
    pub src: Vec<String>,
    /// Destination address prefixes in CIDR form.
    #[serde(default)]
    pub dst: Vec<String>,
    /// Source port ranges (TCP and UDP only).
    #[serde(default)]
    pub src_ports: Vec<PortRange>,
    /// Destination port ranges (TCP and UDP only).
    #[serde(default)]
    pub dst_ports: Vec<PortRange>,
    /// IP protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    #[serde(default)]
    pub protocols: Vec<u8>,
    /// A raw libpcap filter expression, applied in addition to the rest.
    #[serde(default)]
    pub bpf: Option<String>,
}

/// Counters of one deployment, carried in status and in every result window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStats {
    /// Packets that passed the filter and reached the guest.
    pub packets_in: u64,
    /// Bytes (on the wire) of those packets.
    pub bytes_in: u64,
    /// Packets that passed the filter but did not fit the deployment's queue.
    pub dropped: u64,
    /// Calls into the guest (batches, ticks, collects, configures).
    pub guest_calls: u64,
    /// Time spent inside the guest, in microseconds.
    pub guest_time_us: u64,
    /// Periodic windows of this deployment shed, unpublished, because the
    /// monitor's outbox was full (the bus unreachable or refusing).
    #[serde(default)]
    pub shed_windows: u64,
    /// Alerts shed the same way.
    #[serde(default)]
    pub shed_events: u64,
}

/// A link as a monitor reports it: one direction of a physical line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Link id, unique within the monitor.
    pub id: u32,
    /// Address of the router the traffic comes from.
    pub from_router: String,
    /// Address of the router the traffic goes to.
    pub to_router: String,
    /// Where packets come from: `iface:<name>` or `pcap:<path>`.
    pub source: String,
}

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
// Results and events (streams)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// KV records
// ---------------------------------------------------------------------------

/// A monitor's liveness record in `tm_monitors` (key: monitor id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    /// Monitor id.
    pub monitor: String,
    /// Monitor address (the topology's first column).
    pub address: String,
    /// Software version.
    pub version: String,
    /// Protocol version it speaks.
    pub protocol: u32,
    /// Its links.
    pub links: Vec<LinkInfo>,
    /// When it started, Unix ms.
    pub started_unix_ms: u64,
    /// Its last heartbeat, Unix ms.
    pub heartbeat_unix_ms: u64,
}

/// A manager that is up, under its id in `tm_managers` (refreshed every
/// [`crate::store::HEARTBEAT_EVERY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerRecord {
    /// The manager's id.
    pub manager: String,
    /// Its software version.
    pub version: String,
    /// Mgmt apps it runs.
    pub apps: Vec<String>,
    /// When it started, Unix ms.
    pub started_unix_ms: u64,
    /// Its latest heartbeat, Unix ms.
    pub heartbeat_unix_ms: u64,
    /// How often it refreshes the record, ms: a record older than three
    /// periods means the manager is gone, even before the bucket's max_age
    /// removes it.
    pub heartbeat_every_ms: u64,
}

impl ManagerRecord {
    /// Whether the manager counts as up at `now_unix_ms`.
    #[must_use]
    pub fn is_up(&self, now_unix_ms: u64) -> bool {
        now_unix_ms.saturating_sub(self.heartbeat_unix_ms) < 3 * self.heartbeat_every_ms.max(1)
    }
}

/// What should happen to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// It should run on its targets.
    Running,
    /// It should be unloaded everywhere.
    Unloaded,
}

/// Where a deployment runs: one monitor and some of its links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentTarget {
    /// Monitor id.
    pub monitor: String,
    /// Link ids; empty means all.
    #[serde(default)]
    pub links: Vec<u32>,
}

/// A deployment's desired state in `tm_deployments` (key: deployment id).
/// Written with create / update-with-revision only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Deployment id.
    pub deployment: String,
    /// The analyzer module.
    pub analyzer: BlobRef,
    /// Current parameters.
    #[serde(default = "nil")]
    pub params: Value,
    /// Filter.
    #[serde(default)]
    pub filter: Filter,
    /// Where it runs.
    pub targets: Vec<DeploymentTarget>,
    /// Owner manager id.
    pub owner: String,
    /// What should happen to it.
    pub desired: DesiredState,
    /// Periodic result publication, if any.
    #[serde(default)]
    pub report_every_ms: Option<u64>,
    /// Created, Unix ms.
    pub created_unix_ms: u64,
    /// Last changed, Unix ms.
    pub updated_unix_ms: u64,
}

/// One row of the topology: one direction of a line, as seen by a monitor
/// (the seed's figure-5 table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyRow {
    /// Address of the monitor that taps this direction.
    pub monitor_address: String,
    /// Link id within that monitor.
    pub link_id: u32,
    /// Router the traffic comes from.
    pub from_router: String,
    /// Router the traffic goes to.
    pub to_router: String,
}

/// The network topology in `tm_topology` (key `current`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyRecord {
    /// The rows of the figure-5 table.
    pub rows: Vec<TopologyRow>,
    /// When it was imported, Unix ms.
    pub imported_unix_ms: u64,
    /// Who imported it.
    pub imported_by: String,
}

/// A running deployment as its monitor last saved it in `tm_snapshots`
/// (key `{monitor}.{deployment}`): written at load, after each configure and
/// periodically; removed at unload. A monitor restarted after a crash
/// reloads each of its snapshots: the same request, then the analyzer's
/// saved state through its `tm_restore`, counters and sequence numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSnapshot {
    /// Monitor id.
    pub monitor: String,
    /// The load request, with `params` as last configured and `links` resolved.
    pub request: LoadRequest,
    /// The load's run, which a recovered deployment keeps.
    #[serde(default)]
    pub run: String,
    /// Times configured.
    pub config_revision: u64,
    /// Last published result window.
    pub published_seq: u64,
    /// Last published event.
    pub event_seq: u64,
    /// Counters when the snapshot was taken.
    pub stats: DeploymentStats,
    /// The analyzer's own state from `tm_snapshot` (nil if it has none).
    #[serde(default = "nil")]
    pub state: Value,
    /// When it was taken, Unix ms.
    pub taken_unix_ms: u64,
}
