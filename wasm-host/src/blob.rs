//! A module fetched from the object store (`tm_blobs`) and accepted to be
//! compiled: read capped, its kind checked, its digest and signature
//! verified ([`TrustedKeys::verify`]).
//!
//! Every refusal is an [`ErrorBody`] naming the blob as the request field
//! that named it (`analyzer.name = "flow-stats": …`, `source.name = "x": …`):
//!
//! | what | code |
//! | --- | --- |
//! | no such object (or deleted) | `blob_not_found` |
//! | larger than the cap | `bad_module` |
//! | stored as the other kind | `bad_module` |
//! | the store or a chunk unreadable | `unavailable` |
//! | digest or signature refused | [`TrustedKeys::verify`]'s codes |

use std::collections::HashMap;

use async_nats::jetstream;
use bus_schema::nats::BlobReadError;
use bus_schema::store::{BlobKind, BlobMeta};
use bus_schema::{ErrorBody, ErrorCode};

use crate::trust::TrustedKeys;

/// A blob whose bytes match its metadata digest and, where keys are
/// trusted, its signature.
#[derive(Debug, Clone)]
pub struct FetchedBlob {
    /// The module's bytes.
    pub bytes: Vec<u8>,
    /// Their SHA-256, lower-case hex.
    pub sha256: String,
    /// The object's metadata map (`tm-*` keys).
    pub metadata: HashMap<String, String>,
}

/// Reads blob `name` of `kind` from `tm_blobs`, at most `max_bytes`, and
/// verifies it before anything compiles it. `field` is the request field
/// that named the blob (`analyzer.name`, `source.name`), quoted in every
/// refusal.
///
/// # Errors
/// `blob_not_found`, `bad_module` (too large, another kind), `unavailable`,
/// or a refusal of [`TrustedKeys::verify`].
pub async fn fetch_verified(
    js: &jetstream::Context,
    trusted: &TrustedKeys,
    kind: BlobKind,
    field: &str,
    name: &str,
    max_bytes: usize,
) -> Result<FetchedBlob, ErrorBody> {
    let (info, bytes) = bus_schema::nats::read_blob(js, name, max_bytes)
        .await
        .map_err(|e| read_refusal(field, name, &e))?;
    if let Ok(meta) = BlobMeta::from_map(&info.metadata)
        && meta.kind != kind
    {
        return Err(ErrorBody::new(
            ErrorCode::BadModule,
            format!(
                "{field} = {name:?} is stored with {} {:?}: it is {}, not {}",
                bus_schema::store::meta_key::KIND,
                meta.kind.as_str(),
                described(meta.kind),
                described(kind)
            ),
        ));
    }
    // Digest and signature, before anything is compiled.
    let sha256 = trusted.verify(kind, name, &info.metadata, &bytes)?;
    Ok(FetchedBlob {
        bytes,
        sha256,
        metadata: info.metadata,
    })
}

/// The refusal for a blob that could not be read.
fn read_refusal(field: &str, name: &str, e: &BlobReadError) -> ErrorBody {
    match e {
        BlobReadError::NotFound { .. } => {
            ErrorBody::new(ErrorCode::BlobNotFound, format!("{field} = {name:?}: {e}"))
        }
        BlobReadError::TooLarge { .. } => {
            ErrorBody::new(ErrorCode::BadModule, format!("{field} = {name:?}: {e}"))
        }
        BlobReadError::Unavailable(_) => {
            ErrorBody::new(ErrorCode::Unavailable, format!("reading {name}: {e}"))
        }
    }
}

/// A kind with its article, as a refusal says it.
fn described(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Analyzer => "an analyzer",
        BlobKind::MgmtApp => "a mgmt app",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_refusals_name_the_field_and_keep_the_codes() {
        let not_found = read_refusal(
            "analyzer.name",
            "flow-stats",
            &BlobReadError::NotFound { bucket: "tm_blobs" },
        );
        assert_eq!(not_found.code, ErrorCode::BlobNotFound);
        assert_eq!(
            not_found.message,
            "analyzer.name = \"flow-stats\": no such blob in tm_blobs"
        );
        let too_large = read_refusal(
            "source.name",
            "app",
            &BlobReadError::TooLarge { size: 9, max: 8 },
        );
        assert_eq!(too_large.code, ErrorCode::BadModule);
        assert_eq!(
            too_large.message,
            "source.name = \"app\": 9 bytes, more than the 8 allowed"
        );
        let unavailable = read_refusal(
            "source.name",
            "app",
            &BlobReadError::Unavailable("timed out".into()),
        );
        assert_eq!(unavailable.code, ErrorCode::Unavailable);
        assert_eq!(unavailable.message, "reading app: timed out");
    }

    #[test]
    fn kinds_are_named_with_their_article() {
        assert_eq!(described(BlobKind::Analyzer), "an analyzer");
        assert_eq!(described(BlobKind::MgmtApp), "a mgmt app");
    }
}
