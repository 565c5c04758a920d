//! The `dos-summary` report: dos-detect's figures per monitor and summed,
//! and the incidents so far.

use serde::Serialize;
use tm_app_sdk::Collected;

use crate::detect::{ByKind, DetectResults};
use crate::incidents::Incidents;
use crate::trace::Ingress;

/// One monitor's dos-detect figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitorSummary {
    /// Monitor id.
    pub monitor: String,
    /// Its address.
    pub address: String,
    /// Packets given to dos-detect.
    pub packets: u64,
    /// Windows closed.
    pub windows: u64,
    /// Alerts raised.
    pub alerts_total: u64,
    /// Alerts by kind.
    pub by_kind: ByKind,
    /// Packets not tracked.
    pub untracked_packets: u64,
}

/// One incident in a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentSummary {
    /// The alerts' target.
    pub target: String,
    /// The alerts' kind.
    pub kind: String,
    /// Taps that alerted.
    pub taps: u64,
    /// Alerts (tap windows).
    pub alerts: u64,
    /// First alert's packet time.
    pub first_ts_ns: u64,
    /// Latest alert's packet time.
    pub last_ts_ns: u64,
    /// Its latest trace's ingress.
    pub ingress: Option<Ingress>,
}

/// The `dos-summary` (and `dos-summary-final`) report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The dos-detect deployment.
    pub deployment: String,
    /// Collect round (1, 2, …); the final summary repeats the last + 1.
    pub round: u32,
    /// Per monitor, sorted by monitor id.
    pub monitors: Vec<MonitorSummary>,
    /// Packets over all monitors.
    pub packets: u64,
    /// Alerts over all monitors.
    pub alerts_total: u64,
    /// Alerts by kind over all monitors.
    pub by_kind: ByKind,
    /// Incidents, by (target, kind).
    pub incidents: Vec<IncidentSummary>,
    /// Monitors that did not answer (id: reason).
    pub missing: Vec<String>,
}

/// Sums collected results and lists the incidents.
pub fn build_summary(
    collected: &Collected<DetectResults>,
    incidents: &Incidents,
    round: u32,
) -> Summary {
    let mut by_kind = ByKind::default();
    let mut monitors = Vec::new();
    for m in &collected.results {
        let r = &m.results;
        by_kind.syn_flood += r.by_kind.syn_flood;
        by_kind.udp_flood += r.by_kind.udp_flood;
        by_kind.port_scan += r.by_kind.port_scan;
        monitors.push(MonitorSummary {
            monitor: m.monitor.clone(),
            address: m.address.clone(),
            packets: r.packets,
            windows: r.windows,
            alerts_total: r.alerts_total,
            by_kind: r.by_kind,
            untracked_packets: r.untracked_packets,
        });
    }
    Summary {
        deployment: collected.deployment.clone(),
        round,
        packets: monitors.iter().map(|m| m.packets).sum(),
        alerts_total: monitors.iter().map(|m| m.alerts_total).sum(),
        monitors,
        by_kind,
        incidents: incidents
            .map
            .values()
            .map(|i| IncidentSummary {
                target: i.target.clone(),
                kind: i.kind.clone(),
                taps: i.taps.len() as u64,
                alerts: i.taps.values().map(|s| s.alerts).sum(),
                first_ts_ns: i.first_ts_ns,
                last_ts_ns: i.last_ts_ns,
                ingress: i.ingress.clone(),
            })
            .collect(),
        missing: collected
            .missing
            .iter()
            .map(|m| format!("{}: {}", m.monitor, m.message))
            .collect(),
    }
}
