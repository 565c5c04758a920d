//! Management-app ABI version 1: the contract between `tm-manager` (host)
//! and a management app (a core WebAssembly module, no WASI).
//!
//! Both sides use this crate, so every host call's request and reply is
//! written once. Messages are MessagePack with field names. Types that carry
//! analyzer data are generic: the host fills them with opaque MessagePack
//! values, an app reads them as its own serde types (for example
//! `Collected<FlowStatsResults>`).
//!
//! # Guest exports
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `tm_app_abi_version` | `() -> i32` | must return [`ABI_VERSION`] |
//! | `tm_alloc` | `(len: i32) -> i32` | a guest buffer of `len` bytes for the host to write into |
//! | `tm_app_start` | `(ptr: i32, len: i32) -> i32` | MessagePack params; returns a [`Status`] (S1) |
//! | `tm_app_timer` | `(timer: i32, now_ns: i64) -> i32` | a timer set with [`op::SET_TIMER`] fired |
//! | `tm_app_event` | `(ptr: i32, len: i32) -> i32` | an [`EventView`] of a deployment the app subscribed to |
//! | `tm_app_stop` | `() -> i32` | the app is being unloaded (S8): last chance to unload its analyzers |
//! | `tm_last_error` | `() -> i64` | UTF-8 message of the last non-OK status, `(ptr << 32) \| len` |
//!
//! Buffers the host passes were obtained from `tm_alloc` and belong to the
//! guest afterwards. Calls into one app never overlap: timers and events are
//! delivered one at a time, after the previous call returned.
//!
//! # Host imports (module `tm`)
//!
//! | import | signature | meaning |
//! |---|---|---|
//! | `log` | `(level: i32, ptr: i32, len: i32)` | a UTF-8 log line; level 0 error … 4 trace |
//! | `now` | `() -> i64` | Unix time in ns |
//! | `call` | `(op_ptr: i32, op_len: i32, req_ptr: i32, req_len: i32) -> i32` | runs host operation `op` (a name from [`op`]) with a MessagePack request; returns the length of the reply |
//! | `reply` | `(ptr: i32) -> i32` | copies the reply of the last `call` to `ptr` (the guest allocated that many bytes); returns the bytes copied |
//!
//! Every reply is a [`Reply`] envelope: `{"ok": T}` or `{"err": {"code", "message"}}`.
//! Calls that touch the network suspend the app (wasmtime async) while the
//! manager carries on with everything else; the time an app spends waiting
//! does not count against its call deadline, the time it computes does.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The ABI version this crate describes.
pub const ABI_VERSION: u32 = 1;

/// Name of the host import module.
pub const IMPORT_MODULE: &str = "tm";

/// Export names.
pub mod export {
    /// `() -> i32`
    pub const ABI_VERSION: &str = "tm_app_abi_version";
    /// `(len: i32) -> i32`
    pub const ALLOC: &str = "tm_alloc";
    /// `(ptr: i32, len: i32) -> i32`
    pub const START: &str = "tm_app_start";
    /// `(timer: i32, now_ns: i64) -> i32`
    pub const TIMER: &str = "tm_app_timer";
    /// `(ptr: i32, len: i32) -> i32`
    pub const EVENT: &str = "tm_app_event";
    /// `() -> i32`
    pub const STOP: &str = "tm_app_stop";
    /// `() -> i64`
    pub const LAST_ERROR: &str = "tm_last_error";
    /// The guest's linear memory.
    pub const MEMORY: &str = "memory";
}

/// Import names (in module [`IMPORT_MODULE`]).
pub mod import {
    /// `(level: i32, ptr: i32, len: i32)`
    pub const LOG: &str = "log";
    /// `() -> i64`
    pub const NOW: &str = "now";
    /// `(op_ptr: i32, op_len: i32, req_ptr: i32, req_len: i32) -> i32`
    pub const CALL: &str = "call";
    /// `(ptr: i32) -> i32`
    pub const REPLY: &str = "reply";
}

// What a guest export returns, and the packed `(ptr, len)` `tm_last_error`
// returns: the same for analyzers, so defined once in tm-guest-rt.
pub use tm_guest_rt::{pack, unpack, Status};

