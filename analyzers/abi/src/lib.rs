//! Analyzer ABI version 1: the contract between the monitor (host) and an
//! analyzer (a core WebAssembly module, no WASI).
//!
//! Both sides use this crate, so the packet record layout is written once.
//! `analyzers/abi/tm_abi.h` documents the same contract for C; a test here
//! checks its numbers and offsets against this crate.
//!
//! # Guest exports
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `tm_abi_version` | `() -> i32` | must return [`ABI_VERSION`] |
//! | `tm_alloc` | `(len: i32) -> i32` | a guest buffer of `len` bytes for the host to write into; 0 if it cannot |
//! | `tm_init` | `(ptr: i32, len: i32) -> i32` | MessagePack params; returns a [`Status`] |
//! | `tm_on_packets` | `(ptr: i32, len: i32, count: i32) -> i32` | a batch of `count` packet records |
//! | `tm_tick` | `(now_ns: i64) -> i32` | periodic timer, Unix time in ns |
//! | `tm_configure` | `(ptr: i32, len: i32) -> i32` | new MessagePack params |
//! | `tm_collect` | `() -> i64` | results as MessagePack: `(ptr << 32) | len`, valid until the next call |
//! | `tm_last_error` | `() -> i64` | UTF-8 message of the last non-OK status, packed as above |
//! | `tm_snapshot` (optional) | `() -> i64` | state to save for a restart, one MessagePack value (strings UTF-8, no extension types, at most 512 arrays and maps deep), packed as above; 0 for none |
//! | `tm_restore` (optional) | `(ptr: i32, len: i32) -> i32` | state from `tm_snapshot`, called right after `tm_init` |
//! | `tm_snap_len` (optional) | `() -> i32` | most captured bytes per packet the analyzer reads (as `u32`; 0: the parsed header alone); asked once, right after `tm_init`; absent: every captured byte |
//!
//! Buffers passed to `tm_init`, `tm_configure` and `tm_restore` were obtained
//! from `tm_alloc` and belong to the guest afterwards (it frees them). The
//! batch buffer is obtained once from `tm_alloc` and reused by the host for
//! every `tm_on_packets` call; the guest must not free it.
//!
//! An analyzer that reads only the parsed header (or the first bytes of
//! each packet) says so with `tm_snap_len`: the host then cuts each
//! record's captured bytes to that length for it (`cap_len` says how many
//! follow; every header field still describes the whole packet), which
//! makes batches smaller and the copies cheaper.
//!
//! # Host imports (module `tm`)
//!
//! | import | signature | meaning |
//! |---|---|---|
//! | `log` | `(level: i32, ptr: i32, len: i32)` | a UTF-8 log line; level 0 error … 4 trace |
//! | `now` | `() -> i64` | Unix time in ns |
//! | `emit` | `(ptr: i32, len: i32) -> i32` | publish an alert event (MessagePack) at once; 0 if accepted |
//!
//! # Packet records
//!
//! A batch is `count` records back to back. Each record is a
//! [`RECORD_HEADER_LEN`]-byte little-endian header ([`PacketHeader`])
//! followed by `cap_len` captured bytes, padded with zeros to a multiple of 8.
#![no_std]

/// The ABI version this crate describes.
pub const ABI_VERSION: u32 = 1;

/// Name of the host import module.
pub const IMPORT_MODULE: &str = "tm";

/// Export names.
pub mod export {
    /// `() -> i32`
    pub const ABI_VERSION: &str = "tm_abi_version";
    /// `(len: i32) -> i32`
    pub const ALLOC: &str = "tm_alloc";
    /// `(ptr: i32, len: i32) -> i32`
    pub const INIT: &str = "tm_init";
    /// `(ptr: i32, len: i32, count: i32) -> i32`
    pub const ON_PACKETS: &str = "tm_on_packets";
    /// `(now_ns: i64) -> i32`
    pub const TICK: &str = "tm_tick";
    /// `(ptr: i32, len: i32) -> i32`
    pub const CONFIGURE: &str = "tm_configure";
    /// `() -> i64`
    pub const COLLECT: &str = "tm_collect";
    /// `() -> i64`
    pub const LAST_ERROR: &str = "tm_last_error";
    /// `() -> i64` (optional)
    pub const SNAPSHOT: &str = "tm_snapshot";
    /// `(ptr: i32, len: i32) -> i32` (optional)
    pub const RESTORE: &str = "tm_restore";
    /// `() -> i32` (optional): captured bytes per packet the guest reads.
    pub const SNAP_LEN: &str = "tm_snap_len";
    /// `() -> i32` (optional): the last `tm_collect`'s results went out in
    /// a published window (periodic or final); what only that window had
    /// to carry may be dropped now.
    pub const PUBLISHED: &str = "tm_published";
    /// `() -> i32` (optional): the deployment is being unloaded; the final
    /// `tm_collect` follows.
    pub const FINISH: &str = "tm_finish";
    /// The guest's linear memory.
    pub const MEMORY: &str = "memory";
}

