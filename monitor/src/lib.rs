//! `tm-monitor`: taps links and runs WebAssembly analyzers on request.
//!
//! The packet path, one module per stage; imports run one way (a link
//! uses its source, the parser and its taps; a tap the filter, the
//! inbox and the engine; a deployment the inbox, its guest and the outbox):
//! * [`source`]: where a link's packets come from (live, a capture file,
//!   memory), behind one trait; [`source::file`] maps capture files.
//! * [`link`]: a thread per link that parses each packet once and offers it
//!   to the link's taps.
//! * [`parse`]: lenient packet parsing into the ABI's packet header.
//! * [`tap`]: one deployment's place on a link: filter, snap length, batches.
//! * [`filter`]: deployment filters (CIDR, ports, protocol, BPF).
//! * [`inbox`]: the batches and commands a deployment's queue carries, and
//!   its counters.
//! * [`engine`]: a deployment's analyzer behind a lock, called by its
//!   thread or, on a link that analyses on its capture thread, by that.
//! * [`deployment`]: the deployment thread and its shared state.
//! * [`guest`]: one analyzer instance speaking ABI v1 under wasmtime limits.
//!
//! Beside it:
//! * [`config`]: TOML configuration and its validation.
//! * [`sigbus`]: a truncated mapped file as an error, not a crash.
//! * [`outbox`]: results, events and snapshots waiting for the bus:
//!   bounded, per deployment, spooled at a stop.
//! * [`service`]: NATS commands, loading, status, liveness.

pub mod config;
pub mod deployment;
pub mod engine;
pub mod filter;
pub mod guest;
pub mod inbox;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod parse;
pub mod service;
pub mod sigbus;
pub mod source;
pub mod tap;

/// Unix time in ms.
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
