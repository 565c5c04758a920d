//! Signed blobs: which modules a monitor or manager will compile.
//!
//! `tmctl analyzer put --sign-key K` / `tmctl apps put --sign-key K` sign a
//! blob with ed25519 when storing it. The object's metadata then carries,
//! beside `tm-sha256` (the whole blob's SHA-256), `tm-signer` (the public
//! key, 64 hex digits) and `tm-signature` (128 hex digits) over
//! [`signing_message`]: `tm-blob-signature-v1\n{kind}\n{name}\n{sha256}\n`,
//! so a signature covers the content (through its digest), the name it was
//! stored under and its kind.
//!
//! [`TrustedKeys::verify`] runs before anything is compiled, in this order,
//! each failure with its own error code:
//!
//! 1. `tm-sha256` missing → `digest_missing`;
//! 2. the bytes' SHA-256 differs from `tm-sha256` → `digest_mismatch` (a
//!    changed blob);
//! 3. with trusted keys configured: no signature → `unsigned_blob`; a signer
//!    not in the list → `untrusted_signer`; a signature that does not verify
//!    for this kind, name and digest → `bad_signature` (changed metadata).
//!
//! With no trusted keys configured, steps 1–2 still run and signatures are
//! not required (the host logs that at startup).

use std::collections::HashMap;
use std::path::Path;

use bus_schema::store::{BlobKind, meta_key};
use bus_schema::{ErrorBody, ErrorCode};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// What a signature covers.
#[must_use]
pub fn signing_message(kind: BlobKind, name: &str, sha256: &str) -> Vec<u8> {
    format!(
        "tm-blob-signature-v1\n{}\n{name}\n{sha256}\n",
        kind.as_str()
    )
    .into_bytes()
}

/// A bad key (file, line or list entry named).
#[derive(Debug, thiserror::Error)]
#[error("{place}: {why}")]
pub struct KeyError {
    /// Where the key was: `trust.keys[1]`, `keys.txt:3`, …
    pub place: String,
    /// What is wrong with it.
    pub why: String,
}

