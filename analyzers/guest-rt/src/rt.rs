//! The runtime behind the guest SDKs' exports (`export_analyzer!`,
//! `export_app!`). Not for analyzers or apps to call themselves.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use serde::de::DeserializeOwned;

use crate::{pack, Status};

/// A guest's state between export calls, in a `static`: the analyzer or
/// app once it started, the last output handed to the host, the message of
/// the last failure.
pub struct Slot<G> {
    inner: UnsafeCell<State<G>>,
}

/// What a [`Slot`] holds.
pub struct State<G> {
    /// The analyzer or app, once it started.
    pub guest: Option<G>,
    output: Vec<u8>,
    error: String,
}

// WebAssembly guests are single-threaded; the host never re-enters.
unsafe impl<G> Sync for Slot<G> {}

impl<G> Default for Slot<G> {
    fn default() -> Self {
        Self::new()
    }
}

impl<G> Slot<G> {
    /// An empty slot.
    pub const fn new() -> Self {
        Slot {
            inner: UnsafeCell::new(State {
                guest: None,
                output: Vec::new(),
                error: String::new(),
            }),
        }
    }

    /// The state. Each export takes it once and lets go before it returns.
    #[allow(clippy::mut_from_ref)]
    pub fn get(&self) -> &mut State<G> {
        // Single-threaded, no export calls another and the host delivers
        // one call at a time: one borrow at a time.
        unsafe { &mut *self.inner.get() }
    }

    /// `tm_last_error`: the message of the last failure, packed.
    pub fn last_error(&self) -> u64 {
        let e = &self.get().error;
        pack(e.as_ptr() as usize as u32, e.len() as u32)
    }
}

impl<G> State<G> {
    /// Keeps `error` for `tm_last_error`; returns `status` for the export
    /// to return.
    pub fn fail(&mut self, status: Status, error: String) -> u32 {
        self.error = error;
        status as u32
    }

    /// `Ok` as [`Status::Ok`]; an `Err` kept for `tm_last_error` and
    /// returned as `on_error`.
    pub fn status(&mut self, result: Result<(), String>, on_error: Status) -> u32 {
        match result {
            Ok(()) => Status::Ok as u32,
            Err(e) => self.fail(on_error, e),
        }
    }

    /// Keeps `bytes` until the next call and returns them packed, as
    /// `tm_collect` and `tm_snapshot` do.
    pub fn output(&mut self, bytes: Vec<u8>) -> u64 {
        self.output = bytes;
        pack(
            self.output.as_ptr() as usize as u32,
            self.output.len() as u32,
        )
    }
}

/// `tm_alloc`: a zeroed buffer the host writes into.
pub fn alloc(len: u32) -> u32 {
    let buf = alloc::vec![0u8; len as usize].into_boxed_slice();
    Box::into_raw(buf) as *mut u8 as usize as u32
}

/// Takes back ownership of a buffer from [`alloc`].
pub fn take_buffer(ptr: u32, len: u32) -> Box<[u8]> {
    if ptr == 0 {
        return Box::new([]);
    }
    unsafe {
        Box::from_raw(core::ptr::slice_from_raw_parts_mut(
            ptr as usize as *mut u8,
            len as usize,
        ))
    }
}

/// Decodes parameters (MessagePack); nil or empty bytes decode as an empty
/// map, so `#[serde(default)]` gives every field a default.
pub fn decode_params<P: DeserializeOwned>(bytes: &[u8]) -> Result<P, String> {
    let bytes = if bytes.is_empty() || bytes == [0xc0] {
        &[0x80][..]
    } else {
        bytes
    };
    rmp_serde::from_slice(bytes).map_err(|e| format!("bad params: {}", e))
}

/// Host imports both hosts provide (module `tm`).
#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "tm")]
    extern "C" {
        pub fn log(level: u32, ptr: *const u8, len: u32);
        pub fn now() -> u64;
    }
}

/// Log levels for [`log`].
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is off.
    Warn = 1,
    /// Worth knowing.
    Info = 2,
    /// For developers.
    Debug = 3,
    /// Very chatty.
    Trace = 4,
}

/// The `log` import; outside WebAssembly it does nothing.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        imports::log(level as u32, message.as_ptr(), message.len() as u32)
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// The `now` import, Unix ns; `None` outside WebAssembly.
pub fn now_ns() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        Some(imports::now())
    }
    #[cfg(not(target_arch = "wasm32"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, Default, PartialEq)]
    #[serde(default)]
    struct Params {
        n: u32,
    }

    #[test]
    fn absent_params_decode_as_defaults() {
        for bytes in [&[][..], &[0xc0], &[0x80]] {
            assert_eq!(decode_params::<Params>(bytes), Ok(Params::default()));
        }
        // {"n": 3}
        assert_eq!(
            decode_params::<Params>(&[0x81, 0xa1, b'n', 3]),
            Ok(Params { n: 3 })
        );
        assert!(decode_params::<Params>(&[0x81, 0xa1, b'n', 0xa1, b'x'])
            .unwrap_err()
            .starts_with("bad params: "));
    }

    #[test]
    fn buffers_come_back_and_errors_stay_until_replaced() {
        // (`alloc` hands out 32-bit pointers: wasm32 only.)
        assert!(take_buffer(0, 0).is_empty());

        let slot: Slot<()> = Slot::new();
        assert_eq!(unpack_len(slot.last_error()), 0);
        assert_eq!(
            slot.get().fail(Status::BadParams, "no".into()),
            Status::BadParams as u32
        );
        assert_eq!(unpack_len(slot.last_error()), 2);
        assert_eq!(slot.get().status(Ok(()), Status::Failed), 0);
        assert_eq!(unpack_len(slot.last_error()), 2);
        let out = slot.get().output(alloc::vec![1, 2, 3]);
        assert_eq!(unpack_len(out), 3);
    }

    fn unpack_len(packed: u64) -> u32 {
        crate::unpack(packed).1
    }
}
