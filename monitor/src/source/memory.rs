//! Packets held in memory, handed out like a lossless replay: tests and
//! benchmarks feed the whole data path (link thread, taps, deployments)
//! with them, without writing a capture file.

use super::{Next, PacketSource};

/// One packet of a [`MemorySource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Capture time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire (at least `data.len()`).
    pub wire_len: u32,
    /// Captured bytes.
    pub data: Vec<u8>,
}

/// Packets in memory, replayed once, in order.
pub struct MemorySource {
    dlt: i32,
    packets: Vec<Packet>,
    at: usize,
    lossless: bool,
}

impl MemorySource {
    /// A source handing out `packets` of link type `dlt` (a pcap
    /// LINKTYPE), waiting for room in full queues as a lossless replay.
    #[must_use]
    pub fn new(dlt: i32, packets: Vec<Packet>) -> Self {
        MemorySource {
            dlt,
            packets,
            at: 0,
            lossless: true,
        }
    }

    /// Every captured frame of `frames`, one per µs from `start_ns`, whole
    /// (wire length = captured length).
    #[must_use]
    pub fn frames(dlt: i32, start_ns: u64, frames: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let packets = frames
            .into_iter()
            .enumerate()
            .map(|(i, data)| Packet {
                ts_ns: start_ns + i as u64 * 1_000,
                wire_len: data.len() as u32,
                data,
            })
            .collect();
        MemorySource::new(dlt, packets)
    }

    /// Drops batches that do not fit a deployment's queue, as a live
    /// capture does, instead of waiting for room.
    #[must_use]
    pub fn lossy(mut self) -> Self {
        self.lossless = false;
        self
    }
}

impl PacketSource for MemorySource {
    fn dlt(&self) -> i32 {
        self.dlt
    }

    fn label(&self) -> String {
        format!("memory:{} packets", self.packets.len())
    }

    fn waits_for_deployments(&self) -> bool {
        true
    }

    fn lossless(&self) -> bool {
        self.lossless
    }

    fn next(&mut self) -> Result<Next<'_>, String> {
        let Some(p) = self.packets.get(self.at) else {
            return Ok(Next::End);
        };
        self.at += 1;
        Ok(Next::Packet {
            ts_ns: p.ts_ns,
            wire_len: p.wire_len,
            data: &p.data,
        })
    }
}
