//! `header-sampler`: keeps the first bytes of matching packets in a
//! bounded ring; its results include a pcap file that tcpdump and
//! Wireshark open.
//!
//! The guest does not know the capture's link type, so samples start at
//! the IP header (`data[l3_offset..]`) and the pcap uses LINKTYPE_RAW
//! (101) with nanosecond timestamps (magic `0xa1b23c4d`, little-endian,
//! version 2.4, snaplen = `snap_bytes`). Each record has `incl_len =
//! min(snap_bytes, bytes captured from the IP header on)` and `orig_len =
//! wire_len - l3_offset`. Packets without an IP header (the host found
//! none, or it lies beyond the captured bytes) are counted in
//! `skipped_non_ip` and never sampled.
//!
//! Params (all optional): `{"snap_bytes": 128, "ring": 1000, "every": 1}`
//! — `snap_bytes` kept per packet (20 to 65535); `ring` samples kept, the
//! oldest overwritten first (1 to 100000); `every`: sample the 1st of every
//! N IP packets (1, N+1, 2N+1, …; 1 to 1000000). The whole pcap must fit in
//! one NATS message: `24 + ring * (16 + snap_bytes)` may be at most
//! 1000000 bytes (under NATS's default 1 MiB max_payload). `configure`
//! takes the same params and keeps the ring: a smaller `ring` drops the
//! oldest samples (counted as overwritten), a smaller `snap_bytes` cuts the
//! kept ones, a new `every` takes effect from the next sample on.
//!
//! Results: `{"seen", "sampled", "kept", "overwritten", "skipped_non_ip",
//! "snap_bytes", "pcap"}` — packets seen; samples taken; samples in the
//! ring now; samples dropped to make room (`sampled = kept +
//! overwritten`); packets without IP; the snap length; and the pcap file
//! (MessagePack binary) of the ring, oldest first.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize, Serializer};
use tm_sdk::{abi::NO_OFFSET, Analyzer, Packet};

/// pcap file header length.
pub const FILE_HEADER_LEN: usize = 24;
/// pcap record header length.
pub const RECORD_HEADER_LEN: usize = 16;
/// The most bytes the pcap may take.
pub const MAX_PCAP_BYTES: u64 = 1_000_000;
/// Nanosecond pcap magic.
pub const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_RAW: packets start with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;

/// Parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Bytes kept per packet, from the IP header on.
    pub snap_bytes: u32,
    /// Samples kept.
    pub ring: u32,
    /// Sample the 1st of every `every` IP packets.
    pub every: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            snap_bytes: 128,
            ring: 1000,
            every: 1,
        }
    }
}

impl Params {
    fn check(self) -> Result<Self, String> {
        if !(20..=65_535).contains(&self.snap_bytes) {
            return Err(format!(
                "snap_bytes = {}: must be 20 to 65535",
                self.snap_bytes
            ));
        }
        if !(1..=100_000).contains(&self.ring) {
            return Err(format!("ring = {}: must be 1 to 100000", self.ring));
        }
        if !(1..=1_000_000).contains(&self.every) {
            return Err(format!("every = {}: must be 1 to 1000000", self.every));
        }
        let worst = FILE_HEADER_LEN as u64
            + u64::from(self.ring) * (RECORD_HEADER_LEN as u64 + u64::from(self.snap_bytes));
        if worst > MAX_PCAP_BYTES {
            return Err(format!(
                "ring = {} with snap_bytes = {}: the pcap could take {} bytes, more than {}",
                self.ring, self.snap_bytes, worst, MAX_PCAP_BYTES
            ));
        }
        Ok(self)
    }
}

/// Bytes that serialize as MessagePack binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binary(pub Vec<u8>);

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Results {
    /// Packets seen.
    pub seen: u64,
    /// Samples taken.
    pub sampled: u64,
    /// Samples in the ring now.
    pub kept: u64,
    /// Samples dropped from the ring to make room.
    pub overwritten: u64,
    /// Packets without an IP header.
    pub skipped_non_ip: u64,
    /// Bytes kept per packet.
    pub snap_bytes: u32,
    /// The ring as a pcap file, oldest first.
    pub pcap: Binary,
}

/// One kept packet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample {
    ts_ns: u64,
    orig_len: u32,
    bytes: Vec<u8>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    seen: u64,
    sampled: u64,
    overwritten: u64,
    skipped_non_ip: u64,
    /// IP packets to pass before the next sample.
    skip: u32,
}

/// What a snapshot holds: the counters and the ring as a pcap file.
#[derive(Serialize)]
struct SavedOut {
    counters: Counters,
    pcap: Binary,
}

#[derive(Deserialize)]
struct SavedIn {
    counters: Counters,
    #[serde(with = "bytes_in")]
    pcap: Vec<u8>,
}

