//! `tm-monitor`: taps links and runs WebAssembly analyzers on request.
//!
//! * [`config`]: TOML configuration and its validation.
//! * [`capture`]: a thread per link (live or replay) that parses packets once
//!   and feeds each deployment the packets passing its filter, in batches.
//! * [`parse`]: lenient packet parsing into the ABI's packet header.
//! * [`filter`]: deployment filters (CIDR, ports, protocol, BPF).
//! * [`guest`]: one analyzer instance speaking ABI v1 under wasmtime limits.
//! * [`deployment`]: the deployment thread and its shared state.
//! * [`replay`]: capture files, mapped (or read in chunks) for replay.
//! * [`sigbus`]: a truncated mapped file as an error, not a crash.
//! * [`outbox`]: results, events and snapshots waiting for the bus:
//!   bounded, per deployment, spooled at a stop.
//! * [`service`]: NATS commands, loading, status, liveness.

pub mod capture;
pub mod config;
pub mod deployment;
pub mod filter;
pub mod guest;
pub mod metrics;
pub mod outbox;
pub mod parse;
pub mod replay;
pub mod service;
pub mod sigbus;
