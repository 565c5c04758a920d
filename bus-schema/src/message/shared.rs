//! Pieces several messages share: blob references, packet filters,
//! deployment counters and link descriptions.

use serde::{Deserialize, Serialize};

/// A WebAssembly blob in the object store, pinned by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Object name in the `tm_blobs` object store.
    pub name: String,
    /// Lower-case hex SHA-256 of the whole blob; the receiver refuses a blob
    /// whose digest differs.
    pub sha256: String,
}

/// An inclusive range of ports; a single port has `from == to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub from: u16,
    /// Last port of the range (inclusive).
    pub to: u16,
}

/// Which packets a deployment sees. Every list left empty matches all;
/// within a list any entry may match; all non-empty lists must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Source address prefixes in CIDR form (`10.0.0.0/8`, `2001:db8::/32`).
    #[serde(default)]
    pub src: Vec<String>,
    /// Destination address prefixes in CIDR form.
    #[serde(default)]
    pub dst: Vec<String>,
    /// Source port ranges (TCP and UDP only).
    #[serde(default)]
    pub src_ports: Vec<PortRange>,
    /// Destination port ranges (TCP and UDP only).
    #[serde(default)]
    pub dst_ports: Vec<PortRange>,
    /// IP protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    #[serde(default)]
    pub protocols: Vec<u8>,
    /// A raw libpcap filter expression, applied in addition to the rest.
    #[serde(default)]
    pub bpf: Option<String>,
}

/// Counters of one deployment, carried in status and in every result window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStats {
    /// Packets that passed the filter and reached the guest.
    pub packets_in: u64,
    /// Bytes (on the wire) of those packets.
    pub bytes_in: u64,
    /// Packets that passed the filter but did not fit the deployment's queue.
    pub dropped: u64,
    /// Calls into the guest (batches, ticks, collects, configures).
    pub guest_calls: u64,
    /// Time spent inside the guest, in microseconds.
    pub guest_time_us: u64,
    /// Periodic windows of this deployment shed, unpublished, because the
    /// monitor's outbox was full (the bus unreachable or refusing).
    #[serde(default)]
    pub shed_windows: u64,
    /// Alerts shed the same way.
    #[serde(default)]
    pub shed_events: u64,
}

/// A link as a monitor reports it: one direction of a physical line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Link id, unique within the monitor.
    pub id: u32,
    /// Address of the router the traffic comes from.
    pub from_router: String,
    /// Address of the router the traffic goes to.
    pub to_router: String,
    /// Where packets come from: `iface:<name>` or `pcap:<path>`.
    pub source: String,
}