/// Host operations: the `op` argument of `call`, with request → reply types.
pub mod op {
    /// [`crate::Empty`] → [`crate::TopologyView`]
    pub const TOPOLOGY: &str = "topology";
    /// [`crate::RouterPair`] → `Vec<String>` (routers from `from` to `to`, both included)
    pub const SHORTEST_PATH: &str = "shortest_path";
    /// [`crate::RouterPair`] → `Vec<`[`crate::LinkView`]`>` (the directed links a flow crosses)
    pub const FLOW_PATH: &str = "flow_path";
    /// [`crate::Router`] → [`crate::NeighboursView`]
    pub const NEIGHBOURS: &str = "neighbours";
    /// [`crate::Empty`] → `Vec<`[`crate::LinkView`]`>` (directed links no monitor taps)
    pub const UNMONITORED: &str = "unmonitored";
    /// [`crate::Empty`] → `Vec<`[`crate::MonitorView`]`>` (monitors that are up)
    pub const MONITORS: &str = "monitors";
    /// [`crate::StatusQuery`] → [`crate::Statuses`] (each monitor's links
    /// and deployments; silent monitors in `missing`)
    pub const STATUS: &str = "status";
    /// [`crate::Deploy`] → [`crate::Deployed`] (S2/S3)
    pub const DEPLOY: &str = "deploy";
    /// [`crate::Configure`] → [`crate::Outcome`]
    pub const CONFIGURE: &str = "configure";
    /// [`crate::Upgrade`] → [`crate::Upgraded`]: the deployment's monitors
    /// swap to another module one after another, each keeping its state;
    /// the first refusal stops the roll (the monitors after it are
    /// `skipped`). The deployment's record names the new module only once
    /// every monitor runs it.
    pub const UPGRADE: &str = "upgrade";
    /// [`crate::Collect`] → [`crate::Collected`] (S4/S5)
    pub const COLLECT: &str = "collect";
    /// [`crate::DeploymentRef`] → [`crate::Collected`] with each monitor's final results (S6/S7)
    pub const UNLOAD: &str = "unload";
    /// [`crate::Publish`] → `u64` (the report's sequence number)
    pub const PUBLISH: &str = "publish";
    /// [`crate::Archive`] → [`crate::Archived`]
    pub const ARCHIVE: &str = "archive";
    /// [`crate::SetTimer`] → [`crate::Empty`]
    pub const SET_TIMER: &str = "set_timer";
    /// [`crate::TimerRef`] → [`crate::Empty`]
    pub const CANCEL_TIMER: &str = "cancel_timer";
    /// [`crate::DeploymentRef`] → [`crate::Empty`]: the deployment's events
    /// are delivered to `tm_app_event` from now on.
    pub const SUBSCRIBE: &str = "subscribe";
}

/// A reply envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The operation's result.
    Ok(T),
    /// Why it failed.
    Err(CallError),
}

/// A host call that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallError {
    /// The bus error code (`bad_request`, `unknown_deployment`, `timeout`, …).
    pub code: String,
    /// What went wrong, naming the field and value where there is one.
    pub message: String,
}

/// A request with no fields, or a reply with none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// One row of the topology table (the reference link table, docs/lab.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyRow {
    /// The monitor's address.
    pub monitor_address: String,
    /// The link id within that monitor.
    pub link_id: u32,
    /// The router the link leaves.
    pub from_router: String,
    /// The router the link enters.
    pub to_router: String,
}

/// The whole topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyView {
    /// The KV revision it was read at.
    pub revision: u64,
    /// Every router address, sorted.
    pub routers: Vec<String>,
    /// Every directed link, sorted by (from, to).
    pub links: Vec<LinkView>,
}

/// Where a monitor taps a directed link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapView {
    /// The monitor's address (as in the topology).
    pub monitor_address: String,
    /// Its link id.
    pub link_id: u32,
}

/// A directed link between two routers and the taps that see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The taps on it; empty if nobody monitors it.
    pub taps: Vec<TapView>,
}

/// A request naming two routers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPair {
    /// Source router address.
    pub from: String,
    /// Destination router address.
    pub to: String,
}

/// A request naming one router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// The router's address.
    pub router: String,
}

/// A router's neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighboursView {
    /// Routers it has a link to.
    pub outgoing: Vec<String>,
    /// Routers with a link to it.
    pub incoming: Vec<String>,
}

// ---------------------------------------------------------------------------
// Monitors and deployments
// ---------------------------------------------------------------------------

/// A link as its monitor describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorLink {
    /// Link id within the monitor.
    pub id: u32,
    /// From-router address (may be empty if the monitor was not told).
    pub from_router: String,
    /// To-router address.
    pub to_router: String,
}

