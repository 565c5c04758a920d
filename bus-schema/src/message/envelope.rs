//! The envelope every command reply travels in ([`Reply`]) and the typed
//! error it may carry ([`ErrorBody`] with its [`ErrorCode`]).

use serde::{Deserialize, Serialize};

/// The envelope of every command reply: the answer, or a typed error.
///
/// On the wire: `{"ok": <answer>}` or `{"err": {"code": "...", "message": "..."}}`.
/// Transport failures (no responders, timeouts) are not replies and never
/// appear here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The command succeeded.
    Ok(T),
    /// The command was refused or failed.
    Err(ErrorBody),
}

impl<T> Reply<T> {
    /// Builds an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Err(ErrorBody {
            code,
            message: message.into(),
        })
    }

    /// Converts to a `Result`.
    ///
    /// # Errors
    /// The [`ErrorBody`] of an `Err` reply.
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, ErrorBody>> for Reply<T> {
    fn from(r: Result<T, ErrorBody>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

/// An application error: a machine-readable code and a message for humans
/// that names the field or object at fault and the value refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, naming the field and value.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

/// Machine-readable error codes, a `snake_case` string on the wire. New codes
/// may be added; an older receiver decodes a code it does not know as
/// [`ErrorCode::Unknown`] (but refuses a code that is not a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be decoded, or a field is invalid.
    BadRequest,
    /// No deployment with that id on this monitor.
    UnknownDeployment,
    /// A deployment with that id already exists.
    DeploymentExists,
    /// A link id the monitor does not have.
    UnknownLink,
    /// The named blob is not in the object store.
    BlobNotFound,
    /// The blob's SHA-256 differs from the one requested or recorded.
    DigestMismatch,
    /// The blob's metadata records no SHA-256.
    DigestMissing,
    /// The module speaks an ABI version the host does not.
    AbiMismatch,
    /// The blob is not a valid module, or lacks a required export.
    BadModule,
    /// The analyzer or app refused its parameters.
    BadParams,
    /// The filter is invalid (CIDR, port range, protocol or BPF).
    BadFilter,
    /// The requester does not own the deployment (and did not force).
    NotOwner,
    /// The requester is not allowed to do this.
    Unauthorized,
    /// The host requires signed blobs and this one is not signed.
    UnsignedBlob,
    /// The blob is signed by a key the host does not trust.
    UntrustedSigner,
    /// The blob's signature does not verify (its metadata or signature
    /// changed after signing).
    BadSignature,
    /// The guest trapped.
    GuestTrap,
    /// An upgrade's new module refused the running analyzer's state (its
    /// `tm_restore` said no); the running analyzer is untouched.
    RestoreRefused,
    /// An upgrade's new module does not take the saved state's version
    /// (newer than its own, or older than it converts); the running
    /// analyzer is untouched.
    StateVersion,
    /// The guest hit a memory, time or queue limit.
    ResourceLimit,
    /// No management app with that name on this manager.
    UnknownApp,
    /// A management app with that name already runs on this manager.
    AppExists,
    /// A downstream step did not answer in time.
    Timeout,
    /// A dependency (object store, KV, a monitor) is unavailable.
    Unavailable,
    /// A bug or an unexpected failure in the responder.
    Internal,
    /// A code this version does not know.
    Unknown,
}

impl ErrorCode {
    /// Every code, [`ErrorCode::Unknown`] last.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownDeployment,
        ErrorCode::DeploymentExists,
        ErrorCode::UnknownLink,
        ErrorCode::BlobNotFound,
        ErrorCode::DigestMismatch,
        ErrorCode::DigestMissing,
        ErrorCode::AbiMismatch,
        ErrorCode::BadModule,
        ErrorCode::BadParams,
        ErrorCode::BadFilter,
        ErrorCode::NotOwner,
        ErrorCode::Unauthorized,
        ErrorCode::UnsignedBlob,
        ErrorCode::UntrustedSigner,
        ErrorCode::BadSignature,
        ErrorCode::GuestTrap,
        ErrorCode::RestoreRefused,
        ErrorCode::StateVersion,
        ErrorCode::ResourceLimit,
        ErrorCode::UnknownApp,
        ErrorCode::AppExists,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ];
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unknown))
    }
}

impl ErrorCode {
    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownDeployment => "unknown_deployment",
            ErrorCode::DeploymentExists => "deployment_exists",
            ErrorCode::UnknownLink => "unknown_link",
            ErrorCode::BlobNotFound => "blob_not_found",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::DigestMissing => "digest_missing",
            ErrorCode::AbiMismatch => "abi_mismatch",
            ErrorCode::BadModule => "bad_module",
            ErrorCode::BadParams => "bad_params",
            ErrorCode::BadFilter => "bad_filter",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnsignedBlob => "unsigned_blob",
            ErrorCode::UntrustedSigner => "untrusted_signer",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::GuestTrap => "guest_trap",
            ErrorCode::RestoreRefused => "restore_refused",
            ErrorCode::StateVersion => "state_version",
            ErrorCode::ResourceLimit => "resource_limit",
            ErrorCode::UnknownApp => "unknown_app",
            ErrorCode::AppExists => "app_exists",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
