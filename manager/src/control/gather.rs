//! Collect and status across monitors: each monitor is asked at once with
//! its own timeout, and one that refuses or stays silent becomes a
//! [`Missing`] entry beside the answers of the others.

use std::collections::BTreeMap;
use std::time::Duration;

use bus_schema::{
    CollectRequest, ErrorBody, MonitorRecord, MonitorStatus, ResultWindow, StatusRequest, subject,
};
use futures::future::join_all;

use super::Control;

/// A monitor that did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Monitor id.
    pub monitor: String,
    /// Why.
    pub error: ErrorBody,
}

/// One monitor's results.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorResults {
    /// Its address (empty if it is no longer registered).
    pub address: String,
    /// The window it returned.
    pub window: ResultWindow,
}

/// Results of a collect or unload: all that answered, and who did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The deployment id.
    pub deployment: String,
    /// Sorted by monitor id.
    pub results: Vec<MonitorResults>,
    /// Monitors that did not answer in time or refused.
    pub missing: Vec<Missing>,
}

impl Control {
    /// S4/S5: every target's results, each monitor given `timeout`.
    ///
    /// # Errors
    /// `unknown_deployment` or a bus error; monitors that fail are in
    /// [`Collected::missing`].
    pub async fn collect(&self, id: &str, timeout: Duration) -> Result<Collected, ErrorBody> {
        let (record, _) = self.existing(id).await?;
        let (monitors, replies) = tokio::join!(
            self.records_within(Duration::from_secs(1)),
            join_all(record.targets.iter().map(|t| async move {
                let reply: Result<ResultWindow, ErrorBody> = self
                    .request(
                        subject::monitor_collect(&t.monitor, &self.id),
                        &CollectRequest {
                            deployment: id.to_owned(),
                        },
                        timeout,
                    )
                    .await;
                (t.monitor.clone(), reply)
            }))
        );
        Ok(gather(id, &monitors.unwrap_or_default(), replies))
    }

    /// Status of the given monitors (all that are up if empty), each with
    /// `timeout`.
    ///
    /// # Errors
    /// If the monitor list cannot be read.
    pub async fn status(
        &self,
        monitors: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, Result<MonitorStatus, ErrorBody>)>, ErrorBody> {
        let ids: Vec<String> = if monitors.is_empty() {
            self.monitors().await?.into_keys().collect()
        } else {
            monitors.to_vec()
        };
        Ok(join_all(ids.into_iter().map(|id| async move {
            let reply = self
                .request(
                    subject::monitor_status(&id, &self.id),
                    &StatusRequest::default(),
                    timeout,
                )
                .await;
            (id, reply)
        }))
        .await)
    }
}

/// Sorts replies into the results of those that answered and the
/// monitors that did not.
pub(super) fn gather(
    id: &str,
    monitors: &BTreeMap<String, MonitorRecord>,
    replies: Vec<(String, Result<ResultWindow, ErrorBody>)>,
) -> Collected {
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (monitor, reply) in replies {
        match reply {
            Ok(window) => results.push(MonitorResults {
                address: monitors
                    .get(&monitor)
                    .map(|m| m.address.clone())
                    .unwrap_or_default(),
                window,
            }),
            Err(error) => missing.push(Missing { monitor, error }),
        }
    }
    results.sort_by(|a, b| a.window.monitor.cmp(&b.window.monitor));
    missing.sort_by(|a, b| a.monitor.cmp(&b.monitor));
    Collected {
        deployment: id.to_owned(),
        results,
        missing,
    }
}