/// A monitor that is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorView {
    /// Its id (the subject token).
    pub monitor: String,
    /// Its address (as in the topology).
    pub address: String,
    /// Its links.
    pub links: Vec<MonitorLink>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// Ask monitors for their status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusQuery {
    /// Monitor ids; empty: every monitor that is up.
    #[serde(default)]
    pub monitors: Vec<String>,
    /// How long each monitor gets, ms (default 2000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One link as its monitor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatusView {
    /// Link id.
    pub id: u32,
    /// `running`, `finished` (a replay that ended) or `failed`.
    pub state: String,
    /// Packets captured.
    pub packets: u64,
    /// Bytes captured.
    pub bytes: u64,
    /// Packets the kernel or interface dropped.
    pub drops: u64,
}

/// One deployment as a monitor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatusView {
    /// Deployment id.
    pub deployment: String,
    /// Analyzer name.
    pub analyzer: String,
    /// Owner.
    pub owner: String,
    /// `running` or `failed`.
    pub state: String,
    /// Counters.
    pub stats: Stats,
    /// Why it failed, if it did.
    pub last_error: Option<String>,
}

/// One monitor's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatusView {
    /// Monitor id.
    pub monitor: String,
    /// Its address.
    pub address: String,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Its links.
    pub links: Vec<LinkStatusView>,
    /// Its deployments.
    pub deployments: Vec<DeploymentStatusView>,
}

/// Reply to [`op::STATUS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statuses {
    /// Monitors that answered, sorted by id.
    pub monitors: Vec<MonitorStatusView>,
    /// Monitors that did not.
    pub missing: Vec<Missing>,
}

/// Packet filter of a deployment (applied by the monitor before the analyzer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Source CIDRs (any of them).
    #[serde(default)]
    pub src: Vec<String>,
    /// Destination CIDRs.
    #[serde(default)]
    pub dst: Vec<String>,
    /// Source port ranges.
    #[serde(default)]
    pub src_ports: Vec<PortRange>,
    /// Destination port ranges.
    #[serde(default)]
    pub dst_ports: Vec<PortRange>,
    /// IP protocol numbers.
    #[serde(default)]
    pub protocols: Vec<u8>,
    /// A raw BPF expression.
    #[serde(default)]
    pub bpf: Option<String>,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port.
    pub to: u16,
}

/// Where a deployment runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// Every monitor that is up, all its links.
    All,
    /// These monitors (ids), all their links.
    Monitors(Vec<String>),
    /// These links, by the topology's (monitor address, link id).
    Links(Vec<TapView>),
}

/// Deploy an analyzer (S2). `P` is the analyzer's params type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy<P> {
    /// The deployment id; empty: the host makes one (`{app}-{analyzer}-{n}`).
    #[serde(default)]
    pub deployment: String,
    /// Name of the analyzer blob in the object store.
    pub analyzer: String,
    /// Its SHA-256; empty: whatever is stored under the name now.
    #[serde(default)]
    pub sha256: String,
    /// Analyzer params.
    pub params: P,
    /// Packet filter.
    #[serde(default)]
    pub filter: Filter,
    /// Where it runs.
    pub targets: Targets,
    /// Publish results to TM_RESULTS this often (ms); none: only on collect.
    #[serde(default)]
    pub report_every_ms: Option<u64>,
}

/// Links of one monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Monitor id.
    pub monitor: String,
    /// Its address.
    pub address: String,
    /// Link ids the deployment runs on there.
    pub links: Vec<u32>,
}

/// A monitor that did not do what was asked, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// Monitor id.
    pub monitor: String,
    /// Error code (`timeout` if it did not answer in time).
    pub code: String,
    /// What it said, or that it said nothing.
    pub message: String,
}

/// Reply to [`op::DEPLOY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The deployment id.
    pub deployment: String,
    /// The analyzer's SHA-256.
    pub sha256: String,
    /// Where it runs: never empty (a deploy that loads nowhere is withdrawn
    /// and fails with the first monitor's refusal).
    pub placed: Vec<Placement>,
    /// Monitors that refused or did not answer.
    pub failed: Vec<Missing>,
}

/// Names a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRef {
    /// The deployment id.
    pub deployment: String,
}

/// New params for a running deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configure<P> {
    /// The deployment id.
    pub deployment: String,
    /// Its new params.
    pub params: P,
}

/// Reply to [`op::CONFIGURE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Monitors that did it.
    pub done: Vec<String>,
    /// Monitors that did not.
    pub failed: Vec<Missing>,
}

