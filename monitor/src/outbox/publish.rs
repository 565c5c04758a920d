//! Delivering the outbox's messages to JetStream: the publisher task, one
//! message per ready deployment in turn, each acknowledged or retried.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::store;

use super::{ACK_TIMEOUT, Op, Outbox};

/// Whether a refusal means the message can never be published.
enum Outcome {
    Delivered,
    Never(String),
    Later(String),
}

/// The snapshot bucket, opened at its first use and kept: opening it asks
/// JetStream for the bucket's stream info (an API call and an advisory
/// each), which a put every few seconds per deployment would repeat.
#[derive(Default)]
struct Snapshots(Option<jetstream::kv::Store>);

impl Snapshots {
    async fn bucket(&mut self, js: &jetstream::Context) -> Result<&jetstream::kv::Store, String> {
        if self.0.is_none() {
            let kv = js
                .get_key_value(store::SNAPSHOTS_BUCKET)
                .await
                .map_err(|e| e.to_string())?;
            self.0 = Some(kv);
        }
        Ok(self.0.as_ref().expect("opened above"))
    }

    /// After a failure, the bucket is opened again (it may have been
    /// recreated, or its domain moved).
    fn reopen(&mut self) {
        self.0 = None;
    }
}

async fn deliver(js: &jetstream::Context, snapshots: &mut Snapshots, op: &Op) -> Outcome {
    match op {
        Op::Publish {
            subject,
            id,
            payload,
            ..
        } => {
            let publish = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::copy_from_slice(payload))
                .message_id(id);
            let sent = tokio::time::timeout(ACK_TIMEOUT, async {
                match js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| (e.kind(), e.to_string())),
                    Err(e) => Err((e.kind(), e.to_string())),
                }
            })
            .await;
            match sent {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err((jetstream::context::PublishErrorKind::MaxPayloadExceeded, e))) => {
                    Outcome::Never(e)
                }
                Ok(Err((_, e))) => Outcome::Later(e),
                Err(_) => Outcome::Later("no acknowledgement within 5 s".into()),
            }
        }
        Op::Put { key, payload } => {
            let put = async {
                let kv = snapshots.bucket(js).await?;
                kv.put(key, bytes::Bytes::copy_from_slice(payload))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            let outcome = kv_outcome(tokio::time::timeout(ACK_TIMEOUT, put).await);
            if !matches!(outcome, Outcome::Delivered) {
                snapshots.reopen();
            }
            outcome
        }
        Op::Purge { key } => {
            let purge = async {
                let kv = snapshots.bucket(js).await?;
                kv.purge(key).await.map_err(|e| e.to_string())
            };
            let outcome = kv_outcome(tokio::time::timeout(ACK_TIMEOUT, purge).await);
            if !matches!(outcome, Outcome::Delivered) {
                snapshots.reopen();
            }
            outcome
        }
    }
}

fn kv_outcome(r: Result<Result<(), String>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(())) => Outcome::Delivered,
        Ok(Err(e)) => Outcome::Later(e),
        Err(_) => Outcome::Later("no acknowledgement within 5 s".into()),
    }
}

/// Applies the queued snapshot operations once, before the monitor reads
/// its snapshots back (so a spooled removal is not undone by a recovery).
pub async fn settle_snapshots(outbox: &Outbox, js: &jetstream::Context) {
    let ops: Vec<(String, Op)> = outbox
        .inner()
        .queues
        .iter()
        .filter_map(|(d, q)| q.kv.as_ref().map(|i| (d.clone(), i.op.clone())))
        .collect();
    let mut snapshots = Snapshots::default();
    for (deployment, op) in ops {
        match deliver(js, &mut snapshots, &op).await {
            Outcome::Delivered => outbox.done(&deployment, &op),
            Outcome::Never(e) | Outcome::Later(e) => outbox.retry_later(&deployment, &e),
        }
    }
}

/// Publishes what the outbox holds until `stop` turns true and the outbox
/// is empty (or the stop's deadline passes: the caller spools the rest).
pub async fn publisher(
    js: jetstream::Context,
    outbox: Arc<Outbox>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut snapshots = Snapshots::default();
    loop {
        let (next, ready_at) = outbox.next();
        let Some((deployment, op)) = next else {
            if *stop.borrow() && outbox.is_empty() {
                return;
            }
            let wait = ready_at.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                () = outbox.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        match deliver(&js, &mut snapshots, &op).await {
            Outcome::Delivered => {
                outbox.published.fetch_add(1, Ordering::Relaxed);
                outbox.done(&deployment, &op);
            }
            Outcome::Never(e) => {
                outbox.too_large.fetch_add(1, Ordering::Relaxed);
                tracing::error!(what = %op.describe(), error = %e, "the bus can never take this message: dropped");
                outbox.done(&deployment, &op);
            }
            Outcome::Later(e) => outbox.retry_later(&deployment, &e),
        }
    }
}
