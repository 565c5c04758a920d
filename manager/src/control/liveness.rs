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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Operation;
use bus_schema::{MonitorRecord, store};
use futures::StreamExt;

use super::{Control, MonitorRecords, holding_monitors, now_ms};

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

#[derive(Debug, Default)]
struct Copy {
    /// The watch has delivered every record the bucket held when it began.
    caught_up: bool,
    /// Each record with when it was written, Unix ns.
    records: HashMap<String, (MonitorRecord, i128)>,
}

/// The monitor records as a KV watch delivers them ([`Control::watch_records`]),
/// shared by a [`Control`]'s clones.
#[derive(Debug, Default, Clone)]
pub(super) struct Watched(Arc<Mutex<Copy>>);

impl Watched {
    /// The records not older than the bucket's max age, filtered as
    /// [`holding_monitors`] does; `None` unless a watch has caught up.
    pub(super) fn current(&self, enforced: bool) -> Option<MonitorRecords> {
        let copy = self.0.lock().expect("watched records");
        if !copy.caught_up {
            return None;
        }
        let oldest = i128::from(now_ms()) * 1_000_000 - store::RECORD_MAX_AGE.as_nanos() as i128;
        let fresh: BTreeMap<String, MonitorRecord> = copy
            .records
            .iter()
            .filter(|(_, (_, written))| *written > oldest)
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect();
        Some(holding_monitors(fresh, enforced).0)
    }

    fn reset(&self) {
        *self.0.lock().expect("watched records") = Copy::default();
    }
}

impl Control {
    /// Runs [`Control::watch_liveness`] and [`Control::watch_records`]
    /// until cancelled: what a long-running manager does.
    pub async fn watch_monitors(self) {
        tokio::join!(self.clone().watch_liveness(), self.watch_records());
    }

    /// Keeps a copy of `tm_monitors` current through a KV watch until
    /// cancelled, so that a collect round, which needs the monitors'
    /// addresses, reads no record. Records expire from the bucket without a
    /// delete marker, so the copy drops those older than the bucket's max
    /// age itself. Without it running (or until it has caught up), collect
    /// reads the bucket at most once a second.
    pub async fn watch_records(self) {
        loop {
            match self.monitors.watch_with_history(">").await {
                Ok(mut entries) => {
                    while let Some(entry) = entries.next().await {
                        let Ok(entry) = entry else { break };
                        let mut copy = self.watched.0.lock().expect("watched records");
                        match entry.operation {
                            Operation::Put => match bus_schema::decode(&entry.value) {
                                Ok(record) => {
                                    let written = entry.created.unix_timestamp_nanos();
                                    copy.records.insert(entry.key, (record, written));
                                }
                                Err(e) => {
                                    tracing::warn!(key = %entry.key, error = %e, "unreadable monitor record skipped");
                                    copy.records.remove(&entry.key);
                                }
                            },
                            Operation::Delete | Operation::Purge => {
                                copy.records.remove(&entry.key);
                            }
                        }
                        copy.caught_up |= entry.delta == 0;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch tm_monitors"),
            }
            self.watched.reset();
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

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
