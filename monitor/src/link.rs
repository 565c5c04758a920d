//! A link: one thread per link reading its packet source, parsing each
//! packet once and offering it to every tap (one per deployment on the
//! link), which batches what passes its deployment's filter.
//!
//! The thread never blocks on a deployment (a lossless replay waits for
//! room instead): a batch that does not fit the deployment's queue is
//! dropped and counted as that deployment's drops.
//!
//! A live link with `capture_threads` > 1 runs that many such threads,
//! each reading its own capture of the interface (the kernel spreads the
//! packets over them by flow hash) and offering to its own taps, one per
//! deployment, all feeding the deployment's one queue: a flow's packets
//! reach the analyzer in capture order, the flows of different threads
//! interleaved batch by batch.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bus_schema::{LinkInfo, LinkState, LinkStatus};
use flume::{Receiver, RecvTimeoutError, Sender};
use tm_abi::flag;

use crate::config::LinkConfig;
use crate::parse::{LinkType, parse};
use crate::source::{self, LiveSource, Next, Opened, PacketSource};
use crate::tap::Tap;

/// Partial batches older than this are flushed to their deployments.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// How long a live link waits, when every deployment on it is behind,
/// before it looks again.
const BEHIND_WAIT: Duration = Duration::from_micros(200);

impl std::fmt::Debug for LinkShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link {}", self.config.id)
    }
}

/// Counters and state of a link, shared with the command handlers.
pub struct LinkShared {
    /// The link's configuration.
    pub config: LinkConfig,
    /// The source as reported on the bus (`iface:eth0`, `pcap:/path`).
    label: String,
    packets: AtomicU64,
    bytes: AtomicU64,
    parse_errors: AtomicU64,
    /// Per capture thread: packets, kernel drops, interface drops.
    threads: Box<[ThreadCounts]>,
    /// pcap datalink type once the source is open, -1 before.
    dlt: AtomicI32,
    state: Mutex<(LinkState, Option<String>)>,
    /// Signalled when `state` changes.
    state_changed: Condvar,
    /// The state, for async watchers (`Monitor::watch_links`).
    state_watch: tokio::sync::watch::Sender<LinkState>,
}

/// One capture thread's own counts (drops as its capture reports them).
#[derive(Default)]
struct ThreadCounts {
    packets: AtomicU64,
    kernel_drops: AtomicU64,
    interface_drops: AtomicU64,
}

impl LinkShared {
    /// Kernel and interface drops, summed over the capture threads.
    fn drops(&self) -> (u64, u64) {
        self.threads.iter().fold((0, 0), |(k, i), t| {
            (
                k + t.kernel_drops.load(Ordering::Relaxed),
                i + t.interface_drops.load(Ordering::Relaxed),
            )
        })
    }

    /// Packets each capture thread read, when there are several.
    fn thread_packets(&self) -> Vec<u64> {
        if self.threads.len() < 2 {
            return Vec::new();
        }
        self.threads
            .iter()
            .map(|t| t.packets.load(Ordering::Relaxed))
            .collect()
    }

    /// How many capture threads read the link.
    #[must_use]
    pub fn capture_threads(&self) -> usize {
        self.threads.len()
    }

