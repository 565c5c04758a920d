//! Results, events and snapshots on their way to JetStream.
//!
//! Every deployment has its own queue, and the publisher takes one message
//! from each ready queue in turn: a queue whose message JetStream refuses
//! waits (with backoff) while the others go on, so one deployment never
//! holds another's output. The queues together are bounded in bytes; past
//! the bound the oldest periodic window (then the oldest alert) of the
//! longest queue is shed and counted on its deployment. Final windows and
//! lifecycle events are never shed. A message larger than the bus's max
//! payload is refused when it is queued. At a stop, what could not be
//! delivered before the deadline is written to a spool file that the next
//! start publishes.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{
    DeploymentSnapshot, Event, EventKind, OutboxStatus, ResultWindow, store, subject,
};
use serde::{Deserialize, Serialize};

use crate::inbox::DepCounters;
use crate::unix_ms;

mod publish;
mod spool;

pub use publish::{publisher, settle_snapshots};

/// Room left in a message for its headers (message id and the like).
const HEADER_ROOM: usize = 1024;
/// Longest wait between two tries of a refused message.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one publish may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the spool file in the spool directory.
const SPOOL_FILE: &str = "outbox.spool";

/// What the monitor sends out.
#[derive(Debug)]
pub enum Outgoing {
    /// A result window for `TM_RESULTS`.
    Result(ResultWindow),
    /// An event for `TM_EVENTS`.
    Event(Event),
    /// A snapshot to put in `tm_snapshots`.
    Snapshot(Box<DeploymentSnapshot>),
    /// Remove a deployment's snapshot (unloaded or failed).
    Forget {
        /// Monitor id.
        monitor: String,
        /// Deployment id.
        deployment: String,
    },
}

/// The message id of a window: deployment, monitor, run and seq, so that a
/// window sent twice is stored once and two loads of one id never collide.
#[must_use]
pub fn window_id(w: &ResultWindow) -> String {
    run_id(&w.deployment, &w.monitor, &w.run, &w.seq.to_string())
}

/// The message id of an event (its seq prefixed with `e`).
#[must_use]
pub fn event_id(e: &Event) -> String {
    run_id(&e.deployment, &e.monitor, &e.run, &format!("e{}", e.seq))
}

fn run_id(deployment: &str, monitor: &str, run: &str, seq: &str) -> String {
    if run.is_empty() {
        format!("{deployment}:{monitor}:{seq}")
    } else {
        format!("{deployment}:{monitor}:{run}:{seq}")
    }
}

/// One operation on the bus, encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    /// Publish to a stream with a message id.
    Publish {
        subject: String,
        id: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// What shedding may drop.
        class: Class,
    },
    /// Put a snapshot.
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Purge a snapshot.
    Purge { key: String },
}

/// What shedding may drop, in the order it drops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Class {
    /// A periodic window (windows are cumulative: the next one covers it).
    Window,
    /// An alert from the analyzer.
    Alert,
    /// Final windows and lifecycle events: kept.
    Kept,
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Publish {
                subject,
                id,
                payload,
                ..
            } => subject.len() + id.len() + payload.len(),
            Op::Put { key, payload } => key.len() + payload.len(),
            Op::Purge { key } => key.len(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Op::Publish { subject, id, .. } => format!("{subject} (message id {id})"),
            Op::Put { key, .. } => format!("snapshot {key}"),
            Op::Purge { key } => format!("removal of snapshot {key}"),
        }
    }
}

#[derive(Debug)]
struct Item {
    op: Op,
    /// Read from the spool at start.
    spooled: bool,
}

/// One deployment's queue.
#[derive(Default)]
struct Queue {
    /// Windows and events, in order.
    items: VecDeque<Item>,
    /// The latest snapshot operation (a newer one replaces it).
    kv: Option<Item>,
    bytes: usize,
    /// Not tried again before this (after a refusal).
    not_before: Option<Instant>,
    backoff: Duration,
    /// The deployment's counters, where shedding is counted.
    counters: Option<Arc<DepCounters>>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.kv.is_none()
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Larger than the bus's max payload: it could never be published.
    #[error("{what} takes {size} bytes, more than the bus's max payload ({max} bytes)")]
    TooLarge {
        /// What it was.
        what: String,
        /// Its encoded size.
        size: usize,
        /// The bus's max payload.
        max: usize,
    },
    /// It could not be encoded.
    #[error("cannot encode {what}: {why}")]
    Encode {
        /// What it was.
        what: String,
        /// Why.
        why: String,
    },
}

