//! JetStream buckets and streams, with the settings every role creates them
//! with, and the metadata carried by WebAssembly blobs in the object store.
//!
//! These are plain data so that this crate does not depend on a NATS client;
//! the hosts turn them into async-nats configurations.

use std::collections::HashMap;
use std::time::Duration;

use crate::{Role, subject};

/// Object store bucket holding analyzer and management-app modules.
pub const BLOBS_BUCKET: &str = "tm_blobs";
/// KV bucket of monitor liveness records ([`crate::MonitorRecord`]).
pub const MONITORS_BUCKET: &str = "tm_monitors";
/// KV bucket of deployments' desired state ([`crate::DeploymentRecord`]).
pub const DEPLOYMENTS_BUCKET: &str = "tm_deployments";
/// KV bucket holding the topology ([`crate::TopologyRecord`]).
pub const TOPOLOGY_BUCKET: &str = "tm_topology";
/// KV bucket of running deployments' snapshots ([`crate::DeploymentSnapshot`]),
/// from which a restarted monitor reloads them.
pub const SNAPSHOTS_BUCKET: &str = "tm_snapshots";
/// KV bucket of [`crate::ManagerRecord`]s: managers that are up.
pub const MANAGERS_BUCKET: &str = "tm_managers";
/// Key of the current topology in [`TOPOLOGY_BUCKET`].
pub const TOPOLOGY_KEY: &str = "current";

/// Stream of result windows.
pub const RESULTS_STREAM: &str = "TM_RESULTS";
/// Stream of monitor events.
pub const EVENTS_STREAM: &str = "TM_EVENTS";
/// Stream of management-app reports.
pub const REPORTS_STREAM: &str = "TM_REPORTS";

/// How often a monitor refreshes its [`crate::MonitorRecord`].
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Age after which a liveness record (monitor or manager) expires from its
/// bucket: six missed heartbeats.
pub const RECORD_MAX_AGE: Duration = Duration::from_secs(HEARTBEAT_EVERY.as_secs() * 6);

/// Key of a deployment's snapshot in [`SNAPSHOTS_BUCKET`].
#[must_use]
pub fn snapshot_key(monitor: &str, deployment: &str) -> String {
    format!("{monitor}.{deployment}")
}

/// Prefix of every snapshot key of one monitor.
#[must_use]
pub fn snapshot_prefix(monitor: &str) -> String {
    format!("{monitor}.")
}

/// What a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketKind {
    /// JetStream key-value bucket.
    KeyValue,
    /// JetStream object store.
    Object,
}

/// Settings of a bucket.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    /// Bucket name.
    pub name: &'static str,
    /// Key-value or object store.
    pub kind: BucketKind,
    /// What it holds.
    pub description: &'static str,
    /// Values kept per key (KV only).
    pub history: i64,
    /// Entries older than this are removed (`None`: kept forever).
    pub max_age: Option<Duration>,
    /// Roles that write to it.
    pub writers: &'static [Role],
    /// Roles that read it.
    pub readers: &'static [Role],
}

/// Settings of a stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream name.
    pub name: &'static str,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// What it holds.
    pub description: &'static str,
    /// Messages older than this are removed.
    pub max_age: Duration,
    /// Window in which a repeated message id is dropped as a duplicate.
    pub duplicate_window: Duration,
}

/// File storage; limits retention; replicas are a deployment choice (1 on a
/// single server, 3 on a cluster), given by the host at creation.
pub const STORAGE: &str = "file";

