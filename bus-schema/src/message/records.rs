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

impl DeploymentSnapshot {
    /// The record in MessagePack, as [`crate::encode`] writes it (a map
    /// of its fields by name, in their order), except that the analyzer's
    /// state is copied in as the bytes the guest gave instead of being
    /// read and written again value by value: a snapshot of a large state
    /// costs a copy, not a transcoding.
    ///
    /// # Errors
    /// A field cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>, crate::EncodeError> {
        use rmp_serde::encode::{Error, write_named};
        fn key(out: &mut Vec<u8>, name: &str) -> Result<(), Error> {
            rmp::encode::write_str(out, name).map_err(Error::InvalidValueWrite)
        }
        fn field<T: Serialize>(out: &mut Vec<u8>, name: &str, value: &T) -> Result<(), Error> {
            key(out, name)?;
            write_named(out, value)
        }
        let state = self.state.as_bytes();
        let mut out = Vec::with_capacity(state.len() + 512);
        let write = |out: &mut Vec<u8>| -> Result<(), Error> {
            rmp::encode::write_map_len(out, 9).map_err(Error::InvalidValueWrite)?;
            field(out, "monitor", &self.monitor)?;
            field(out, "request", &self.request)?;
            field(out, "run", &self.run)?;
            field(out, "config_revision", &self.config_revision)?;
            field(out, "published_seq", &self.published_seq)?;
            field(out, "event_seq", &self.event_seq)?;
            field(out, "stats", &self.stats)?;
            key(out, "state")?;
            out.extend_from_slice(state);
            field(out, "taken_unix_ms", &self.taken_unix_ms)
        };
        write(&mut out).map_err(|source| crate::EncodeError {
            type_name: "DeploymentSnapshot",
            source,
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeploymentStats, Filter};

    fn snapshot(state: Packed) -> DeploymentSnapshot {
        DeploymentSnapshot {
            monitor: "m1".into(),
            request: LoadRequest {
                deployment: "d".into(),
                analyzer: BlobRef {
                    name: "flow-stats".into(),
                    sha256: "ab".repeat(32),
                },
                params: Value::Map(vec![("top_n".into(), 5.into())]),
                filter: Filter {
                    protocols: vec![6],
                    bpf: Some("tcp".into()),
                    ..Filter::default()
                },
                links: vec![0, 3],
                owner: "mgr".into(),
                report_every_ms: Some(1000),
            },
            run: "r7".into(),
            config_revision: 2,
            published_seq: 41,
            event_seq: 9,
            stats: DeploymentStats {
                packets_in: 1_000_000,
                dropped: 12,
                ..DeploymentStats::default()
            },
            state,
            taken_unix_ms: 1_765_000_000_000,
        }
    }

    /// A state as a guest's encoder writes it (every value in its shortest
    /// form): the record's bytes are the generic encoder's, byte for byte,
    /// and read back as the same record.
    #[test]
    fn a_snapshot_encodes_as_the_generic_encoder_does() {
        let flows: Vec<(String, u64, f64, Vec<u8>)> = (0..300u64)
            .map(|i| {
                (
                    format!("10.0.0.{i}"),
                    i * 1_000_003,
                    i as f64 / 3.0,
                    vec![i as u8; 3],
                )
            })
            .collect();
        let state = rmp_serde::to_vec_named(&(flows, -5i64, true, ())).unwrap();
        for state in [Packed::from_bytes(state).unwrap(), Packed::nil()] {
            let snap = snapshot(state);
            let bytes = snap.encode().unwrap();
            assert_eq!(bytes, crate::encode(&snap).unwrap());
            assert_eq!(crate::decode::<DeploymentSnapshot>(&bytes).unwrap(), snap);
        }
    }

    /// The state's bytes go in as the guest gave them: a value not in its
    /// shortest form stays so in the record, and reads back as the same
    /// value.
    #[test]
    fn a_snapshot_carries_the_state_bytes_unchanged() {
        // 5 as a uint16.
        let snap = snapshot(Packed::from_bytes(vec![0xcd, 0, 5]).unwrap());
        let bytes = snap.encode().unwrap();
        assert!(
            bytes.windows(9).any(|w| w == b"\xa5state\xcd\x00\x05"),
            "{bytes:x?}"
        );
        let back: DeploymentSnapshot = crate::decode(&bytes).unwrap();
        assert_eq!(back.state.to_value().unwrap(), Value::from(5));
        assert_eq!(back.request, snap.request);
    }
}
