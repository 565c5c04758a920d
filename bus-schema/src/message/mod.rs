//! Every message on the bus: command requests and replies, stream payloads
//! and KV records.
//!
//! Field names are part of the contract (they are on the wire). Fields marked
//! `#[serde(default)]` may be left out by a sender. Unknown fields are ignored,
//! so a newer sender can add fields without breaking an older receiver.

mod commands;
mod envelope;
mod packed;
mod records;
mod shared;
mod streams;

pub use commands::*;
pub use envelope::*;
pub use packed::Packed;
pub use records::*;
pub use shared::*;
pub use streams::*;

/// A dynamically typed MessagePack value: analyzer and app parameters,
/// analyzer results, event data. Renders as JSON in `docs/bus.md`.
pub type Value = rmpv::Value;

pub use rmpv;

/// Default of optional [`Value`] fields: nil.
fn nil() -> Value {
    Value::Nil
}
