//! Which monitors answer right now, without a KV write per monitor: one
//! scatter-gather ping of the NATS service API (`$SRV.PING.tm-monitor`, one
//! publish, one small reply from each monitor) every [`PROBE_EVERY`].
//!
//! The liveness records in `tm_monitors` say what a monitor is (address,
//! links) and are refreshed every few seconds; the probe says whether it
//! still answers. A monitor that has a record but missed the last two
//! probes (and started before the earlier one) is counted as gone at
//! once, instead of when its record expires.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{ErrorBody, MonitorRecord};
use futures::StreamExt;

use super::{Control, bus, now_ms};

/// How often [`Control::watch_liveness`] probes.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe gathers replies.
pub const PROBE_WAIT: Duration = Duration::from_millis(400);
/// The service name monitors register under.
const MONITOR_SERVICE: &str = "tm-monitor";

/// One probe: when it was sent (Unix ms) and who answered.
#[derive(Debug, Clone)]
struct Probe {
    sent_unix_ms: u64,
    at: Instant,
    answered: BTreeSet<String>,
}

/// The last two probes, shared by a [`Control`]'s clones.
#[derive(Debug, Default, Clone)]
pub(super) struct Liveness(Arc<Mutex<VecDeque<Probe>>>);

impl Liveness {
    /// Whether `record`'s monitor missed the last two probes, both recent,
    /// having started before the earlier one.
    pub(super) fn gone(&self, id: &str, record: &MonitorRecord) -> bool {
        let probes = self.0.lock().expect("liveness");
        let [older, newer] = [probes.front(), probes.back()];
        let (Some(older), Some(newer)) = (older, newer) else {
            return false;
        };
        probes.len() == 2
            && newer.at.elapsed() < PROBE_EVERY * 3
            && record.started_unix_ms < older.sent_unix_ms
            && !older.answered.contains(id)
            && !newer.answered.contains(id)
    }

    fn push(&self, probe: Option<Probe>) {
        let mut probes = self.0.lock().expect("liveness");
        match probe {
            Some(p) => {
                probes.push_back(p);
                while probes.len() > 2 {
                    probes.pop_front();
                }
            }
            // A failed probe says nothing: forget, rather than judge on old ones.
            None => probes.clear(),
        }
    }
}

impl Control {
    /// Pings every monitor at once and gathers for `wait`; the ids of those
    /// that answered (the `monitor` of their service metadata).
    ///
    /// # Errors
    /// `unavailable` if the ping cannot be sent.
    pub async fn probe(&self, wait: Duration) -> Result<BTreeSet<String>, ErrorBody> {
        let subject = format!("$SRV.PING.{MONITOR_SERVICE}");
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| bus(&subject, e))?;
        self.client
            .publish_with_reply(subject.clone(), inbox, bytes::Bytes::new())
            .await
            .map_err(|e| bus(&subject, e))?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut answered = BTreeSet::new();
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
            if let Ok(pong) =
                serde_json::from_slice::<async_nats::service::PingResponse>(&msg.payload)
                && let Some(id) = pong.metadata.get("monitor")
            {
                answered.insert(id.clone());
            }
        }
        Ok(answered)
    }

    /// Probes every [`PROBE_EVERY`] until cancelled, so that
    /// [`Control::monitors`] drops a monitor two probes after it stopped
    /// answering.
    pub async fn watch_liveness(self) {
        loop {
            let (sent_unix_ms, at) = (now_ms(), Instant::now());
            let probe = match self.probe(PROBE_WAIT).await {
                Ok(answered) => Some(Probe {
                    sent_unix_ms,
                    at,
                    answered,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "liveness probe failed");
                    None
                }
            };
            self.liveness.push(probe);
            tokio::time::sleep(PROBE_EVERY.saturating_sub(at.elapsed())).await;
        }
    }
}