    /// The link as reported on the bus.
    #[must_use]
    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            id: self.config.id,
            from_router: self.config.from_router.clone(),
            to_router: self.config.to_router.clone(),
            source: self.label.clone(),
        }
    }

    /// The link with its counters.
    #[must_use]
    pub fn status(&self) -> LinkStatus {
        let (state, last_error) = self.state.lock().expect("link state").clone();
        let (kernel_drops, interface_drops) = self.drops();
        LinkStatus {
            link: self.info(),
            state,
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            parse_errors: self.parse_errors.load(Ordering::Relaxed),
            kernel_drops,
            interface_drops,
            thread_packets: self.thread_packets(),
            last_error,
        }
    }

    /// The link's capture figures, as a result window carries them.
    #[must_use]
    pub fn capture(&self) -> bus_schema::LinkCapture {
        let (kernel_drops, interface_drops) = self.drops();
        bus_schema::LinkCapture {
            link: self.config.id,
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            kernel_drops,
            interface_drops,
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

/// Controls sent to a link thread.
pub enum LinkCtl {
    /// Start feeding a deployment.
    Attach(Box<Tap>),
    /// Hand every partial batch to its deployment now; answer when done.
    Flush(Sender<()>),
    /// Stop capturing and end the thread (after flushing).
    Stop,
}

/// A running link: its capture thread, or threads on a fanned-out
/// interface.
pub struct LinkHandle {
    /// Counters and state.
    pub shared: Arc<LinkShared>,
    /// Controls, one per capture thread.
    ctls: Vec<Sender<LinkCtl>>,
    /// The first capture thread (it joins the others when it ends).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkHandle {
    /// Starts the thread of the link `config` describes, reading the
    /// interface or file it names. Replays wait for the first deployment.
    ///
    /// # Errors
    /// If the thread cannot be spawned (a source that cannot be opened
    /// leaves the link failed, with the reason in its status).
    pub fn start(config: LinkConfig) -> std::io::Result<Self> {
        let label = config.source_label();
        Self::spawn(config, label, None)
    }

    /// Starts a link thread reading `source` (packets in memory, for
    /// tests and benchmarks); `config` gives the link's id, routers and
    /// snap length.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start_with(
        config: LinkConfig,
        source: Box<dyn PacketSource + Send>,
    ) -> std::io::Result<Self> {
        let label = source.label();
        Self::spawn(config, label, Some(source))
    }

    fn spawn(
        config: LinkConfig,
        label: String,
        source: Option<Box<dyn PacketSource + Send>>,
    ) -> std::io::Result<Self> {
        let threads = match (&config.interface, &source) {
            (Some(_), None) => config.capture_threads.max(1) as usize,
            _ => 1,
        };
        let shared = Arc::new(LinkShared {
            config,
            label,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            parse_errors: AtomicU64::new(0),
            threads: (0..threads).map(|_| ThreadCounts::default()).collect(),
            dlt: AtomicI32::new(-1),
            state: Mutex::new((LinkState::Running, None)),
            state_changed: Condvar::new(),
            state_watch: tokio::sync::watch::Sender::new(LinkState::Running),
        });
        let (ctls, mut rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| flume::unbounded()).unzip();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("link-{}", shared.config.id))
                .spawn(move || {
                    let others = rxs.split_off(1);
                    let thread = LinkThread::new(shared, rxs.remove(0), 0);
                    match source {
                        Some(source) => thread.run(source),
                        None => match source::open(&thread.shared.config) {
                            Ok(Opened::Live(sources)) => thread.run_fanned_out(sources, others),
                            Ok(Opened::Replay(s)) => thread.run(s),
                            Err(e) => thread.failed_to_open(e),
                        },
                    }
                })?
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
            ctls,
            thread: Some(thread),
        })
    }

    /// Attaches a deployment: `tap` makes its tap, once per capture thread
    /// (taps of one deployment share its queue and counters).
    pub fn attach(&self, mut tap: impl FnMut() -> Tap) {
        for ctl in &self.ctls {
            let _ = ctl.send(LinkCtl::Attach(Box::new(tap())));
        }
    }

    /// Flushes partial batches to their deployments and waits until done
    /// (bounded: a live capture checks its controls every 50 ms).
    pub fn flush(&self) {
        let (tx, rx) = flume::bounded(self.ctls.len());
        let sent = self
            .ctls
            .iter()
            .filter(|ctl| ctl.send(LinkCtl::Flush(tx.clone())).is_ok())
            .count();
        let deadline = Instant::now() + Duration::from_secs(2);
        for _ in 0..sent {
            if rx.recv_deadline(deadline).is_err() {
                break;
            }
        }
    }

    /// Stops the threads and waits for them.
    pub fn stop(&mut self) {
        for ctl in &self.ctls {
            let _ = ctl.send(LinkCtl::Stop);
        }
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

struct LinkThread {
    shared: Arc<LinkShared>,
    /// Which capture thread of the link this is.
    index: usize,
    ctl: Receiver<LinkCtl>,
    taps: Vec<Tap>,
    last_flush: Instant,
    /// The taps changed since the kernel filter was last computed.
    taps_changed: bool,
    /// The BPF expression installed in the kernel, if any.
    kernel_filter: Option<String>,
    /// Taps wait for room in their queues instead of dropping.
    lossless: bool,
    /// Packets, bytes and parse errors not yet added to `shared` (added
    /// every 64 packets and on every flush, not per packet).
    unsynced: (u64, u64, u64),
}

impl LinkThread {
    fn new(shared: Arc<LinkShared>, ctl: Receiver<LinkCtl>, index: usize) -> Self {
        LinkThread {
            shared,
            index,
            ctl,
            taps: Vec::new(),
            last_flush: Instant::now(),
            taps_changed: false,
            kernel_filter: None,
            lossless: false,
            unsynced: (0, 0, 0),
        }
    }

    /// On a live capture, pushes the deployments' BPF into the kernel when
    /// every deployment has one (their union); otherwise captures everything.
    /// Deployments still apply their own filters in the host.
    fn update_kernel_filter(&mut self, source: &mut impl PacketSource) {
        if !std::mem::take(&mut self.taps_changed) || !source.has_kernel_filter() {
            return;
        }
        let exprs: Option<Vec<String>> = self
            .taps
            .iter()
            .map(|t| t.filter.bpf.as_ref().map(|e| format!("({e})")))
            .collect();
        let wanted = exprs.filter(|e| !e.is_empty()).map(|e| e.join(" or "));
        if wanted == self.kernel_filter {
            return;
        }
        match source.set_kernel_filter(wanted.as_deref().unwrap_or("")) {
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
            self.shared.threads[self.index]
                .packets
                .fetch_add(packets, Ordering::Relaxed);
            self.shared.packets.fetch_add(packets, Ordering::Relaxed);
            self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if errors > 0 {
            self.shared
                .parse_errors
                .fetch_add(errors, Ordering::Relaxed);
        }
    }

    /// Flushes every tap and waits until each has handed over all it holds
    /// (before a command, a stop, the end of the source).
    fn settle_all(&mut self) {
        self.flush_all();
        for tap in &mut self.taps {
            tap.settle();
        }
    }

    fn flush_all(&mut self) {
        self.sync_counts();
        for tap in &mut self.taps {
            tap.flush();
        }
        let before = self.taps.len();
        self.taps.retain(|t| !t.dead);
        if self.taps.len() != before {
            self.taps_changed = true;
            self.taps_settled();
        }
        self.last_flush = Instant::now();
    }

    /// A tap analyses on this thread (where its deployment allows it) only
    /// while it is the thread's one tap: with two, one deployment's
    /// analysis would hold the other's packets back.
    fn taps_settled(&mut self) {
        let alone = self.taps.len() == 1;
        for tap in &mut self.taps {
            tap.set_analyse_here(alone);
        }
    }

    /// Handles one control; false on Stop.
    fn control(&mut self, msg: LinkCtl) -> bool {
        match msg {
            LinkCtl::Attach(mut tap) => {
                tracing::debug!(link = self.shared.config.id, deployment = %tap.deployment, "tap attached");
                tap.wait_for_room = self.lossless;
                self.taps.push(*tap);
                self.taps_changed = true;
                self.taps_settled();
            }
            LinkCtl::Flush(ack) => {
                self.settle_all();
                let _ = ack.send(());
            }
            LinkCtl::Stop => {
                self.settle_all();
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

    /// The source could not be opened: the link fails, saying why.
    fn failed_to_open(mut self, e: String) {
        tracing::error!(link = self.shared.config.id, error = %e, "link failed to open");
        self.shared.set_state(LinkState::Failed, Some(e));
        self.serve_controls();
    }

    /// Parses one packet, counts it and offers it to every tap.
    #[inline(always)]
    fn packet(
        &mut self,
        link_type: LinkType,
        id: u32,
        snaplen: usize,
        ts_ns: u64,
        wire_len: u32,
        data: &[u8],
    ) {
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

    /// Runs capture thread 0 on `sources[0]` and one more thread on each
    /// other source, whose controls come from `others`; joins them when done.
    fn run_fanned_out(self, mut sources: Vec<LiveSource>, others: Vec<Receiver<LinkCtl>>) {
        let rest = sources.split_off(1);
        let mut threads = Vec::new();
        for (i, (source, ctl)) in rest.into_iter().zip(others).enumerate() {
            let thread = LinkThread::new(self.shared.clone(), ctl, i + 1);
            let spawned = std::thread::Builder::new()
                .name(format!("link-{}.{}", self.shared.config.id, i + 1))
                .spawn(move || thread.run(source));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Without this thread its share of the flows would be
                    // lost: the link fails instead (the threads started
                    // already end at the link's Stop).
                    return self
                        .failed_to_open(format!("cannot start capture thread {}: {e}", i + 1));
                }
            }
        }
        self.run(sources.remove(0));
        for t in threads {
            let _ = t.join();
        }
    }

    fn run(mut self, mut source: impl PacketSource) {
        let id = self.shared.config.id;
        let snaplen = self.shared.config.snaplen as usize;
        self.lossless = source.lossless();
        let dlt = source.dlt() & crate::parse::LINKTYPE_MASK;
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
        if source.waits_for_deployments() {
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
        // Read in bursts while the source offers them (a live capture).
        let mut bursts = true;
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
                self.update_kernel_filter(&mut source);
                // Kernel drop counters, once a second (live captures only).
                if last_stats.elapsed() >= Duration::from_secs(1) {
                    last_stats = Instant::now();
                    if let Some(d) = source.drops() {
                        let mine = &self.shared.threads[self.index];
                        mine.kernel_drops.store(d.kernel, Ordering::Relaxed);
                        mine.interface_drops.store(d.interface, Ordering::Relaxed);
                    }
                }
            }
            if bursts {
                // Every deployment behind: reading on would only drop
                // batches. The packets wait in the kernel's ring instead
                // (far larger than the queues; what it cannot hold it
                // counts as kernel drops) until one has room again.
                if !self.taps.is_empty() && self.taps.iter_mut().all(Tap::behind) {
                    std::thread::sleep(BEHIND_WAIT);
                    since_poll = 64;
                    continue;
                }
                let read = source.burst(64, &mut |ts_ns, wire_len, data| {
                    self.packet(link_type, id, snaplen, ts_ns, wire_len, data);
                });
                match read {
                    None => bursts = false,
                    Some(Ok(0)) => {
                        since_poll = 64;
                        self.flush_all();
                        continue;
                    }
                    Some(Ok(n)) => {
                        since_poll += n as u32;
                        continue;
                    }
                    Some(Err(e)) => {
                        self.settle_all();
                        tracing::error!(link = id, error = %e, "link failed");
                        self.shared.set_state(LinkState::Failed, Some(e));
                        return self.serve_controls();
                    }
                }
            }
            match source.next() {
                Ok(Next::Packet {
                    ts_ns,
                    wire_len,
                    data,
                }) => self.packet(link_type, id, snaplen, ts_ns, wire_len, data),
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
                    // Wake for a flush only if a partial batch waits: an
                    // idle paced link sleeps until its next packet or a control.
                    let wait = if self.taps.iter().any(Tap::pending) {
                        d.min(FLUSH_EVERY)
                    } else {
                        d
                    };
                    match self.ctl.recv_timeout(wait) {
                        Ok(msg) => {
                            if !self.control(msg) {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                Ok(Next::Again) => {}
                Ok(Next::End) => {
                    self.settle_all();
                    tracing::info!(
                        link = id,
                        packets = self.shared.packets.load(Ordering::Relaxed),
                        "replay finished"
                    );
                    self.shared.set_state(LinkState::Finished, None);
                    return self.serve_controls();
                }
                Err(e) => {
                    self.settle_all();
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
    use crate::config::Replay;
    use crate::inbox::DepMsg;
    use crate::source::MemorySource;
    use crate::tap::tests::open_tap;
    use std::path::PathBuf;

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
        let mut tap = Some(tap);
        link.attach(|| *tap.take().expect("one capture thread"));
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

    /// Packets fed from memory take the same path as a replay's: all of
    /// them reach the tap, in order, with their times and lengths, and the
    /// link reports the source and finishes.
    #[test]
    fn a_memory_source_feeds_the_link_like_a_replay() {
        let frames: Vec<Vec<u8>> = pcapgen::flows(300, 7, 5_000_000_000)
            .into_iter()
            .map(|f| f.data)
            .collect();
        let source = MemorySource::frames(1, 5_000_000_000, frames.clone());
        let mut config = LinkConfig::replay(4, PathBuf::new(), Replay::Lossless, "a", "b");
        config.snaplen = 65535;
        let link = LinkHandle::start_with(config, Box::new(source)).unwrap();
        assert_eq!(link.shared.dlt(), Some(1));
        assert_eq!(link.shared.info().source, "memory:300 packets");
        let (tap, rx) = open_tap(32, usize::MAX);
        let mut tap = Some(tap);
        link.attach(|| tap.take().expect("one capture thread"));
        assert_eq!(
            link.shared.wait_stopped(Duration::from_secs(60)),
            LinkState::Finished
        );
        let status = link.shared.status();
        assert_eq!(status.packets, 300);
        let wire: usize = frames.iter().map(Vec::len).sum();
        assert_eq!(status.bytes, wire as u64);
        let mut seen = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let DepMsg::Batch(b) = msg {
                for (h, bytes) in tm_abi::Records::new(&b.buf, b.count) {
                    assert_eq!(h.link, 4);
                    seen.push((h.ts_ns, bytes.to_vec()));
                }
            }
        }
        assert_eq!(seen.len(), 300);
        for (i, ((ts, bytes), frame)) in seen.iter().zip(&frames).enumerate() {
            assert_eq!(*ts, 5_000_000_000 + i as u64 * 1_000, "packet {i}");
            assert_eq!(bytes, frame, "packet {i}");
        }
    }
}