/// Every bucket the system uses.
#[must_use]
pub fn buckets() -> Vec<BucketSpec> {
    vec![
        BucketSpec {
            name: BLOBS_BUCKET,
            kind: BucketKind::Object,
            description: "analyzer and management-app modules, with BlobMeta as object metadata",
            history: 1,
            max_age: None,
            writers: &[Role::Operator, Role::Manager],
            readers: &[Role::Monitor, Role::Manager, Role::Operator],
        },
        BucketSpec {
            name: MONITORS_BUCKET,
            kind: BucketKind::KeyValue,
            description: "MonitorRecord per monitor id; an entry older than max_age means the monitor is gone",
            history: 1,
            max_age: Some(RECORD_MAX_AGE),
            writers: &[Role::Monitor],
            readers: &[Role::Manager, Role::Operator, Role::Viewer],
        },
        BucketSpec {
            name: DEPLOYMENTS_BUCKET,
            kind: BucketKind::KeyValue,
            description: "DeploymentRecord per deployment id: desired state, owner, revision",
            history: 5,
            max_age: None,
            writers: &[Role::Manager, Role::Operator],
            readers: &[Role::Manager, Role::Operator, Role::Monitor, Role::Viewer],
        },
        BucketSpec {
            name: MANAGERS_BUCKET,
            kind: BucketKind::KeyValue,
            description: "ManagerRecord per manager id; an entry older than max_age means the manager is gone and its deployments may be adopted",
            history: 1,
            max_age: Some(RECORD_MAX_AGE),
            writers: &[Role::Manager],
            readers: &[Role::Manager, Role::Operator, Role::Viewer],
        },
        BucketSpec {
            name: SNAPSHOTS_BUCKET,
            kind: BucketKind::KeyValue,
            description: "DeploymentSnapshot per `{monitor}.{deployment}`; a restarted monitor reloads its own",
            history: 1,
            max_age: None,
            writers: &[Role::Monitor],
            readers: &[Role::Monitor, Role::Operator],
        },
        BucketSpec {
            name: TOPOLOGY_BUCKET,
            kind: BucketKind::KeyValue,
            description: "TopologyRecord under the key `current`",
            history: 10,
            max_age: None,
            writers: &[Role::Operator, Role::Manager],
            readers: &[Role::Manager, Role::Operator, Role::Viewer],
        },
    ]
}

/// Every stream the system uses.
#[must_use]
pub fn streams() -> Vec<StreamSpec> {
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    const TWO_MINUTES: Duration = Duration::from_secs(120);
    vec![
        StreamSpec {
            name: RESULTS_STREAM,
            subjects: vec![subject::results_all()],
            description: "ResultWindow messages; message id `{deployment}:{monitor}:{run}:{seq}`",
            max_age: WEEK,
            duplicate_window: TWO_MINUTES,
        },
        StreamSpec {
            name: EVENTS_STREAM,
            subjects: vec![subject::events_all()],
            description: "Event messages; message id `{deployment}:{monitor}:{run}:e{seq}`",
            max_age: WEEK,
            duplicate_window: TWO_MINUTES,
        },
        StreamSpec {
            name: REPORTS_STREAM,
            subjects: vec![subject::reports_all()],
            description: "Report messages; message id `{manager}:{app}:{seq}`",
            max_age: WEEK,
            duplicate_window: TWO_MINUTES,
        },
    ]
}

/// What a blob in [`BLOBS_BUCKET`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A packet analysis program run by monitors.
    Analyzer,
    /// A management application run by managers.
    MgmtApp,
}

impl BlobKind {
    /// Name as stored in metadata.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BlobKind::Analyzer => "analyzer",
            BlobKind::MgmtApp => "mgmt-app",
        }
    }
}

/// Metadata of a blob in the object store, stored as the object's metadata
/// map under the `tm-*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Analyzer or management app.
    pub kind: BlobKind,
    /// The module's own version string.
    pub version: String,
    /// Lower-case hex SHA-256 of the whole blob.
    pub sha256: String,
    /// ABI version the module exports.
    pub abi_version: u32,
    /// One line saying what it does.
    pub description: String,
}

/// Metadata keys of [`BlobMeta`].
pub mod meta_key {
    /// `analyzer` or `mgmt-app`.
    pub const KIND: &str = "tm-kind";
    /// Module version.
    pub const VERSION: &str = "tm-version";
    /// Hex SHA-256.
    pub const SHA256: &str = "tm-sha256";
    /// ABI version.
    pub const ABI: &str = "tm-abi";
    /// Description.
    pub const DESCRIPTION: &str = "tm-description";
    /// Public ed25519 key of the signer, 64 hex digits (signed blobs only).
    pub const SIGNER: &str = "tm-signer";
    /// ed25519 signature, 128 hex digits, over
    /// `tm-blob-signature-v1\n{kind}\n{name}\n{sha256}\n` (signed blobs only).
    pub const SIGNATURE: &str = "tm-signature";
}

