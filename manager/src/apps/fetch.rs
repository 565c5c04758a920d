//! An app's bytes: a file (the manager's own `--app`, or one under its
//! `--apps-dir` named over the bus) or a blob in the object store, whose
//! digest and signature are checked before anything compiles it.

use std::path::{Path, PathBuf};

use bus_schema::store::{self, BlobKind};
use bus_schema::{AppSource, ErrorBody, ErrorCode};

use super::{MAX_APP_BYTES, Shared, refuse};

/// The app's bytes and SHA-256; an object-store blob's digest and
/// signature are checked against its metadata first. `local`: the
/// manager's own `--app` flag, not a request over the bus.
pub(super) async fn fetch(
    shared: &Shared,
    source: &AppSource,
    local: bool,
) -> Result<(Vec<u8>, String), ErrorBody> {
    match source {
        AppSource::File { path } => {
            if shared.trusted.enforced() && !local {
                return refuse(
                    ErrorCode::UnsignedBlob,
                    format!(
                        "source.path = {path:?}: this manager runs only signed apps from {} (files only from its own --app flag)",
                        store::BLOBS_BUCKET
                    ),
                );
            }
            let file = if local {
                PathBuf::from(path)
            } else {
                served_file(path, &shared.limits.apps_dirs)?
            };
            let bytes = read_capped(&file, MAX_APP_BYTES)
                .await
                .map_err(|(code, why)| {
                    ErrorBody::new(code, format!("source.path = {path:?}: {why}"))
                })?;
            let sha256 = wasm_host::sha256_hex(&bytes);
            Ok((bytes, sha256))
        }
        AppSource::Object(blob) => {
            let fetched = wasm_host::blob::fetch_verified(
                &shared.js,
                &shared.trusted,
                BlobKind::MgmtApp,
                "source.name",
                &blob.name,
                MAX_APP_BYTES,
            )
            .await?;
            Ok((fetched.bytes, fetched.sha256))
        }
    }
}

/// The file a request over the bus names, if it lies under one of
/// `dirs`: the path must be absolute without `..`, and stay under the
/// directory once symbolic links are resolved. Nothing outside is
/// touched, so a refusal says nothing about what exists there.
fn served_file(path: &str, dirs: &[PathBuf]) -> Result<PathBuf, ErrorBody> {
    use std::path::Component;
    let refused = |why: String| {
        Err(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("source.path = {path:?}: {why}"),
        ))
    };
    if dirs.is_empty() {
        return refused(
            "this manager serves no app files over the bus (start it with --apps-dir DIR, or put the app in the object store)".into(),
        );
    }
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return refused("must be an absolute path without `..`".into());
    }
    let canonical_dirs: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let under = |f: &Path| canonical_dirs.iter().any(|d| f.starts_with(d));
    if !under(p) && !dirs.iter().any(|d| p.starts_with(d)) {
        return refused(format!("not under this manager's --apps-dir {dirs:?}"));
    }
    match std::fs::canonicalize(p) {
        Ok(real) if under(&real) => Ok(real),
        Ok(_) => refused(format!(
            "leads outside this manager's --apps-dir {dirs:?} (a symbolic link)"
        )),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::BlobNotFound,
            format!("source.path = {path:?}: {e}"),
        )),
    }
}

/// A regular file's bytes, at most `max` of them. The error says why it
/// cannot be had (`blob_not_found`, or `bad_module` when too large), never
/// what it holds.
async fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>, (ErrorCode, String)> {
    use tokio::io::AsyncReadExt;
    let missing = |why: String| (ErrorCode::BlobNotFound, why);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| missing(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| missing(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(missing("not a regular file".into()));
    }
    let too_large = |size: String| {
        (
            ErrorCode::BadModule,
            format!("{size} bytes, more than the {max} allowed"),
        )
    };
    if meta.len() > max as u64 {
        return Err(too_large(meta.len().to_string()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| missing(format!("cannot read: {e}")))?;
    if bytes.len() > max {
        return Err(too_large(format!("over {max}")));
    }
    Ok(bytes)
}
