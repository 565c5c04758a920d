//! Opening the contract's streams and buckets with async-nats (feature
//! `nats`): every role creates what it needs with the settings of
//! [`crate::store`], and tolerates another process creating it first.

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

/// Creates every stream and KV bucket of the contract that `role` reads or
/// writes ([`crate::auth::touches`]: the ones its permissions let it
/// create) and that is missing.
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
