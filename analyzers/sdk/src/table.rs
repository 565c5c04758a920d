//! [`FlowTable`]: a map from [`FlowKey`] to per-flow state, made for the
//! per-packet update of a flow analyzer.
//!
//! IPv4 keys, nearly all of the traffic, are packed into two 64-bit words
//! and kept with their value in one open-addressing array (linear probing,
//! at most half full): a lookup is one multiply, and usually one slot read
//! and a two-word compare. A general hash map did the same job in two to
//! three times the instructions in WebAssembly, where the compiler keeps
//! less in registers. IPv6 keys go to an [`FxHashMap`].

use crate::abi::{off, PacketHeader, RECORD_HEADER_LEN};
use crate::view::{FlowKey, FxHashMap};
use crate::Packet;

/// Slots of a fresh table (a power of two).
const FIRST_CAPACITY: usize = 64;

/// An IPv4 key in two words: `a` = source << 32 | destination (each read
/// little-endian), `b` =
/// destination port << 48 | source port << 32 | protocol << 8 | 4 (the two
/// ports as one little-endian word, as they lie in a record header). `b` is
/// never 0, so 0 marks an empty slot.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Packed {
    a: u64,
    b: u64,
}

impl Packed {
    #[inline]
    fn of(k: &FlowKey) -> Option<Packed> {
        if k.version != 4 {
            return None;
        }
        Some(Packed::new(&k.src, &k.dst, k.sport, k.dport, k.proto))
    }

    /// The key of an IPv4 packet's header, as [`Packed::of`] its flow key.
    #[inline]
    fn of_header(h: &PacketHeader) -> Packed {
        Packed::new(&h.src_addr, &h.dst_addr, h.src_port, h.dst_port, h.ip_proto)
    }

    /// The key of an IPv4 packet from its raw ABI record header.
    #[inline]
    fn of_record(r: &[u8; RECORD_HEADER_LEN]) -> Packed {
        let word =
            |at: usize| u64::from(u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]));
        // DST_PORT follows SRC_PORT: one load for both.
        const _: () = assert!(off::DST_PORT == off::SRC_PORT + 2);
        Packed {
            a: word(off::SRC_ADDR) << 32 | word(off::DST_ADDR),
            b: word(off::SRC_PORT) << 32 | u64::from(r[off::IP_PROTO]) << 8 | 4,
        }
    }

    #[inline]
    fn new(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8) -> Packed {
        // Little-endian: no byte swapping (WebAssembly has no instruction for it).
        let word = |x: &[u8; 16]| u64::from(u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
        Packed {
            a: word(src) << 32 | word(dst),
            b: u64::from(dport) << 48 | u64::from(sport) << 32 | u64::from(proto) << 8 | 4,
        }
    }

    fn key(self) -> FlowKey {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&((self.a >> 32) as u32).to_le_bytes());
        dst[..4].copy_from_slice(&(self.a as u32).to_le_bytes());
        FlowKey {
            version: 4,
            proto: (self.b >> 8) as u8,
            src,
            dst,
            sport: (self.b >> 32) as u16,
            dport: (self.b >> 48) as u16,
        }
    }

    /// Slot index in a table of `1 << bits` slots.
    #[inline]
    fn home(self, bits: u32) -> usize {
        let h = (self.a.rotate_left(5) ^ self.b).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - bits)) as usize
    }
}

/// A cache line each (for values up to 48 bytes): one memory load per lookup.
#[repr(align(64))]
struct Slot<V> {
    key: Packed,
    value: V,
}

/// A map from [`FlowKey`] to `V`. Bound it (a guest's memory is capped):
/// check [`FlowTable::len`] before inserting a new flow.
pub struct FlowTable<V> {
    /// `1 << bits` slots, or none before the first insert.
    slots: Vec<Slot<V>>,
    bits: u32,
    v4: usize,
    v6: FxHashMap<FlowKey, V>,
}

impl<V> Default for FlowTable<V> {
    fn default() -> Self {
        FlowTable {
            slots: Vec::new(),
            bits: 0,
            v4: 0,
            v6: FxHashMap::default(),
        }
    }
}

impl<V: Default> FlowTable<V> {
    /// Flows in the table.
    #[inline]
    pub fn len(&self) -> usize {
        self.v4 + self.v6.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot holding `p`, or the empty slot where it would go.
    #[inline]
    fn find(&self, p: Packed) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = p.home(self.bits);
        loop {
            let k = self.slots[i].key;
            if k == p || k.b == 0 {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot holding `p`, if it is there.
    #[inline]
    fn position(&self, p: Packed) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.find(p);
        (self.slots[i].key.b != 0).then_some(i)
    }

    /// The state of `key`'s flow.
    #[inline]
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        match Packed::of(key) {
            Some(p) => {
                let i = self.position(p)?;
                Some(&mut self.slots[i].value)
            }
            None => self.v6.get_mut(key),
        }
    }

    /// Reads the slot where the flow of the packet with this raw record
    /// header starts its search (IPv4 only), so that it is in cache when
    /// the packet's turn comes (see [`Analyzer::prepare`](crate::Analyzer::prepare)).
    #[inline]
    pub fn touch_record(&self, record: &[u8; RECORD_HEADER_LEN]) {
        if record[off::IP_VERSION] != 4 || self.slots.is_empty() {
            return;
        }
        let slot = &self.slots[Packed::of_record(record).home(self.bits)];
        // A load the compiler must keep.
        unsafe { core::ptr::read_volatile(&slot.key.b) };
    }

    /// The state of the flow of packet `p` (its [`Packet::flow`]); `None`
    /// also for a packet without IP. For IPv4 the key is read straight
    /// from the header, never built.
    #[inline]
    pub fn packet_mut(&mut self, p: &Packet) -> Option<&mut V> {
        if p.header.ip_version != 4 {
            return self.v6.get_mut(&p.flow()?);
        }
        let i = self.position(Packed::of_header(&p.header))?;
        Some(&mut self.slots[i].value)
    }

    /// The state of `key`'s flow.
    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        match Packed::of(key) {
            Some(p) => self.position(p).map(|i| &self.slots[i].value),
            None => self.v6.get(key),
        }
    }

