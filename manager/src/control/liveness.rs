//! Which monitors answer right now, without a KV write per monitor: a
//! scatter-gather ping of the NATS service API (`$SRV.PING.tm-monitor`: one
//! publish, one small reply from each monitor) every [`PROBE_EVERY`], all
//! replies to one inbox that [`Control::watch_liveness`] keeps reading.
//!
//! The liveness records in `tm_monitors` say what a monitor is (address,
//! links) and are refreshed every few seconds; the pings say whether it
//! still answers. A monitor that has a record but has not answered a ping
//! for [`GONE_AFTER`] (and started before that) is counted as gone, instead
//! of when its record expires. A late reply still counts, so a loaded
//! monitor is not taken for a dead one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::MonitorRecord;
use futures::StreamExt;

use super::{Control, now_ms};

/// How often [`Control::watch_liveness`] pings.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A monitor silent this long is gone.
pub const GONE_AFTER: Duration = Duration::from_secs(3);
/// The service name monitors register under.
const MONITOR_SERVICE: &str = "tm-monitor";

#[derive(Debug, Default)]
struct State {
    /// When the watch began reading replies (none: no watch runs).
    since: Option<Instant>,
    /// When the last ping went out.
    last_ping: Option<Instant>,
    /// When each monitor last answered.
    seen: HashMap<String, Instant>,
}

/// What the pings saw, shared by a [`Control`]'s clones.
#[derive(Debug, Default, Clone)]
pub(super) struct Liveness(Arc<Mutex<State>>);

impl Liveness {
    /// Whether `record`'s monitor has not answered for [`GONE_AFTER`],
    /// having started before that, while the pings go out and are read.
    pub(super) fn gone(&self, id: &str, record: &MonitorRecord) -> bool {
        let state = self.0.lock().expect("liveness");
        let watching = state.since.is_some_and(|s| s.elapsed() > GONE_AFTER)
            && state
                .last_ping
                .is_some_and(|p| p.elapsed() < PROBE_EVERY * 3);
        let silent = state.seen.get(id).is_none_or(|t| t.elapsed() > GONE_AFTER);
        let older = record.started_unix_ms + (GONE_AFTER.as_millis() as u64) < now_ms();
        watching && silent && older
    }

    fn heard(&self, id: String) {
        self.0
            .lock()
            .expect("liveness")
            .seen
            .insert(id, Instant::now());
    }

    fn mark(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.lock().expect("liveness"));
    }
}

impl Control {
    /// Pings every monitor each [`PROBE_EVERY`] until cancelled, so that
    /// [`Control::monitors`] drops a monitor [`GONE_AFTER`] after it
    /// stopped answering. Without it running, nothing is dropped before
    /// its record expires.
    pub async fn watch_liveness(self) {
        let subject = format!("$SRV.PING.{MONITOR_SERVICE}");
        loop {
            let inbox = self.client.new_inbox();
            let mut replies = match self.client.subscribe(inbox.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "liveness: cannot subscribe");
                    tokio::time::sleep(PROBE_EVERY).await;
                    continue;
                }
            };
            let liveness = self.liveness.clone();
            liveness.mark(|s| s.since = Some(Instant::now()));
            let reader = tokio::spawn(async move {
                while let Some(msg) = replies.next().await {
                    if let Ok(pong) =
                        serde_json::from_slice::<async_nats::service::PingResponse>(&msg.payload)
                        && let Some(id) = pong.metadata.get("monitor")
                    {
                        liveness.heard(id.clone());
                    }
                }
            });
            loop {
                if let Err(e) = self
                    .client
                    .publish_with_reply(subject.clone(), inbox.clone(), bytes::Bytes::new())
                    .await
                {
                    tracing::warn!(error = %e, "liveness: cannot ping");
                    break;
                }
                self.liveness.mark(|s| s.last_ping = Some(Instant::now()));
                tokio::time::sleep(PROBE_EVERY).await;
                if reader.is_finished() {
                    break;
                }
            }
            reader.abort();
            self.liveness.mark(|s| s.since = None);
        }
    }
}
