//! The bus contract between monitors, managers, operators and subscribers.
//!
//! * [`subject`]: every NATS subject, each formatted by one function.
//! * [`message`]: every request, reply, record, event and result.
//! * [`store`]: the JetStream buckets and streams with their settings, and the
//!   metadata carried by WebAssembly blobs in the object store.
//! * [`Reply`]: the envelope every command reply travels in.
//!
//! Payloads are MessagePack with field names (maps, never positional arrays),
//! so clients in other languages can read them from `docs/bus.md`. Use
//! [`encode`] and [`decode`]; never call rmp-serde directly elsewhere.
#![deny(missing_docs)]

pub mod auth;
pub mod message;
#[cfg(feature = "nats")]
pub mod nats;
pub mod store;
pub mod subject;

pub use message::*;

use serde::{Serialize, de::DeserializeOwned};

/// Version of the protocol; also the `v1` in every subject.
pub const PROTOCOL_VERSION: u32 = 1;

/// The parts of the system that use the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `tm-monitor`: taps links and runs analyzers.
    Monitor,
    /// `tm-manager`: runs management apps that drive monitors.
    Manager,
    /// `tmctl` in an operator's shell.
    Operator,
    /// Anything outside that reads results, events and reports.
    Subscriber,
    /// A console or dashboard (`tm-console`): reads what a subscriber
    /// reads and the system's state (topology, monitors, deployments,
    /// managers); changes nothing.
    Viewer,
    /// The setup step (`tmctl setup`): creates the streams and buckets with
    /// the contract's settings. Nobody else may create them where
    /// identities are enforced.
    Admin,
}

impl Role {
    /// Lower-case name as used in documentation and permission files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Manager => "manager",
            Role::Operator => "operator",
            Role::Subscriber => "subscriber",
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// A message could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {type_name}: {source}")]
pub struct EncodeError {
    /// Rust name of the message type.
    pub type_name: &'static str,
    /// What went wrong.
    #[source]
    pub source: rmp_serde::encode::Error,
}

/// Bytes could not be decoded as the expected message.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {type_name} from {len} bytes: {source}")]
pub struct DecodeError {
    /// Rust name of the expected message type.
    pub type_name: &'static str,
    /// Length of the payload that was refused.
    pub len: usize,
    /// What went wrong.
    #[source]
    pub source: rmp_serde::decode::Error,
}

/// An identifier is not a valid single NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value:?} is not a valid id: {why}")]
pub struct TokenError {
    /// Which field held the id.
    pub field: String,
    /// The value that was refused.
    pub value: String,
    /// Why it was refused.
    pub why: &'static str,
}

/// Encodes a message as MessagePack with field names.
///
/// # Errors
/// Only if the value cannot be represented (a map with non-string keys is
/// fine; a failing custom `Serialize` is not).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    rmp_serde::to_vec_named(value).map_err(|source| EncodeError {
        type_name: short_type_name::<T>(),
        source,
    })
}

/// Decodes a MessagePack message.
///
/// # Errors
/// When the bytes are not a complete, well-typed `T`: garbage, truncated
/// input, wrong types, missing fields. Never panics.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|source| DecodeError {
        type_name: short_type_name::<T>(),
        len: bytes.len(),
        source,
    })
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    // "bus_schema::message::commands::LoadRequest" -> "LoadRequest"; keep generics readable.
    match full
        .split('<')
        .next()
        .and_then(|head| head.rsplit("::").next())
    {
        Some(short) if !full.contains('<') => short,
        _ => full,
    }
}

/// Longest id accepted for monitors, managers, deployments and apps.
pub const MAX_TOKEN_LEN: usize = 64;

/// Checks that `value` can be used as one token of a subject and as a KV key:
/// 1 to [`MAX_TOKEN_LEN`] characters from `A-Z a-z 0-9 _ -`.
///
/// # Errors
/// A [`TokenError`] naming `field` and the value.
pub fn validate_token(field: &str, value: &str) -> Result<(), TokenError> {
    let fail = |why| {
        Err(TokenError {
            field: field.to_owned(),
            value: value.to_owned(),
            why,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > MAX_TOKEN_LEN {
        return fail("it is longer than 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return fail("only letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

/// Turns an address such as `133.255.10.1` or `fe80::1` into a valid id
/// (`133-255-10-1`, `fe80--1`): the default monitor id.
#[must_use]
pub fn id_from_address(address: &str) -> String {
    address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_TOKEN_LEN)
        .collect()
}

/// Whether `id` is the id a monitor at `address` has when identities bind
/// monitors to addresses: the address is an IP address and `id` is
/// [`id_from_address`] of it.
#[must_use]
pub fn holds_address(id: &str, address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok() && id_from_address(address) == id
}

/// The IP address a monitor id stands for (`10-9-0-1` → `10.9.0.1`,
/// `fd00--1` → `fd00::1`), if it is [`id_from_address`] of one.
#[must_use]
pub fn address_of_id(id: &str) -> Option<std::net::IpAddr> {
    [id.replace('-', "."), id.replace('-', ":")]
        .into_iter()
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .find(|a| id_from_address(&a.to_string()) == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stand_for_addresses() {
        assert!(holds_address("10-9-0-6", "10.9.0.6"));
        assert!(!holds_address("10-9-0-5", "10.9.0.6"));
        assert!(!holds_address("133-256-10-1", "133.256.10.1"));
        assert!(holds_address("fd00--1", "fd00::1"));
        assert_eq!(address_of_id("10-9-0-1"), Some("10.9.0.1".parse().unwrap()));
        assert_eq!(address_of_id("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(address_of_id("m1"), None);
        assert_eq!(address_of_id("133-256-10-1"), None);
    }

    #[test]
    fn tokens_are_checked_with_field_and_value_named() {
        assert!(validate_token("monitor", "mon-1_a").is_ok());
        let err = validate_token("monitor", "a.b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "monitor = \"a.b\" is not a valid id: only letters, digits, '_' and '-' are allowed"
        );
        assert!(validate_token("deployment", "").is_err());
        assert!(validate_token("app", "*").is_err());
        assert!(validate_token("app", ">").is_err());
        assert!(validate_token("app", &"x".repeat(65)).is_err());
    }

    #[test]
    fn addresses_become_ids() {
        assert_eq!(id_from_address("133.255.10.1"), "133-255-10-1");
        assert_eq!(id_from_address("fe80::1"), "fe80--1");
        assert!(validate_token("monitor", &id_from_address("10.0.0.1")).is_ok());
    }

    #[test]
    fn errors_name_the_type() {
        let err = decode::<LoadRequest>(&[0xc1]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot decode LoadRequest from 1 bytes"),
            "{err}"
        );
    }
}
