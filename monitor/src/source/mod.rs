//! Packet sources: where a link's packets come from. A link thread
//! ([`crate::link`]) reads one [`PacketSource`]: a live interface
//! ([`LiveSource`]), a capture file replayed ([`ReplaySource`], read by
//! [`mod@file`]), or packets held in memory ([`MemorySource`], for tests and
//! benchmarks that feed the data path without a file).

use std::time::Duration;

use crate::config::{LinkConfig, Source};

pub mod file;
mod live;
mod memory;
mod replay;

pub use live::LiveSource;
pub use memory::{MemorySource, Packet};
pub use replay::ReplaySource;

/// What a source has next.
pub enum Next<'a> {
    /// A packet: capture time (ns since the Unix epoch), length on the
    /// wire, captured bytes.
    Packet {
        /// Capture time, ns.
        ts_ns: u64,
        /// Length on the wire.
        wire_len: u32,
        /// Captured bytes.
        data: &'a [u8],
    },
    /// Nothing arrived for a while (a live capture's timeout): partial
    /// batches go to their deployments now.
    Idle,
    /// The next packet is due after this long (a paced replay).
    Wait(Duration),
    /// Nothing this time; ask again at once (a looped replay starting over).
    Again,
    /// No more packets.
    End,
}

/// Packets the capture lost before the monitor saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Dropped by the kernel (the capture buffer was full).
    pub kernel: u64,
    /// Dropped by the interface or its driver.
    pub interface: u64,
}

/// Where a link's packets come from, read by the link's thread only (a
/// configured source is opened on that thread).
pub trait PacketSource {
    /// The packets' pcap link type (DLT).
    fn dlt(&self) -> i32;

    /// The source as reported on the bus (`iface:eth0`, `pcap:/path`).
    fn label(&self) -> String;

    /// Whether reading waits for the link's first deployments: packets
    /// read into no deployment would be lost from a file for good.
    fn waits_for_deployments(&self) -> bool;

    /// Whether a full deployment queue makes the link wait instead of
    /// dropping (a lossless replay).
    fn lossless(&self) -> bool {
        false
    }

    /// The next packet, or why there is none now.
    ///
    /// # Errors
    /// The source failed (a truncated file, a capture error); the link
    /// reports it and reads no more.
    fn next(&mut self) -> Result<Next<'_>, String>;

    /// Hands the packets ready now, at most `max`, to `each` (capture
    /// time in ns, length on the wire, captured bytes), for a source that
    /// reads in bursts (a live capture's ring block, read in one call
    /// without copying a packet out): how many, 0 if none came within the
    /// source's short wait. `None`: the source reads one packet at a time
    /// with [`PacketSource::next`].
    ///
    /// # Errors
    /// The source failed; the link reports it and reads no more.
    fn burst(
        &mut self,
        _max: usize,
        _each: &mut dyn FnMut(u64, u32, &[u8]),
    ) -> Option<Result<usize, String>> {
        None
    }

    /// Capture drops so far, where the source counts them.
    fn drops(&mut self) -> Option<Drops> {
        None
    }

    /// Whether [`PacketSource::set_kernel_filter`] filters anything.
    fn has_kernel_filter(&self) -> bool {
        false
    }

    /// Installs a BPF expression in the kernel ("" captures everything).
    ///
    /// # Errors
    /// The expression does not compile for this source.
    fn set_kernel_filter(&mut self, _expr: &str) -> Result<(), String> {
        Ok(())
    }
}

impl<S: PacketSource + ?Sized> PacketSource for Box<S> {
    fn dlt(&self) -> i32 {
        (**self).dlt()
    }
    fn label(&self) -> String {
        (**self).label()
    }
    fn waits_for_deployments(&self) -> bool {
        (**self).waits_for_deployments()
    }
    fn lossless(&self) -> bool {
        (**self).lossless()
    }
    #[inline]
    fn next(&mut self) -> Result<Next<'_>, String> {
        (**self).next()
    }
    fn burst(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(u64, u32, &[u8]),
    ) -> Option<Result<usize, String>> {
        (**self).burst(max, each)
    }
    fn drops(&mut self) -> Option<Drops> {
        (**self).drops()
    }
    fn has_kernel_filter(&self) -> bool {
        (**self).has_kernel_filter()
    }
    fn set_kernel_filter(&mut self, expr: &str) -> Result<(), String> {
        (**self).set_kernel_filter(expr)
    }
}

/// A configured link's source, opened.
pub enum Opened {
    /// A live interface: one capture per capture thread.
    Live(Vec<LiveSource>),
    /// A capture file.
    Replay(Box<ReplaySource>),
}

/// Opens the source a link's configuration names.
///
/// # Errors
/// A message naming the interface or file that cannot be opened.
pub fn open(config: &LinkConfig) -> Result<Opened, String> {
    match config.source() {
        Source::Pcap(path, replay) => {
            Ok(Opened::Replay(Box::new(ReplaySource::open(path, replay)?)))
        }
        Source::Interface(name) => Ok(Opened::Live(match config.capture_threads {
            0 | 1 => vec![LiveSource::open(&name, config.snaplen, config.buffer_mb)?],
            n => LiveSource::open_fanout(&name, config.snaplen, config.buffer_mb, n as usize)?,
        })),
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
