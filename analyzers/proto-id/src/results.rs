//! The results: packet, byte and flow tallies per protocol, and the HTTP
//! and TLS figures.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Packets and wire bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

/// Packets, wire bytes and flows of an application protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTally {
    /// Packets (with payload, or ICMP).
    pub packets: u64,
    /// Their wire bytes.
    pub bytes: u64,
    /// Bidirectional flows classified so.
    pub flows: u64,
}

/// An HTTP host in the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOut {
    /// `Host` header, lowercased.
    pub host: String,
    /// Requests.
    pub requests: u64,
    /// Requests per method.
    pub methods: BTreeMap<String, u64>,
}

/// HTTP figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOut {
    /// Request lines seen.
    pub requests: u64,
    /// Status lines seen.
    pub responses: u64,
    /// Requests per method.
    pub methods: BTreeMap<String, u64>,
    /// Top hosts by requests.
    pub hosts: Vec<HostOut>,
    /// Requests with a host not counted because `max_names` hosts were.
    pub untracked_requests: u64,
}

/// A TLS server name in the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniOut {
    /// server_name, lowercased.
    pub sni: String,
    /// Highest version the client offered.
    pub version: String,
    /// ClientHellos.
    pub handshakes: u64,
}

/// TLS figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOut {
    /// ClientHellos seen.
    pub client_hellos: u64,
    /// ServerHellos seen.
    pub server_hellos: u64,
    /// ClientHellos without a (readable) server name.
    pub no_sni: u64,
    /// ServerHellos per version chosen.
    pub versions: BTreeMap<String, u64>,
    /// Top (SNI, version) pairs by ClientHellos.
    pub snis: Vec<SniOut>,
    /// ClientHellos with an SNI not counted because `max_names` pairs were.
    pub untracked_hellos: u64,
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Packets seen.
    pub packets: u64,
    /// Wire bytes seen.
    pub bytes: u64,
    /// Per network protocol: ipv4, ipv6, other.
    pub l3: BTreeMap<String, Tally>,
    /// Per transport protocol of IP packets: tcp, udp, icmp, icmpv6, other.
    pub l4: BTreeMap<String, Tally>,
    /// Per application protocol.
    pub app: BTreeMap<String, AppTally>,
    /// HTTP requests and responses.
    pub http: HttpOut,
    /// TLS handshakes.
    pub tls: TlsOut,
    /// Flows followed now.
    pub active_flows: u64,
    /// Flows forgotten after `idle_timeout_s`.
    pub expired_flows: u64,
    /// Packets of new flows refused at `max_flows`.
    pub refused_packets: u64,
}
