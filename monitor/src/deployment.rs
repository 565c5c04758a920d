//! A deployment: one analyzer instance on its own thread, fed batches from
//! the link threads through a bounded queue, and commanded through the same
//! queue so that `configure`, `collect` and `unload` fall between batches in
//! capture order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{
    BlobRef, DeploymentSnapshot, DeploymentState, DeploymentStats, DeploymentStatus, ErrorBody,
    ErrorCode, Event, EventKind, LoadRequest, ResultWindow, Value,
};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::{mpsc, oneshot};

use crate::guest::{Analyzer, ConfigureError};

/// Packet records for one guest call.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records in the ABI layout.
    pub buf: Vec<u8>,
    /// How many records.
    pub count: u32,
    /// Sum of their wire lengths.
    pub wire_bytes: u64,
    /// Where the emptied buffer goes back for reuse (its tap's spares), so
    /// the link thread does not allocate (and fault in) a buffer per batch.
    pub home: Option<crossbeam_channel::Sender<Vec<u8>>>,
}

impl Batch {
    /// Hands the buffer back to its tap, emptied (dropped if the tap has
    /// enough spares or is gone).
    pub fn recycle(self) {
        if let Some(home) = self.home {
            let mut buf = self.buf;
            buf.clear();
            let _ = home.try_send(buf);
        }
    }
}

/// Counters of a deployment, updated by its thread and by link threads.
#[derive(Debug, Default)]
pub struct DepCounters {
    /// Packets delivered to the guest.
    pub packets_in: AtomicU64,
    /// Their wire bytes.
    pub bytes_in: AtomicU64,
    /// Packets dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Guest calls.
    pub guest_calls: AtomicU64,
    /// Time in the guest, µs.
    pub guest_time_us: AtomicU64,
    /// Guest linear memory, bytes.
    pub memory_bytes: AtomicU64,
}

impl DepCounters {
    /// A snapshot for the bus.
    #[must_use]
    pub fn stats(&self) -> DeploymentStats {
        DeploymentStats {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            guest_calls: self.guest_calls.load(Ordering::Relaxed),
            guest_time_us: self.guest_time_us.load(Ordering::Relaxed),
        }
    }
}

/// Messages to a deployment's thread, in queue order.
pub enum DepMsg {
    /// Packets.
    Batch(Batch),
    /// Current results.
    Collect(oneshot::Sender<Result<ResultWindow, ErrorBody>>),
    /// New params (as given, and encoded); answers the new config revision.
    Configure(Value, Vec<u8>, oneshot::Sender<Result<u64, ErrorBody>>),
    /// Final results, then stop.
    Unload(oneshot::Sender<ResultWindow>),
}

/// What goes out on the streams.
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

/// Fixed facts about a deployment.
#[derive(Debug, Clone)]
pub struct DeploymentInfo {
    /// Monitor id.
    pub monitor: String,
    /// Deployment id.
    pub deployment: String,
    /// Analyzer blob.
    pub analyzer: BlobRef,
    /// Links.
    pub links: Vec<u32>,
    /// Those links' counters, for the capture figures of each window.
    pub link_stats: Vec<Arc<crate::capture::LinkShared>>,
    /// Start, Unix ms.
    pub started_unix_ms: u64,
}

#[derive(Debug)]
struct Status {
    state: DeploymentState,
    last_error: Option<String>,
    last_results: Value,
    config_revision: u64,
    published_seq: u64,
    event_seq: u64,
    /// The load request with the params in force.
    request: LoadRequest,
}

/// State shared between a deployment's thread and the command handlers.
pub struct Shared {
    /// Fixed facts.
    pub info: DeploymentInfo,
    /// Counters.
    pub counters: Arc<DepCounters>,
    status: Mutex<Status>,
    outbox: mpsc::UnboundedSender<Outgoing>,
}

