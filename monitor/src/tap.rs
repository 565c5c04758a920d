//! A tap: one deployment's place on a link, owned by the link's thread. It
//! takes the packets passing the deployment's filter, cuts them to the
//! analyzer's snap length, packs them into batches in the ABI's record
//! layout and hands full batches to the deployment's inbox.
//!
//! A tap never blocks its link on a deployment (except a lossless replay's,
//! which waits for room): a batch over the queue's budget is dropped and
//! counted as that deployment's drops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flume::{Receiver, Sender, TrySendError};
use tm_abi::{PacketHeader, off, record_len};

use crate::engine::{Engine, Inline};
use crate::filter::{Bpf, CompiledFilter};
use crate::inbox::{Batch, DepCounters, DepMsg};

/// Largest batch in bytes (records included); the guest's batch buffer.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Size of the guest buffer that receives batches.
#[must_use]
pub fn guest_batch_bytes(snaplen: u32) -> usize {
    BATCH_BYTES.max(record_len(snaplen as usize))
}

/// A deployment attached to a link, owned by the link's thread.
pub struct Tap {
    /// Deployment id.
    pub deployment: String,
    /// Address/port/protocol filter.
    pub(crate) filter: Arc<CompiledFilter>,
    /// BPF program for this link, if the filter has one.
    bpf: Option<Bpf>,
    /// The deployment's queue.
    pub tx: Sender<DepMsg>,
    /// The deployment's counters (drops are counted here).
    pub counters: Arc<DepCounters>,
    /// Packets per batch.
    pub batch_packets: u32,
    batch: Batch,
    /// The deployment is gone: nothing more is handed over.
    pub(crate) dead: bool,
    /// Emptied buffers the deployment thread hands back.
    spares: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    /// Wait for room in the queue instead of dropping (a lossless replay).
    pub(crate) wait_for_room: bool,
    /// Captured bytes per packet the analyzer reads (`tm_snap_len`).
    snap_len: usize,
    /// Neither filter nor BPF expression: every packet is taken.
    open: bool,
    /// Packets the deployment's queue may hold (`queue_batches` ×
    /// `batch_packets`): a small batch takes a queue slot, not a batch's
    /// worth of the budget, so many links' partial batches fit at once.
    budget: u64,
    /// The deployment's analyzer, where the link may analyse on its
    /// capture thread.
    engine: Option<Arc<Engine>>,
    /// Set by the link thread: the engine is used (this is the thread's
    /// only tap, so no other deployment waits on this one's analysis).
    analyse_here: bool,
    /// Batches held back, oldest first, while the tap analyses on the
    /// capture thread and the analyzer is busy or the deployment's queue
    /// still holds earlier batches: analysed here, in order, before any
    /// later one. Holding them here instead of queueing them keeps the
    /// analysis on this thread once the analyzer is free again, rather than
    /// on the deployment thread for as long as the queue is not empty.
    backlog: VecDeque<Batch>,
    /// Packets in the backlog (they count against the queue's budget).
    backlog_packets: u64,
    /// Counted in the deployment's `partial_taps`: the tap holds packets
    /// not handed over yet (a partial batch or a backlog).
    raised: bool,
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
            spares: flume::bounded(spares),
            wait_for_room: false,
            snap_len,
            open,
            budget,
            engine: None,
            analyse_here: false,
            backlog: VecDeque::new(),
            backlog_packets: 0,
            raised: false,
        }
    }

    /// Lets the link's capture thread analyse batches itself, through the
    /// deployment's `engine`, while this is its only tap
    /// ([`crate::engine`]).
    #[must_use]
    pub fn analysing_on_capture_thread(mut self, engine: Arc<Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Sets the packets the deployment's queue may hold (default: the
    /// queue's capacity in full batches); spare buffers follow it.
    #[must_use]
    pub fn with_queue_budget(mut self, packets: u64) -> Self {
        self.budget = packets.max(1);
        let batches = packets.div_ceil(u64::from(self.batch_packets.max(1))) as usize;
        self.spares = flume::bounded(batches + SPARE_BUFFERS);
        self
    }

    /// Whether `count` more packets would pass the queue's budget (a batch
    /// larger than the budget still goes into an empty queue); a backlog
    /// counts as queued.
    fn over_budget(&self, count: u64) -> bool {
        let queued = self.counters.queued_packets.load(Ordering::Acquire) + self.backlog_packets;
        queued > 0 && queued + count > self.budget
    }

    /// Set by the link thread: whether this tap may analyse on the capture
    /// thread now (it has an engine and is the thread's only tap). Turned
    /// off, the backlog goes into the queue, in order, ahead of what follows.
    pub(crate) fn set_analyse_here(&mut self, alone: bool) {
        self.analyse_here = alone && self.engine.is_some();
        if !self.analyse_here {
            while let Some(batch) = self.backlog.pop_front() {
                self.backlog_packets -= u64::from(batch.count);
                self.enqueue(batch);
            }
            self.settle_raised();
        }
    }

    /// Raises or lowers this tap in `partial_taps` as it holds packets or
    /// not (a dead tap stays as it is: its deployment's links are always
    /// flushed).
    fn settle_raised(&mut self) {
        let holding = self.batch.count > 0 || !self.backlog.is_empty();
        if holding != self.raised && !self.dead {
            self.raised = holding;
            if holding {
                self.counters.partial_taps.fetch_add(1, Ordering::AcqRel);
            } else {
                self.counters.partial_taps.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Takes one parsed packet: filters it, cuts it to the snap length and
    /// appends its record, handing the batch over when full. Inlined into
    /// the link thread's loop (another module, so another codegen unit).
    #[inline]
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
        if !self.raised {
            self.settle_raised();
        }
        self.batch.wire_bytes += u64::from(h.wire_len);
        if self.batch.count >= self.batch_packets {
            self.flush();
        }
    }

    /// Whether the deployment's queue (with this tap's backlog) has no room
    /// for another full batch and the deployment is still running (a
    /// deployment whose thread ended is never behind: nothing would ever
    /// drain its queue). A tap with a backlog first tries to analyse it.
    pub fn behind(&mut self) -> bool {
        if !self.backlog.is_empty() {
            self.retry_backlog();
        }
        !self.dead
            && !self.counters.gone.load(Ordering::Acquire)
            && self.over_budget(u64::from(self.batch_packets))
    }

    /// Whether a partial batch or a backlog waits for a flush.
    #[must_use]
    pub fn pending(&self) -> bool {
        (self.batch.count > 0 || !self.backlog.is_empty()) && !self.dead
    }

    /// Hands the partial batch over now (a tap analysing on the capture
    /// thread may hold it back, see [`Tap::settle`]).
    pub fn flush(&mut self) {
        if self.dead {
            return;
        }
        if self.batch.count > 0 {
            self.hand_over();
        } else if !self.backlog.is_empty() {
            self.retry_backlog();
        }
        // Only now that the batch is queued, analysed or dropped (and
        // counted): a command that sees no tap holding packets finds every
        // packet offered before it ahead of it.
        self.settle_raised();
    }

    /// Hands over everything the tap holds, waiting for the analyzer if it
    /// must: before a command, every packet offered before it reaches the
    /// analyzer first. Bounded: the deployment thread drains its queue and
    /// frees the analyzer within its guest calls' deadlines, and a
    /// deployment that ends closes its analyzer.
    pub fn settle(&mut self) {
        self.flush();
        while !self.backlog.is_empty() && !self.dead {
            if self.counters.gone.load(Ordering::Acquire) {
                self.discard_backlog();
                break;
            }
            std::thread::sleep(ROOM_POLL);
            self.retry_backlog();
        }
        self.settle_raised();
    }

    /// Analyses the backlog here if the analyzer is free now.
    fn retry_backlog(&mut self) {
        if let Some(engine) = self.engine.clone() {
            match self.drain_backlog(&engine) {
                Inline::Analysed | Inline::Busy => {}
                ended => self.ended(ended),
            }
        }
    }

    /// Analyses the backlog, oldest first, while the analyzer is free and
    /// none of the deployment's queued batches came first; `Analysed` once
    /// it is empty.
    fn drain_backlog(&mut self, engine: &Engine) -> Inline {
        if !self.backlog.is_empty() && self.counters.queued_packets.load(Ordering::Acquire) != 0 {
            return Inline::Busy;
        }
        while let Some(b) = self.backlog.front() {
            match engine.try_analyse(b, &self.counters) {
                Inline::Analysed => {
                    let mut b = self.backlog.pop_front().expect("a batch");
                    self.backlog_packets -= u64::from(b.count);
                    b.buf.clear();
                    let _ = self.spares.0.try_send(b.buf);
                }
                other => return other,
            }
        }
        Inline::Analysed
    }

    /// The analyzer is closed (`Closed`) or failed here (`Failed`): nothing
    /// more is handed over; the deployment thread is woken to fail the
    /// deployment.
    fn ended(&mut self, how: Inline) {
        if how == Inline::Failed {
            let _ = self.tx.try_send(DepMsg::Wake);
        }
        self.discard_backlog();
        self.batch.clear();
        self.dead = true;
    }

    fn discard_backlog(&mut self) {
        self.backlog.clear();
        self.backlog_packets = 0;
    }

    fn hand_over(&mut self) {
        if self.analyse_here
            && let Some(engine) = self.engine.clone()
        {
            // Earlier batches first, then this one.
            let mut outcome = self.drain_backlog(&engine);
            if outcome == Inline::Analysed
                && self.counters.queued_packets.load(Ordering::Acquire) == 0
            {
                let b = &self.batch;
                outcome = engine.try_analyse(b, &self.counters);
                if outcome == Inline::Analysed {
                    return self.batch.clear();
                }
            } else if outcome == Inline::Analysed {
                outcome = Inline::Busy;
            }
            match outcome {
                Inline::Busy if self.wait_for_room && self.backlog.is_empty() => {
                    // A lossless replay waits for room in the queue instead.
                }
                Inline::Busy => return self.hold_back(),
                ended => return self.ended(ended),
            }
        }
        let batch = std::mem::take(&mut self.batch);
        self.enqueue(batch);
    }

    /// Keeps the batch in the backlog, or drops and counts it if the
    /// budget is spent (a lossless replay waits for room instead).
    fn hold_back(&mut self) {
        let count = u64::from(self.batch.count);
        while self.wait_for_room && self.over_budget(count) {
            if self.counters.gone.load(Ordering::Acquire) {
                return self.ended(Inline::Closed);
            }
            std::thread::sleep(ROOM_POLL);
            self.retry_backlog();
            if self.dead {
                return;
            }
        }
        if self.over_budget(count) {
            self.counters.dropped.fetch_add(count, Ordering::Relaxed);
            return self.batch.clear();
        }
        self.backlog_packets += count;
        let batch = std::mem::take(&mut self.batch);
        self.backlog.push_back(batch);
    }

    /// Puts a batch in the deployment's queue (or drops and counts it).
    fn enqueue(&mut self, mut batch: Batch) {
        if batch.buf.len() <= SMALL_BATCH {
            // Only its bytes go; the tap keeps the buffer.
            let copy = batch.buf.to_vec();
            let mut own = std::mem::replace(&mut batch.buf, copy);
            own.clear();
            if self.batch.buf.capacity() == 0 {
                self.batch.buf = own;
            } else {
                let _ = self.spares.0.try_send(own);
            }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::parse::{LinkType, parse};
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
    pub(crate) fn open_tap(batch_packets: u32, snap_len: usize) -> (Tap, Receiver<DepMsg>) {
        let (tx, rx) = flume::bounded(1024);
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

    /// A partial batch is counted from its first packet until it is in the
    /// queue: at 0 every packet offered is queued, so a command may skip
    /// the flush.
    #[test]
    fn a_partial_batch_is_counted_until_it_is_queued() {
        let (mut tap, rx) = open_tap(3, usize::MAX);
        let partial = |t: &Tap| t.counters.partial_taps.load(Ordering::Acquire);
        let (h, data) = frame();
        assert_eq!(partial(&tap), 0);
        tap.offer(&h, &data);
        tap.offer(&h, &data);
        assert_eq!(partial(&tap), 1);
        assert!(rx.is_empty());
        // The third fills the batch: queued, nothing partial.
        tap.offer(&h, &data);
        assert_eq!(partial(&tap), 0);
        assert_eq!(rx.len(), 1);
        tap.offer(&h, &data);
        assert_eq!(partial(&tap), 1);
        tap.flush();
        assert_eq!(partial(&tap), 0);
        assert_eq!(rx.len(), 2);
        // Flushing nothing changes nothing.
        tap.flush();
        assert_eq!(partial(&tap), 0);
    }

    /// A tap is behind once its queue cannot take another full batch,
    /// until the deployment drains it, and never once the deployment's
    /// thread has ended.
    #[test]
    fn a_tap_is_behind_while_its_queue_is_full() {
        let (tap, rx) = open_tap(4, usize::MAX);
        let mut tap = tap.with_queue_budget(8);
        let (h, data) = frame();
        assert!(!tap.behind());
        for _ in 0..4 {
            tap.offer(&h, &data);
        }
        assert!(!tap.behind(), "room for another batch of 4");
        for _ in 0..4 {
            tap.offer(&h, &data);
        }
        assert!(tap.behind(), "8 of 8 queued");
        // The deployment takes a batch.
        let Ok(DepMsg::Batch(b)) = rx.try_recv() else {
            panic!("a batch was queued")
        };
        tap.counters
            .queued_packets
            .fetch_sub(u64::from(b.count), Ordering::AcqRel);
        assert!(!tap.behind());
        for _ in 0..4 {
            tap.offer(&h, &data);
        }
        assert!(tap.behind());
        tap.counters.gone.store(true, Ordering::Release);
        assert!(!tap.behind(), "nothing drains a gone deployment's queue");
    }
}
