//! The analyzer's params: their fields, defaults and bounds, with type
//! errors that name the field.

use serde::Deserialize;

/// Deserializers that put the field's name in front of a type error
/// (serde's own message does not say which field had the wrong type).
macro_rules! named {
    ($($fn_name:ident: $ty:ty = $field:literal;)*) => {$(
        fn $fn_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            <$ty>::deserialize(d).map_err(|e| serde::de::Error::custom(format!("{}: {}", $field, e)))
        }
    )*};
}

named! {
    de_top_n: u32 = "top_n";
    de_max_flows: u32 = "max_flows";
    de_idle_timeout_s: u64 = "idle_timeout_s";
    de_inspect_packets: u32 = "inspect_packets";
    de_max_names: u32 = "max_names";
}

/// Parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Entries of the HTTP host and TLS SNI lists in the results.
    #[serde(deserialize_with = "de_top_n")]
    pub top_n: u32,
    /// Most flows tracked at once.
    #[serde(deserialize_with = "de_max_flows")]
    pub max_flows: u32,
    /// Idle time (packet time) after which a flow is forgotten; 0 never.
    #[serde(deserialize_with = "de_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Payload packets of a flow inspected before it is given up as unknown.
    #[serde(deserialize_with = "de_inspect_packets")]
    pub inspect_packets: u32,
    /// Most HTTP hosts, and most (SNI, version) pairs, counted.
    #[serde(deserialize_with = "de_max_names")]
    pub max_names: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            top_n: 10,
            max_flows: 100_000,
            idle_timeout_s: 300,
            inspect_packets: 4,
            max_names: 1000,
        }
    }
}

impl Params {
    pub(crate) fn check(self) -> Result<Self, String> {
        if self.top_n > 1000 {
            return Err(format!("top_n = {}: must be 0 to 1000", self.top_n));
        }
        if self.max_flows == 0 || self.max_flows > 10_000_000 {
            return Err(format!(
                "max_flows = {}: must be 1 to 10000000",
                self.max_flows
            ));
        }
        if self.idle_timeout_s > 30 * 86_400 {
            return Err(format!(
                "idle_timeout_s = {}: must be 0 to 2592000",
                self.idle_timeout_s
            ));
        }
        if self.inspect_packets == 0 || self.inspect_packets > 64 {
            return Err(format!(
                "inspect_packets = {}: must be 1 to 64",
                self.inspect_packets
            ));
        }
        if self.max_names == 0 || self.max_names > 100_000 {
            return Err(format!(
                "max_names = {}: must be 1 to 100000",
                self.max_names
            ));
        }
        Ok(self)
    }
}