/// Unix time in ms.
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    /// New shared state for a deployment that is starting from `request`
    /// (links resolved).
    #[must_use]
    pub fn new(
        info: DeploymentInfo,
        request: LoadRequest,
        outbox: mpsc::UnboundedSender<Outgoing>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            info,
            counters: Arc::default(),
            status: Mutex::new(Status {
                state: DeploymentState::Running,
                last_error: None,
                last_results: Value::Nil,
                config_revision: 0,
                published_seq: 0,
                event_seq: 0,
                request,
            }),
            outbox,
        })
    }

    /// The manager that owns the deployment now.
    #[must_use]
    pub fn owner(&self) -> String {
        self.status().request.owner.clone()
    }

    /// Hands the deployment to another owner (after an adoption recorded in
    /// `tm_deployments`); the next snapshot carries it.
    pub fn set_owner(&self, owner: &str) {
        self.status().request.owner = owner.to_owned();
    }

    /// Takes over counters and sequence numbers from a snapshot.
    pub fn restore_from(&self, snap: &DeploymentSnapshot) {
        let c = &self.counters;
        c.packets_in.store(snap.stats.packets_in, Ordering::Relaxed);
        c.bytes_in.store(snap.stats.bytes_in, Ordering::Relaxed);
        c.dropped.store(snap.stats.dropped, Ordering::Relaxed);
        let mut s = self.status();
        s.config_revision = snap.config_revision;
        s.published_seq = snap.published_seq;
        s.event_seq = snap.event_seq;
    }

    /// Saves a snapshot with the analyzer's `state`.
    fn save(&self, state: Value) {
        let snap = {
            let s = self.status();
            DeploymentSnapshot {
                monitor: self.info.monitor.clone(),
                request: s.request.clone(),
                config_revision: s.config_revision,
                published_seq: s.published_seq,
                event_seq: s.event_seq,
                stats: self.counters.stats(),
                state,
                taken_unix_ms: unix_ms(),
            }
        };
        let _ = self.outbox.send(Outgoing::Snapshot(Box::new(snap)));
    }

    /// Removes the deployment's snapshot.
    pub fn forget(&self) {
        let _ = self.outbox.send(Outgoing::Forget {
            monitor: self.info.monitor.clone(),
            deployment: self.info.deployment.clone(),
        });
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().expect("deployment status")
    }

    /// Running or failed.
    #[must_use]
    pub fn state(&self) -> (DeploymentState, Option<String>) {
        let s = self.status();
        (s.state, s.last_error.clone())
    }

    /// The deployment as `status` reports it.
    #[must_use]
    pub fn status_report(&self) -> DeploymentStatus {
        let s = self.status();
        DeploymentStatus {
            deployment: self.info.deployment.clone(),
            analyzer: self.info.analyzer.clone(),
            owner: s.request.owner.clone(),
            state: s.state,
            links: self.info.links.clone(),
            stats: self.counters.stats(),
            memory_bytes: self.counters.memory_bytes.load(Ordering::Relaxed),
            config_revision: s.config_revision,
            last_error: s.last_error.clone(),
        }
    }

    /// A window of `results`; `publish` gives it the next stream seq.
    fn window(&self, results: Value, publish: bool, last: bool) -> ResultWindow {
        let mut s = self.status();
        s.last_results = results.clone();
        if publish {
            s.published_seq += 1;
        }
        ResultWindow {
            monitor: self.info.monitor.clone(),
            deployment: self.info.deployment.clone(),
            analyzer: self.info.analyzer.name.clone(),
            seq: s.published_seq,
            start_unix_ms: self.info.started_unix_ms,
            end_unix_ms: unix_ms(),
            last,
            stats: self.counters.stats(),
            capture: self.info.link_stats.iter().map(|l| l.capture()).collect(),
            results,
        }
    }

    /// The last good results (after a failure, or when the thread is gone).
    #[must_use]
    pub fn last_window(&self, last: bool) -> ResultWindow {
        let results = self.status().last_results.clone();
        let window = self.window(results, last, last);
        if last {
            let _ = self.outbox.send(Outgoing::Result(window.clone()));
        }
        window
    }

    /// Publishes an event.
    pub fn event(&self, kind: EventKind, message: String, data: Value) {
        let seq = {
            let mut s = self.status();
            s.event_seq += 1;
            s.event_seq
        };
        let _ = self.outbox.send(Outgoing::Event(Event {
            monitor: self.info.monitor.clone(),
            deployment: self.info.deployment.clone(),
            seq,
            at_unix_ms: unix_ms(),
            kind,
            message,
            data,
        }));
    }

    fn fail(&self, why: String) {
        tracing::warn!(deployment = %self.info.deployment, error = %why, "deployment failed and was unloaded");
        {
            let mut s = self.status();
            s.state = DeploymentState::Failed;
            s.last_error = Some(why.clone());
        }
        self.event(EventKind::Failed, why, Value::Nil);
        self.forget();
    }
}

/// Timers of a deployment thread.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// Period of `tick`.
    pub tick: Duration,
    /// Period of published result windows, if any.
    pub report: Option<Duration>,
    /// Period of snapshots.
    pub snapshot: Duration,
}

fn sync_counters(a: &Analyzer, c: &DepCounters) {
    c.guest_calls.store(a.calls, Ordering::Relaxed);
    c.guest_time_us
        .store(a.guest_time.as_micros() as u64, Ordering::Relaxed);
    c.memory_bytes.store(a.memory_bytes(), Ordering::Relaxed);
}

