//! Capture: one thread per link, reading a live interface or replaying a
//! pcap file, parsing each packet once, and handing the packets that pass
//! each deployment's filter to that deployment in batches.
//!
//! Capture never blocks on a deployment: a batch that does not fit the
//! deployment's queue is dropped and counted as that deployment's drops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{LinkInfo, LinkState, LinkStatus};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tm_abi::{PacketHeader, flag, off, record_len};

use crate::config::{LinkConfig, Replay, Source};
use crate::deployment::{Batch, DepCounters, DepMsg};
use crate::filter::{Bpf, CompiledFilter};
use crate::parse::{LinkType, parse};
use crate::replay::FileReader;

/// Partial batches older than this are flushed to their deployments.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How long a live capture waits for a packet before checking controls.
const LIVE_TIMEOUT_MS: i32 = 50;
/// Largest batch in bytes (records included); the guest's batch buffer.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Size of the guest buffer that receives batches.
#[must_use]
pub fn guest_batch_bytes(snaplen: u32) -> usize {
    BATCH_BYTES.max(record_len(snaplen as usize))
}

impl std::fmt::Debug for LinkShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link {}", self.config.id)
    }
}

/// Counters and state of a link, shared with the command handlers.
pub struct LinkShared {
    /// The link's configuration.
    pub config: LinkConfig,
    packets: AtomicU64,
    bytes: AtomicU64,
    parse_errors: AtomicU64,
    kernel_drops: AtomicU64,
    interface_drops: AtomicU64,
    /// pcap datalink type once the source is open, -1 before.
    dlt: AtomicI32,
    state: Mutex<(LinkState, Option<String>)>,
    /// Signalled when `state` changes.
    state_changed: Condvar,
    /// The state, for async watchers (`Monitor::watch_links`).
    state_watch: tokio::sync::watch::Sender<LinkState>,
}

impl LinkShared {
    /// The link as reported on the bus.
    #[must_use]
    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            id: self.config.id,
            from_router: self.config.from_router.clone(),
            to_router: self.config.to_router.clone(),
            source: self.config.source_label(),
        }
    }

    /// The link with its counters.
    #[must_use]
    pub fn status(&self) -> LinkStatus {
        let (state, last_error) = self.state.lock().expect("link state").clone();
        LinkStatus {
            link: self.info(),
            state,
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            parse_errors: self.parse_errors.load(Ordering::Relaxed),
            kernel_drops: self.kernel_drops.load(Ordering::Relaxed),
            interface_drops: self.interface_drops.load(Ordering::Relaxed),
            last_error,
        }
    }

    /// The link's capture figures, as a result window carries them.
    #[must_use]
    pub fn capture(&self) -> bus_schema::LinkCapture {
        bus_schema::LinkCapture {
            link: self.config.id,
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            kernel_drops: self.kernel_drops.load(Ordering::Relaxed),
            interface_drops: self.interface_drops.load(Ordering::Relaxed),
        }
    }

    /// The pcap datalink type, once the source is open.
    #[must_use]
    pub fn dlt(&self) -> Option<i32> {
        Some(self.dlt.load(Ordering::Acquire)).filter(|d| *d >= 0)
    }

    fn set_state(&self, state: LinkState, error: Option<String>) {
        *self.state.lock().expect("link state") = (state, error);
        self.state_changed.notify_all();
        self.state_watch.send_replace(state);
    }

    /// A receiver that sees every change of the link's state.
    #[must_use]
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<LinkState> {
        self.state_watch.subscribe()
    }

    /// Blocks until the link stops running (a replay reached its end, or
    /// the capture failed), at most `timeout`; its state then. Every packet
    /// read before the end has been offered to the taps, and each tap's
    /// last batch sent, before the state changes.
    pub fn wait_stopped(&self, timeout: Duration) -> LinkState {
        let guard = self.state.lock().expect("link state");
        let (guard, _) = self
            .state_changed
            .wait_timeout_while(guard, timeout, |(state, _)| *state == LinkState::Running)
            .expect("link state");
        guard.0
    }
}