/// Import names (in module [`IMPORT_MODULE`]).
pub mod import {
    /// `(level: i32, ptr: i32, len: i32)`
    pub const LOG: &str = "log";
    /// `() -> i64`
    pub const NOW: &str = "now";
    /// `(ptr: i32, len: i32) -> i32`
    pub const EMIT: &str = "emit";
}

// What a guest call returns, and the packed `(ptr, len)` of the `i64`
// exports: the same for management apps, so defined once in tm-guest-rt.
pub use tm_guest_rt::{pack, unpack, Status};

/// Length of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 72;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// An offset that is absent (no L3, L4 or payload found).
pub const NO_OFFSET: u16 = 0xffff;

/// Where each field sits in a record header (little-endian), as the C
/// header's `TM_OFF_*`.
pub mod off {
    /// `u32`: header + data + padding.
    pub const RECORD_LEN: usize = 0;
    /// `u32`
    pub const LINK: usize = 4;
    /// `u64`: Unix ns.
    pub const TS_NS: usize = 8;
    /// `u32`
    pub const WIRE_LEN: usize = 16;
    /// `u32`
    pub const CAP_LEN: usize = 20;
    /// `u16`
    pub const L3_OFFSET: usize = 24;
    /// `u16`
    pub const L4_OFFSET: usize = 26;
    /// `u16`
    pub const PAYLOAD_OFFSET: usize = 28;
    /// `u8`: 0, 4 or 6.
    pub const IP_VERSION: usize = 30;
    /// `u8`
    pub const IP_PROTO: usize = 31;
    /// 16 bytes; IPv4 in the first 4.
    pub const SRC_ADDR: usize = 32;
    /// 16 bytes.
    pub const DST_ADDR: usize = 48;
    /// `u16`
    pub const SRC_PORT: usize = 64;
    /// `u16`
    pub const DST_PORT: usize = 66;
    /// `u8`
    pub const TCP_FLAGS: usize = 68;
    /// `u8`: [`flag`](super::flag) bits.
    pub const FLAGS: usize = 69;
    /// `u16`: outer VLAN id, 0 if none.
    pub const VLAN: usize = 70;
}

/// Bits of [`PacketHeader::flags`].
pub mod flag {
    /// The packet could not be fully parsed; parsed fields may be partial.
    pub const PARSE_ERROR: u8 = 1;
    /// The capture was shorter than the packet on the wire.
    pub const TRUNCATED: u8 = 2;
    /// An IP fragment other than the first (no L4 header).
    pub const FRAGMENT: u8 = 4;
    /// Carried one or more 802.1Q tags.
    pub const VLAN: u8 = 8;
}

/// TCP flag bits of [`PacketHeader::tcp_flags`].
pub mod tcp {
    /// FIN
    pub const FIN: u8 = 0x01;
    /// SYN
    pub const SYN: u8 = 0x02;
    /// RST
    pub const RST: u8 = 0x04;
    /// PSH
    pub const PSH: u8 = 0x08;
    /// ACK
    pub const ACK: u8 = 0x10;
    /// URG
    pub const URG: u8 = 0x20;
    /// ECE
    pub const ECE: u8 = 0x40;
    /// CWR
    pub const CWR: u8 = 0x80;
}

