//! A deployment: one analyzer instance on its own thread, fed batches from
//! the link threads through a bounded queue, and commanded through the same
//! queue so that `configure`, `collect` and `unload` fall between batches in
//! capture order.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{
    DeploymentSnapshot, DeploymentState, DeploymentStatus, ErrorBody, ErrorCode, Event, EventKind,
    LoadRequest, Packed, ResultWindow, Value,
};
use flume::{Receiver, RecvTimeoutError};

use crate::engine::{Engine, analyse, sync_counters};
use crate::guest::{Analyzer, ConfigureError, RestoreError};
use crate::inbox::{DepCounters, DepMsg, Upgrade, UpgradeError};
use crate::link::LinkShared;
use crate::outbox::{Outbox, Outgoing, Refused};
use crate::unix_ms;

/// Fixed facts about a deployment.
#[derive(Debug, Clone)]
pub struct DeploymentInfo {
    /// Monitor id.
    pub monitor: String,
    /// Deployment id.
    pub deployment: String,
    /// Links.
    pub links: Vec<u32>,
    /// Those links' counters, for the capture figures of each window.
    pub link_stats: Vec<Arc<LinkShared>>,
    /// Start, Unix ms.
    pub started_unix_ms: u64,
    /// The load's run (a fresh one per load; a recovery keeps it).
    pub run: String,
}

/// MessagePack's nil.
const NIL: u8 = 0xc0;

#[derive(Debug)]
struct Status {
    state: DeploymentState,
    last_error: Option<String>,
    /// The last good results as the guest gave them (MessagePack), decoded
    /// only if a window must fall back on them: keeping the decoded tree
    /// would copy it at every collect.
    last_results: Vec<u8>,
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
    outbox: Arc<Outbox>,
}

impl Shared {
    /// New shared state for a deployment that is starting from `request`
    /// (links resolved).
    #[must_use]
    pub fn new(info: DeploymentInfo, request: LoadRequest, outbox: Arc<Outbox>) -> Arc<Self> {
        Arc::new(Shared {
            info,
            counters: Arc::default(),
            status: Mutex::new(Status {
                state: DeploymentState::Running,
                last_error: None,
                last_results: vec![NIL],
                config_revision: 0,
                published_seq: 0,
                event_seq: 0,
                request,
            }),
            outbox,
        })
    }