fn parse_public(place: &str, text: &str) -> Result<VerifyingKey, KeyError> {
    let bad = |why: String| KeyError {
        place: place.to_owned(),
        why,
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|e| bad(format!("{text:?} is not hex: {e}")))?
        .try_into()
        .map_err(|v: Vec<u8>| {
            bad(format!(
                "{text:?}: an ed25519 public key is 32 bytes (64 hex digits), not {}",
                v.len()
            ))
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(format!("{text:?}: not a valid key: {e}")))
}

/// The public keys whose signatures a host accepts; empty: signatures are
/// not required.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    /// Keys as hex strings; `what` names the list in errors (`trust.keys`).
    ///
    /// # Errors
    /// The first entry that is not a valid ed25519 public key.
    pub fn from_hex(what: &str, keys: &[String]) -> Result<Self, KeyError> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| parse_public(&format!("{what}[{i}]"), k))
            .collect::<Result<_, _>>()?;
        Ok(TrustedKeys { keys })
    }

    /// Keys from a file: one hex public key per line; blank lines and
    /// `#` comments are skipped.
    ///
    /// # Errors
    /// An unreadable file, or the line with a bad key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError {
            place: path.display().to_string(),
            why: format!("cannot read: {e}"),
        })?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                keys.push(parse_public(
                    &format!("{}:{}", path.display(), i + 1),
                    line,
                )?);
            }
        }
        Ok(TrustedKeys { keys })
    }

    /// These keys and `other`'s.
    #[must_use]
    pub fn with(mut self, other: TrustedKeys) -> Self {
        self.keys.extend(other.keys);
        self
    }

    /// Whether signatures are required.
    #[must_use]
    pub fn enforced(&self) -> bool {
        !self.keys.is_empty()
    }

    /// How many keys are trusted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a fetched blob before it is compiled (see the module docs);
    /// its SHA-256 on success.
    ///
    /// # Errors
    /// `digest_missing`, `digest_mismatch`, `unsigned_blob`,
    /// `untrusted_signer` or `bad_signature`, naming the blob.
    pub fn verify(
        &self,
        kind: BlobKind,
        name: &str,
        metadata: &HashMap<String, String>,
        bytes: &[u8],
    ) -> Result<String, ErrorBody> {
        let refuse = |code, msg: String| Err(ErrorBody::new(code, msg));
        let Some(stored) = metadata.get(meta_key::SHA256).filter(|s| !s.is_empty()) else {
            return refuse(
                ErrorCode::DigestMissing,
                format!(
                    "blob {name:?} has no {} in its metadata: store it with tmctl",
                    meta_key::SHA256
                ),
            );
        };
        let actual = crate::sha256_hex(bytes);
        if !stored.eq_ignore_ascii_case(&actual) {
            return refuse(
                ErrorCode::DigestMismatch,
                format!(
                    "blob {name:?}: its metadata says sha256 {stored}, its bytes hash to {actual}"
                ),
            );
        }
        // A blob stored as the other kind is not run as this one.
        if let Some(declared) = metadata.get(meta_key::KIND).filter(|k| !k.is_empty())
            && declared != kind.as_str()
        {
            return refuse(
                ErrorCode::BadModule,
                format!(
                    "blob {name:?} is stored as {} {declared:?}, not {:?}",
                    meta_key::KIND,
                    kind.as_str()
                ),
            );
        }
        if !self.enforced() {
            return Ok(actual);
        }
        let (Some(signer), Some(signature)) = (
            metadata.get(meta_key::SIGNER).filter(|s| !s.is_empty()),
            metadata.get(meta_key::SIGNATURE).filter(|s| !s.is_empty()),
        ) else {
            return refuse(
                ErrorCode::UnsignedBlob,
                format!(
                    "blob {name:?} is not signed, and this host runs only signed blobs (tmctl … put --sign-key)"
                ),
            );
        };
        let key = match parse_public(meta_key::SIGNER, signer) {
            Ok(k) if self.keys.contains(&k) => k,
            _ => {
                return refuse(
                    ErrorCode::UntrustedSigner,
                    format!(
                        "blob {name:?} is signed by {signer}, which is not among this host's {} trusted key(s)",
                        self.keys.len()
                    ),
                );
            }
        };
        let signature = hex::decode(signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b));
        let valid = signature.is_some_and(|s| {
            key.verify(&signing_message(kind, name, &actual), &s)
                .is_ok()
        });
        if !valid {
            return refuse(
                ErrorCode::BadSignature,
                format!(
                    "blob {name:?}: its signature by {signer} does not verify for {} {name:?} with sha256 {actual} (metadata or signature changed)",
                    kind.as_str()
                ),
            );
        }
        Ok(actual)
    }
}

/// A signing key: a 32-byte ed25519 seed, kept as 64 hex digits in a file
/// only its owner can read.
pub struct BlobSigner {
    key: SigningKey,
}

impl BlobSigner {
    /// A fresh key from the operating system's randomness.
    ///
    /// # Errors
    /// `/dev/urandom` cannot be read.
    pub fn generate() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
        Ok(BlobSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a key file written by [`BlobSigner::save`].
    ///
    /// # Errors
    /// An unreadable file or one that does not hold 64 hex digits.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bad = |why: String| KeyError {
            place: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("expected a signing key: 64 hex digits (tmctl keygen)".into()))?;
        Ok(BlobSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Writes the key (mode 0600; refuses to overwrite a file).
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(f, "{}", hex::encode(self.key.to_bytes()))
    }