/// The host's parsed view of one packet.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `record_len` (header + data + padding) |
/// | 4 | 4 | `link` |
/// | 8 | 8 | `ts_ns` |
/// | 16 | 4 | `wire_len` |
/// | 20 | 4 | `cap_len` |
/// | 24 | 2 | `l3_offset` |
/// | 26 | 2 | `l4_offset` |
/// | 28 | 2 | `payload_offset` |
/// | 30 | 1 | `ip_version` (0, 4 or 6) |
/// | 31 | 1 | `ip_proto` |
/// | 32 | 16 | `src_addr` (IPv4 in the first 4 bytes) |
/// | 48 | 16 | `dst_addr` |
/// | 64 | 2 | `src_port` |
/// | 66 | 2 | `dst_port` |
/// | 68 | 1 | `tcp_flags` |
/// | 69 | 1 | `flags` |
/// | 70 | 2 | `vlan` (outer VLAN id, 0 if none) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketHeader {
    /// Link id within the monitor.
    pub link: u32,
    /// Capture time, Unix ns.
    pub ts_ns: u64,
    /// Length on the wire.
    pub wire_len: u32,
    /// Bytes captured (and following the header).
    pub cap_len: u32,
    /// Offset of the IP header in the captured bytes, or [`NO_OFFSET`].
    pub l3_offset: u16,
    /// Offset of the TCP/UDP/ICMP header, or [`NO_OFFSET`].
    pub l4_offset: u16,
    /// Offset of the L4 payload, or [`NO_OFFSET`].
    pub payload_offset: u16,
    /// 4, 6, or 0 when not IP.
    pub ip_version: u8,
    /// IP protocol number (after IPv6 extension headers), 0 when not IP.
    pub ip_proto: u8,
    /// Source address; IPv4 uses the first 4 bytes.
    pub src_addr: [u8; 16],
    /// Destination address; IPv4 uses the first 4 bytes.
    pub dst_addr: [u8; 16],
    /// TCP/UDP source port, 0 otherwise.
    pub src_port: u16,
    /// TCP/UDP destination port, 0 otherwise.
    pub dst_port: u16,
    /// TCP flags ([`tcp`]), 0 otherwise.
    pub tcp_flags: u8,
    /// [`flag`] bits.
    pub flags: u8,
    /// Outer 802.1Q VLAN id, 0 if none.
    pub vlan: u16,
}

/// Length of a record holding `cap_len` captured bytes, padding included.
pub fn record_len(cap_len: usize) -> usize {
    (RECORD_HEADER_LEN + cap_len + RECORD_ALIGN - 1) / RECORD_ALIGN * RECORD_ALIGN
}

#[inline]
fn get<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

impl PacketHeader {
    /// Writes the header and `data` as one record at the start of `out`;
    /// returns the record length, or `None` if `out` is too short or
    /// `data.len() != cap_len`.
    pub fn write_record(&self, data: &[u8], out: &mut [u8]) -> Option<usize> {
        if data.len() != self.cap_len as usize {
            return None;
        }
        let len = record_len(data.len());
        let out = out.get_mut(..len)?;
        out[..RECORD_HEADER_LEN].copy_from_slice(&self.encode(len as u32));
        out[RECORD_HEADER_LEN..RECORD_HEADER_LEN + data.len()].copy_from_slice(data);
        for b in &mut out[RECORD_HEADER_LEN + data.len()..] {
            *b = 0;
        }
        Some(len)
    }

    /// The record header bytes for a record of `record_len` bytes (see
    /// [`record_len`]); the captured bytes and zero padding follow it.
    #[inline]
    pub fn encode(&self, record_len: u32) -> [u8; RECORD_HEADER_LEN] {
        let mut out = [0u8; RECORD_HEADER_LEN];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(off::RECORD_LEN, &record_len.to_le_bytes());
        put(off::LINK, &self.link.to_le_bytes());
        put(off::TS_NS, &self.ts_ns.to_le_bytes());
        put(off::WIRE_LEN, &self.wire_len.to_le_bytes());
        put(off::CAP_LEN, &self.cap_len.to_le_bytes());
        put(off::L3_OFFSET, &self.l3_offset.to_le_bytes());
        put(off::L4_OFFSET, &self.l4_offset.to_le_bytes());
        put(off::PAYLOAD_OFFSET, &self.payload_offset.to_le_bytes());
        put(off::IP_VERSION, &[self.ip_version]);
        put(off::IP_PROTO, &[self.ip_proto]);
        put(off::SRC_ADDR, &self.src_addr);
        put(off::DST_ADDR, &self.dst_addr);
        put(off::SRC_PORT, &self.src_port.to_le_bytes());
        put(off::DST_PORT, &self.dst_port.to_le_bytes());
        put(off::TCP_FLAGS, &[self.tcp_flags]);
        put(off::FLAGS, &[self.flags]);
        put(off::VLAN, &self.vlan.to_le_bytes());
        out
    }

