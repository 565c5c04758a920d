//! What the two kinds of WebAssembly guest share: analyzers (ABI in
//! `tm-abi`, SDK `tm-sdk`) and management apps (ABI in `tm-app-api`, SDK
//! `tm-app-sdk`).
//!
//! Always: the [`Status`] every guest export returns and the packed
//! `(ptr << 32) | len` some exports return ([`pack`], [`unpack`]). The two
//! ABI crates re-export these, so host and guests agree on them.
//!
//! With the `rt` feature, used by the two SDKs only: the runtime their
//! export macros build on ([`rt`]): the single-threaded slot holding the
//! guest's state, `tm_alloc` and the buffers the host writes into,
//! `tm_last_error`, parameter decoding and the `log` / `now` imports both
//! hosts provide.
//!
//! Every guest crate builds with Rust 1.63; see `docs/guests.md`.
#![no_std]

#[cfg(feature = "rt")]
extern crate alloc;

#[cfg(feature = "rt")]
pub mod rt;

/// What a guest export returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// The parameters were refused; `tm_last_error` says which and why.
    BadParams = 1,
    /// Anything else went wrong; `tm_last_error` says what. A management
    /// app keeps running (a failed timer is reported, not fatal).
    Failed = 2,
    /// `tm_restore` only: the saved state's version is one this module
    /// does not take (newer than its own, or older than it converts).
    StateVersion = 3,
}

impl Status {
    /// The status for a raw return value (unknown values are `Failed`).
    pub fn from_raw(raw: u32) -> Status {
        match raw {
            0 => Status::Ok,
            1 => Status::BadParams,
            3 => Status::StateVersion,
            _ => Status::Failed,
        }
    }
}

/// Packs a guest pointer and length into the `i64` some exports return
/// (`tm_collect`, `tm_snapshot`, `tm_last_error`).
pub fn pack(ptr: u32, len: u32) -> u64 {
    (u64::from(ptr) << 32) | u64::from(len)
}

/// Splits a packed `(ptr, len)`.
pub fn unpack(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        assert_eq!(
            unpack(pack(0x1234_5678, 0x9abc_def0)),
            (0x1234_5678, 0x9abc_def0)
        );
        assert_eq!(pack(1, 2), (1 << 32) | 2);
    }

    #[test]
    fn status_from_raw() {
        for s in [
            Status::Ok,
            Status::BadParams,
            Status::Failed,
            Status::StateVersion,
        ] {
            assert_eq!(Status::from_raw(s as u32), s);
        }
        assert_eq!(Status::from_raw(7), Status::Failed);
    }
}