/// The deployment thread: runs until unloaded, failed, or its queue closes.
pub fn run(mut analyzer: Analyzer, rx: Receiver<DepMsg>, shared: Arc<Shared>, timers: Timers) {
    let counters = shared.counters.clone();
    let mut next_tick = Instant::now() + timers.tick;
    let mut next_report = timers.report.map(|r| Instant::now() + r);
    let mut next_snapshot = Instant::now() + timers.snapshot;
    sync_counters(&analyzer, &counters);
    // The first snapshot records the deployment itself, so that a crash
    // right after the load still brings it back.
    match analyzer.snapshot() {
        Ok(state) => shared.save(state),
        Err(f) => return shared.fail(f.to_string()),
    }
    loop {
        let due = next_report
            .map_or(next_tick, |r| r.min(next_tick))
            .min(next_snapshot);
        let msg = rx.recv_timeout(due.saturating_duration_since(Instant::now()));
        let outcome: Result<bool, String> = match msg {
            Ok(DepMsg::Batch(b)) => {
                let outcome = analyzer
                    .on_packets(&b.buf, b.count)
                    .map(|()| {
                        counters
                            .packets_in
                            .fetch_add(u64::from(b.count), Ordering::Relaxed);
                        counters.bytes_in.fetch_add(b.wire_bytes, Ordering::Relaxed);
                        true
                    })
                    .map_err(|f| f.to_string());
                b.recycle();
                outcome
            }
            Ok(DepMsg::Collect(reply)) => match analyzer.collect() {
                Ok(results) => {
                    sync_counters(&analyzer, &counters);
                    let _ = reply.send(Ok(shared.window(results, false, false)));
                    Ok(true)
                }
                Err(f) => {
                    // The reply falls back to the last good results.
                    drop(reply);
                    Err(f.to_string())
                }
            },
            Ok(DepMsg::Configure(value, params, reply)) => match analyzer.configure(&params) {
                Ok(()) => {
                    let revision = {
                        let mut s = shared.status();
                        s.config_revision += 1;
                        s.request.params = value;
                        s.config_revision
                    };
                    let _ = reply.send(Ok(revision));
                    shared.event(
                        EventKind::Configured,
                        format!("configuration revision {revision}"),
                        Value::Nil,
                    );
                    analyzer
                        .snapshot()
                        .map(|state| shared.save(state))
                        .map(|()| true)
                        .map_err(|f| f.to_string())
                }
                Err(ConfigureError::BadParams(why)) => {
                    let _ = reply.send(Err(ErrorBody::new(ErrorCode::BadParams, why)));
                    Ok(true)
                }
                Err(ConfigureError::Failed(f)) => {
                    let why = f.to_string();
                    let code = if f.is_limit() {
                        ErrorCode::ResourceLimit
                    } else {
                        ErrorCode::GuestTrap
                    };
                    let _ = reply.send(Err(ErrorBody::new(
                        code,
                        format!("configure failed: {why}"),
                    )));
                    Err(why)
                }
            },
            Ok(DepMsg::Unload(reply)) => {
                let window = match analyzer.collect() {
                    Ok(results) => {
                        sync_counters(&analyzer, &counters);
                        let w = shared.window(results, true, true);
                        let _ = shared.outbox.send(Outgoing::Result(w.clone()));
                        w
                    }
                    Err(f) => {
                        shared.fail(f.to_string());
                        shared.last_window(true)
                    }
                };
                let _ = reply.send(window);
                shared.forget();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let mut result = Ok(true);
                if now >= next_tick {
                    next_tick = now + timers.tick;
                    result = analyzer
                        .tick(unix_ms() * 1_000_000)
                        .map(|()| true)
                        .map_err(|f| f.to_string());
                }
                if result.is_ok() && now >= next_snapshot {
                    next_snapshot = now + timers.snapshot;
                    result = analyzer
                        .snapshot()
                        .map(|state| shared.save(state))
                        .map(|()| true)
                        .map_err(|f| f.to_string());
                }
                if result.is_ok()
                    && let (Some(at), Some(every)) = (next_report, timers.report)
                    && now >= at
                {
                    next_report = Some(now + every);
                    result = analyzer
                        .collect()
                        .map(|results| {
                            sync_counters(&analyzer, &counters);
                            let w = shared.window(results, true, false);
                            let _ = shared.outbox.send(Outgoing::Result(w));
                            true
                        })
                        .map_err(|f| f.to_string());
                }
                result
            }
            Err(RecvTimeoutError::Disconnected) => Ok(false),
        };
        sync_counters(&analyzer, &counters);
        match outcome {
            Ok(true) => {}
            Ok(false) => return,
            Err(why) => {
                shared.fail(why);
                return;
            }
        }
    }
}
