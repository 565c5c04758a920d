//! KV records: monitor and manager liveness, deployments' desired state,
//! the topology, and monitors' deployment snapshots.

use serde::{Deserialize, Serialize};

use super::{BlobRef, DeploymentStats, Filter, LinkInfo, LoadRequest, Packed, Value, nil};

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
    /// The analyzer's own state from `tm_snapshot` (nil if it has none),
    /// as the guest encoded it.
    #[serde(default)]
    pub state: Packed,
    /// When it was taken, Unix ms.
    pub taken_unix_ms: u64,
}