/// A metadata map is missing a key or holds a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob metadata {key} = {value:?}: {why}")]
pub struct MetaError {
    /// The key at fault.
    pub key: &'static str,
    /// Its value (empty when missing).
    pub value: String,
    /// Why it was refused.
    pub why: &'static str,
}

impl BlobMeta {
    /// The metadata as an object-store metadata map.
    #[must_use]
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            (meta_key::KIND.to_owned(), self.kind.as_str().to_owned()),
            (meta_key::VERSION.to_owned(), self.version.clone()),
            (meta_key::SHA256.to_owned(), self.sha256.clone()),
            (meta_key::ABI.to_owned(), self.abi_version.to_string()),
            (meta_key::DESCRIPTION.to_owned(), self.description.clone()),
        ])
    }

    /// Reads the metadata back from an object-store metadata map.
    ///
    /// # Errors
    /// A [`MetaError`] naming the missing or bad key.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, MetaError> {
        let get = |key: &'static str| {
            map.get(key).cloned().ok_or(MetaError {
                key,
                value: String::new(),
                why: "missing",
            })
        };
        let kind = match get(meta_key::KIND)?.as_str() {
            "analyzer" => BlobKind::Analyzer,
            "mgmt-app" => BlobKind::MgmtApp,
            other => {
                return Err(MetaError {
                    key: meta_key::KIND,
                    value: other.to_owned(),
                    why: "expected `analyzer` or `mgmt-app`",
                });
            }
        };
        let sha256 = get(meta_key::SHA256)?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(MetaError {
                key: meta_key::SHA256,
                value: sha256,
                why: "expected 64 lower-case hex digits",
            });
        }
        let abi = get(meta_key::ABI)?;
        let abi_version = abi.parse().map_err(|_| MetaError {
            key: meta_key::ABI,
            value: abi.clone(),
            why: "expected an unsigned integer",
        })?;
        Ok(BlobMeta {
            kind,
            version: get(meta_key::VERSION)?,
            sha256,
            abi_version,
            description: map.get(meta_key::DESCRIPTION).cloned().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_meta_round_trips_and_names_bad_keys() {
        let meta = BlobMeta {
            kind: BlobKind::Analyzer,
            version: "0.1.0".into(),
            sha256: "ab".repeat(32),
            abi_version: 1,
            description: "flows".into(),
        };
        assert_eq!(BlobMeta::from_map(&meta.to_map()).unwrap(), meta);

        let mut map = meta.to_map();
        map.insert(meta_key::ABI.into(), "one".into());
        let err = BlobMeta::from_map(&map).unwrap_err();
        assert_eq!(err.key, meta_key::ABI);
        assert_eq!(err.value, "one");

        let mut map = meta.to_map();
        map.remove(meta_key::SHA256);
        assert_eq!(BlobMeta::from_map(&map).unwrap_err().key, meta_key::SHA256);

        let mut map = meta.to_map();
        map.insert(meta_key::SHA256.into(), "AB".repeat(32));
        assert_eq!(
            BlobMeta::from_map(&map).unwrap_err().why,
            "expected 64 lower-case hex digits"
        );
    }

    #[test]
    fn streams_capture_the_stream_subjects() {
        let specs = streams();
        for s in subject::catalog()
            .iter()
            .filter(|s| s.kind == subject::SubjectKind::Stream)
        {
            let prefix = s.pattern.split('{').next().unwrap();
            assert!(
                specs.iter().any(|st| st
                    .subjects
                    .iter()
                    .any(|w| prefix.starts_with(w.trim_end_matches('>')))),
                "no stream captures {}",
                s.pattern
            );
        }
    }
}
