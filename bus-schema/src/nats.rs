//! Opening the contract's streams and buckets with async-nats (feature
//! `nats`). Where identities are enforced only the admin creates them
//! ([`ensure_stores`] as [`crate::Role::Admin`], which `tmctl setup` runs);
//! without, every role creates what it needs with the settings of
//! [`crate::store`], tolerating another process creating it first. Either
//! way every process checks, before it uses them, that they have the
//! contract's settings ([`check_stores`]) and refuses to run otherwise: a
//! stream made by someone else to capture more subjects, or to republish
//! them, would hand that party every message.

use async_nats::jetstream::{self, kv, object_store, stream};

use crate::store::{self, BucketKind};

/// A stream or bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("{what} {name}: {message}")]
pub struct StoreError {
    /// `stream`, `bucket` or `object store`.
    pub what: &'static str,
    /// Its name.
    pub name: String,
    /// What NATS said.
    pub message: String,
}

/// Opens KV bucket `name` (one of [`store::buckets`]), creating it with the
/// contract's settings if it is missing.
///
/// # Errors
/// If it can neither be opened nor created, or `name` is not a KV bucket
/// of the contract.
pub async fn open_kv(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let fail = |message: String| StoreError {
        what: "bucket",
        name: name.to_owned(),
        message,
    };
    let spec = store::buckets()
        .into_iter()
        .find(|b| b.name == name && b.kind == BucketKind::KeyValue)
        .ok_or_else(|| fail("not a KV bucket of the contract".into()))?;
    let created = js
        .create_key_value(kv::Config {
            bucket: spec.name.into(),
            description: spec.description.into(),
            history: spec.history,
            max_age: spec.max_age.unwrap_or_default(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another process may have created it in between.
        Err(e) => js
            .get_key_value(name)
            .await
            .map_err(|_| fail(e.to_string())),
    }
}

/// Opens the blob object store, creating it if it is missing.
///
/// # Errors
/// If it can neither be opened nor created.
pub async fn open_blobs(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<object_store::ObjectStore, StoreError> {
    if let Ok(o) = js.get_object_store(store::BLOBS_BUCKET).await {
        return Ok(o);
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: store::BLOBS_BUCKET.into(),
            description: Some("analyzer and mgmt-app modules".into()),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(o) => Ok(o),
        Err(e) => js
            .get_object_store(store::BLOBS_BUCKET)
            .await
            .map_err(|_| StoreError {
                what: "object store",
                name: store::BLOBS_BUCKET.into(),
                message: e.to_string(),
            }),
    }
}

/// The settings a stream or bucket of the contract must have, as a
/// JetStream stream configuration holds them.
struct Expected {
    name: String,
    what: &'static str,
    subjects: Vec<String>,
    max_age: std::time::Duration,
    duplicate_window: Option<std::time::Duration>,
    per_subject: Option<i64>,
}

/// Every stream (streams, KV buckets, the object store) of the contract
/// that `role` reads or writes ([`crate::auth::touches`]).
fn expected_of(role: crate::Role) -> Vec<Expected> {
    let mut out = Vec::new();
    for spec in store::streams() {
        out.push(Expected {
            name: spec.name.into(),
            what: "stream",
            subjects: spec.subjects.clone(),
            max_age: spec.max_age,
            duplicate_window: Some(spec.duplicate_window),
            per_subject: None,
        });
    }
    for b in store::buckets() {
        let name = crate::auth::stream_of_bucket(b.name, b.kind);
        out.push(match b.kind {
            BucketKind::KeyValue => Expected {
                name,
                what: "bucket",
                subjects: vec![format!("$KV.{}.>", b.name)],
                max_age: b.max_age.unwrap_or_default(),
                duplicate_window: None,
                per_subject: Some(b.history),
            },
            BucketKind::Object => Expected {
                name,
                what: "object store",
                subjects: vec![format!("$O.{}.C.>", b.name), format!("$O.{}.M.>", b.name)],
                max_age: std::time::Duration::ZERO,
                duplicate_window: None,
                per_subject: None,
            },
        });
    }
    out.retain(|e| crate::auth::touches(role, &e.name));
    out
}

/// How `config` differs from what the contract says (empty: it agrees).
fn differences(e: &Expected, config: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut want = e.subjects.clone();
    want.sort();
    let mut got = config.subjects.clone();
    got.sort();
    if want != got {
        out.push(format!("subjects are {got:?}, the contract says {want:?}"));
    }
    if config.retention != stream::RetentionPolicy::Limits {
        out.push(format!(
            "retention is {:?}, the contract says Limits",
            config.retention
        ));
    }
    if config.storage != stream::StorageType::File {
        out.push(format!(
            "storage is {:?}, the contract says File",
            config.storage
        ));
    }
    if config.max_age != e.max_age {
        out.push(format!(
            "max_age is {:?}, the contract says {:?}",
            config.max_age, e.max_age
        ));
    }
    if let Some(window) = e.duplicate_window
        && config.duplicate_window != window
    {
        out.push(format!(
            "duplicate_window is {:?}, the contract says {window:?}",
            config.duplicate_window
        ));
    }
    if let Some(n) = e.per_subject
        && config.max_messages_per_subject != n
    {
        out.push(format!(
            "max_messages_per_subject (history) is {}, the contract says {n}",
            config.max_messages_per_subject
        ));
    }
    if config.no_ack {
        out.push("no_ack is set: publishers would get no acknowledgement".into());
    }
    if config.sealed {
        out.push("it is sealed".into());
    }
    if config.republish.is_some() {
        out.push(format!(
            "it republishes what it stores ({:?}); the contract has no republish",
            config.republish
        ));
    }
    if config.subject_transform.is_some() {
        out.push("it transforms subjects; the contract has no transform".into());
    }
    if config.mirror.is_some() || config.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        out.push("it mirrors or sources another stream".into());
    }
    out
}

/// Checks that every stream and bucket `role` uses has the contract's
/// settings: subjects, retention, storage, age and history limits, and no
/// republish, transform, mirror or sources. With `require_all` a missing
/// one is an error too (identities enforced: the admin made them all);
/// without, a missing one is skipped (the object store exists only once
/// a blob was put).
///
/// # Errors
/// The first stream that is missing (with `require_all`), cannot be looked
/// up, or differs, naming every difference.
pub async fn check_stores(
    js: &jetstream::Context,
    role: crate::Role,
    require_all: bool,
) -> Result<(), StoreError> {
    for e in expected_of(role) {
        let fail = |message: String| StoreError {
            what: e.what,
            name: e.name.clone(),
            message,
        };
        let config = match js.get_stream(&e.name).await {
            Ok(s) => s.cached_info().config.clone(),
            Err(err)
                if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                if require_all {
                    return Err(fail(format!(
                        "missing ({err}): the admin identity creates every stream and bucket with `tmctl setup`"
                    )));
                }
                continue;
            }
            Err(err) => return Err(fail(err.to_string())),
        };
        let diff = differences(&e, &config);
        if !diff.is_empty() {
            return Err(fail(format!(
                "does not have the contract's settings: {}; refusing to use it (delete it and let `tmctl setup` create it)",
                diff.join("; ")
            )));
        }
    }
    Ok(())
}

/// A blob could not be read from the object store.
#[derive(Debug, thiserror::Error)]
pub enum BlobReadError {
    /// No object of that name (or it was deleted).
    #[error("no such blob in {bucket}")]
    NotFound {
        /// The bucket.
        bucket: &'static str,
    },
    /// The object is larger than the reader accepts.
    #[error("{size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size (as its info says, or as far as it was read).
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The store or a chunk could not be read.
    #[error("{0}")]
    Unavailable(String),
}

/// Attempts at a read that timed out: a burst of monitors loading the same
/// blob at once (a deploy to a whole fleet, a cluster node restarting) can
/// time out one request of thousands, which the next attempt answers.
const READ_ATTEMPTS: u32 = 3;

/// Runs `read` until it succeeds, fails otherwise than by a timeout or a
/// failed request (`timed_out`), or has timed out [`READ_ATTEMPTS`] times;
/// waits 100 ms, then 200 ms, between attempts.
async fn retry_timeouts<T, E, F, Fut>(mut read: F, timed_out: impl Fn(&E) -> bool) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match read().await {
            Err(e) if timed_out(&e) && attempt < READ_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                    .await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Reads blob `name` from the object store `tm_blobs`: its info (with the
/// metadata map) and its bytes, at most `max_bytes` of them.
///
/// Chunks are fetched one by one with the stream's message-get API, so
/// nothing is left behind on the server (the object store's own reader
/// makes a consumer per read, which lingers after it; a burst of loads
/// would exhaust the stream's consumers). The digest is the caller's to
/// check ([`crate::store`]'s metadata, `wasm_host::trust`). A request that
/// times out is sent again, three attempts in all.
///
/// # Errors
/// Not found, too large, or a read failure.
pub async fn read_blob(
    js: &jetstream::Context,
    name: &str,
    max_bytes: usize,
) -> Result<(object_store::ObjectInfo, Vec<u8>), BlobReadError> {
    let bucket = store::BLOBS_BUCKET;
    let unavailable = |e: &dyn std::fmt::Display| BlobReadError::Unavailable(e.to_string());
    let objects = retry_timeouts(
        || js.get_object_store(bucket),
        |e| e.kind() == jetstream::context::ObjectStoreErrorKind::GetStore,
    )
    .await
    .map_err(|e| BlobReadError::Unavailable(format!("object store {bucket}: {e}")))?;
    let info = retry_timeouts(
        || objects.info(name),
        |e| e.kind() == object_store::InfoErrorKind::TimedOut,
    )
    .await
    .map_err(|e| match e.kind() {
        object_store::InfoErrorKind::NotFound => BlobReadError::NotFound { bucket },
        _ => unavailable(&e),
    })?;
    if info.deleted {
        return Err(BlobReadError::NotFound { bucket });
    }
    if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
        return Err(BlobReadError::Unavailable(
            "the object is a link; blobs are stored as objects".into(),
        ));
    }
    if info.size > max_bytes {
        return Err(BlobReadError::TooLarge {
            size: info.size,
            max: max_bytes,
        });
    }
    let stream_name = crate::auth::stream_of_bucket(bucket, BucketKind::Object);
    let stream = retry_timeouts(
        || js.get_stream(&stream_name),
        |e| e.kind() == jetstream::context::GetStreamErrorKind::Request,
    )
    .await
    .map_err(|e| unavailable(&e))?;
    let chunks = format!("$O.{bucket}.C.{}", info.nuid);
    let mut bytes = Vec::with_capacity(info.size);
    let mut next = 1;
    for _ in 0..info.chunks {
        let msg = retry_timeouts(
            || {
                stream
                    .raw_message_builder()
                    .sequence(next)
                    .next_by_subject(chunks.clone())
                    .send()
            },
            |e| e.kind() == stream::RawMessageErrorKind::Other,
        )
        .await
        .map_err(|e| BlobReadError::Unavailable(format!("chunk after sequence {next}: {e}")))?;
        next = msg.sequence + 1;
        if bytes.len() + msg.payload.len() > max_bytes {
            return Err(BlobReadError::TooLarge {
                size: bytes.len() + msg.payload.len(),
                max: max_bytes,
            });
        }
        bytes.extend_from_slice(&msg.payload);
    }
    if bytes.len() != info.size {
        return Err(BlobReadError::Unavailable(format!(
            "read {} bytes in {} chunks, its info says {}",
            bytes.len(),
            info.chunks,
            info.size
        )));
    }
    Ok((info, bytes))
}

/// Creates every stream and KV bucket of the contract that `role` reads or
/// writes ([`crate::auth::touches`]) and that is missing, and for the
/// admin the object store too. Only for the admin where identities are
/// enforced (the others may not create), for every role without.
///
/// # Errors
/// The first one that can neither be opened nor created.
pub async fn ensure_stores(
    js: &jetstream::Context,
    replicas: usize,
    role: crate::Role,
) -> Result<(), StoreError> {
    for spec in store::streams()
        .into_iter()
        .filter(|s| crate::auth::touches(role, s.name))
    {
        js.get_or_create_stream(stream::Config {
            name: spec.name.into(),
            subjects: spec.subjects.clone(),
            description: Some(spec.description.into()),
            max_age: spec.max_age,
            duplicate_window: spec.duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError {
            what: "stream",
            name: spec.name.into(),
            message: e.to_string(),
        })?;
    }
    for spec in store::buckets().into_iter().filter(|b| {
        b.kind == BucketKind::KeyValue
            && crate::auth::touches(role, &crate::auth::stream_of_bucket(b.name, b.kind))
    }) {
        open_kv(js, spec.name, replicas).await?;
    }
    if role == crate::Role::Admin {
        open_blobs(js, replicas).await?;
    }
    Ok(())
}

/// A credentials file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("credentials {path}: {message}")]
pub struct CredentialsError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// The servers of a comma-separated URL list (`--nats`, `nats_url`),
/// blanks around each trimmed.
///
/// # Errors
/// The first URL that does not parse, named with its place in the list.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .enumerate()
        .map(|(i, u)| {
            u.trim()
                .parse()
                .map_err(|e| format!("[{i}] = {:?}: {e}", u.trim()))
        })
        .collect()
}

/// Adds the identity in the file at `path` to `options`: either a NATS
/// `.creds` file (user JWT and seed, for operator-mode servers) or an nkey
/// seed file as `tmctl auth init` writes. With a seed, replies come to the
/// identity's private inbox ([`crate::auth::inbox_prefix`]), the only one
/// the generated permissions let it read.
///
/// # Errors
/// The file cannot be read, or holds neither a JWT nor a valid user seed.
pub async fn with_credentials(
    options: async_nats::ConnectOptions,
    path: &std::path::Path,
) -> Result<async_nats::ConnectOptions, CredentialsError> {
    let fail = |message: String| CredentialsError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    if text.contains("BEGIN NATS USER JWT") {
        return options
            .credentials_file(path)
            .await
            .map_err(|e| fail(e.to_string()));
    }
    let seed = crate::auth::seed_in(&text)
        .ok_or_else(|| fail("holds neither a user JWT nor an nkey user seed (SU…)".into()))?;
    let key = nkeys::KeyPair::from_seed(seed).map_err(|e| fail(format!("bad seed: {e}")))?;
    Ok(options
        .custom_inbox_prefix(crate::auth::inbox_prefix(&key.public_key()))
        .nkey(seed.to_owned()))
}
