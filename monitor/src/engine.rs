//! A deployment's analyzer instance behind a lock, shared by the
//! deployment's thread and the capture threads allowed to analyse on their
//! own thread (a link whose only deployment it is, where the link's
//! `analyse_on_capture_thread` is on): whoever holds the lock calls the
//! guest.
//!
//! A capture thread analyses a batch itself only when none of its earlier
//! batches waits in the deployment's queue and nobody holds the analyzer;
//! otherwise it queues the batch as always. The deployment thread holds the
//! lock for each message it handles and takes a batch off the queue count
//! only once it has analysed it, so a link's batches reach the analyzer in
//! capture order either way, and commands still fall between batches. The
//! capture thread then spends nothing on handing a batch over: no queue,
//! no wake-up of another thread, no second thread's cache to fill.
//!
//! Once the deployment is unloaded, failed or gone, the instance is closed:
//! no capture thread calls it again. A guest failure met on a capture
//! thread closes it too, and the deployment thread, woken, fails the
//! deployment as if it had met the failure itself.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use wasm_host::Failure;

use crate::guest::Analyzer;
use crate::inbox::{Batch, DepCounters};

/// A deployment's analyzer and whether it may still be called.
pub struct Engine {
    slot: Mutex<Slot>,
}

/// The analyzer, held under the engine's lock.
pub struct Slot {
    /// The instance.
    pub analyzer: Analyzer,
    /// Unloaded, failed or gone: not to be called again.
    closed: bool,
    /// A guest failure a capture thread met, for the deployment thread.
    failure: Option<String>,
}

impl Slot {
    /// Closes the instance: no capture thread calls it from now on.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// A failure met on a capture thread, if one was (taken once).
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }
}

/// What became of a batch offered to [`Engine::try_analyse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// Analysed and counted.
    Analysed,
    /// Someone else holds the analyzer: queue the batch.
    Busy,
    /// The instance is closed: the deployment is ending.
    Closed,
    /// The guest failed on it: the instance is closed, and the deployment
    /// thread has to be woken to fail the deployment.
    Failed,
}

impl Engine {
    /// An open engine around `analyzer`.
    #[must_use]
    pub fn new(analyzer: Analyzer) -> Arc<Self> {
        Arc::new(Engine {
            slot: Mutex::new(Slot {
                analyzer,
                closed: false,
                failure: None,
            }),
        })
    }

    /// Waits for the analyzer (the deployment thread, between messages).
    /// A capture thread that panicked holding it does not stop the
    /// deployment thread: the instance is closed to capture threads then.
    pub fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|poisoned| {
            let mut slot = poisoned.into_inner();
            slot.closed = true;
            slot
        })
    }

    /// Closes the instance (the deployment thread ended, however it ended).
    pub fn close(&self) {
        self.lock().close();
    }

    /// Analyses `batch` on the calling thread if the analyzer is free and
    /// open, counting it as the deployment thread would.
    pub fn try_analyse(&self, batch: &Batch, counters: &DepCounters) -> Inline {
        let mut slot = match self.slot.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::WouldBlock) => return Inline::Busy,
            Err(TryLockError::Poisoned(_)) => return Inline::Closed,
        };
        if slot.closed {
            return Inline::Closed;
        }
        let outcome = analyse(&mut slot.analyzer, batch, counters);
        sync_counters(&slot.analyzer, counters);
        match outcome {
            Ok(()) => Inline::Analysed,
            Err(f) => {
                slot.closed = true;
                slot.failure = Some(f.to_string());
                Inline::Failed
            }
        }
    }
}

/// Hands `batch` to the analyzer and counts its packets as analysed
/// (whichever thread calls it).
///
/// # Errors
/// The guest's failure; nothing is counted then.
pub fn analyse(a: &mut Analyzer, batch: &Batch, c: &DepCounters) -> Result<(), Failure> {
    a.on_packets(&batch.buf, batch.count)?;
    c.packets_in
        .fetch_add(u64::from(batch.count), Ordering::Relaxed);
    c.bytes_in.fetch_add(batch.wire_bytes, Ordering::Relaxed);
    Ok(())
}

/// Copies the instance's call counters into the deployment's.
pub fn sync_counters(a: &Analyzer, c: &DepCounters) {
    c.guest_calls.store(a.calls, Ordering::Relaxed);
    c.guest_time_us
        .store(a.guest_time.as_micros() as u64, Ordering::Relaxed);
    c.memory_bytes.store(a.memory_bytes(), Ordering::Relaxed);
}