/// A deployment attached to a link, owned by the link's thread.
pub struct Tap {
    /// Deployment id.
    pub deployment: String,
    /// Address/port/protocol filter.
    filter: Arc<CompiledFilter>,
    /// BPF program for this link, if the filter has one.
    bpf: Option<Bpf>,
    /// The deployment's queue.
    pub tx: Sender<DepMsg>,
    /// The deployment's counters (drops are counted here).
    pub counters: Arc<DepCounters>,
    /// Packets per batch.
    pub batch_packets: u32,
    batch: Batch,
    dead: bool,
    /// Emptied buffers the deployment thread hands back.
    spares: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    /// Wait for room in the queue instead of dropping (a lossless replay).
    wait_for_room: bool,
    /// Captured bytes per packet the analyzer reads (`tm_snap_len`).
    snap_len: usize,
    /// Neither filter nor BPF expression: every packet is taken.
    open: bool,
    /// Packets the deployment's queue may hold (`queue_batches` ×
    /// `batch_packets`): a small batch takes a queue slot, not a batch's
    /// worth of the budget, so many links' partial batches fit at once.
    budget: u64,
}

/// A batch of at most this many bytes is copied out at a flush, so that
/// the queue holds its bytes, not a whole batch buffer.
const SMALL_BATCH: usize = BATCH_BYTES / 8;

/// How long a lossless replay sleeps while its deployment's queue holds
/// its whole budget (the analyzer is then busy with that much work).
const ROOM_POLL: Duration = Duration::from_micros(200);

/// Spare batch buffers a tap keeps beyond its queue's capacity: every
/// buffer that can be in flight (queued, in the guest, being filled) comes
/// back for reuse, instead of being freed and allocated (and faulted in)
/// again. The memory the queue held at its fullest therefore stays with
/// the tap until it is detached.
const SPARE_BUFFERS: usize = 2;

/// With this many batches waiting in a deployment's queue, the link thread
/// yields after handing over another: where both threads share one core,
/// the analyzer then runs on batches still in cache instead of the link
/// thread filling the whole queue first. Where they have a core each, the
/// queue seldom gets this long.
const YIELD_AT: usize = 2;

impl Tap {
    /// A tap with an empty batch.
    #[must_use]
    pub fn new(
        deployment: String,
        filter: Arc<CompiledFilter>,
        bpf: Option<Bpf>,
        tx: Sender<DepMsg>,
        counters: Arc<DepCounters>,
        batch_packets: u32,
        snap_len: usize,
    ) -> Self {
        let capacity = tx.capacity().unwrap_or(0);
        let spares = capacity + SPARE_BUFFERS;
        let open = filter.is_open() && bpf.is_none();
        let budget = capacity as u64 * u64::from(batch_packets);
        Tap {
            deployment,
            filter,
            bpf,
            tx,
            counters,
            batch_packets,
            batch: Batch::default(),
            dead: false,
            spares: crossbeam_channel::bounded(spares),
            wait_for_room: false,
            snap_len,
            open,
            budget,
        }
    }

    /// Sets the packets the deployment's queue may hold (default: the
    /// queue's capacity in full batches); spare buffers follow it.
    #[must_use]
    pub fn with_queue_budget(mut self, packets: u64) -> Self {
        self.budget = packets.max(1);
        let batches = packets.div_ceil(u64::from(self.batch_packets.max(1))) as usize;
        self.spares = crossbeam_channel::bounded(batches + SPARE_BUFFERS);
        self
    }

    /// Whether `count` more packets would pass the queue's budget (a batch
    /// larger than the budget still goes into an empty queue).
    fn over_budget(&self, count: u64) -> bool {
        let queued = self.counters.queued_packets.load(Ordering::Acquire);
        queued > 0 && queued + count > self.budget
    }

