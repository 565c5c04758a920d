//! Modules in the object store (`tm_blobs`): `keygen`, `analyzer put|list|rm`
//! and `apps put`.

use std::path::Path;

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, object_store};
use bus_schema::store::{self, BlobKind, BlobMeta};
use futures::StreamExt;
use wasm_host::trust::BlobSigner;

use crate::{AnalyzerCommand, BAD_INPUT, Failure, NOT_FOUND, PutArgs, fail};

async fn blobs(js: &jetstream::Context) -> anyhow::Result<object_store::ObjectStore> {
    Ok(bus_schema::nats::open_blobs(js, 1).await?)
}

/// `tmctl keygen`: a new signing key in `out`; prints its public key.
pub(crate) fn keygen(out: &Path, json: bool) -> Result<(), Failure> {
    let key = BlobSigner::generate().context("cannot read /dev/urandom")?;
    key.save(out)
        .with_context(|| {
            format!(
                "cannot write {} (an existing key file is never overwritten)",
                out.display()
            )
        })
        .map_err(|e| fail(BAD_INPUT, e))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"key_file": out.display().to_string(), "public_key": key.public_hex()})
        );
    } else {
        println!("{}", key.public_hex());
        eprintln!(
            "secret key written to {} (mode 0600); the line above is the public key to trust",
            out.display()
        );
    }
    Ok(())
}

/// `tmctl analyzer …`
pub(crate) async fn analyzer(
    js: &jetstream::Context,
    command: AnalyzerCommand,
    json: bool,
) -> Result<(), Failure> {
    let objects = blobs(js).await?;
    match command {
        AnalyzerCommand::Put(put_args) => put(js, BlobKind::Analyzer, put_args, json).await,
        AnalyzerCommand::List => list(&objects, json).await,
        AnalyzerCommand::Rm { name } => remove(&objects, &name, json).await,
    }
}

/// Stores a module of `kind` in the object store, signed if asked; prints
/// name and digest.
pub(crate) async fn put(
    js: &jetstream::Context,
    kind: BlobKind,
    put: PutArgs,
    json: bool,
) -> Result<(), Failure> {
    let PutArgs {
        file,
        name,
        version,
        description,
        sign_key,
    } = put;
    let signer = sign_key
        .as_deref()
        .map(BlobSigner::load)
        .transpose()
        .map_err(|e| fail(BAD_INPUT, anyhow!("--sign-key {e}")))?;
    let objects = blobs(js).await?;
    let bytes = read_module(&file)?;
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| fail(BAD_INPUT, anyhow!("{}: no file name", file.display())))?,
    };
    bus_schema::validate_token("name", &name).map_err(|e| fail(BAD_INPUT, e))?;
    let meta = BlobMeta {
        kind,
        version,
        sha256: wasm_host::sha256_hex(&bytes),
        abi_version: 1,
        description,
    };
    let mut metadata = meta.to_map();
    if let Some(signer) = &signer {
        metadata.extend(signer.sign(kind, &name, &meta.sha256));
    }
    objects
        .put(
            object_store::ObjectMetadata {
                name: name.clone(),
                description: Some(meta.description.clone()),
                metadata,
                ..Default::default()
            },
            &mut &bytes[..],
        )
        .await
        .with_context(|| format!("cannot store {name}"))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "sha256": meta.sha256, "size": bytes.len(),
                               "signer": signer.as_ref().map(BlobSigner::public_hex)})
        );
    } else {
        let signed = signer.as_ref().map_or("unsigned".to_owned(), |s| {
            format!("signed by {}", s.public_hex())
        });
        println!("{name} {} ({} bytes, {signed})", meta.sha256, bytes.len());
    }
    Ok(())
}

/// A file's bytes, if it starts as a WebAssembly module.
fn read_module(file: &Path) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read {}", file.display()))
        .map_err(|e| fail(BAD_INPUT, e))?;
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" || bytes[4..8] != [1, 0, 0, 0] {
        return Err(fail(
            BAD_INPUT,
            anyhow!(
                "{}: not a WebAssembly module (no \\0asm version 1 header)",
                file.display()
            ),
        ));
    }
    Ok(bytes)
}

async fn list(objects: &object_store::ObjectStore, json: bool) -> Result<(), Failure> {
    let mut list = objects.list().await.context("cannot list modules")?;
    let mut rows = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.context("cannot list modules")?;
        if info.deleted {
            continue;
        }
        let meta = BlobMeta::from_map(&info.metadata).ok();
        rows.push((info.name.clone(), info.size, meta));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(name, size, meta)| {
                serde_json::json!({
                    "name": name, "size": size,
                    "kind": meta.as_ref().map(|m| m.kind.as_str()),
                    "version": meta.as_ref().map(|m| m.version.clone()),
                    "sha256": meta.as_ref().map(|m| m.sha256.clone()),
                    "description": meta.as_ref().map(|m| m.description.clone()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!(
        "{:<20} {:<9} {:<9} {:>9}  {:<64}  DESCRIPTION",
        "NAME", "KIND", "VERSION", "SIZE", "SHA256"
    );
    for (name, size, meta) in &rows {
        match meta {
            Some(m) => println!(
                "{name:<20} {:<9} {:<9} {size:>9}  {:<64}  {}",
                m.kind.as_str(),
                m.version,
                m.sha256,
                m.description
            ),
            None => println!(
                "{name:<20} {:<9} {:<9} {size:>9}  {:<64}  (no tm metadata)",
                "?", "?", "?"
            ),
        }
    }
    Ok(())
}

async fn remove(
    objects: &object_store::ObjectStore,
    name: &str,
    json: bool,
) -> Result<(), Failure> {
    // A removed object still has an info record, marked deleted.
    if objects.info(name).await.map_or(true, |i| i.deleted) {
        return Err(fail(
            NOT_FOUND,
            anyhow!("no module named {name:?} in {}", store::BLOBS_BUCKET),
        ));
    }
    objects
        .delete(name)
        .await
        .with_context(|| format!("cannot remove {name}"))?;
    if json {
        println!("{}", serde_json::json!({"removed": name}));
    } else {
        println!("removed {name}");
    }
    Ok(())
}