#[derive(Default)]
struct Inner {
    queues: BTreeMap<String, Queue>,
    bytes: usize,
    /// Where the round robin goes on from.
    cursor: Option<String>,
    /// Items from the spool not yet delivered.
    spooled_pending: usize,
    last_error: Option<(String, u64)>,
}

/// The monitor's bounded, per-deployment outbox.
pub struct Outbox {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
    limit_bytes: usize,
    max_payload: usize,
    spool: Option<PathBuf>,
    published: AtomicU64,
    shed_windows: AtomicU64,
    shed_events: AtomicU64,
    too_large: AtomicU64,
}

impl Outbox {
    /// An empty outbox holding at most `limit_bytes` (final windows and
    /// lifecycle events excepted), refusing messages over `max_payload`,
    /// spooling to `spool_dir` at a stop.
    #[must_use]
    pub fn new(limit_bytes: usize, max_payload: usize, spool_dir: Option<&Path>) -> Arc<Self> {
        Arc::new(Outbox {
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            limit_bytes,
            max_payload,
            spool: spool_dir.map(|d| d.join(SPOOL_FILE)),
            published: AtomicU64::new(0),
            shed_windows: AtomicU64::new(0),
            shed_events: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
        })
    }

    /// The largest message the bus takes, less room for headers.
    #[must_use]
    pub fn max_message(&self) -> usize {
        self.max_payload.saturating_sub(HEADER_ROOM)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("outbox")
    }

