//! What the monitor tells about itself: `status`, the liveness record and
//! its heartbeat, and events when a link fails or its replay finishes.

use std::sync::Arc;

use bus_schema::{
    ErrorBody, ErrorCode, EventKind, MonitorRecord, MonitorStatus, StatusRequest, Value, store,
};

use super::{Monitor, err};
use crate::deployment::Shared;
use crate::unix_ms;

impl Monitor {
    /// The monitor's links and deployments (only `deployment`, if given):
    /// what `status` answers and the metrics endpoint exposes.
    ///
    /// # Errors
    /// `unknown_deployment` for a deployment that is not here.
    pub fn snapshot(&self, deployment: Option<&str>) -> Result<MonitorStatus, ErrorBody> {
        let req = StatusRequest {
            deployment: deployment.map(str::to_owned),
        };
        let deployments = self.deployments.lock().expect("deployments");
        if let Some(d) = &req.deployment
            && !deployments.contains_key(d)
        {
            return err(
                ErrorCode::UnknownDeployment,
                format!(
                    "deployment = {d:?}: no such deployment on monitor {}",
                    self.id
                ),
            );
        }
        let mut list: Vec<_> = deployments
            .values()
            .filter(|d| {
                req.deployment
                    .as_ref()
                    .is_none_or(|want| *want == d.shared.info.deployment)
            })
            .map(|d| d.shared.status_report())
            .collect();
        list.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        Ok(MonitorStatus {
            monitor: self.id.clone(),
            address: self.config.address.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            links: self.links.values().map(|l| l.shared.status()).collect(),
            deployments: list,
            outbox: self.outbox_status(),
        })
    }

    /// The outbox's figures.
    #[must_use]
    pub fn outbox_status(&self) -> bus_schema::OutboxStatus {
        self.outbox.figures()
    }

    /// The liveness record.
    #[must_use]
    pub fn record(&self, started_unix_ms: u64) -> MonitorRecord {
        MonitorRecord {
            monitor: self.id.clone(),
            address: self.config.address.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: bus_schema::PROTOCOL_VERSION,
            links: self.links.values().map(|l| l.shared.info()).collect(),
            started_unix_ms,
            heartbeat_unix_ms: unix_ms(),
        }
    }

    /// Those of `links` that are not capturing, with why.
    pub(super) fn idle_links(&self, links: &[u32]) -> Vec<bus_schema::IdleLink> {
        links
            .iter()
            .filter_map(|l| {
                let st = self.links.get(l)?.shared.status();
                (st.state != bus_schema::LinkState::Running).then_some(bus_schema::IdleLink {
                    link: *l,
                    state: st.state,
                    error: st.last_error,
                })
            })
            .collect()
    }

    /// Tells the deployments of a link, in an event each, when the link
    /// fails or its replay finishes (as the state changes, until
    /// cancelled).
    pub async fn watch_links(self: Arc<Self>) {
        let watchers: Vec<_> = self
            .links
            .iter()
            .map(|(id, link)| {
                let (monitor, id, mut rx) = (self.clone(), *id, link.shared.watch_state());
                tokio::spawn(async move {
                    let mut last = *rx.borrow_and_update();
                    while rx.changed().await.is_ok() {
                        let state = *rx.borrow_and_update();
                        if state != last {
                            last = state;
                            monitor.tell_link_state(id);
                        }
                    }
                })
            })
            .collect();
        for w in watchers {
            let _ = w.await;
        }
    }

    fn tell_link_state(&self, id: u32) {
        let st = self.links[&id].shared.status();
        let (kind, message, data) = match st.state {
            bus_schema::LinkState::Running => return,
            bus_schema::LinkState::Failed => {
                let error = st.last_error.clone().unwrap_or_default();
                (
                    EventKind::LinkFailed,
                    format!("link {id} stopped capturing: {error}"),
                    Value::Map(vec![
                        ("link".into(), id.into()),
                        ("error".into(), error.into()),
                    ]),
                )
            }
            bus_schema::LinkState::Finished => (
                EventKind::LinkFinished,
                format!("link {id}'s replay finished after {} packets", st.packets),
                Value::Map(vec![
                    ("link".into(), id.into()),
                    ("packets".into(), st.packets.into()),
                ]),
            ),
        };
        let attached: Vec<Arc<Shared>> = self
            .deployments
            .lock()
            .expect("deployments")
            .values()
            .filter(|d| d.shared.info.links.contains(&id))
            .map(|d| d.shared.clone())
            .collect();
        for shared in attached {
            shared.event(kind, message.clone(), data.clone());
        }
    }

    /// Refreshes the liveness record every heartbeat until cancelled.
    pub async fn heartbeat(self: Arc<Self>) {
        let started = unix_ms();
        let mut kv = None;
        loop {
            if kv.is_none() {
                kv = self.js.get_key_value(store::MONITORS_BUCKET).await.ok();
            }
            if let Some(bucket) = &kv {
                match bus_schema::encode(&self.record(started)) {
                    Ok(bytes) => {
                        if let Err(e) = bucket.put(&self.id, bytes.into()).await {
                            tracing::warn!(error = %e, "cannot refresh the liveness record");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode the liveness record"),
                }
            }
            tokio::time::sleep(store::HEARTBEAT_EVERY).await;
        }
    }

    /// Removes the liveness record (at a stop, after the final windows).
    pub async fn leave(&self) {
        if let Ok(kv) = self.js.get_key_value(store::MONITORS_BUCKET).await {
            let _ = kv.delete(&self.id).await;
        }
    }
}
