//! dos-detect's side of the app: the params it is deployed with, and its
//! alerts and results as the app reads them.

use serde::{Deserialize, Serialize};

/// dos-detect's params; unset fields are left to dos-detect's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectParams {
    /// Window width, ms of packet time (1 to 3600000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// SYNs to one address per window (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_threshold: Option<u32>,
    /// UDP datagrams to one address per window (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_threshold: Option<u32>,
    /// Distinct probes from one source per window (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_threshold: Option<u32>,
    /// Addresses and probe pairs tracked per window (1 to 10000000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tracked: Option<u32>,
    /// Alerts kept in the results (0 to 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_alerts: Option<u32>,
}

/// A dos-detect alert (the event's data, and an entry of its results).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DosAlert {
    /// `syn_flood`, `udp_flood` or `port_scan`.
    pub kind: String,
    /// Link of the packet that crossed the threshold.
    pub link: u32,
    /// The attacked address; the scanner's for a scan.
    pub target: String,
    /// Start of the window, Unix ns.
    pub window_start_ns: u64,
    /// Time of the packet that crossed the threshold.
    pub ts_ns: u64,
    /// The threshold crossed.
    pub threshold: u32,
    /// Packets (or probes) in the window so far.
    pub count: u64,
    /// Flood sources seen (at most 8), or the scanned address for a scan.
    pub sources: Vec<String>,
}

/// dos-detect's alert counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByKind {
    /// SYN floods.
    pub syn_flood: u64,
    /// UDP floods.
    pub udp_flood: u64,
    /// Port scans.
    pub port_scan: u64,
}

/// The part of dos-detect's results this app reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectResults {
    /// Packets given.
    pub packets: u64,
    /// Windows closed.
    pub windows: u64,
    /// Alerts raised.
    pub alerts_total: u64,
    /// Alerts by kind.
    pub by_kind: ByKind,
    /// Packets not tracked (max_tracked reached).
    pub untracked_packets: u64,
    /// The latest alerts, oldest first.
    pub alerts: Vec<DosAlert>,
}