/// Replace a running deployment's analyzer by another module, keeping its
/// state (the new module restores the old one's snapshot). `P` is the new
/// module's params type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upgrade<P> {
    /// The deployment id.
    pub deployment: String,
    /// Name of the new module's blob in the object store (its stored
    /// SHA-256 is the one the monitors check).
    pub blob: String,
    /// Params for the new module; none: the deployment's current ones.
    /// Given, they become the deployment's params.
    // A path, not `default`, so that `P` need not be `Default`.
    #[serde(default = "Option::default")]
    pub params: Option<P>,
}

/// A module in the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// Its blob name.
    pub name: String,
    /// Its SHA-256 (lower-case hex).
    pub sha256: String,
}

/// A monitor that swapped to the new module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swapped {
    /// Monitor id.
    pub monitor: String,
    /// The module it ran before.
    pub previous: ModuleRef,
    /// How long the deployment held its packets there for the swap, µs
    /// (queued, none lost).
    pub swap_us: u64,
}

/// Reply to [`op::UPGRADE`]: monitor after monitor, in the deployment's
/// target order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    /// The deployment id.
    pub deployment: String,
    /// The module asked for.
    pub analyzer: ModuleRef,
    /// Monitors that run it now.
    pub done: Vec<Swapped>,
    /// The monitor that refused (the roll stopped there; it runs the old
    /// module on). At most one.
    pub failed: Vec<Missing>,
    /// Monitors not asked because one before them refused: they run the
    /// old module on.
    pub skipped: Vec<String>,
}

/// Collect a deployment's results from every monitor it runs on (S4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collect {
    /// The deployment id.
    pub deployment: String,
    /// How long to wait for each monitor, ms (default 2000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Also write the results to the archive.
    #[serde(default)]
    pub archive: bool,
}

/// A deployment's counters on one monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Packets that passed the filter.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets dropped for this deployment (queue full).
    pub dropped: u64,
}

/// One monitor's results. `R` is the analyzer's results type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorResults<R> {
    /// Monitor id.
    pub monitor: String,
    /// Its address (as in the topology).
    pub address: String,
    /// Result window sequence number.
    pub seq: u64,
    /// Window start, Unix ms.
    pub start_unix_ms: u64,
    /// Window end, Unix ms.
    pub end_unix_ms: u64,
    /// The deployment's counters there.
    pub stats: Stats,
    /// What the analyzer returned.
    pub results: R,
}

/// Reply to [`op::COLLECT`] and [`op::UNLOAD`]: every monitor that answered,
/// and a flag for each that did not (never fatal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected<R> {
    /// The deployment id.
    pub deployment: String,
    /// Results of the monitors that answered, sorted by monitor id.
    pub results: Vec<MonitorResults<R>>,
    /// Monitors that did not answer in time or failed.
    pub missing: Vec<Missing>,
}

/// Publish a report to `tm.v1.reports.{manager}.{app}` (stream TM_REPORTS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish<B> {
    /// What kind of report (`link-load`, `hotspot`, `attack-path`, …).
    pub kind: String,
    /// The report.
    pub body: B,
}

/// Write a record to the archive (JSON lines, partitioned by date/app/name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archive<B> {
    /// Partition name under the app (a deployment id, `report`, …).
    pub name: String,
    /// The record; written as one JSON line.
    pub body: B,
}

/// Reply to [`op::ARCHIVE`] (and the archive part of a collect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archived {
    /// Object paths written.
    pub paths: Vec<String>,
}

/// Start or replace a periodic timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTimer {
    /// The app's id for it, passed back to `tm_app_timer`.
    pub timer: u32,
    /// Period in ms (at least 10).
    pub every_ms: u64,
    /// Fire once only.
    #[serde(default)]
    pub once: bool,
}

/// Names a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRef {
    /// The app's id for it.
    pub timer: u32,
}

/// An event of a subscribed deployment, passed to `tm_app_event`.
/// `D` is the event's data type (the analyzer's alert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView<D> {
    /// Monitor id.
    pub monitor: String,
    /// Its address.
    pub address: String,
    /// The deployment.
    pub deployment: String,
    /// `alert`, `loaded`, `configured`, `unloaded`, `failed`.
    pub kind: String,
    /// Human-readable summary.
    pub message: String,
    /// When, Unix ms.
    pub at_unix_ms: u64,
    /// The analyzer's alert (MessagePack), nil for lifecycle events.
    pub data: D,
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
