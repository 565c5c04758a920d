//! flow-stats compiled natively as a shared library, for the
//! native-vs-WebAssembly figure of `cargo bench -p monitor --bench
//! analyzers`, which builds it with
//!
//!     cargo build --release --example native -p flow-stats
//!
//! and loads `target/release/examples/libnative.so` into the same process
//! as the WebAssembly build, so both run the same batches turn about.
//!
//! The entry points mirror the guest's exports: `native_on_packets` copies
//! the batch into the analyzer's own buffer (as the host copies it into
//! guest memory before `tm_on_packets`) and runs the same `tm_sdk::feed`
//! the WebAssembly exports run.

use flow_stats::{FlowStats, Params};
use tm_sdk::Analyzer;

/// A native flow-stats and its batch buffer.
pub struct Native {
    analyzer: FlowStats,
    buf: Vec<u8>,
}

/// A flow-stats with default params; free it with [`native_free`].
#[no_mangle]
pub extern "C" fn native_new() -> *mut Native {
    let analyzer = FlowStats::init(Params::default()).expect("default params");
    Box::into_raw(Box::new(Native {
        analyzer,
        buf: Vec::new(),
    }))
}

/// Feeds one batch of `count` ABI v1 records.
///
/// # Safety
/// `n` comes from [`native_new`] and is not freed; `ptr` points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn native_on_packets(n: *mut Native, ptr: *const u8, len: usize, count: u32) {
    let n = &mut *n;
    let batch = std::slice::from_raw_parts(ptr, len);
    if n.buf.len() < len {
        n.buf.resize(len, 0);
    }
    let own = &mut n.buf[..len];
    own.copy_from_slice(batch);
    tm_sdk::feed(&mut n.analyzer, own, count);
}

/// Packets seen (writes the flows tracked to `flows`).
///
/// # Safety
/// `n` comes from [`native_new`] and is not freed; `flows` is writable.
#[no_mangle]
pub unsafe extern "C" fn native_packets(n: *const Native, flows: *mut u64) -> u64 {
    let r = (*n).analyzer.results();
    *flows = r.active_flows;
    r.packets
}

/// Frees what [`native_new`] made.
///
/// # Safety
/// `n` comes from [`native_new`] and is not used again.
#[no_mangle]
pub unsafe extern "C" fn native_free(n: *mut Native) {
    drop(Box::from_raw(n));
}
