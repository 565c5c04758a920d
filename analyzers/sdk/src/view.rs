//! Helpers over the packet view: TCP header fields, L4 payload lengths,
//! directional and bidirectional flow keys, a fast hasher for flow tables
//! and tumbling time windows on packet time.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::abi::NO_OFFSET;
use crate::Packet;

/// The TCP header fields the host's parsed view does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags (`abi::tcp`).
    pub flags: u8,
    /// Receive window (unscaled).
    pub window: u16,
    /// Payload bytes of the segment on the wire (from the IP length, so
    /// right even when the capture was cut short).
    pub payload_len: u32,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

impl<'a> Packet<'a> {
    /// Bytes from the L4 header on, empty if none was found.
    pub fn l4(&self) -> &'a [u8] {
        let at = self.header.l4_offset;
        if at == NO_OFFSET {
            return &[];
        }
        self.data.get(at as usize..).unwrap_or(&[])
    }

    /// Length of the IP payload (L4 header + data) on the wire, from the IP
    /// header's length field; `None` if not IP or the IP header is not
    /// fully captured.
    pub fn ip_payload_len(&self) -> Option<u32> {
        let at = self.header.l3_offset;
        if at == NO_OFFSET || self.header.l4_offset == NO_OFFSET {
            return None;
        }
        let ip = self.data.get(at as usize..)?;
        let ext = u32::from(self.header.l4_offset.checked_sub(at)?);
        match self.header.ip_version {
            // Total length minus the whole IP header.
            4 => u32::from(be16(ip, 2)?).checked_sub(ext),
            // Payload length counts extension headers, which sit before L4.
            6 => (u32::from(be16(ip, 4)?) + 40).checked_sub(ext),
            _ => None,
        }
    }

    /// L4 payload bytes on the wire for TCP and UDP (0 for other
    /// protocols), even when the capture was cut short.
    pub fn payload_len(&self) -> u32 {
        if let Some(t) = self.tcp() {
            return t.payload_len;
        }
        if self.header.ip_proto == 17 {
            if let Some(n) = self.ip_payload_len() {
                return n.saturating_sub(8);
            }
        }
        0
    }

    /// The TCP header, if this is a TCP packet whose first 16 header bytes
    /// were captured.
    pub fn tcp(&self) -> Option<Tcp> {
        if self.header.ip_proto != 6 || self.header.ip_version == 0 {
            return None;
        }
        let l4 = self.l4();
        let header_len = u32::from(*l4.get(12)? >> 4) * 4;
        let payload_len = self
            .ip_payload_len()
            .map_or(0, |n| n.saturating_sub(header_len));
        Some(Tcp {
            seq: be32(l4, 4)?,
            ack: be32(l4, 8)?,
            flags: *l4.get(13)?,
            window: be16(l4, 14)?,
            payload_len,
        })
    }

    /// The directional 5-tuple, if the packet is IP.
    pub fn flow(&self) -> Option<FlowKey> {
        let h = &self.header;
        if h.ip_version != 4 && h.ip_version != 6 {
            return None;
        }
        Some(FlowKey {
            version: h.ip_version,
            proto: h.ip_proto,
            src: h.src_addr,
            dst: h.dst_addr,
            sport: h.src_port,
            dport: h.dst_port,
        })
    }
}

/// A directional 5-tuple (ports 0 for port-less protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowKey {
    /// 4 or 6.
    pub version: u8,
    /// IP protocol.
    pub proto: u8,
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// Hashes the key as five 64-bit words: flow tables hash every packet's
/// key, and word-sized writes keep that inline and cheap.
impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        state.write_u64(
            u64::from(self.version)
                | u64::from(self.proto) << 8
                | u64::from(self.sport) << 16
                | u64::from(self.dport) << 32,
        );
        state.write_u64(word(&self.src[..8]));
        state.write_u64(word(&self.src[8..]));
        state.write_u64(word(&self.dst[..8]));
        state.write_u64(word(&self.dst[8..]));
    }
}

/// Which way a packet goes relative to its bidirectional key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Source is the key's `src`.
    Forward,
    /// Source is the key's `dst`.
    Reverse,
}

impl FlowKey {
    /// The same flow the other way.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    /// One key for both directions (the lower endpoint as `src`) and the
    /// direction of this packet relative to it.
    pub fn bidirectional(&self) -> (FlowKey, Direction) {
        if (self.src, self.sport) <= (self.dst, self.dport) {
            (*self, Direction::Forward)
        } else {
            (self.reversed(), Direction::Reverse)
        }
    }

