//! The app's params: their fields and defaults, and the check that turns
//! them into the prefix table and the reasoning's thresholds.

use serde::Deserialize;
use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};

use crate::reasoning::Settings;

/// Params.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The tcp-perf blob's name.
    pub analyzer: String,
    /// Its SHA-256 (empty: whatever is stored under the name).
    pub sha256: String,
    /// Collect period, ms.
    pub every_ms: u64,
    /// Collects before the app unloads tcp-perf itself; 0: until unloaded.
    pub rounds: u32,
    /// Per-monitor collect timeout, ms.
    pub collect_timeout_ms: u64,
    /// Loss rate that makes a hotspot; also tcp-perf's threshold for
    /// flagging a connection.
    pub retrans_threshold: f64,
    /// Data segments a tap needs on a link before its figures count.
    pub min_data_packets: u64,
    /// Host prefixes behind each router, to find flagged connections' paths.
    pub prefixes: Vec<PrefixRow>,
    /// Also archive every round's results and reports.
    pub archive: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            analyzer: "tcp-perf".into(),
            sha256: String::new(),
            every_ms: 1000,
            rounds: 0,
            collect_timeout_ms: 2000,
            retrans_threshold: 0.05,
            min_data_packets: 100,
            prefixes: Vec::new(),
            archive: false,
        }
    }
}

impl Params {
    /// Checks every param; returns the prefix table. Errors name the field
    /// and its value.
    pub fn check(&self) -> Result<Table<String>, String> {
        if self.analyzer.is_empty() {
            return Err("analyzer = \"\": must name the tcp-perf blob".into());
        }
        if self.every_ms < 100 {
            return Err(format!(
                "every_ms = {}: must be at least 100",
                self.every_ms
            ));
        }
        if self.collect_timeout_ms == 0 {
            return Err("collect_timeout_ms = 0: must be at least 1".into());
        }
        if !(self.retrans_threshold > 0.0 && self.retrans_threshold <= 1.0) {
            return Err(format!(
                "retrans_threshold = {}: must be above 0 and at most 1",
                self.retrans_threshold
            ));
        }
        routers_of(&self.prefixes)
    }

    /// The figures' thresholds.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            retrans_threshold: self.retrans_threshold,
            min_data_packets: self.min_data_packets,
        }
    }
}
