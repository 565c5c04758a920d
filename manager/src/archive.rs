//! The results archive: JSON lines written through the `object_store` crate,
//! to a local directory by default or an `s3://` URL (builds with the `s3`
//! feature), partitioned so that any tool can pick a day, a deployment or a
//! monitor:
//!
//! ```text
//! date=2026-11-26/deployment=link-load-1/monitor=mon-a/1764150000123-000007.jsonl
//! date=2026-11-26/app=link-load/link-load-final/1764150000456-000001.jsonl
//! ```
//!
//! Object stores do not append, so each write is its own object; a line is
//! one JSON object.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bus_schema::Value;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::control::MonitorResults;

/// Where archived results go.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    seq: Arc<AtomicU64>,
}

/// The archive could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("archive {location}: {message}")]
pub struct ArchiveError {
    /// The archive's URL or directory.
    pub location: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Opens `location`: a directory (created if missing), a `file://` URL,
    /// or an `s3://bucket/prefix` URL (credentials from the usual `AWS_*`
    /// environment variables).
    ///
    /// # Errors
    /// If the directory cannot be created or the URL is not supported.
    pub fn open(location: &str) -> Result<Archive, ArchiveError> {
        let fail = |message: String| ArchiveError {
            location: location.to_owned(),
            message,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if location.starts_with("s3://") {
            open_s3(location).map_err(fail)?
        } else {
            let dir = location.strip_prefix("file://").unwrap_or(location);
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| fail(e.to_string()))?;
            (Arc::new(fs), Path::default())
        };
        Ok(Archive {
            store,
            prefix,
            location: location.to_owned(),
            seq: Arc::default(),
        })
    }

    /// Where it writes.
    #[must_use]
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, parts: &[String], at_ms: u64) -> Path {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut path = self
            .prefix
            .clone()
            .join(format!("date={}", utc_date(at_ms)).as_str());
        for p in parts {
            path = path.join(p.as_str());
        }
        path.join(format!("{at_ms}-{seq:06}.jsonl").as_str())
    }

    async fn put(&self, path: Path, lines: &[serde_json::Value]) -> Result<String, ArchiveError> {
        let mut body = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut body, line).map_err(|e| ArchiveError {
                location: self.location.clone(),
                message: e.to_string(),
            })?;
            body.push(b'\n');
        }
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| ArchiveError {
                location: self.location.clone(),
                message: format!("cannot write {path}: {e}"),
            })?;
        Ok(path.to_string())
    }

    /// Writes each monitor's results of `deployment` as its own object under
    /// `date=…/deployment=…/monitor=…/`; returns the paths.
    ///
    /// # Errors
    /// The first write that fails.
    pub async fn results(
        &self,
        deployment: &str,
        results: &[MonitorResults],
    ) -> Result<Vec<String>, ArchiveError> {
        let mut paths = Vec::new();
        for r in results {
            let w = &r.window;
            let line = serde_json::json!({
                "deployment": deployment,
                "monitor": w.monitor,
                "address": r.address,
                "analyzer": w.analyzer,
                "run": w.run,
                "seq": w.seq,
                "start_unix_ms": w.start_unix_ms,
                "end_unix_ms": w.end_unix_ms,
                "last": w.last,
                "stats": {
                    "packets_in": w.stats.packets_in,
                    "bytes_in": w.stats.bytes_in,
                    "dropped": w.stats.dropped,
                },
                "capture": w.capture.iter().map(|c| serde_json::json!({
                    "link": c.link,
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "kernel_drops": c.kernel_drops,
                    "interface_drops": c.interface_drops,
                })).collect::<Vec<_>>(),
                "results": to_json(&w.results),
            });
            let path = self.path(
                &[
                    format!("deployment={deployment}"),
                    format!("monitor={}", w.monitor),
                ],
                w.end_unix_ms,
            );
            paths.push(self.put(path, &[line]).await?);
        }
        Ok(paths)
    }

    /// Writes one record of an app under `date=…/app=…/{name}/`.
    ///
    /// # Errors
    /// If the write fails.
    pub async fn record(
        &self,
        app: &str,
        name: &str,
        at_ms: u64,
        body: &Value,
    ) -> Result<String, ArchiveError> {
        let path = self.path(&[format!("app={app}"), name.to_owned()], at_ms);
        self.put(path, &[to_json(body)]).await
    }
}

/// `s3://bucket/prefix`, configured from the usual `AWS_*` environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for S3-compatible servers).
#[cfg(feature = "s3")]
fn open_s3(location: &str) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let url = url::Url::parse(location).map_err(|e| e.to_string())?;
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or("no bucket in the URL (want s3://bucket/prefix)")?;
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((
        Arc::new(store),
        Path::from(url.path().trim_start_matches('/')),
    ))
}

#[cfg(not(feature = "s3"))]
fn open_s3(_location: &str) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    Err("this build has no S3 support: build tm-manager with `--features s3`".into())
}

/// A MessagePack value as JSON: map keys that are not strings become their
/// text (`{"0": …}` for link ids), binary becomes lower-case hex.
#[must_use]
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => i
            .as_u64()
            .map(J::from)
            .or_else(|| i.as_i64().map(J::from))
            .unwrap_or(J::Null),
        Value::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.as_str().map_or_else(
            || String::from_utf8_lossy(s.as_bytes()).into_owned(),
            str::to_owned,
        )),
        Value::Binary(b) => J::String(hex::encode(b)),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.as_str().unwrap_or_default().to_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(_, b) => J::String(hex::encode(b)),
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time in ms.
#[must_use]
pub fn utc_date(unix_ms: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (unix_ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_764_115_200_000), "2025-11-26");
        assert_eq!(utc_date(1_764_115_199_999), "2025-11-25");
    }

    #[test]
    fn msgpack_maps_with_integer_keys_become_json_objects() {
        let v = Value::Map(vec![(
            Value::from(0),
            Value::Map(vec![(Value::from("bytes"), Value::from(42))]),
        )]);
        assert_eq!(to_json(&v), serde_json::json!({"0": {"bytes": 42}}));
        assert_eq!(
            to_json(&Value::Binary(vec![1, 255])),
            serde_json::json!("01ff")
        );
    }

    #[tokio::test]
    async fn results_land_as_json_lines_under_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path().to_str().unwrap()).unwrap();
        let window = bus_schema::ResultWindow {
            monitor: "mon-a".into(),
            deployment: "d1".into(),
            analyzer: "flow-stats".into(),
            sha256: String::new(),
            run: "r1".into(),
            seq: 3,
            start_unix_ms: 1_764_115_200_000,
            end_unix_ms: 1_764_115_201_000,
            last: false,
            stats: bus_schema::DeploymentStats::default(),
            capture: vec![],
            results: Value::Map(vec![(Value::from("packets"), Value::from(7))]),
        };
        let paths = archive
            .results(
                "d1",
                &[MonitorResults {
                    address: "10.9.0.1".into(),
                    window,
                }],
            )
            .await
            .unwrap();
        assert_eq!(paths.len(), 1);
        assert!(
            paths[0].starts_with("date=2025-11-26/deployment=d1/monitor=mon-a/1764115201000-"),
            "{}",
            paths[0]
        );
        let text = std::fs::read_to_string(dir.path().join(&paths[0])).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["results"]["packets"], 7);
        assert_eq!(line["address"], "10.9.0.1");
        assert!(text.ends_with('\n') && text.lines().count() == 1);
    }
}
