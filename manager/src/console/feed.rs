//! The console's side of the bus: it watches the KV buckets (topology,
//! monitors, deployments, managers) and follows the result, report and
//! event streams with ordered consumers, turning each change into an
//! [`Update`] applied to the [`View`] and pushed to every page. It only
//! reads: a subscriber's identity is enough.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, kv};
use bus_schema::{
    DeploymentRecord, Event, ManagerRecord, MonitorRecord, Report, ResultWindow, TopologyRecord,
    store, subject,
};
use futures::StreamExt;
use tokio::sync::{RwLock, broadcast};

use super::view::{
    EVENTS_KEPT, Update, View, deployment_json, event_json, manager_json, monitor_json,
    report_json, topology_json, window_json,
};

/// Where updates go: the view, then every connected page.
#[derive(Clone)]
pub struct Sink {
    /// The whole view.
    pub view: Arc<RwLock<View>>,
    /// Every page's feed.
    pub pages: broadcast::Sender<Update>,
}

impl Sink {
    async fn apply(&self, update: Update) {
        let update = self.view.write().await.apply(update);
        // No page connected is no error.
        let _ = self.pages.send(update);
    }
}

/// Follows the bus until it fails; each source in a task of its own, each
/// restarted after an error (a stream or bucket not there yet, a
/// reconnect).
pub async fn follow(js: jetstream::Context, sink: Sink) {
    let kvs = [
        store::TOPOLOGY_BUCKET,
        store::MONITORS_BUCKET,
        store::DEPLOYMENTS_BUCKET,
        store::MANAGERS_BUCKET,
    ];
    let mut tasks = Vec::new();
    for bucket in kvs {
        let (js, sink) = (js.clone(), sink.clone());
        tasks.push(tokio::spawn(retry(bucket, move || {
            watch_bucket(js.clone(), bucket, sink.clone())
        })));
    }
    for stream in [
        store::RESULTS_STREAM,
        store::REPORTS_STREAM,
        store::EVENTS_STREAM,
    ] {
        let (js, sink) = (js.clone(), sink.clone());
        tasks.push(tokio::spawn(retry(stream, move || {
            follow_stream(js.clone(), stream, sink.clone())
        })));
    }
    futures::future::join_all(tasks).await;
}

/// Runs `source` again a second after each failure.
async fn retry<F, Fut>(what: &'static str, source: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    loop {
        if let Err(e) = source().await {
            tracing::warn!(source = what, error = %format!("{e:#}"), "console feed interrupted; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Current values of a bucket, then every change.
async fn watch_bucket(js: jetstream::Context, bucket: &'static str, sink: Sink) -> Result<()> {
    let kv = js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("bucket {bucket}"))?;
    // The latest value of every key first, then each change.
    let mut entries = kv
        .watch_with_history(">")
        .await
        .with_context(|| format!("watch {bucket}"))?;
    while let Some(entry) = entries.next().await {
        let entry = entry.with_context(|| format!("watch {bucket}"))?;
        let removed = !matches!(entry.operation, kv::Operation::Put);
        let key = entry.key.clone();
        let update = match bucket {
            store::TOPOLOGY_BUCKET => {
                if key != store::TOPOLOGY_KEY || removed {
                    continue;
                }
                match bus_schema::decode::<TopologyRecord>(&entry.value) {
                    Ok(r) => Update::Topology {
                        value: topology_json(&r),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "topology record not understood");
                        continue;
                    }
                }
            }
            store::MONITORS_BUCKET => Update::Monitor {
                value: (!removed)
                    .then(|| bus_schema::decode::<MonitorRecord>(&entry.value).ok())
                    .flatten()
                    .map(|r| monitor_json(&r)),
                key,
            },
            store::DEPLOYMENTS_BUCKET => Update::Deployment {
                value: (!removed)
                    .then(|| bus_schema::decode::<DeploymentRecord>(&entry.value).ok())
                    .flatten()
                    .map(|r| deployment_json(&r, entry.revision)),
                key,
            },
            _ => Update::Manager {
                value: (!removed)
                    .then(|| bus_schema::decode::<ManagerRecord>(&entry.value).ok())
                    .flatten()
                    .map(|r| manager_json(&r)),
                key,
            },
        };
        sink.apply(update).await;
    }
    Ok(())
}

/// A stream from where a page needs it — the latest window of each
/// deployment and report of each app, the last events — then as it grows.
async fn follow_stream(js: jetstream::Context, name: &'static str, sink: Sink) -> Result<()> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("stream {name}"))?;
    let last = stream.info().await?.state.last_sequence;
    let (filter, deliver_policy) = match name {
        store::RESULTS_STREAM => (
            subject::results("*", "*"),
            consumer::DeliverPolicy::LastPerSubject,
        ),
        store::REPORTS_STREAM => (
            subject::reports("*", "*"),
            consumer::DeliverPolicy::LastPerSubject,
        ),
        _ => (
            subject::events("*", "*"),
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last.saturating_sub(EVENTS_KEPT as u64) + 1,
            },
        ),
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .with_context(|| format!("consumer on {name}"))?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message.with_context(|| format!("stream {name}"))?;
        let payload = &message.payload;
        let update = match name {
            store::RESULTS_STREAM => {
                bus_schema::decode::<ResultWindow>(payload)
                    .ok()
                    .map(|w| Update::Window {
                        key: format!("{}/{}", w.monitor, w.deployment),
                        value: window_json(&w),
                    })
            }
            store::REPORTS_STREAM => {
                bus_schema::decode::<Report>(payload)
                    .ok()
                    .map(|r| Update::Report {
                        key: format!("{}/{}/{}", r.manager, r.app, r.kind),
                        value: report_json(&r),
                    })
            }
            _ => bus_schema::decode::<Event>(payload)
                .ok()
                .map(|e| Update::Event {
                    value: event_json(&e),
                }),
        };
        match update {
            Some(u) => sink.apply(u).await,
            None => {
                tracing::warn!(stream = name, subject = %message.subject, "message not understood")
            }
        }
    }
    Ok(())
}