/// Reads MessagePack binary (or an array of numbers) as bytes.
mod bytes_in {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use std::fmt;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// The analyzer.
pub struct HeaderSampler {
    params: Params,
    c: Counters,
    ring: VecDeque<Sample>,
}

impl HeaderSampler {
    /// Writes the ring as a pcap file.
    fn pcap(&self) -> Vec<u8> {
        let len = FILE_HEADER_LEN
            + self
                .ring
                .iter()
                .map(|s| RECORD_HEADER_LEN + s.bytes.len())
                .sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC_NS.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.params.snap_bytes.to_le_bytes());
        out.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        for s in &self.ring {
            out.extend_from_slice(&((s.ts_ns / 1_000_000_000) as u32).to_le_bytes());
            out.extend_from_slice(&((s.ts_ns % 1_000_000_000) as u32).to_le_bytes());
            out.extend_from_slice(&(s.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&s.orig_len.to_le_bytes());
            out.extend_from_slice(&s.bytes);
        }
        out
    }

    /// Drops the oldest samples beyond `ring` and cuts samples to `snap_bytes`.
    fn shrink(&mut self) {
        while self.ring.len() > self.params.ring as usize {
            self.ring.pop_front();
            self.c.overwritten += 1;
        }
        let snap = self.params.snap_bytes as usize;
        for s in self.ring.iter_mut() {
            s.bytes.truncate(snap);
        }
    }
}

/// Reads back a pcap file written by [`HeaderSampler::pcap`].
fn read_pcap(b: &[u8]) -> Result<VecDeque<Sample>, String> {
    let u32_at = |at: usize| -> Option<u32> {
        let w = b.get(at..at + 4)?;
        Some(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    if u32_at(0) != Some(MAGIC_NS) || u32_at(20) != Some(LINKTYPE_RAW) {
        return Err("saved ring is not a raw-IP nanosecond pcap".into());
    }
    let mut ring = VecDeque::new();
    let mut at = FILE_HEADER_LEN;
    while at < b.len() {
        let bad = || format!("saved ring: bad record at byte {}", at);
        let sec = u32_at(at).ok_or_else(bad)?;
        let nsec = u32_at(at + 4).ok_or_else(bad)?;
        let incl = u32_at(at + 8).ok_or_else(bad)? as usize;
        let orig_len = u32_at(at + 12).ok_or_else(bad)?;
        let bytes = b
            .get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + incl)
            .ok_or_else(bad)?
            .to_vec();
        ring.push_back(Sample {
            ts_ns: u64::from(sec) * 1_000_000_000 + u64::from(nsec),
            orig_len,
            bytes,
        });
        at += RECORD_HEADER_LEN + incl;
    }
    Ok(ring)
}

impl Analyzer for HeaderSampler {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(HeaderSampler {
            params: params.check()?,
            c: Counters::default(),
            ring: VecDeque::new(),
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        self.c.seen += 1;
        let ip = match (h.ip_version, h.l3_offset) {
            (4, at) | (6, at) if at != NO_OFFSET => p.data.get(usize::from(at)..),
            _ => None,
        };
        let ip = match ip {
            Some(ip) if !ip.is_empty() => ip,
            _ => {
                self.c.skipped_non_ip += 1;
                return;
            }
        };
        if self.c.skip > 0 {
            self.c.skip -= 1;
            return;
        }
        self.c.skip = self.params.every - 1;
        self.c.sampled += 1;
        let orig_len = h.wire_len.saturating_sub(u32::from(h.l3_offset));
        let incl = ip.len().min(self.params.snap_bytes as usize);
        // Reuse the oldest sample's buffer once the ring is full.
        let mut bytes = if self.ring.len() >= self.params.ring as usize {
            self.c.overwritten += 1;
            self.ring.pop_front().map(|s| s.bytes).unwrap_or_default()
        } else {
            Vec::with_capacity(incl)
        };
        bytes.clear();
        bytes.extend_from_slice(&ip[..incl]);
        self.ring.push_back(Sample {
            ts_ns: h.ts_ns,
            orig_len: orig_len.max(incl as u32),
            bytes,
        });
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        self.c.skip = self.c.skip.min(self.params.every - 1);
        self.shrink();
        Ok(())
    }

    fn results(&self) -> Results {
        Results {
            seen: self.c.seen,
            sampled: self.c.sampled,
            kept: self.ring.len() as u64,
            overwritten: self.c.overwritten,
            skipped_non_ip: self.c.skipped_non_ip,
            snap_bytes: self.params.snap_bytes,
            pcap: Binary(self.pcap()),
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&SavedOut {
            counters: self.c,
            pcap: Binary(self.pcap()),
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: SavedIn = tm_sdk::decode_state(state)?;
        self.ring = read_pcap(&saved.pcap)?;
        self.c = saved.counters;
        self.c.skip = self.c.skip.min(self.params.every - 1);
        // The saved state may come from larger bounds.
        self.shrink();
        Ok(())
    }
}

tm_sdk::export_analyzer!(HeaderSampler);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_sdk::abi::PacketHeader;

    /// An Ethernet frame of `len` bytes holding IPv4 whose bytes are
    /// numbered from the IP header on, captured up to `cap`.
    fn ipv4(n: u8, len: usize, cap: usize, ts: u64) -> (PacketHeader, Vec<u8>) {
        let mut data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_sub(14)).collect();
        data[14] = 0x45;
        data[15] = n;
        data.truncate(cap);
        let h = PacketHeader {
            ts_ns: ts,
            wire_len: len as u32,
            cap_len: data.len() as u32,
            l3_offset: 14,
            l4_offset: 34,
            ip_version: 4,
            ..PacketHeader::default()
        };
        (h, data)
    }

    fn feed(a: &mut HeaderSampler, (h, data): (PacketHeader, Vec<u8>)) {
        a.on_packet(&Packet {
            header: h,
            data: &data,
        });
    }

    #[test]
    fn the_ring_keeps_the_latest_samples_as_a_pcap() {
        let mut a = HeaderSampler::init(Params {
            snap_bytes: 40,
            ring: 3,
            every: 1,
        })
        .unwrap();
        for n in 0..5u8 {
            feed(&mut a, ipv4(n, 100, 100, 1_000_000_000 * 7 + u64::from(n)));
        }
        // Short capture, and a non-IP frame.
        feed(&mut a, ipv4(5, 100, 30, 8_000_000_000));
        feed(
            &mut a,
            (
                PacketHeader {
                    l3_offset: NO_OFFSET,
                    ..PacketHeader::default()
                },
                vec![0; 60],
            ),
        );
        let r = a.results();
        assert_eq!(
            (
                r.seen,
                r.sampled,
                r.kept,
                r.overwritten,
                r.skipped_non_ip,
                r.snap_bytes
            ),
            (7, 6, 3, 3, 1, 40)
        );
        let pcap = r.pcap.0;
        assert_eq!(&pcap[..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        assert_eq!(&pcap[16..24], &[40, 0, 0, 0, 101, 0, 0, 0]);
        assert_eq!(pcap.len(), 24 + 2 * (16 + 40) + 16 + 16);
        // The oldest kept is packet 3.
        let rec = &pcap[24..];
        assert_eq!(
            &rec[..16],
            &[7, 0, 0, 0, 3, 0, 0, 0, 40, 0, 0, 0, 86, 0, 0, 0]
        );
        assert_eq!((rec[16], rec[17], rec[16 + 39]), (0x45, 3, 39));
        let last = &pcap[24 + 2 * 56..];
        assert_eq!(
            &last[8..16],
            &[16, 0, 0, 0, 86, 0, 0, 0],
            "cut capture: 16 bytes of 86"
        );
        assert_eq!(read_pcap(&pcap).unwrap(), a.ring);
    }

    #[test]
    fn every_nth_ip_packet_and_configure() {
        let mut a = HeaderSampler::init(Params {
            every: 3,
            ..Params::default()
        })
        .unwrap();
        for n in 0..10u8 {
            feed(&mut a, ipv4(n, 60, 60, u64::from(n)));
        }
        let r = a.results();
        assert_eq!((r.seen, r.sampled, r.kept), (10, 4, 4));
        let firsts: Vec<u8> = a.ring.iter().map(|s| s.bytes[1]).collect();
        assert_eq!(firsts, vec![0, 3, 6, 9]);
        assert_eq!(a.ring[0].bytes.len(), 46);
        a.configure(Params {
            snap_bytes: 20,
            ring: 2,
            every: 1,
        })
        .unwrap();
        let r = a.results();
        assert_eq!((r.sampled, r.kept, r.overwritten), (4, 2, 2));
        assert!(a.ring.iter().all(|s| s.bytes.len() == 20));
        feed(&mut a, ipv4(10, 60, 60, 10));
        assert_eq!(a.results().sampled, 5, "every = 1 from the next packet");
    }

    #[test]
    fn snapshot_restores_the_ring_and_bad_params_are_named() {
        let mut a = HeaderSampler::init(Params::default()).unwrap();
        for n in 0..3u8 {
            feed(&mut a, ipv4(n, 200, 200, 5_000_000_123 + u64::from(n)));
        }
        let saved = a.snapshot().unwrap();
        let mut b = HeaderSampler::init(Params::default()).unwrap();
        b.restore(&saved).unwrap();
        assert_eq!(b.results(), a.results());
        assert!(b.restore(&[0x80]).is_err());
        for (p, needle) in [
            (
                Params {
                    snap_bytes: 10,
                    ..Params::default()
                },
                "snap_bytes = 10",
            ),
            (
                Params {
                    ring: 0,
                    ..Params::default()
                },
                "ring = 0",
            ),
            (
                Params {
                    every: 0,
                    ..Params::default()
                },
                "every = 0",
            ),
            (
                Params {
                    ring: 100_000,
                    ..Params::default()
                },
                "ring = 100000 with snap_bytes = 128",
            ),
        ] {
            let err = HeaderSampler::init(p).err().unwrap();
            assert!(err.contains(needle), "{}", err);
        }
    }
}
