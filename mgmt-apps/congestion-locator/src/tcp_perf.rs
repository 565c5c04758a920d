//! tcp-perf's side of the app: the part of its results the app reads, and
//! the params the app deploys it with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The part of tcp-perf's results this app reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpResults {
    /// Per link id.
    pub links: BTreeMap<u32, TcpLink>,
    /// Flagged connections.
    pub flagged: Vec<TcpFlow>,
}

/// tcp-perf's per-link figures.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpLink {
    /// TCP packets.
    pub packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Segments whose sequence space this tap had seen.
    pub retransmissions: u64,
    /// Segments filling a gap.
    pub out_of_order: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
}

/// A connection of tcp-perf's `flagged`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpFlow {
    /// Client address.
    pub client: String,
    /// Server address.
    pub server: String,
    /// Client port.
    pub client_port: u16,
    /// Server port.
    pub server_port: u16,
    /// Link of its first packet.
    pub link: u32,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Out-of-order segments.
    pub out_of_order: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
}

/// The params the app deploys tcp-perf with.
#[derive(Serialize)]
pub(crate) struct TcpPerfParams {
    pub(crate) retrans_threshold: f64,
}