    /// Reads the record at the start of `buf`: its header, its captured
    /// bytes and its length. `None` if the record is malformed (a length
    /// that does not fit `buf` or disagrees with `cap_len`).
    #[inline]
    pub fn read_record(buf: &[u8]) -> Option<(PacketHeader, &[u8], usize)> {
        let len = checked_len(buf)?;
        let (header, data) = PacketHeader::decode(&buf[..len]);
        Some((header, data, len))
    }

    /// The header and captured bytes of a record that [`checked_len`]
    /// accepted (and nothing after it).
    #[inline]
    fn decode(record: &[u8]) -> (PacketHeader, &[u8]) {
        let (head, rest) = record.split_at(RECORD_HEADER_LEN);
        let header = match head.try_into() {
            Ok(head) => PacketHeader::from_bytes(head),
            Err(_) => unreachable!("split at the header's length"),
        };
        let data = &rest[..header.cap_len as usize];
        (header, data)
    }

    /// Decodes a record header (the first [`RECORD_HEADER_LEN`] bytes of a
    /// record). Fields are read at fixed offsets of a fixed-size array, so
    /// there is no length check per field.
    #[inline]
    pub fn from_bytes(head: &[u8; RECORD_HEADER_LEN]) -> PacketHeader {
        PacketHeader {
            link: u32::from_le_bytes(get(head, off::LINK)),
            ts_ns: u64::from_le_bytes(get(head, off::TS_NS)),
            wire_len: u32::from_le_bytes(get(head, off::WIRE_LEN)),
            cap_len: u32::from_le_bytes(get(head, off::CAP_LEN)),
            l3_offset: u16::from_le_bytes(get(head, off::L3_OFFSET)),
            l4_offset: u16::from_le_bytes(get(head, off::L4_OFFSET)),
            payload_offset: u16::from_le_bytes(get(head, off::PAYLOAD_OFFSET)),
            ip_version: head[off::IP_VERSION],
            ip_proto: head[off::IP_PROTO],
            src_addr: get(head, off::SRC_ADDR),
            dst_addr: get(head, off::DST_ADDR),
            src_port: u16::from_le_bytes(get(head, off::SRC_PORT)),
            dst_port: u16::from_le_bytes(get(head, off::DST_PORT)),
            tcp_flags: head[off::TCP_FLAGS],
            flags: head[off::FLAGS],
            vlan: u16::from_le_bytes(get(head, off::VLAN)),
        }
    }
}

/// The length of the record at the start of `buf`, if it is well formed:
/// a whole header, a length that fits `buf` and agrees with `cap_len`.
#[inline]
fn checked_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < RECORD_HEADER_LEN {
        return None;
    }
    let len = u32::from_le_bytes(get(buf, off::RECORD_LEN)) as usize;
    let cap_len = u32::from_le_bytes(get(buf, off::CAP_LEN));
    // `len >= RECORD_HEADER_LEN` holds for any `record_len` that did not
    // wrap; saying it lets the compiler drop the per-field checks after.
    if len < RECORD_HEADER_LEN || len != record_len(cap_len as usize) || len > buf.len() {
        return None;
    }
    Some(len)
}

/// The well-formed records at the start of a batch, each whole (header,
/// data, padding), at most `left` of them.
struct Walk<'a> {
    buf: &'a [u8],
    left: u32,
}

impl<'a> Iterator for Walk<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let len = checked_len(self.buf)?;
        let (record, rest) = self.buf.split_at(len);
        self.buf = rest;
        self.left -= 1;
        Some(record)
    }
}

/// Iterates over the raw header bytes of the records of a batch (read
/// fields at [`off`]); stops where [`Records`] stops.
pub struct RecordHeaders<'a>(Walk<'a>);

impl<'a> RecordHeaders<'a> {
    /// The headers of the `count` records in `buf`.
    pub fn new(buf: &'a [u8], count: u32) -> Self {
        RecordHeaders(Walk { buf, left: count })
    }
}