    /// The public key, 64 hex digits (what hosts list as trusted).
    #[must_use]
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The metadata entries signing `kind` `name` with digest `sha256`:
    /// `tm-signer` and `tm-signature`.
    #[must_use]
    pub fn sign(&self, kind: BlobKind, name: &str, sha256: &str) -> [(String, String); 2] {
        let signature = self.key.sign(&signing_message(kind, name, sha256));
        [
            (meta_key::SIGNER.to_owned(), self.public_hex()),
            (
                meta_key::SIGNATURE.to_owned(),
                hex::encode(signature.to_bytes()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sha: &str) -> HashMap<String, String> {
        HashMap::from([(meta_key::SHA256.to_owned(), sha.to_owned())])
    }

    #[test]
    fn every_refusal_has_its_own_code() {
        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let sha = crate::sha256_hex(&bytes);
        let signer = BlobSigner::generate().unwrap();
        let other = BlobSigner::generate().unwrap();
        let trusted = TrustedKeys::from_hex("keys", &[signer.public_hex()]).unwrap();
        let code = |m: &HashMap<String, String>, b: &[u8]| {
            trusted
                .verify(BlobKind::Analyzer, "pc", m, b)
                .map_err(|e| e.code)
        };
        let mut signed = meta(&sha);
        signed.extend(signer.sign(BlobKind::Analyzer, "pc", &sha));
        assert_eq!(code(&signed, &bytes), Ok(sha.clone()));
        assert_eq!(code(&HashMap::new(), &bytes), Err(ErrorCode::DigestMissing));
        let mut flipped = bytes.clone();
        flipped[7] ^= 1;
        assert_eq!(code(&signed, &flipped), Err(ErrorCode::DigestMismatch));
        assert_eq!(code(&meta(&sha), &bytes), Err(ErrorCode::UnsignedBlob));
        let mut by_other = meta(&sha);
        by_other.extend(other.sign(BlobKind::Analyzer, "pc", &sha));
        assert_eq!(code(&by_other, &bytes), Err(ErrorCode::UntrustedSigner));
        // Signed for another name, or another kind: the metadata changed.
        let mut renamed = meta(&sha);
        renamed.extend(signer.sign(BlobKind::Analyzer, "flow-stats", &sha));
        assert_eq!(code(&renamed, &bytes), Err(ErrorCode::BadSignature));
        let mut as_app = meta(&sha);
        as_app.extend(signer.sign(BlobKind::MgmtApp, "pc", &sha));
        assert_eq!(code(&as_app, &bytes), Err(ErrorCode::BadSignature));
        // A blob stored as the other kind is refused, signed or not.
        let mut app = signed.clone();
        app.insert(meta_key::KIND.to_owned(), "mgmt-app".to_owned());
        assert_eq!(code(&app, &bytes), Err(ErrorCode::BadModule));
        let mut analyzer = signed.clone();
        analyzer.insert(meta_key::KIND.to_owned(), "analyzer".to_owned());
        assert_eq!(code(&analyzer, &bytes), Ok(sha.clone()));
        // Without trusted keys only the digest and the kind are checked.
        let open = TrustedKeys::default();
        assert!(
            open.verify(BlobKind::Analyzer, "pc", &meta(&sha), &bytes)
                .is_ok()
        );
        assert_eq!(
            open.verify(BlobKind::Analyzer, "pc", &meta(&sha), &flipped)
                .unwrap_err()
                .code,
            ErrorCode::DigestMismatch
        );
    }

    #[test]
    fn bad_keys_are_named() {
        let e = TrustedKeys::from_hex("trust.keys", &["ab".into()]).unwrap_err();
        assert_eq!(e.place, "trust.keys[0]");
        assert!(e.why.contains("32 bytes"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let good = BlobSigner::generate().unwrap().public_hex();
        std::fs::write(&path, format!("# ops team\n{good}\n\nzz\n")).unwrap();
        let e = TrustedKeys::from_file(&path).unwrap_err();
        assert!(e.place.ends_with("keys:4"), "{e}");
        let key = dir.path().join("signing.key");
        let signer = BlobSigner::generate().unwrap();
        signer.save(&key).unwrap();
        assert!(
            signer.save(&key).is_err(),
            "a key file is never overwritten"
        );
        assert_eq!(
            BlobSigner::load(&key).unwrap().public_hex(),
            signer.public_hex()
        );
    }
}