    /// Source address.
    pub fn src_ip(&self) -> IpAddr {
        ip(self.version, &self.src)
    }

    /// Destination address.
    pub fn dst_ip(&self) -> IpAddr {
        ip(self.version, &self.dst)
    }
}

/// An address from the view's 16-byte form (IPv4 in the first 4 bytes).
pub fn ip(version: u8, raw: &[u8; 16]) -> IpAddr {
    if version == 4 {
        IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
    } else {
        IpAddr::from(*raw)
    }
}

/// FxHash: a fast non-cryptographic hash for flow tables. Keys come from
/// traffic, so bound every table (a guest's memory is capped anyway).
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A `HashMap` with [`Fx`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
/// A `HashSet` with [`Fx`].
pub type FxHashSet<K> = HashSet<K, BuildHasherDefault<Fx>>;

/// Tumbling windows of packet time: `advance` says when a packet starts a
/// new window, so per-window counters can be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Width, ns (at least 1).
    pub width_ns: u64,
    /// Start of the current window, ns.
    pub start_ns: u64,
    /// False before the first packet.
    pub started: bool,
}

impl Window {
    /// Windows of `width_ns` (0 is taken as 1).
    pub fn new(width_ns: u64) -> Window {
        Window {
            width_ns: width_ns.max(1),
            start_ns: 0,
            started: false,
        }
    }

    /// Moves to the window holding `ts_ns`; true if that is a new window.
    /// Packets older than the current window stay in it.
    pub fn advance(&mut self, ts_ns: u64) -> bool {
        let start = ts_ns - ts_ns % self.width_ns;
        if start > self.start_ns || !self.started {
            self.start_ns = start;
            self.started = true;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::PacketHeader;

    /// Ethernet + IPv4 (total length 20 + 20 + 10) + TCP with 10 data bytes.
    fn tcp_frame() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + 10];
        f[14] = 0x45;
        f[16..18].copy_from_slice(&50u16.to_be_bytes());
        let t = 34;
        f[t + 4..t + 8].copy_from_slice(&1000u32.to_be_bytes());
        f[t + 8..t + 12].copy_from_slice(&7u32.to_be_bytes());
        f[t + 12] = 5 << 4;
        f[t + 13] = 0x18;
        f[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        f
    }

    fn header(cap: usize) -> PacketHeader {
        PacketHeader {
            ip_version: 4,
            ip_proto: 6,
            l3_offset: 14,
            l4_offset: 34,
            payload_offset: 54,
            cap_len: cap as u32,
            wire_len: 64,
            ..PacketHeader::default()
        }
    }

    #[test]
    fn tcp_fields_and_payload_length_survive_a_short_capture() {
        let f = tcp_frame();
        let p = Packet {
            header: header(f.len()),
            data: &f,
        };
        let t = p.tcp().unwrap();
        assert_eq!(
            (t.seq, t.ack, t.flags, t.window, t.payload_len),
            (1000, 7, 0x18, 512, 10)
        );
        assert_eq!(p.payload().len(), 10);
        // Cut after the TCP header: the payload length still comes from IP.
        let cut = Packet {
            header: header(54),
            data: &f[..54],
        };
        assert_eq!(cut.tcp().unwrap().payload_len, 10);
        assert_eq!(cut.payload_len(), 10);
        // Cut inside the TCP header: no TCP view, no panic.
        let cut = Packet {
            header: header(40),
            data: &f[..40],
        };
        assert_eq!(cut.tcp(), None);
        assert_eq!(cut.payload_len(), 0);
    }

    #[test]
    fn bidirectional_keys_meet_and_windows_tumble() {
        let mut a = FlowKey {
            version: 4,
            proto: 6,
            src: [0; 16],
            dst: [0; 16],
            sport: 40000,
            dport: 80,
        };
        a.src[..4].copy_from_slice(&[10, 0, 0, 2]);
        a.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        let (k1, d1) = a.bidirectional();
        let (k2, d2) = a.reversed().bidirectional();
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(a.src_ip().to_string(), "10.0.0.2");

        let mut w = Window::new(1_000);
        assert!(w.advance(5));
        assert!(!w.advance(999), "the first window starts at 0 too");
        assert!(w.advance(2_500));
        assert_eq!(w.start_ns, 2_000);
        assert!(!w.advance(2_999));
        assert!(!w.advance(1_500), "late packets stay in the window");
        assert!(w.advance(3_000));
    }
}