    /// Sets `key`'s state, replacing what it had.
    pub fn insert(&mut self, key: FlowKey, value: V) {
        match Packed::of(&key) {
            Some(p) => {
                if (self.v4 + 1) * 2 > self.slots.len() {
                    self.grow();
                }
                let i = self.find(p);
                let slot = &mut self.slots[i];
                if slot.key.b == 0 {
                    self.v4 += 1;
                }
                *slot = Slot { key: p, value };
            }
            None => {
                self.v6.insert(key, value);
            }
        }
    }

    fn empty_slots(n: usize) -> Vec<Slot<V>> {
        (0..n)
            .map(|_| Slot {
                key: Packed { a: 0, b: 0 },
                value: V::default(),
            })
            .collect()
    }

    /// Doubles the slots (or makes the first ones) and puts every key back.
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(FIRST_CAPACITY);
        self.rebuild(n);
    }

    /// Moves every IPv4 entry into `n` fresh slots.
    fn rebuild(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.slots, Self::empty_slots(n));
        self.bits = n.trailing_zeros();
        for slot in old {
            if slot.key.b != 0 {
                let i = self.find(slot.key);
                self.slots[i] = slot;
            }
        }
    }

    /// Keeps the flows for which `keep` says true.
    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &mut V) -> bool) {
        let mut removed = false;
        for slot in self.slots.iter_mut().filter(|s| s.key.b != 0) {
            if !keep(&slot.key.key(), &mut slot.value) {
                slot.key = Packed { a: 0, b: 0 };
                slot.value = V::default();
                self.v4 -= 1;
                removed = true;
            }
        }
        if removed {
            // Linear probing cannot leave holes in a probe run: place the
            // survivors again.
            let n = self.slots.len();
            self.rebuild(n);
        }
        self.v6.retain(|k, v| keep(k, v));
    }

    /// Every flow and its state, IPv4 first, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (FlowKey, &V)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key.b != 0)
            .map(|s| (s.key.key(), &s.value))
            .chain(self.v6.iter().map(|(k, v)| (*k, v)))
    }

    /// Removes every flow.
    pub fn clear(&mut self) {
        *self = FlowTable::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(i: u32, v6: bool) -> FlowKey {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
        dst[..4].copy_from_slice(&(0xc0a8_0000 + i / 7).to_be_bytes());
        if v6 {
            src[15] = 1;
        }
        FlowKey {
            version: if v6 { 6 } else { 4 },
            proto: if i % 3 == 0 { 17 } else { 6 },
            src,
            dst,
            sport: (i % 60_000) as u16,
            dport: 443,
        }
    }

    #[test]
    fn behaves_as_a_map_through_growth_and_removal() {
        let mut t: FlowTable<u64> = FlowTable::default();
        let mut m: BTreeMap<FlowKey, u64> = BTreeMap::new();
        assert!(t.get(&key(1, false)).is_none() && t.is_empty());
        for round in 0..3u64 {
            for i in 0..5_000 {
                let k = key(i * (round as u32 + 1), i % 10 == 0);
                match t.get_mut(&k) {
                    Some(v) => *v += i as u64,
                    None => t.insert(k, i as u64),
                }
                match m.get_mut(&k) {
                    Some(v) => *v += i as u64,
                    None => {
                        m.insert(k, i as u64);
                    }
                }
            }
            assert_eq!(t.len(), m.len());
            let got: BTreeMap<FlowKey, u64> = t.iter().map(|(k, v)| (k, *v)).collect();
            assert_eq!(got, m, "round {round}");
            // Drop every odd value: the survivors are still found.
            t.retain(|_, v| *v % 2 == 0);
            m.retain(|_, v| *v % 2 == 0);
            assert_eq!(t.len(), m.len());
            for (k, v) in &m {
                assert_eq!(t.get(k), Some(v));
            }
        }
        // A packet finds the flow its key was stored under.
        for v6 in [false, true] {
            let k = key(900_001, v6);
            let header = PacketHeader {
                ip_version: k.version,
                ip_proto: k.proto,
                src_addr: k.src,
                dst_addr: k.dst,
                src_port: k.sport,
                dst_port: k.dport,
                ..PacketHeader::default()
            };
            let p = Packet { header, data: &[] };
            assert_eq!(p.flow(), Some(k));
            if !v6 {
                // The raw record gives the same key as the header.
                let mut record = [0u8; RECORD_HEADER_LEN];
                header.write_record(&[], &mut record).unwrap();
                assert!(Packed::of_record(&record) == Packed::of_header(&header));
                t.touch_record(&record);
            }
            assert!(t.packet_mut(&p).is_none());
            t.insert(k, 99);
            assert_eq!(t.packet_mut(&p).map(|v| *v), Some(99));
        }
        let p = Packet {
            header: PacketHeader::default(),
            data: &[],
        };
        assert!(t.packet_mut(&p).is_none(), "not IP");
        // Keys come back exactly as given.
        let k = key(77, false);
        t.insert(k, 5);
        assert_eq!(t.iter().find(|(x, _)| *x == k).map(|(_, v)| *v), Some(5));
        t.clear();
        assert!(t.is_empty() && t.get(&k).is_none());
    }
}