    /// Takes one parsed packet: filters it, cuts it to the snap length and
    /// appends its record, handing the batch over when full.
    pub fn offer(&mut self, h: &PacketHeader, data: &[u8]) {
        if !self.open
            && (!self.filter.matches(h) || self.bpf.as_ref().is_some_and(|b| !b.matches(data)))
        {
            return;
        }
        // Only the bytes the analyzer reads; every other header field
        // still describes the whole packet.
        let data = &data[..data.len().min(self.snap_len)];
        let len = record_len(data.len());
        if self.batch.buf.len() + len > BATCH_BYTES {
            self.flush();
        }
        let at = self.batch.buf.len();
        if self.batch.buf.capacity() == 0 {
            if let Ok(spare) = self.spares.1.try_recv() {
                self.batch.buf = spare;
            }
            self.batch.buf.reserve(BATCH_BYTES.max(len));
        }
        // Header (its cap_len what is kept), captured bytes, zero padding:
        // each byte written once.
        let mut head = h.encode(len as u32);
        head[off::CAP_LEN..off::CAP_LEN + 4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let buf = &mut self.batch.buf;
        buf.extend_from_slice(&head);
        buf.extend_from_slice(data);
        buf.resize(at + len, 0);
        self.batch.count += 1;
        self.batch.wire_bytes += u64::from(h.wire_len);
        if self.batch.count >= self.batch_packets {
            self.flush();
        }
    }

    /// Hands the partial batch over now.
    pub fn flush(&mut self) {
        if self.batch.count == 0 || self.dead {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        if batch.buf.len() <= SMALL_BATCH {
            // Only its bytes go; the tap keeps the buffer.
            let copy = batch.buf.to_vec();
            batch.buf.clear();
            self.batch.buf = std::mem::replace(&mut batch.buf, copy);
        } else {
            batch.home = Some(self.spares.0.clone());
        }
        let count = u64::from(batch.count);
        let queued = &self.counters.queued_packets;
        if self.wait_for_room {
            // The deployment thread always drains (every guest call has a
            // deadline); it is gone only when the deployment is.
            while self.over_budget(count) {
                if self.counters.gone.load(Ordering::Acquire) {
                    self.dead = true;
                    return;
                }
                std::thread::sleep(ROOM_POLL);
            }
            queued.fetch_add(count, Ordering::AcqRel);
            if self.tx.send(DepMsg::Batch(batch)).is_err() {
                queued.fetch_sub(count, Ordering::AcqRel);
                self.dead = true;
            }
            return;
        }
        if self.over_budget(count) {
            self.counters.dropped.fetch_add(count, Ordering::Relaxed);
            batch.recycle();
            return;
        }
        queued.fetch_add(count, Ordering::AcqRel);
        match self.tx.try_send(DepMsg::Batch(batch)) {
            Ok(()) => {
                if self.tx.len() >= YIELD_AT {
                    std::thread::yield_now();
                }
            }
            Err(TrySendError::Full(msg)) => {
                queued.fetch_sub(count, Ordering::AcqRel);
                self.counters.dropped.fetch_add(count, Ordering::Relaxed);
                if let DepMsg::Batch(b) = msg {
                    b.recycle();
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                queued.fetch_sub(count, Ordering::AcqRel);
                self.dead = true;
            }
        }
    }
}

/// Controls sent to a link thread.
pub enum LinkCtl {
    /// Start feeding a deployment.
    Attach(Box<Tap>),
    /// Hand every partial batch to its deployment now; answer when done.
    Flush(Sender<()>),
    /// Stop capturing and end the thread (after flushing).
    Stop,
}

/// A running link thread.
pub struct LinkHandle {
    /// Counters and state.
    pub shared: Arc<LinkShared>,
    /// Controls.
    pub ctl: Sender<LinkCtl>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkHandle {
    /// Starts the link's thread. Pcap replays wait for the first deployment.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(config: LinkConfig) -> std::io::Result<Self> {
        let shared = Arc::new(LinkShared {
            config,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            parse_errors: AtomicU64::new(0),
            kernel_drops: AtomicU64::new(0),
            interface_drops: AtomicU64::new(0),
            dlt: AtomicI32::new(-1),
            state: Mutex::new((LinkState::Running, None)),
            state_changed: Condvar::new(),
            state_watch: tokio::sync::watch::Sender::new(LinkState::Running),
        });
        let (ctl, rx) = crossbeam_channel::unbounded();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("link-{}", shared.config.id))
                .spawn(move || LinkThread::new(shared, rx).run())?
        };
        // Wait briefly until the source is open, so that loads can compile
        // BPF for its link type right away.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.dlt().is_none()
            && shared.state.lock().expect("link state").0 != LinkState::Failed
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(LinkHandle {
            shared,
            ctl,
            thread: Some(thread),
        })
    }

    /// Flushes partial batches to their deployments and waits until done
    /// (bounded: a live capture checks its controls every 50 ms).
    pub fn flush(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.ctl.send(LinkCtl::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.ctl.send(LinkCtl::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Next<'a> {
    Packet {
        ts_ns: u64,
        wire_len: u32,
        data: &'a [u8],
    },
    /// Nothing yet (live timeout, or a replay reopened for the next loop).
    Idle,
    /// A paced replay's next packet is due after this long.
    Wait(Duration),
    /// A looped replay reached the end: reopen and go on.
    Reopen,
    End,
}

enum Capture {
    File {
        reader: Box<FileReader>,
        path: PathBuf,
        replay: Replay,
        /// Added to timestamps: grows by the file's span each loop.
        shift_ns: u64,
        first_ts: Option<u64>,
        last_ts: u64,
        /// Wall clock and file time of the first packet, for pacing.
        pace: Option<(Instant, u64)>,
        /// A paced packet read but not yet due: (file ts, wire len, bytes).
        pending: Option<(u64, u32, Vec<u8>)>,
        /// The bytes of the packet last handed out from `pending`.
        held: Vec<u8>,
    },
    Live {
        cap: pcap::Capture<pcap::Active>,
    },
}

fn open(config: &LinkConfig) -> Result<Capture, String> {
    match config.source() {
        Source::Pcap(path, replay) => {
            let reader = Box::new(FileReader::open(&path)?);
            Ok(Capture::File {
                reader,
                path,
                replay,
                shift_ns: 0,
                first_ts: None,
                last_ts: 0,
                pace: None,
                pending: None,
                held: Vec::new(),
            })
        }
        Source::Interface(name) => {
            let cap = pcap::Capture::from_device(name.as_str())
                .and_then(|c| {
                    c.promisc(true)
                        .immediate_mode(true)
                        .snaplen(config.snaplen as i32)
                        .buffer_size((config.buffer_mb as i32) << 20)
                        .timeout(LIVE_TIMEOUT_MS)
                        .open()
                })
                .and_then(pcap::Capture::setnonblock)
                .map_err(|e| format!("cannot capture on {name}: {e}"))?;
            Ok(Capture::Live { cap })
        }
    }
}

/// A pcap timestamp in ns; `nano`: its sub-second part is in ns, not µs.
pub(crate) fn timeval_ns(ts: &libc::timeval, nano: bool) -> u64 {
    let sub = if nano {
        ts.tv_usec as u64
    } else {
        ts.tv_usec as u64 * 1000
    };
    ts.tv_sec as u64 * 1_000_000_000 + sub
}

impl Capture {
    fn dlt(&self) -> i32 {
        match self {
            Capture::File { reader, .. } => reader.dlt(),
            Capture::Live { cap } => cap.get_datalink().0,
        }
    }

    fn is_replay(&self) -> bool {
        matches!(self, Capture::File { .. })
    }

    fn next(&mut self) -> Result<Next<'_>, String> {
        match self {
            Capture::Live { cap } => {
                use std::os::fd::AsRawFd;
                let fd = cap.as_raw_fd();
                match cap.next_packet() {
                    Ok(p) => Ok(Next::Packet {
                        ts_ns: timeval_ns(&p.header.ts, false),
                        wire_len: p.header.len,
                        data: p.data,
                    }),
                    Err(pcap::Error::TimeoutExpired) => {
                        // Non-blocking: wait for the descriptor, bounded, so that
                        // controls and partial batches are served while idle.
                        let mut pfd = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd, for the duration of the call.
                        unsafe { libc::poll(&raw mut pfd, 1, LIVE_TIMEOUT_MS) };
                        Ok(Next::Idle)
                    }
                    Err(e) => Err(format!("capture failed: {e}")),
                }
            }
            Capture::File {
                reader,
                path,
                replay,
                shift_ns,
                first_ts,
                last_ts,
                pace,
                pending,
                held,
            } => {
                if pending.is_none() {
                    match reader.next_record() {
                        Ok(Some((file_ts, wire_len, data))) => {
                            first_ts.get_or_insert(file_ts);
                            *last_ts = (*last_ts).max(file_ts);
                            if *replay != Replay::RecordedPace {
                                return Ok(Next::Packet {
                                    ts_ns: file_ts + *shift_ns,
                                    wire_len,
                                    data,
                                });
                            }
                            *pending = Some((file_ts, wire_len, data.to_vec()));
                        }
                        Ok(None) => {
                            if *replay != Replay::Loop || first_ts.is_none() {
                                return Ok(Next::End);
                            }
                            return Ok(Next::Reopen);
                        }
                        Err(e) => return Err(format!("reading {}: {e}", path.display())),
                    }
                }
                let (file_ts, wire_len, _) = pending.as_ref().expect("set above");
                let (file_ts, wire_len) = (*file_ts, *wire_len);
                let (wall, origin) = *pace.get_or_insert((Instant::now(), file_ts));
                let due = wall + Duration::from_nanos(file_ts.saturating_sub(origin));
                let now = Instant::now();
                if due > now {
                    return Ok(Next::Wait(due - now));
                }
                *held = pending.take().expect("set above").2;
                Ok(Next::Packet {
                    ts_ns: file_ts + *shift_ns,
                    wire_len,
                    data: held,
                })
            }
        }
    }

    /// Starts the next round of a looped replay, timestamps shifted past
    /// the previous round.
    fn reopen(&mut self) -> Result<(), String> {
        if let Capture::File {
            reader,
            path,
            shift_ns,
            first_ts,
            last_ts,
            ..
        } = self
        {
            *shift_ns += *last_ts - first_ts.unwrap_or(0) + 1_000_000;
            reader.rewind(path)?;
        }
        Ok(())
    }

    fn stats(&mut self) -> Option<pcap::Stat> {
        match self {
            Capture::Live { cap } => cap.stats().ok(),
            Capture::File { .. } => None,
        }
    }
}

struct LinkThread {
    shared: Arc<LinkShared>,
    ctl: Receiver<LinkCtl>,
    taps: Vec<Tap>,
    last_flush: Instant,
    /// The taps changed since the kernel filter was last computed.
    taps_changed: bool,
    /// The BPF expression installed in the kernel, if any.
    kernel_filter: Option<String>,
    /// Packets, bytes and parse errors not yet added to `shared` (added
    /// every 64 packets and on every flush, not per packet).
    unsynced: (u64, u64, u64),
}

impl LinkThread {
    fn new(shared: Arc<LinkShared>, ctl: Receiver<LinkCtl>) -> Self {
        LinkThread {
            shared,
            ctl,
            taps: Vec::new(),
            last_flush: Instant::now(),
            taps_changed: false,
            kernel_filter: None,
            unsynced: (0, 0, 0),
        }
    }

    /// On a live capture, pushes the deployments' BPF into the kernel when
    /// every deployment has one (their union); otherwise captures everything.
    /// Deployments still apply their own filters in the host.
    fn update_kernel_filter(&mut self, capture: &mut Capture) {
        if !std::mem::take(&mut self.taps_changed) {
            return;
        }
        let Capture::Live { cap } = capture else {
            return;
        };
        let exprs: Option<Vec<String>> = self
            .taps
            .iter()
            .map(|t| t.filter.bpf.as_ref().map(|e| format!("({e})")))
            .collect();
        let wanted = exprs.filter(|e| !e.is_empty()).map(|e| e.join(" or "));
        if wanted == self.kernel_filter {
            return;
        }
        match cap.filter(wanted.as_deref().unwrap_or(""), true) {
            Ok(()) => {
                tracing::info!(link = self.shared.config.id, filter = ?wanted, "kernel filter set");
                self.kernel_filter = wanted;
            }
            Err(e) => {
                tracing::warn!(link = self.shared.config.id, error = %e, "cannot set the kernel filter")
            }
        }
    }

    /// Adds the locally counted packets to the shared counters.
    fn sync_counts(&mut self) {
        let (packets, bytes, errors) = std::mem::take(&mut self.unsynced);
        if packets > 0 {
            self.shared.packets.fetch_add(packets, Ordering::Relaxed);
            self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if errors > 0 {
            self.shared
                .parse_errors
                .fetch_add(errors, Ordering::Relaxed);
        }
    }

    fn flush_all(&mut self) {
        self.sync_counts();
        for tap in &mut self.taps {
            tap.flush();
        }
        let before = self.taps.len();
        self.taps.retain(|t| !t.dead);
        self.taps_changed |= self.taps.len() != before;
        self.last_flush = Instant::now();
    }

    /// Handles one control; false on Stop.
    fn control(&mut self, msg: LinkCtl) -> bool {
        match msg {
            LinkCtl::Attach(mut tap) => {
                tracing::debug!(link = self.shared.config.id, deployment = %tap.deployment, "tap attached");
                tap.wait_for_room = self.shared.config.pcap.is_some()
                    && self.shared.config.replay == Replay::Lossless;
                self.taps.push(*tap);
                self.taps_changed = true;
            }
            LinkCtl::Flush(ack) => {
                self.flush_all();
                let _ = ack.send(());
            }
            LinkCtl::Stop => {
                self.flush_all();
                return false;
            }
        }
        true
    }

    /// Drains pending controls; false on Stop.
    fn poll_controls(&mut self) -> bool {
        while let Ok(msg) = self.ctl.try_recv() {
            if !self.control(msg) {
                return false;
            }
        }
        true
    }

    /// After the source ended or failed: serve controls until Stop.
    fn serve_controls(&mut self) {
        while let Ok(msg) = self.ctl.recv() {
            if !self.control(msg) {
                return;
            }
        }
    }

    fn run(mut self) {
        let id = self.shared.config.id;
        let snaplen = self.shared.config.snaplen as usize;
        let mut capture = match open(&self.shared.config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(link = id, error = %e, "link failed to open");
                self.shared.set_state(LinkState::Failed, Some(e));
                return self.serve_controls();
            }
        };
        let dlt = capture.dlt() & crate::parse::LINKTYPE_MASK;
        let link_type = LinkType::from_dlt(dlt);
        if let LinkType::Other(other) = link_type {
            tracing::warn!(
                link = id,
                link_type = other,
                "link type not parsed: its packets are counted and reach analyzers as non-IP packets"
            );
        }
        self.shared.dlt.store(dlt, Ordering::Release);
        // A replay into nothing is lost: wait for the first deployment (or
        // as many as the link's `replay_waits_for`).
        if capture.is_replay() {
            let wanted = self.shared.config.replay_waits_for.max(1) as usize;
            while self.taps.len() < wanted {
                let Ok(msg) = self.ctl.recv() else { return };
                if !self.control(msg) {
                    return;
                }
            }
        }
        let mut last_stats = Instant::now();
        let mut since_poll = 0u32;
        loop {
            since_poll += 1;
            if since_poll >= 64 {
                since_poll = 0;
                self.sync_counts();
                if !self.poll_controls() {
                    return;
                }
                if self.last_flush.elapsed() >= FLUSH_EVERY {
                    self.flush_all();
                }
                self.update_kernel_filter(&mut capture);
                // Kernel drop counters, once a second (live captures only).
                if last_stats.elapsed() >= Duration::from_secs(1) {
                    last_stats = Instant::now();
                    if let Some(s) = capture.stats() {
                        self.shared
                            .kernel_drops
                            .store(u64::from(s.dropped), Ordering::Relaxed);
                        self.shared
                            .interface_drops
                            .store(u64::from(s.if_dropped), Ordering::Relaxed);
                    }
                }
            }
            match capture.next() {
                Ok(Next::Packet {
                    ts_ns,
                    wire_len,
                    data,
                }) => {
                    let data = &data[..data.len().min(snaplen)];
                    let h = parse(link_type, id, ts_ns, wire_len, data);
                    self.unsynced.0 += 1;
                    self.unsynced.1 += u64::from(wire_len);
                    if h.flags & flag::PARSE_ERROR != 0 {
                        self.unsynced.2 += 1;
                    }
                    for tap in &mut self.taps {
                        tap.offer(&h, data);
                    }
                }
                Ok(Next::Idle) => {
                    since_poll = 64;
                    self.flush_all();
                }
                Ok(Next::Wait(d)) => {
                    // Paced replay: serve controls while waiting for the packet.
                    self.sync_counts();
                    if self.last_flush.elapsed() >= FLUSH_EVERY {
                        self.flush_all();
                    }
                    match self.ctl.recv_timeout(d.min(FLUSH_EVERY)) {
                        Ok(msg) => {
                            if !self.control(msg) {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                Ok(Next::Reopen) => {
                    if let Err(e) = capture.reopen() {
                        self.flush_all();
                        self.shared.set_state(LinkState::Failed, Some(e));
                        return self.serve_controls();
                    }
                }
                Ok(Next::End) => {
                    self.flush_all();
                    tracing::info!(
                        link = id,
                        packets = self.shared.packets.load(Ordering::Relaxed),
                        "replay finished"
                    );
                    self.shared.set_state(LinkState::Finished, None);
                    return self.serve_controls();
                }
                Err(e) => {
                    self.flush_all();
                    tracing::error!(link = id, error = %e, "link failed");
                    self.shared.set_state(LinkState::Failed, Some(e));
                    return self.serve_controls();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tm_abi::{RECORD_HEADER_LEN, Records};

    /// A TCP frame and its parsed header, as the link thread makes them.
    fn frame() -> (PacketHeader, Vec<u8>) {
        let mut data = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1234, 80, 7, 1000)
            .syn()
            .write(&mut data, &[0xab; 300])
            .unwrap();
        let wire = data.len() as u32;
        (parse(LinkType::Ethernet, 3, 42, wire, &data), data)
    }

    /// A tap taking every packet into batches of `batch_packets`, and the
    /// deployment queue's receiving end.
    fn open_tap(batch_packets: u32, snap_len: usize) -> (Tap, Receiver<DepMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let tap = Tap::new(
            "d".into(),
            Arc::new(CompiledFilter::new(&bus_schema::Filter::default()).unwrap()),
            None,
            tx,
            Arc::new(DepCounters::default()),
            batch_packets,
            snap_len,
        );
        (tap, rx)
    }

    /// The records a tap with `snap_len` hands its deployment for one frame.
    fn through_tap(snap_len: usize) -> (Vec<u8>, u32) {
        let (mut tap, rx) = open_tap(256, snap_len);
        let (h, data) = frame();
        tap.offer(&h, &data);
        tap.flush();
        match rx.try_recv() {
            Ok(DepMsg::Batch(b)) => (b.buf, b.count),
            _ => panic!("no batch"),
        }
    }

    #[test]
    fn a_tap_cuts_packets_to_the_analyzers_snap_length() {
        let (full_h, data) = frame();
        assert_eq!(data.len(), 14 + 20 + 20 + 300);
        for snap in [0usize, 1, 54, 100, data.len(), data.len() + 1, usize::MAX] {
            let (buf, count) = through_tap(snap);
            assert_eq!(count, 1);
            let kept = data.len().min(snap);
            assert_eq!(buf.len(), record_len(kept), "snap {snap}");
            let (h, bytes) = Records::new(&buf, 1).next().expect("one record");
            assert_eq!(bytes, &data[..kept], "snap {snap}");
            assert_eq!(h.cap_len as usize, kept);
            // Every other header field still describes the whole packet.
            assert_eq!(
                PacketHeader {
                    cap_len: full_h.cap_len,
                    ..h
                },
                full_h
            );
            assert_eq!(h.wire_len as usize, data.len());
            assert_eq!((h.src_port, h.dst_port, h.tcp_flags), (1234, 80, 0x02));
        }
        assert!(record_len(0) == RECORD_HEADER_LEN);
    }

    /// A replay's link, the tap's receiving end, and the tap to attach.
    fn replay_link(path: PathBuf) -> (LinkHandle, Receiver<DepMsg>, Box<Tap>) {
        let link =
            LinkHandle::start(LinkConfig::replay(0, path, Replay::Lossless, "a", "b")).unwrap();
        let (tap, rx) = open_tap(64, 0);
        (link, rx, Box::new(tap))
    }

    #[test]
    fn wait_stopped_returns_once_every_packet_was_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.pcap");
        let frames = pcapgen::flows(1000, 10, 1_000_000_000);
        pcapgen::write_pcap(&path, pcapgen::linktype::ETHERNET, &frames).unwrap();
        let (link, rx, tap) = replay_link(path);
        // Nothing is replayed before a deployment is attached.
        assert_eq!(
            link.shared.wait_stopped(Duration::from_millis(50)),
            LinkState::Running
        );
        link.ctl.send(LinkCtl::Attach(tap)).unwrap();
        assert_eq!(
            link.shared.wait_stopped(Duration::from_secs(60)),
            LinkState::Finished
        );
        assert_eq!(link.shared.status().packets, 1000);
        // Every batch is already queued: none arrives later.
        let mut count = 0;
        while let Ok(msg) = rx.try_recv() {
            if let DepMsg::Batch(b) = msg {
                count += b.count;
            }
        }
        assert_eq!(count, 1000);

        // A file that is not a capture: the link fails, and says so at once.
        let bad = dir.path().join("bad.pcap");
        std::fs::write(&bad, b"not a pcap file at all").unwrap();
        let (link, _rx, _tap) = replay_link(bad);
        assert_eq!(
            link.shared.wait_stopped(Duration::from_secs(60)),
            LinkState::Failed
        );
        assert!(link.shared.status().last_error.is_some());
    }
}
