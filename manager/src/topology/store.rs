//! The topology's stored form: a [`TopologyRecord`] of rows, under key
//! `current` of the `tm_topology` bucket, created or updated by revision.

use async_nats::jetstream::{self, kv};
use bus_schema::store::{TOPOLOGY_BUCKET, TOPOLOGY_KEY};
use bus_schema::{TopologyRecord, TopologyRow};

use super::error::{Invalid, Location, Problem, TopologyError};
use super::graph::Entry;
use super::import::{
    FROM_ROUTER, LINK_ID, MONITOR_ADDRESS, TO_ROUTER, parse_address, required_address,
};
use super::{Tap, Topology};

impl Topology {
    /// Builds the topology from rows (as stored in a [`TopologyRecord`]).
    ///
    /// # Errors
    /// A row breaks a rule of the [module documentation](super); the error
    /// names it as `rows[i]`.
    pub fn from_rows(rows: &[TopologyRow]) -> Result<Self, TopologyError> {
        let entries = rows
            .iter()
            .enumerate()
            .map(|(i, row)| entry_of_row(Location::Row(i), row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::build(entries)?)
    }

    /// Builds the topology from a stored record.
    ///
    /// # Errors
    /// As [`Topology::from_rows`].
    pub fn from_record(record: &TopologyRecord) -> Result<Self, TopologyError> {
        Self::from_rows(&record.rows)
    }

    /// The record to store: the rows with addresses in canonical form.
    #[must_use]
    pub fn to_record(&self, imported_by: &str, imported_unix_ms: u64) -> TopologyRecord {
        TopologyRecord {
            rows: self.rows.clone(),
            imported_unix_ms,
            imported_by: imported_by.to_owned(),
        }
    }
}

/// Validates a stored row.
fn entry_of_row(at: Location, row: &TopologyRow) -> Result<Entry, Box<Invalid>> {
    let tap = if row.monitor_address.is_empty() {
        if row.link_id != 0 {
            return Err(Invalid::new(at, Problem::LinkIdWithoutMonitor)
                .field(LINK_ID)
                .value(row.link_id.to_string()));
        }
        None
    } else {
        Some(Tap {
            monitor: parse_address(&at, MONITOR_ADDRESS, &row.monitor_address)?,
            link_id: row.link_id,
        })
    };
    let from = required_address(&at, FROM_ROUTER, &row.from_router)?;
    let to = required_address(&at, TO_ROUTER, &row.to_router)?;
    Ok(Entry { at, tap, from, to })
}

/// The topology as stored in KV, with the revision to update it from.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub record: TopologyRecord,
    /// The record, validated.
    pub topology: Topology,
    /// Its KV revision: pass it to [`save`] to replace it.
    pub revision: u64,
}

/// A KV operation on the topology failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket could not be created.
    #[error("cannot open: {0}")]
    Bucket(#[source] bus_schema::nats::StoreError),
    /// Someone else wrote the topology since it was read (or it exists
    /// when creating it): load it again and decide.
    #[error(
        "{TOPOLOGY_BUCKET}/{TOPOLOGY_KEY} changed concurrently (expected {}); load it again",
        expected_text(*.expected)
    )]
    Conflict {
        /// The revision the writer expected (`None`: expected none stored).
        expected: Option<u64>,
    },
    /// Creating the key failed otherwise.
    #[error("cannot create {TOPOLOGY_BUCKET}/{TOPOLOGY_KEY}: {0}")]
    Create(#[source] kv::CreateError),
    /// Updating the key failed otherwise.
    #[error("cannot update {TOPOLOGY_BUCKET}/{TOPOLOGY_KEY}: {0}")]
    Update(#[source] kv::UpdateError),
    /// Reading the key failed.
    #[error("cannot read {TOPOLOGY_BUCKET}/{TOPOLOGY_KEY}: {0}")]
    Read(#[source] kv::EntryError),
    /// The record could not be encoded.
    #[error(transparent)]
    Encode(#[from] bus_schema::EncodeError),
    /// The stored bytes are not a topology record.
    #[error(transparent)]
    Decode(#[from] bus_schema::DecodeError),
    /// The record is not a valid topology.
    #[error("topology record refused: {0}")]
    Invalid(#[source] TopologyError),
}

fn expected_text(expected: Option<u64>) -> String {
    expected.map_or_else(
        || "no topology stored".to_owned(),
        |r| format!("revision {r}"),
    )
}

/// Opens the `tm_topology` bucket, creating it with the contract's settings
/// ([`bus_schema::store::buckets`]) if it is missing.
///
/// # Errors
/// [`KvError::Bucket`] if it can neither be opened nor created.
pub async fn open_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, KvError> {
    bus_schema::nats::open_kv(js, TOPOLOGY_BUCKET, replicas)
        .await
        .map_err(KvError::Bucket)
}

/// Stores a topology record under `current`: created if `expected_revision`
/// is `None` (refused if one is stored), else updated only if the stored
/// revision is still `expected_revision`. Never a blind put. The record is
/// validated first. Returns the new revision.
///
/// # Errors
/// [`KvError::Invalid`] for a refused record, [`KvError::Conflict`] if the
/// stored topology is not the expected one, or a bus error.
pub async fn save(
    kv: &kv::Store,
    record: &TopologyRecord,
    expected_revision: Option<u64>,
) -> Result<u64, KvError> {
    Topology::from_record(record).map_err(KvError::Invalid)?;
    let bytes = bus_schema::encode(record)?;
    match expected_revision {
        None => kv
            .create(TOPOLOGY_KEY, bytes.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => KvError::Conflict { expected: None },
                _ => KvError::Create(e),
            }),
        Some(revision) => kv
            .update(TOPOLOGY_KEY, bytes.into(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    expected: Some(revision),
                },
                _ => KvError::Update(e),
            }),
    }
}

/// Loads the stored topology, if any (a deleted or purged key is none).
///
/// # Errors
/// A bus error, undecodable bytes, or a stored record that is not a valid
/// topology.
pub async fn load(kv: &kv::Store) -> Result<Option<Stored>, KvError> {
    let Some(entry) = kv.entry(TOPOLOGY_KEY).await.map_err(KvError::Read)? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let record: TopologyRecord = bus_schema::decode(&entry.value)?;
    let topology = Topology::from_record(&record).map_err(KvError::Invalid)?;
    Ok(Some(Stored {
        record,
        topology,
        revision: entry.revision,
    }))
}

#[cfg(test)]
mod tests {
    use crate::topology::fixtures::*;
    use crate::topology::{Location, Problem, Topology};

    #[test]
    fn record_round_trip_and_refusal() {
        let t = figure5();
        let record = t.to_record("operator", 1_764_108_000_000);
        assert_eq!(record.imported_by, "operator");
        let back = Topology::from_record(&record).unwrap();
        assert_eq!(back.rows(), t.rows());
        assert_eq!(back.links(), t.links());

        let mut bad = record.clone();
        bad.rows[4].to_router = "10.0.4".into();
        let e = Topology::from_record(&bad).unwrap_err();
        let invalid = e.invalid().unwrap();
        assert_eq!(invalid.at, Some(Location::Row(4)));
        assert_eq!(invalid.problem, Problem::NotAnAddress);
        assert_eq!(
            e.to_string(),
            "rows[4].to_router = \"10.0.4\": not an IP address"
        );

        let mut bad = record;
        bad.rows[1].monitor_address = String::new();
        let e = Topology::from_record(&bad).unwrap_err();
        assert_eq!(e.invalid().unwrap().problem, Problem::LinkIdWithoutMonitor);
    }
}