    /// The load request with the params and module in force.
    #[must_use]
    pub fn request(&self) -> LoadRequest {
        self.status().request.clone()
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
    fn save(&self, state: Packed) {
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
                run: self.info.run.clone(),
            }
        };
        self.send(Outgoing::Snapshot(Box::new(snap)));
    }

    /// Removes the deployment's snapshot.
    pub fn forget(&self) {
        self.send(Outgoing::Forget {
            monitor: self.info.monitor.clone(),
            deployment: self.info.deployment.clone(),
        });
    }

    /// Queues `out` in the outbox; what can never be published is said in
    /// the log and, for a window or an alert, in a `too_large` event.
    pub fn send(&self, out: Outgoing) {
        let tell = matches!(&out, Outgoing::Result(_))
            || matches!(&out, Outgoing::Event(e) if e.kind != EventKind::TooLarge);
        match self.outbox.push(out, Some(&self.counters)) {
            Ok(()) => {}
            Err(refused) => {
                tracing::error!(deployment = %self.info.deployment, error = %refused, "not published");
                if tell {
                    let data = match &refused {
                        Refused::TooLarge { size, max, .. } => Value::Map(vec![
                            ("size".into(), (*size as u64).into()),
                            ("max".into(), (*max as u64).into()),
                        ]),
                        Refused::Encode { .. } => Value::Nil,
                    };
                    self.event(EventKind::TooLarge, refused.to_string(), data);
                }
            }
        }
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
            analyzer: s.request.analyzer.clone(),
            owner: s.request.owner.clone(),
            state: s.state,
            links: self.info.links.clone(),
            stats: self.counters.stats(),
            memory_bytes: self.counters.memory_bytes.load(Ordering::Relaxed),
            config_revision: s.config_revision,
            last_error: s.last_error.clone(),
        }
    }

    /// A window of `results` (`raw`: as the guest gave them, kept as the
    /// last good results); `publish` gives it the next stream seq.
    fn window(&self, (raw, results): (Vec<u8>, Value), publish: bool, last: bool) -> ResultWindow {
        let mut s = self.status();
        s.last_results = raw;
        if publish {
            s.published_seq += 1;
        }
        ResultWindow {
            monitor: self.info.monitor.clone(),
            deployment: self.info.deployment.clone(),
            analyzer: s.request.analyzer.name.clone(),
            sha256: s.request.analyzer.sha256.clone(),
            run: self.info.run.clone(),
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
        let raw = self.status().last_results.clone();
        let results = crate::guest::one_value(&raw).unwrap_or(Value::Nil);
        let window = self.window((raw, results), last, last);
        if last {
            self.send(Outgoing::Result(window.clone()));
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
        self.send(Outgoing::Event(Event {
            monitor: self.info.monitor.clone(),
            deployment: self.info.deployment.clone(),
            run: self.info.run.clone(),
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

/// Marks the deployment gone, and closes its analyzer to the capture
/// threads, when its thread ends, however it ends.
struct Gone(Arc<DepCounters>, Arc<Engine>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.1.close();
        self.0.gone.store(true, Ordering::Release);
    }
}

/// The deployment thread: runs until unloaded, failed, or its queue closes.
pub fn run(analyzer: Analyzer, rx: Receiver<DepMsg>, shared: Arc<Shared>, timers: Timers) {
    run_engine(&Engine::new(analyzer), rx, shared, timers);
}

/// The deployment thread on an analyzer that capture threads may also
/// call ([`crate::engine`]).
pub fn run_engine(engine: &Arc<Engine>, rx: Receiver<DepMsg>, shared: Arc<Shared>, timers: Timers) {
    let counters = shared.counters.clone();
    let _gone = Gone(counters.clone(), engine.clone());
    let mut clock = Clock::new(timers);
    {
        let mut slot = engine.lock();
        sync_counters(&slot.analyzer, &counters);
        // The first snapshot records the deployment itself, so that a crash
        // right after the load still brings it back.
        match slot.analyzer.snapshot() {
            Ok(state) => shared.save(state),
            Err(f) => {
                slot.close();
                drop(slot);
                return fail(&shared, &rx, None, f.to_string());
            }
        }
    }
    loop {
        let msg = rx.recv_timeout(clock.due().saturating_duration_since(Instant::now()));
        let mut slot = engine.lock();
        if let Some(why) = slot.take_failure() {
            drop(slot);
            return fail(&shared, &rx, msg.ok(), why);
        }
        let analyzer = &mut slot.analyzer;
        let outcome: Result<bool, String> = match msg {
            Ok(DepMsg::Batch(b)) => {
                let outcome = analyse(analyzer, &b, &counters)
                    .map(|()| true)
                    .map_err(|f| f.to_string());
                // Off the queue only now, the analyzer still held: a tap that
                // sees its queue empty finds its batches analysed.
                counters
                    .queued_packets
                    .fetch_sub(u64::from(b.count), Ordering::AcqRel);
                b.recycle();
                outcome
            }
            Ok(DepMsg::Collect(reply)) => match analyzer.collect_raw() {
                Ok(results) => {
                    sync_counters(analyzer, &counters);
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
            Ok(DepMsg::Upgrade(to, reply)) => {
                let (outcome, answer) = upgrade(analyzer, *to, &shared);
                let _ = reply.send(answer);
                outcome
            }
            Ok(DepMsg::Unload(reply)) => {
                let window = match analyzer.finish().and_then(|()| analyzer.collect_raw()) {
                    Ok(results) => {
                        sync_counters(analyzer, &counters);
                        let w = shared.window(results, true, true);
                        shared.send(Outgoing::Result(w.clone()));
                        w
                    }
                    Err(f) => {
                        shared.fail(f.to_string());
                        shared.last_window(true)
                    }
                };
                slot.close();
                let _ = reply.send(window);
                shared.forget();
                return;
            }
            Ok(DepMsg::Wake) => Ok(true),
            Err(RecvTimeoutError::Timeout) => Ok(true),
            Err(RecvTimeoutError::Disconnected) => Ok(false),
        };
        // Timers are checked after every message, so a busy queue does not
        // hold them back.
        let outcome = outcome.and_then(|go_on| {
            clock
                .fire(analyzer, &shared)
                .map(|()| go_on)
                .map_err(|f| f.to_string())
        });
        sync_counters(analyzer, &counters);
        match outcome {
            Ok(true) => {}
            Ok(false) => return,
            Err(why) => {
                slot.close();
                drop(slot);
                return fail(&shared, &rx, None, why);
            }
        }
    }
}

/// Fails the deployment and answers at once `first` (the message in hand,
/// if any) and every command already queued behind the failure (collect
/// and unload with the last good results).
fn fail(shared: &Shared, rx: &Receiver<DepMsg>, first: Option<DepMsg>, why: String) {
    shared.fail(why.clone());
    for msg in first
        .into_iter()
        .chain(std::iter::from_fn(|| rx.try_recv().ok()))
    {
        match msg {
            DepMsg::Batch(b) => {
                shared
                    .counters
                    .queued_packets
                    .fetch_sub(u64::from(b.count), Ordering::AcqRel);
                b.recycle();
            }
            DepMsg::Collect(reply) => {
                let _ = reply.send(Ok(shared.last_window(false)));
            }
            DepMsg::Configure(_, _, reply) => {
                let _ = reply.send(Err(ErrorBody::new(
                    ErrorCode::GuestTrap,
                    format!("the deployment failed before the configure: {why}"),
                )));
            }
            DepMsg::Unload(reply) => {
                let _ = reply.send(shared.last_window(true));
            }
            DepMsg::Upgrade(_, reply) => {
                let _ = reply.send(Err(UpgradeError::Failed(why.clone())));
            }
            DepMsg::Wake => {}
        }
    }
}

/// Swaps `analyzer` for the upgrade's instance with the running one's
/// state: the deployment's outcome (an `Err` only if the running analyzer
/// failed) and the upgrade's answer, how long packets waited for the swap.
/// On any refusal the running analyzer stays.
fn upgrade(
    analyzer: &mut Analyzer,
    to: Upgrade,
    shared: &Shared,
) -> (Result<bool, String>, Result<Duration, UpgradeError>) {
    let began = Instant::now();
    let Upgrade {
        analyzer: mut new,
        blob,
        params,
    } = to;
    let (old, wants) = (analyzer.snap_len(), new.snap_len());
    if wants > old {
        return (Ok(true), Err(UpgradeError::SnapLen { old, new: wants }));
    }
    // No state: the new module is asked to take nil, as at a restart.
    let state = match analyzer.snapshot() {
        Ok(state) => state,
        Err(f) => {
            let why = f.to_string();
            return (Err(why.clone()), Err(UpgradeError::Snapshot(why)));
        }
    };
    if let Err(e) = new.restore(&state) {
        let refused = match e {
            RestoreError::Refused(why) => UpgradeError::RestoreRefused(why),
            RestoreError::StateVersion(why) => UpgradeError::StateVersion(why),
            RestoreError::Failed(f) => UpgradeError::RestoreTrapped(f.to_string()),
        };
        return (Ok(true), Err(refused));
    }
    *analyzer = *new;
    // The recovery snapshot names the new module (and params) from now on:
    // a monitor restarted after a crash loads it, with the state it has
    // just taken (no second snapshot holding the packets longer).
    {
        let mut s = shared.status();
        s.request.analyzer = blob;
        if let Some(params) = params {
            s.request.params = params;
            s.config_revision += 1;
        }
    }
    shared.save(state);
    // Until here no batch was taken: this is how long packets waited.
    let held = began.elapsed();
    tracing::info!(deployment = %shared.info.deployment, sha256 = %shared.status().request.analyzer.sha256, held_us = held.as_micros() as u64, "analyzer upgraded");
    (Ok(true), Ok(held))
}

/// When a deployment's timers are due.
struct Clock {
    timers: Timers,
    next_tick: Instant,
    next_report: Option<Instant>,
    next_snapshot: Instant,
    /// Shed figures last told in a `shed` event.
    shed_told: (u64, u64),
}

impl Clock {
    /// The first tick and snapshot come after a random ½ to 1½ periods:
    /// deployments loaded at once (a deploy to a whole fleet, a restart)
    /// then do not all tick and save together, period after period — a
    /// burst of thread wake-ups and of bucket writes every few seconds.
    fn new(timers: Timers) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let now = Instant::now();
        let spread = |period: Duration| {
            let r = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            period / 2 + period.mul_f64(r as f64 / u64::MAX as f64)
        };
        Clock {
            timers,
            next_tick: now + spread(timers.tick),
            next_report: timers.report.map(|r| now + r),
            next_snapshot: now + spread(timers.snapshot),
            shed_told: (0, 0),
        }
    }

    /// The earliest due timer.
    fn due(&self) -> Instant {
        self.next_report
            .map_or(self.next_tick, |r| r.min(self.next_tick))
            .min(self.next_snapshot)
    }

    /// Runs what is due: tick, snapshot, periodic window. A timer that fell
    /// behind fires once and is rescheduled from now.
    fn fire(&mut self, analyzer: &mut Analyzer, shared: &Shared) -> Result<(), wasm_host::Failure> {
        let now = Instant::now();
        if now < self.due() {
            return Ok(());
        }
        if now >= self.next_tick {
            self.next_tick = now + self.timers.tick;
            analyzer.tick(unix_ms() * 1_000_000)?;
        }
        if now >= self.next_snapshot {
            self.next_snapshot = now + self.timers.snapshot;
            let state = analyzer.snapshot()?;
            shared.save(state);
        }
        if let (Some(at), Some(every)) = (self.next_report, self.timers.report)
            && now >= at
        {
            self.next_report = Some(now + every);
            let results = analyzer.collect_raw()?;
            sync_counters(analyzer, &shared.counters);
            let w = shared.window(results, true, false);
            shared.send(Outgoing::Result(w));
            analyzer.published()?;
        }
        self.tell_shed(shared);
        Ok(())
    }

    /// A `shed` event when the outbox shed more of this deployment since
    /// the last one.
    fn tell_shed(&mut self, shared: &Shared) {
        let c = &shared.counters;
        let now = (
            c.shed_windows.load(Ordering::Relaxed),
            c.shed_events.load(Ordering::Relaxed),
        );
        if now != self.shed_told {
            self.shed_told = now;
            shared.event(
                EventKind::Shed,
                format!(
                    "the outbox was full: {} periodic window(s) and {} alert(s) of this deployment shed so far",
                    now.0, now.1
                ),
                Value::Map(vec![
                    ("shed_windows".into(), now.0.into()),
                    ("shed_events".into(), now.1.into()),
                ]),
            );
        }
    }
}
