//! A deployment's inbox: the packet batches the link threads hand it and
//! the commands the service sends it, in one queue so that commands fall
//! between batches in capture order; and the counters both sides update.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus_schema::{BlobRef, DeploymentStats, ErrorBody, ResultWindow, Value};
use tokio::sync::oneshot;

use crate::guest::Analyzer;

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
    pub home: Option<flume::Sender<Vec<u8>>>,
}

impl Batch {
    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.wire_bytes = 0;
    }

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
    /// Periodic windows the outbox shed.
    pub shed_windows: AtomicU64,
    /// Alerts the outbox shed.
    pub shed_events: AtomicU64,
    /// Packets in batches waiting in the queue (the taps' budget).
    pub queued_packets: AtomicU64,
    /// Set when the deployment thread has ended (a lossless tap waiting
    /// for room stops waiting).
    pub gone: std::sync::atomic::AtomicBool,
    /// Taps of the deployment holding a partial batch (raised by a tap's
    /// first packet into an empty batch, lowered once the batch is queued):
    /// at 0 a command need not flush the links first.
    pub partial_taps: std::sync::atomic::AtomicU32,
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
            shed_windows: self.shed_windows.load(Ordering::Relaxed),
            shed_events: self.shed_events.load(Ordering::Relaxed),
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
    /// Replace the analyzer by this instance of another module (`BlobRef`),
    /// its state carried over; between two batches, so every packet is
    /// analysed by exactly one of the two.
    Upgrade(
        Box<Upgrade>,
        oneshot::Sender<Result<Duration, UpgradeError>>,
    ),
    /// Look at the analyzer now: a capture thread analysing on its own
    /// thread met a guest failure ([`crate::engine`]).
    Wake,
}

/// What an upgrade hands the deployment thread.
pub struct Upgrade {
    /// The new module's instance, initialised with the deployment's params
    /// (or `params`).
    pub analyzer: Box<Analyzer>,
    /// The new module.
    pub blob: BlobRef,
    /// New params the instance was given, to record; `None`: unchanged.
    pub params: Option<Value>,
}

/// Why an upgrade was refused; the old analyzer keeps running unless its
/// own snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The new module reads more of each packet than the taps keep for
    /// the old one.
    #[error(
        "the new module reads {new} bytes of each packet, the running one {old}: load it as a new deployment"
    )]
    SnapLen {
        /// The running module's `tm_snap_len`.
        old: usize,
        /// The new module's.
        new: usize,
    },
    /// The running analyzer could not give its state (it has failed).
    #[error("the running analyzer could not save its state: {0}")]
    Snapshot(String),
    /// The new module refused the state (`tm_restore` said no).
    #[error("the new module refused the running analyzer's state: {0}")]
    RestoreRefused(String),
    /// The new module does not take the state's version.
    #[error("the new module does not take the running analyzer's state: {0}")]
    StateVersion(String),
    /// The new module trapped or hit a limit taking the state.
    #[error("the new module failed taking the running analyzer's state: {0}")]
    RestoreTrapped(String),
    /// The deployment had failed before the upgrade was its turn.
    #[error("the deployment failed before the upgrade: {0}")]
    Failed(String),
}
