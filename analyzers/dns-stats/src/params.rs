//! The analyzer's params: their fields, defaults and bounds.

use serde::Deserialize;

/// Parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// DNS ports besides 53.
    pub ports: Vec<u16>,
    /// Names in the results.
    pub top_n: u32,
    /// Names counted at once.
    pub max_names: u32,
    /// Queries awaiting a response at once.
    pub max_pending: u32,
    /// How long a query awaits its response, ms of packet time.
    pub timeout_ms: u64,
    /// Latest latencies kept for the quantiles.
    pub latency_samples: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            ports: Vec::new(),
            top_n: 10,
            max_names: 10_000,
            max_pending: 10_000,
            timeout_ms: 5_000,
            latency_samples: 4_096,
        }
    }
}

impl Params {
    pub(crate) fn check(self) -> Result<Self, String> {
        if self.ports.len() > 16 {
            return Err(format!(
                "ports has {} entries: at most 16",
                self.ports.len()
            ));
        }
        if let Some(i) = self.ports.iter().position(|&p| p == 0) {
            return Err(format!("ports[{}] = 0: must be 1 to 65535", i));
        }
        if self.top_n > 1_000 {
            return Err(format!("top_n = {}: must be 0 to 1000", self.top_n));
        }
        let ranged = [
            ("max_names", u64::from(self.max_names), 1_000_000),
            ("max_pending", u64::from(self.max_pending), 1_000_000),
            ("timeout_ms", self.timeout_ms, 3_600_000),
            (
                "latency_samples",
                u64::from(self.latency_samples),
                1_000_000,
            ),
        ];
        for (name, value, max) in ranged {
            if value == 0 || value > max {
                return Err(format!("{} = {}: must be 1 to {}", name, value, max));
            }
        }
        Ok(self)
    }
}
