//! The app's params: their fields and defaults, and the check that merges
//! dos-detect's params given at the top and in `analyzer_params` and
//! builds the prefix table.

use serde::Deserialize;
use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};

use crate::detect::DetectParams;

/// Params.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The dos-detect blob's name.
    pub analyzer: String,
    /// Its SHA-256 (empty: whatever is stored under the name).
    pub sha256: String,
    /// dos-detect's params, passed through (unset: dos-detect's defaults).
    pub analyzer_params: Option<DetectParams>,
    /// dos-detect's `window_ms` (or give it in `analyzer_params`).
    pub window_ms: Option<u64>,
    /// dos-detect's `syn_threshold`.
    pub syn_threshold: Option<u32>,
    /// dos-detect's `udp_threshold`.
    pub udp_threshold: Option<u32>,
    /// dos-detect's `scan_threshold`.
    pub scan_threshold: Option<u32>,
    /// Host prefixes behind each router, to find the victim's and the
    /// sources' routers.
    pub prefixes: Vec<PrefixRow>,
    /// Summary period, ms; 0: only the final summary.
    pub every_ms: u64,
    /// Per-monitor collect timeout, ms.
    pub collect_timeout_ms: u64,
    /// Also archive collected results and every report.
    pub archive: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            analyzer: "dos-detect".into(),
            sha256: String::new(),
            analyzer_params: None,
            window_ms: None,
            syn_threshold: None,
            udp_threshold: None,
            scan_threshold: None,
            prefixes: Vec::new(),
            every_ms: 10_000,
            collect_timeout_ms: 2000,
            archive: false,
        }
    }
}

/// One of dos-detect's params, given at the top or in `analyzer_params`.
fn merged<T: PartialEq + Copy + std::fmt::Display>(
    name: &str,
    top: Option<T>,
    nested: Option<T>,
) -> Result<(Option<T>, String), String> {
    match (top, nested) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{} = {} and analyzer_params.{} = {}: give it once",
            name, a, name, b
        )),
        (Some(a), _) => Ok((Some(a), name.to_string())),
        (None, b) => Ok((b, format!("analyzer_params.{}", name))),
    }
}

fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    v: (Option<T>, String),
    lo: T,
    hi: Option<T>,
    range: &str,
) -> Result<Option<T>, String> {
    match v.0 {
        Some(x) if x < lo || hi.map_or(false, |h| x > h) => {
            Err(format!("{} = {}: must be {}", v.1, x, range))
        }
        other => Ok(other),
    }
}

impl Params {
    /// Checks every param; returns dos-detect's params and the prefix table.
    /// Errors name the field and its value.
    pub fn check(&self) -> Result<(DetectParams, Table<String>), String> {
        if self.analyzer.is_empty() {
            return Err("analyzer = \"\": must name the dos-detect blob".into());
        }
        if self.every_ms != 0 && self.every_ms < 100 {
            return Err(format!(
                "every_ms = {}: must be 0 (no periodic summary) or at least 100",
                self.every_ms
            ));
        }
        if self.collect_timeout_ms == 0 {
            return Err("collect_timeout_ms = 0: must be at least 1".into());
        }
        let n = self.analyzer_params.clone().unwrap_or_default();
        let detect = DetectParams {
            window_ms: in_range(
                merged("window_ms", self.window_ms, n.window_ms)?,
                1,
                Some(3_600_000),
                "1 to 3600000",
            )?,
            syn_threshold: in_range(
                merged("syn_threshold", self.syn_threshold, n.syn_threshold)?,
                1,
                None,
                "at least 1",
            )?,
            udp_threshold: in_range(
                merged("udp_threshold", self.udp_threshold, n.udp_threshold)?,
                1,
                None,
                "at least 1",
            )?,
            scan_threshold: in_range(
                merged("scan_threshold", self.scan_threshold, n.scan_threshold)?,
                1,
                None,
                "at least 1",
            )?,
            max_tracked: in_range(
                (n.max_tracked, "analyzer_params.max_tracked".into()),
                1,
                Some(10_000_000),
                "1 to 10000000",
            )?,
            max_alerts: in_range(
                (n.max_alerts, "analyzer_params.max_alerts".into()),
                0,
                Some(10_000),
                "0 to 10000",
            )?,
        };
        Ok((detect, routers_of(&self.prefixes)?))
    }
}