    /// Queues `out` for the deployment whose counters are `counters`.
    ///
    /// # Errors
    /// [`Refused`] if it cannot be encoded or is too large to publish.
    pub fn push(&self, out: Outgoing, counters: Option<&Arc<DepCounters>>) -> Result<(), Refused> {
        let (deployment, op) = encode(&out)?;
        let size = match &op {
            Op::Publish { payload, .. } | Op::Put { payload, .. } => payload.len(),
            Op::Purge { .. } => 0,
        };
        if size > self.max_message() {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::TooLarge {
                what: op.describe(),
                size,
                max: self.max_message(),
            });
        }
        self.enqueue(deployment, Item { op, spooled: false }, counters.cloned());
        Ok(())
    }

    fn enqueue(&self, deployment: String, item: Item, counters: Option<Arc<DepCounters>>) {
        let size = item.op.bytes();
        let mut inner = self.inner();
        let inner = &mut *inner;
        let q = inner.queues.entry(deployment).or_default();
        if counters.is_some() {
            q.counters = counters;
        }
        if matches!(item.op, Op::Put { .. } | Op::Purge { .. }) {
            if let Some(old) = q.kv.replace(item) {
                let old_size = old.op.bytes();
                q.bytes -= old_size;
                inner.bytes -= old_size;
                if old.spooled {
                    inner.spooled_pending -= 1;
                }
            }
        } else {
            q.items.push_back(item);
        }
        q.bytes += size;
        inner.bytes += size;
        self.shed(inner);
        self.wake.notify_one();
    }

    /// Sheds the oldest sheddable message of the longest queue until the
    /// bytes fit the bound (or nothing sheddable is left).
    fn shed(&self, inner: &mut Inner) {
        while inner.bytes > self.limit_bytes {
            let mut victim: Option<(String, usize, Class)> = None;
            for class in [Class::Window, Class::Alert] {
                let best = inner
                    .queues
                    .iter()
                    .filter_map(|(name, q)| {
                        // The head may be in flight: never shed it.
                        q.items
                            .iter()
                            .enumerate()
                            .skip(1)
                            .find(
                                |(_, i)| matches!(i.op, Op::Publish { class: c, .. } if c == class),
                            )
                            .map(|(at, _)| (name, q.bytes, at))
                    })
                    .max_by_key(|(_, bytes, _)| *bytes);
                if let Some((name, _, at)) = best {
                    victim = Some((name.clone(), at, class));
                    break;
                }
            }
            let Some((name, at, class)) = victim else {
                return;
            };
            let q = inner.queues.get_mut(&name).expect("victim queue");
            let item = q.items.remove(at).expect("victim item");
            let size = item.op.bytes();
            q.bytes -= size;
            let counters = q.counters.clone();
            inner.bytes -= size;
            if item.spooled {
                inner.spooled_pending -= 1;
                if inner.spooled_pending == 0 {
                    self.remove_spool();
                }
            }
            let (total, per_deployment) = match class {
                Class::Window => (
                    &self.shed_windows,
                    counters.as_ref().map(|c| &c.shed_windows),
                ),
                _ => (&self.shed_events, counters.as_ref().map(|c| &c.shed_events)),
            };
            total.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = per_deployment {
                c.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(what = %item.op.describe(), bound = self.limit_bytes, "outbox full: shed");
        }
    }

    /// The next message to try: the round robin's next ready queue's
    /// snapshot operation or head. `None`: nothing ready; the `Instant` is
    /// when a waiting queue is ready again.
    fn next(&self) -> (Option<(String, Op)>, Option<Instant>) {
        let now = Instant::now();
        let inner = self.inner();
        let mut earliest: Option<Instant> = None;
        let start = inner.cursor.clone();
        let after = start
            .as_ref()
            .map(|c| {
                inner
                    .queues
                    .range::<String, _>((
                        std::ops::Bound::Excluded(c.clone()),
                        std::ops::Bound::Unbounded,
                    ))
                    .chain(inner.queues.range::<String, _>(..=c.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| inner.queues.iter().collect());
        for (name, q) in after {
            if q.is_empty() {
                continue;
            }
            if let Some(t) = q.not_before
                && t > now
            {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                continue;
            }
            let op =
                q.kv.as_ref()
                    .or(q.items.front())
                    .map(|i| i.op.clone())
                    .expect("non-empty queue");
            return (Some((name.clone(), op)), earliest);
        }
        (None, earliest)
    }

    /// Marks `deployment`'s message `op` delivered (or dropped for good).
    fn done(&self, deployment: &str, op: &Op) {
        let mut inner = self.inner();
        inner.cursor = Some(deployment.to_owned());
        let Some(q) = inner.queues.get_mut(deployment) else {
            return;
        };
        q.not_before = None;
        q.backoff = Duration::ZERO;
        let taken = match op {
            Op::Put { .. } | Op::Purge { .. } => {
                // A newer snapshot may have replaced the one tried.
                if q.kv.as_ref().is_some_and(|i| same(&i.op, op)) {
                    q.kv.take()
                } else {
                    None
                }
            }
            Op::Publish { .. } => {
                if q.items.front().is_some_and(|i| same(&i.op, op)) {
                    q.items.pop_front()
                } else {
                    None
                }
            }
        };
        let mut spooled_done = false;
        if let Some(item) = taken {
            let size = item.op.bytes();
            q.bytes -= size;
            inner.bytes -= size;
            if item.spooled {
                inner.spooled_pending -= 1;
                spooled_done = inner.spooled_pending == 0;
            }
        }
        if inner.queues.get(deployment).is_some_and(Queue::is_empty) {
            inner.queues.remove(deployment);
        }
        inner.last_error = None;
        drop(inner);
        if spooled_done {
            self.remove_spool();
        }
    }

    /// `deployment`'s message was refused: it waits, the others go on.
    fn retry_later(&self, deployment: &str, why: &str) {
        let mut inner = self.inner();
        inner.cursor = Some(deployment.to_owned());
        let first = inner.last_error.is_none();
        inner.last_error = Some((why.to_owned(), unix_ms()));
        if let Some(q) = inner.queues.get_mut(deployment) {
            q.backoff = (q.backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
            q.not_before = Some(Instant::now() + q.backoff);
        }
        if first {
            tracing::warn!(deployment, error = %why, "the bus refuses messages; they wait in the outbox");
        }
    }

    /// Figures for status and metrics.
    #[must_use]
    pub fn figures(&self) -> OutboxStatus {
        let inner = self.inner();
        OutboxStatus {
            queued: inner
                .queues
                .values()
                .map(|q| q.items.len() as u64 + u64::from(q.kv.is_some()))
                .sum(),
            queued_bytes: inner.bytes as u64,
            limit_bytes: self.limit_bytes as u64,
            published: self.published.load(Ordering::Relaxed),
            shed_windows: self.shed_windows.load(Ordering::Relaxed),
            shed_events: self.shed_events.load(Ordering::Relaxed),
            too_large: self.too_large.load(Ordering::Relaxed),
            last_error: inner.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_unix_ms: inner.last_error.as_ref().map_or(0, |(_, t)| *t),
        }
    }

    /// True when nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner().queues.values().all(Queue::is_empty)
    }

    /// Deployments whose snapshot removal waits in the outbox (a restart
    /// must not bring them back).
    #[must_use]
    pub fn pending_purges(&self) -> Vec<String> {
        self.inner()
            .queues
            .iter()
            .filter(|(_, q)| {
                matches!(
                    q.kv,
                    Some(Item {
                        op: Op::Purge { .. },
                        ..
                    })
                )
            })
            .map(|(d, _)| d.clone())
            .collect()
    }
}

fn same(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (
            Op::Publish {
                id: x, subject: s, ..
            },
            Op::Publish {
                id: y, subject: t, ..
            },
        ) => x == y && s == t,
        (Op::Put { key: x, payload: p }, Op::Put { key: y, payload: q }) => x == y && p == q,
        (Op::Purge { key: x }, Op::Purge { key: y }) => x == y,
        _ => false,
    }
}

fn encode(out: &Outgoing) -> Result<(String, Op), Refused> {
    let fail = |what: String| {
        move |e: bus_schema::EncodeError| Refused::Encode {
            what,
            why: e.to_string(),
        }
    };
    Ok(match out {
        Outgoing::Result(w) => {
            let id = window_id(w);
            let subject = subject::results(&w.monitor, &w.deployment);
            let payload = bus_schema::encode(w).map_err(fail(format!("window {id}")))?;
            (
                w.deployment.clone(),
                Op::Publish {
                    subject,
                    id,
                    payload,
                    class: if w.last { Class::Kept } else { Class::Window },
                },
            )
        }
        Outgoing::Event(e) => {
            let id = event_id(e);
            let subject = subject::events(&e.monitor, &e.deployment);
            let payload = bus_schema::encode(e).map_err(fail(format!("event {id}")))?;
            (
                e.deployment.clone(),
                Op::Publish {
                    subject,
                    id,
                    payload,
                    class: if e.kind == EventKind::Alert {
                        Class::Alert
                    } else {
                        Class::Kept
                    },
                },
            )
        }
        Outgoing::Snapshot(snap) => {
            let key = store::snapshot_key(&snap.monitor, &snap.request.deployment);
            // The state goes in as the guest's bytes, not transcoded.
            let payload = snap.encode().map_err(fail(format!("snapshot {key}")))?;
            (snap.request.deployment.clone(), Op::Put { key, payload })
        }
        Outgoing::Forget {
            monitor,
            deployment,
        } => (
            deployment.clone(),
            Op::Purge {
                key: store::snapshot_key(monitor, deployment),
            },
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::{DeploymentStats, Value};

    fn window(deployment: &str, seq: u64, last: bool, bytes: usize) -> Outgoing {
        Outgoing::Result(ResultWindow {
            monitor: "m".into(),
            deployment: deployment.into(),
            analyzer: "a".into(),
            sha256: String::new(),
            run: "r".into(),
            seq,
            start_unix_ms: 0,
            end_unix_ms: 0,
            last,
            stats: DeploymentStats::default(),
            capture: vec![],
            results: Value::Binary(vec![0; bytes]),
        })
    }

    fn ids(outbox: &Outbox, deployment: &str) -> Vec<String> {
        outbox.inner().queues[deployment]
            .items
            .iter()
            .map(|i| match &i.op {
                Op::Publish { id, .. } => id.clone(),
                other => other.describe(),
            })
            .collect()
    }

    #[test]
    fn past_the_bound_the_oldest_periodic_windows_of_the_longest_queue_go() {
        let outbox = Outbox::new(100_000, 1 << 20, None);
        let (a, b) = (
            Arc::new(DepCounters::default()),
            Arc::new(DepCounters::default()),
        );
        for seq in 1..=8 {
            outbox
                .push(window("a", seq, false, 10_000), Some(&a))
                .unwrap();
        }
        outbox
            .push(window("b", 1, false, 10_000), Some(&b))
            .unwrap();
        outbox.push(window("a", 9, true, 10_000), Some(&a)).unwrap();
        outbox.push(window("b", 2, true, 10_000), Some(&b)).unwrap();
        let f = outbox.figures();
        assert!(f.queued_bytes <= 100_000, "{f:?}");
        assert_eq!(f.shed_windows, 2);
        assert_eq!(a.shed_windows.load(Ordering::Relaxed), 2);
        assert_eq!(b.shed_windows.load(Ordering::Relaxed), 0);
        // The head (maybe in flight) and the final window stay; 2 and 3 went.
        assert_eq!(
            ids(&outbox, "a"),
            [
                "a:m:r:1", "a:m:r:4", "a:m:r:5", "a:m:r:6", "a:m:r:7", "a:m:r:8", "a:m:r:9"
            ]
        );
        // Only final windows left to shed: the bound gives way to them.
        for seq in 10..20 {
            outbox
                .push(window("b", seq, true, 10_000), Some(&b))
                .unwrap();
        }
        assert!(outbox.figures().queued_bytes > 100_000);
        assert_eq!(ids(&outbox, "b").len(), 12);
    }

    #[test]
    fn what_the_bus_cannot_carry_is_refused_when_queued() {
        let outbox = Outbox::new(1 << 30, 1 << 20, None);
        let e = outbox
            .push(window("a", 1, false, 2 << 20), None)
            .unwrap_err();
        assert!(matches!(e, Refused::TooLarge { max, .. } if max == (1 << 20) - HEADER_ROOM));
        assert!(e.to_string().contains("max payload"), "{e}");
        assert_eq!(outbox.figures().too_large, 1);
        assert!(outbox.is_empty());
    }

    #[test]
    fn queues_take_turns_and_a_waiting_one_holds_no_other() {
        let outbox = Outbox::new(1 << 30, 1 << 20, None);
        for seq in 1..=3 {
            outbox.push(window("a", seq, false, 10), None).unwrap();
            outbox.push(window("b", seq, false, 10), None).unwrap();
        }
        let mut order = Vec::new();
        // `a` is refused once: `b` goes on meanwhile.
        let (next, _) = outbox.next();
        let (d, op) = next.unwrap();
        assert_eq!(d, "a");
        outbox.retry_later(&d, "insufficient resources");
        assert_eq!(
            outbox.figures().last_error.as_deref(),
            Some("insufficient resources")
        );
        loop {
            let (next, ready_at) = outbox.next();
            let Some((d, op)) = next else {
                assert!(ready_at.is_some(), "a waits for its backoff");
                break;
            };
            if let Op::Publish { id, .. } = &op {
                order.push(id.clone());
            }
            outbox.done(&d, &op);
        }
        assert_eq!(order, ["b:m:r:1", "b:m:r:2", "b:m:r:3"]);
        assert_eq!(outbox.figures().last_error, None);
        outbox.done("a", &op);
        assert_eq!(ids(&outbox, "a"), ["a:m:r:2", "a:m:r:3"]);
    }

    #[test]
    fn one_snapshot_operation_per_deployment_waits() {
        let outbox = Outbox::new(1 << 30, 1 << 20, None);
        let forget = || Outgoing::Forget {
            monitor: "m".into(),
            deployment: "a".into(),
        };
        outbox.push(forget(), None).unwrap();
        outbox.push(window("a", 1, false, 10), None).unwrap();
        outbox.push(forget(), None).unwrap();
        assert_eq!(outbox.pending_purges(), ["a"]);
        assert_eq!(outbox.figures().queued, 2);
        // The snapshot operation goes first; then the window.
        let (next, _) = outbox.next();
        let (d, op) = next.unwrap();
        assert!(matches!(op, Op::Purge { .. }));
        outbox.done(&d, &op);
        assert!(outbox.pending_purges().is_empty());
        assert_eq!(ids(&outbox, "a"), ["a:m:r:1"]);
    }

    #[test]
    fn the_spool_keeps_what_a_stop_could_not_deliver_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(1 << 30, 1 << 20, Some(dir.path()));
        outbox.push(window("a", 1, true, 100), None).unwrap();
        outbox
            .push(
                Outgoing::Forget {
                    monitor: "m".into(),
                    deployment: "a".into(),
                },
                None,
            )
            .unwrap();
        assert_eq!(outbox.spool_rest(), 2);
        let spool = dir.path().join(SPOOL_FILE);
        assert!(spool.is_file());

        let next = Outbox::new(1 << 30, 1 << 20, Some(dir.path()));
        assert_eq!(next.load_spool().unwrap(), 2);
        assert_eq!(next.pending_purges(), ["a"]);
        for _ in 0..2 {
            let (op, _) = next.next();
            let (d, op) = op.unwrap();
            next.done(&d, &op);
        }
        assert!(next.is_empty());
        assert!(!spool.exists(), "the spool outlived its messages");
        // Garbage in the spool is an error, not a crash, and stays put.
        std::fs::write(&spool, b"not msgpack").unwrap();
        assert!(next.load_spool().is_err());
        assert!(spool.exists());
    }
}