impl<'a> Iterator for RecordHeaders<'a> {
    type Item = &'a [u8; RECORD_HEADER_LEN];

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()?[..RECORD_HEADER_LEN].try_into().ok()
    }
}

/// Iterates over the records of a batch; stops at the first malformed one.
pub struct Records<'a>(Walk<'a>);

impl<'a> Records<'a> {
    /// The `count` records in `buf`.
    pub fn new(buf: &'a [u8], count: u32) -> Self {
        Records(Walk { buf, left: count })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (PacketHeader, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(PacketHeader::decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_back_to_back() {
        let mut buf = [0u8; 512];
        let a = PacketHeader {
            link: 3,
            ts_ns: 1_764_108_000_123_456_789,
            wire_len: 1514,
            cap_len: 5,
            l3_offset: 14,
            l4_offset: 34,
            payload_offset: 54,
            ip_version: 4,
            ip_proto: 6,
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 43122,
            dst_port: 80,
            tcp_flags: tcp::SYN | tcp::ACK,
            flags: flag::TRUNCATED,
            vlan: 100,
        };
        let b = PacketHeader {
            cap_len: 0,
            ..PacketHeader::default()
        };
        let n1 = a.write_record(b"hello", &mut buf).unwrap();
        assert_eq!(n1, 80);
        let n2 = b.write_record(b"", &mut buf[n1..]).unwrap();
        assert_eq!(n2, 72);
        let got: [(PacketHeader, &[u8]); 2] = {
            let mut it = Records::new(&buf[..n1 + n2], 2);
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(got[0], (a, &b"hello"[..]));
        assert_eq!(got[1], (b, &b""[..]));
        // The raw headers of the same records.
        let mut raw = RecordHeaders::new(&buf[..n1 + n2], 2);
        assert_eq!(raw.next(), Some(&a.encode(80)));
        assert_eq!(raw.next(), Some(&b.encode(72)));
        assert_eq!(raw.next(), None);
    }

    #[test]
    fn malformed_records_stop_the_iteration() {
        let mut buf = [0u8; 128];
        let h = PacketHeader {
            cap_len: 8,
            ..PacketHeader::default()
        };
        let n = h.write_record(&[1; 8], &mut buf).unwrap();
        // Claims more records than there are.
        assert_eq!(Records::new(&buf[..n], 5).count(), 1);
        assert_eq!(RecordHeaders::new(&buf[..n], 5).count(), 1);
        // A corrupted length.
        buf[0] = 200;
        assert_eq!(Records::new(&buf[..n], 1).count(), 0);
        assert_eq!(RecordHeaders::new(&buf[..n], 1).count(), 0);
        // Too short for a header.
        assert!(PacketHeader::read_record(&buf[..10]).is_none());
        // cap_len disagreeing with the data given.
        assert!(h.write_record(&[1; 3], &mut buf).is_none());
        // Output too short.
        assert!(h.write_record(&[1; 8], &mut buf[..40]).is_none());
    }

    /// The value of `#define NAME value` in tm_abi.h.
    fn define(name: &str) -> u64 {
        let header = include_str!("../tm_abi.h");
        for line in header.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("#define") && words.next() == Some(name) {
                let v = words.next().unwrap();
                return match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
                    None => v.parse().unwrap(),
                };
            }
        }
        panic!("tm_abi.h does not define {}", name);
    }

    #[test]
    fn the_c_header_matches_the_rust_abi() {
        assert_eq!(define("TM_ABI_VERSION"), u64::from(ABI_VERSION));
        assert_eq!(define("TM_RECORD_HEADER_LEN"), RECORD_HEADER_LEN as u64);
        assert_eq!(define("TM_RECORD_ALIGN"), RECORD_ALIGN as u64);
        assert_eq!(define("TM_NO_OFFSET"), u64::from(NO_OFFSET));
        assert_eq!(define("TM_STATUS_OK"), Status::Ok as u64);
        assert_eq!(define("TM_STATUS_BAD_PARAMS"), Status::BadParams as u64);
        assert_eq!(define("TM_STATUS_FAILED"), Status::Failed as u64);
        assert_eq!(
            define("TM_STATUS_STATE_VERSION"),
            Status::StateVersion as u64
        );
        assert_eq!(define("TM_FLAG_PARSE_ERROR"), u64::from(flag::PARSE_ERROR));
        assert_eq!(define("TM_FLAG_TRUNCATED"), u64::from(flag::TRUNCATED));
        assert_eq!(define("TM_FLAG_FRAGMENT"), u64::from(flag::FRAGMENT));
        assert_eq!(define("TM_FLAG_VLAN"), u64::from(flag::VLAN));
        // Every offset: write a record whose fields all differ, read each
        // field back at the header's offset.
        let h = PacketHeader {
            link: 0x0102_0304,
            ts_ns: 0x1112_1314_1516_1718,
            wire_len: 0x2122_2324,
            cap_len: 0,
            l3_offset: 0x3132,
            l4_offset: 0x3334,
            payload_offset: 0x3536,
            ip_version: 0x41,
            ip_proto: 0x42,
            src_addr: [0x51; 16],
            dst_addr: [0x61; 16],
            src_port: 0x7172,
            dst_port: 0x7374,
            tcp_flags: 0x81,
            flags: 0x82,
            vlan: 0x9192,
        };
        let mut buf = [0u8; 72];
        h.write_record(&[], &mut buf).unwrap();
        let at = |name: &str, size: usize| {
            let off = define(name) as usize;
            let mut v = 0u64;
            for i in (0..size).rev() {
                v = (v << 8) | u64::from(buf[off + i]);
            }
            v
        };
        for (name, at) in [
            ("TM_OFF_RECORD_LEN", off::RECORD_LEN),
            ("TM_OFF_LINK", off::LINK),
            ("TM_OFF_TS_NS", off::TS_NS),
            ("TM_OFF_WIRE_LEN", off::WIRE_LEN),
            ("TM_OFF_CAP_LEN", off::CAP_LEN),
            ("TM_OFF_L3_OFFSET", off::L3_OFFSET),
            ("TM_OFF_L4_OFFSET", off::L4_OFFSET),
            ("TM_OFF_PAYLOAD_OFFSET", off::PAYLOAD_OFFSET),
            ("TM_OFF_IP_VERSION", off::IP_VERSION),
            ("TM_OFF_IP_PROTO", off::IP_PROTO),
            ("TM_OFF_SRC_ADDR", off::SRC_ADDR),
            ("TM_OFF_DST_ADDR", off::DST_ADDR),
            ("TM_OFF_SRC_PORT", off::SRC_PORT),
            ("TM_OFF_DST_PORT", off::DST_PORT),
            ("TM_OFF_TCP_FLAGS", off::TCP_FLAGS),
            ("TM_OFF_FLAGS", off::FLAGS),
            ("TM_OFF_VLAN", off::VLAN),
        ] {
            assert_eq!(define(name), at as u64, "{name}");
        }
        assert_eq!(at("TM_OFF_RECORD_LEN", 4), 72);
        assert_eq!(at("TM_OFF_LINK", 4), u64::from(h.link));
        assert_eq!(at("TM_OFF_TS_NS", 8), h.ts_ns);
        assert_eq!(at("TM_OFF_WIRE_LEN", 4), u64::from(h.wire_len));
        assert_eq!(at("TM_OFF_CAP_LEN", 4), 0);
        assert_eq!(at("TM_OFF_L3_OFFSET", 2), u64::from(h.l3_offset));
        assert_eq!(at("TM_OFF_L4_OFFSET", 2), u64::from(h.l4_offset));
        assert_eq!(at("TM_OFF_PAYLOAD_OFFSET", 2), u64::from(h.payload_offset));
        assert_eq!(at("TM_OFF_IP_VERSION", 1), u64::from(h.ip_version));
        assert_eq!(at("TM_OFF_IP_PROTO", 1), u64::from(h.ip_proto));
        assert_eq!(at("TM_OFF_SRC_ADDR", 1), 0x51);
        assert_eq!(at("TM_OFF_DST_ADDR", 1), 0x61);
        assert_eq!(at("TM_OFF_SRC_PORT", 2), u64::from(h.src_port));
        assert_eq!(at("TM_OFF_DST_PORT", 2), u64::from(h.dst_port));
        assert_eq!(at("TM_OFF_TCP_FLAGS", 1), u64::from(h.tcp_flags));
        assert_eq!(at("TM_OFF_FLAGS", 1), u64::from(h.flags));
        assert_eq!(at("TM_OFF_VLAN", 2), u64::from(h.vlan));
    }
}
