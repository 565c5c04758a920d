//! Deterministic pcap captures with known content, for tests and
//! benchmarks: every packet is built with etherparse, so the expected
//! figures (packets, bytes per flow) are known exactly.
//!
//! Files are classic pcap with nanosecond timestamps (magic `a1b23c4d`),
//! which libpcap, tcpdump and tshark read.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};

pub mod apps;
pub mod dns;
pub mod network;
pub mod scenarios;

/// pcap link types.
pub mod linktype {
    /// Ethernet.
    pub const ETHERNET: u32 = 1;
    /// Raw IP.
    pub const RAW: u32 = 101;
    /// BSD loopback: a 4-byte address family in host order.
    pub const NULL: u32 = 0;
    /// OpenBSD loopback: the family in network order.
    pub const LOOP: u32 = 108;
    /// PPP.
    pub const PPP: u32 = 9;
    /// PPP in HDLC-like framing.
    pub const PPP_HDLC: u32 = 50;
    /// PPPoE session frames.
    pub const PPP_ETHER: u32 = 51;
    /// Cisco HDLC.
    pub const C_HDLC: u32 = 104;
    /// IEEE 802.11.
    pub const IEEE802_11: u32 = 105;
    /// IEEE 802.11 with a radiotap header.
    pub const IEEE802_11_RADIOTAP: u32 = 127;
    /// Linux cooked capture v1.
    pub const LINUX_SLL: u32 = 113;
    /// Linux cooked capture v2.
    pub const LINUX_SLL2: u32 = 276;
    /// Raw IPv4.
    pub const IPV4: u32 = 228;
    /// Raw IPv6.
    pub const IPV6: u32 = 229;
}

/// Wraps an IP packet in the link layer of `linktype` (one of
/// [`linktype`]'s; Ethernet variants: see [`ethernet_vlan_mpls`]), as a
/// capture of that type holds it.
///
/// # Panics
/// For a link type this generator does not write.
#[must_use]
pub fn frame_ip(linktype: u32, ip: &[u8]) -> Vec<u8> {
    let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
    let ether: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    let mut out = Vec::new();
    match linktype {
        linktype::ETHERNET => {
            out.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            out.extend_from_slice(&ether);
        }
        linktype::RAW | linktype::IPV4 | linktype::IPV6 => {}
        linktype::NULL => out.extend_from_slice(&(if v6 { 30u32 } else { 2 }).to_le_bytes()),
        linktype::LOOP => out.extend_from_slice(&(if v6 { 24u32 } else { 2 }).to_be_bytes()),
        linktype::PPP => out.extend_from_slice(if v6 { &[0x00, 0x57] } else { &[0x00, 0x21] }),
        linktype::PPP_HDLC => {
            out.extend_from_slice(&[0xff, 0x03]);
            out.extend_from_slice(if v6 { &[0x00, 0x57] } else { &[0x00, 0x21] });
        }
        linktype::PPP_ETHER => {
            let len = (ip.len() + 2) as u16;
            out.extend_from_slice(&[0x11, 0x00, 0x12, 0x34]);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(if v6 { &[0x00, 0x57] } else { &[0x00, 0x21] });
        }
        linktype::C_HDLC => {
            out.extend_from_slice(&[0x0f, 0x00]);
            out.extend_from_slice(&ether);
        }
        linktype::IEEE802_11 | linktype::IEEE802_11_RADIOTAP => {
            if linktype == linktype::IEEE802_11_RADIOTAP {
                // Version 0, length 8, no fields present.
                out.extend_from_slice(&[0, 0, 8, 0, 0, 0, 0, 0]);
            }
            // A QoS data frame to the AP (ToDS), then LLC/SNAP.
            out.extend_from_slice(&[0x88, 0x01, 0, 0]);
            out.extend_from_slice(&[2, 0, 0, 0, 0, 0xa]);
            out.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
            out.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&[0xaa, 0xaa, 0x03, 0, 0, 0]);
            out.extend_from_slice(&ether);
        }
        linktype::LINUX_SLL => {
            out.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            out.extend_from_slice(&ether);
        }
        linktype::LINUX_SLL2 => {
            out.extend_from_slice(&ether);
            out.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        }
        other => panic!("pcapgen does not write link type {other}"),
    }
    out.extend_from_slice(ip);
    out
}

/// An Ethernet frame with `vlans` 802.1Q tags (the outer one 802.1ad when
/// there are two) and `labels` MPLS labels around an IP packet.
#[must_use]
pub fn ethernet_vlan_mpls(vlans: &[u16], labels: &[u32], ip: &[u8]) -> Vec<u8> {
    let mut out = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    for (i, id) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() > 1 {
            0x88a8
        } else {
            0x8100
        };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
    }
    if labels.is_empty() {
        let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
        out.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    } else {
        out.extend_from_slice(&[0x88, 0x47]);
        for (i, label) in labels.iter().enumerate() {
            let bottom = u32::from(i + 1 == labels.len());
            out.extend_from_slice(&((label << 12) | (bottom << 8) | 64).to_be_bytes());
        }
    }
    out.extend_from_slice(ip);
    out
}

/// A packet to write: timestamp and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Unix ns.
    pub ts_ns: u64,
    /// The frame (also its wire length unless `wire_len` says more).
    pub data: Vec<u8>,
    /// Length on the wire if longer than `data` (a snap-length cut).
    pub wire_len: Option<u32>,
}

/// Writes `frames` as a pcap file.
///
/// # Errors
/// I/O errors.
pub fn write_pcap(path: &Path, linktype: u32, frames: &[Frame]) -> io::Result<()> {
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&0xa1b2_3c4d_u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&262_144u32.to_le_bytes())?;
    out.write_all(&linktype.to_le_bytes())?;
    for f in frames {
        let sec = (f.ts_ns / 1_000_000_000) as u32;
        let nsec = (f.ts_ns % 1_000_000_000) as u32;
        out.write_all(&sec.to_le_bytes())?;
        out.write_all(&nsec.to_le_bytes())?;
        out.write_all(&(f.data.len() as u32).to_le_bytes())?;
        out.write_all(&f.wire_len.unwrap_or(f.data.len() as u32).to_le_bytes())?;
        out.write_all(&f.data)?;
    }
    out.flush()
}

/// MAC addresses derived from an IPv4 address, so frames look plausible.
fn mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

fn mac_of(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(v4) => mac(v4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [0x02, 0x06, o[12], o[13], o[14], o[15]]
        }
    }
}

/// Ethernet + IPv4 or IPv6 (TTL/hop limit 64). Both addresses must be of
/// the same family.
fn ip_step(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(mac_of(src), mac_of(dst));
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
}

/// TCP flag bits for [`tcp_segment`].
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One TCP segment over Ethernet and IPv4 or IPv6, with every field given:
/// sequence and acknowledgement numbers, flag bits ([`flags`]) and window.
#[allow(clippy::too_many_arguments)]
#[must_use]
pub fn tcp_segment(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flag_bits: u8,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip_step(src.ip(), dst.ip()).tcp(src.port(), dst.port(), seq, window);
    if flag_bits & flags::SYN != 0 {
        b = b.syn();
    }
    if flag_bits & flags::ACK != 0 {
        b = b.ack(ack);
    }
    if flag_bits & flags::PSH != 0 {
        b = b.psh();
    }
    if flag_bits & flags::FIN != 0 {
        b = b.fin();
    }
    if flag_bits & flags::RST != 0 {
        b = b.rst();
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// A UDP datagram over Ethernet and IPv4 or IPv6.
#[must_use]
pub fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let b = ip_step(src.ip(), dst.ip()).udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// An Ethernet/IPv6 ICMPv6 echo request.
#[must_use]
pub fn icmpv6_echo(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let b = ip_step(src.into(), dst.into()).icmpv6_echo_request(id, seq);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// Frames spaced in time: `push` appends a frame at the current time and
/// moves the clock on by `step_ns`; `at` sets the clock.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The frames so far.
    pub frames: Vec<Frame>,
    /// Current time, Unix ns.
    pub now_ns: u64,
    /// Gap after each frame, ns.
    pub step_ns: u64,
}

impl Timeline {
    /// Starts at `start_ns`, frames `step_ns` apart.
    #[must_use]
    pub fn new(start_ns: u64, step_ns: u64) -> Timeline {
        Timeline {
            frames: Vec::new(),
            now_ns: start_ns,
            step_ns,
        }
    }

    /// Appends a frame now and advances the clock.
    pub fn push(&mut self, data: Vec<u8>) {
        self.frames.push(Frame {
            ts_ns: self.now_ns,
            data,
            wire_len: None,
        });
        self.now_ns += self.step_ns;
    }

    /// Moves the clock on by `ns`.
    pub fn wait(&mut self, ns: u64) {
        self.now_ns += ns;
    }
}

/// An Ethernet/IPv4/TCP frame with `payload_len` bytes of payload and the
/// given flags (`"S"`, `"SA"`, `"A"`, `"PA"`, `"FA"`, `"R"`).
#[must_use]
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(mac(src), mac(dst))
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, seq, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'P' => b.psh(),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => b,
        };
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// An Ethernet/IPv4/UDP frame.
#[must_use]
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(src), mac(dst))
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// An Ethernet/IPv4 ICMP echo request.
#[must_use]
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(src), mac(dst))
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// `n` frames of [`mixed`] traffic, one every `every_ns` from `start_ns`:
/// a capture that a recorded-pace replay spreads over `n × every_ns`.
#[must_use]
pub fn paced(n: usize, start_ns: u64, every_ns: u64) -> Vec<Frame> {
    let mut frames = mixed(n, start_ns);
    frames.truncate(n);
    for (i, f) in frames.iter_mut().enumerate() {
        f.ts_ns = start_ns + i as u64 * every_ns;
    }
    frames
}

/// A deterministic mix used by monitor tests: `n` rounds of one TCP data
/// packet (10.0.0.1:40000 → 10.0.0.2:80, 100-byte payload), one UDP packet
/// (10.0.0.3:5353 → 10.0.0.4:53, 40 bytes) and, every fourth round, one ICMP
/// echo (10.0.0.5 → 10.0.0.6, 56 bytes), 1 ms apart from `start_ns`.
#[must_use]
pub fn mixed(n: usize, start_ns: u64) -> Vec<Frame> {
    let a = |x| Ipv4Addr::new(10, 0, 0, x);
    let mut frames = Vec::new();
    let mut ts = start_ns;
    let mut push = |data: Vec<u8>| {
        frames.push(Frame {
            ts_ns: ts,
            data,
            wire_len: None,
        });
        ts += 1_000_000;
    };
    for i in 0..n {
        push(tcp(
            a(1),
            a(2),
            40000,
            80,
            1 + 100 * i as u32,
            "PA",
            &[b'x'; 100],
        ));
        push(udp(a(3), a(4), 5353, 53, &[b'q'; 40]));
        if i % 4 == 0 {
            push(icmp_echo(a(5), a(6), 7, i as u16, &[0u8; 56]));
        }
    }
    frames
}

/// `packets` TCP packets spread round-robin over `flows` flows (10.a.b.1 →
/// 10.200.a.b, ports from the flow number), payloads of 0 to 1399 bytes
/// chosen by a fixed pseudo-random sequence, 1 µs apart: a benchmark
/// capture with a known flow count.
#[must_use]
pub fn flows(packets: usize, flows: usize, start_ns: u64) -> Vec<Frame> {
    flows_sized(packets, flows, 1400, start_ns)
}

/// [`flows`] with payloads of 0 to `max_payload - 1` bytes.
#[must_use]
pub fn flows_sized(packets: usize, flows: usize, max_payload: usize, start_ns: u64) -> Vec<Frame> {
    let payload = vec![0x5au8; max_payload.max(1)];
    let mut x: u32 = 0x1234_5678;
    (0..packets)
        .map(|i| {
            let f = (i % flows.max(1)) as u32;
            let (hi, lo) = ((f >> 8) as u8, f as u8);
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % payload.len() as u32) as usize;
            Frame {
                ts_ns: start_ns + i as u64 * 1000,
                data: tcp(
                    Ipv4Addr::new(10, hi, lo, 1),
                    Ipv4Addr::new(10, 200, hi, lo),
                    10_000 + (f % 50_000) as u16,
                    443,
                    i as u32,
                    "A",
                    &payload[..len],
                ),
                wire_len: None,
            }
        })
        .collect()
}

/// Summary of a frame list: packets and wire bytes, in total and for a
/// predicate.
#[must_use]
pub fn count(frames: &[Frame], keep: impl Fn(&Frame) -> bool) -> (u64, u64) {
    frames.iter().filter(|f| keep(f)).fold((0, 0), |(p, b), f| {
        (
            p + 1,
            b + u64::from(f.wire_len.unwrap_or(f.data.len() as u32)),
        )
    })
}

/// Damages a capture as a bad link or a short snap length would, the same
/// way for the same `seed`: of every `one_in` frames, on average one gets
/// four bytes flipped anywhere and one is cut short (its wire length kept).
pub fn corrupt(frames: &mut [Frame], seed: u32, one_in: u32) {
    let mut x = if seed == 0 { 1 } else { seed };
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for f in frames.iter_mut().filter(|f| !f.data.is_empty()) {
        match next() % one_in.max(2) {
            0 => {
                for _ in 0..4 {
                    let at = next() as usize % f.data.len();
                    f.data[at] ^= next() as u8 | 1;
                }
            }
            1 => {
                let keep = next() as usize % f.data.len();
                f.wire_len = Some(f.wire_len.unwrap_or(f.data.len() as u32));
                f.data.truncate(keep);
            }
            _ => {}
        }
    }
}

/// TCP flags of an Ethernet/IPv4 (no options) or IPv6 (no extension
/// headers) TCP frame, read straight from the bytes.
#[must_use]
pub fn tcp_flags(frame: &Frame) -> Option<u8> {
    let d = &frame.data;
    match (d.get(12..14)?, d.get(14)? >> 4) {
        ([0x08, 0x00], 4) if d[14] & 0x0f == 5 && *d.get(23)? == 6 => d.get(14 + 20 + 13).copied(),
        ([0x86, 0xdd], 6) if *d.get(20)? == 6 => d.get(14 + 40 + 13).copied(),
        _ => None,
    }
}

/// IP protocol number of an Ethernet/IPv4 frame (0 if not IPv4).
#[must_use]
pub fn ip_proto(frame: &Frame) -> u8 {
    let d = &frame.data;
    if d.len() > 23 && d[12] == 0x08 && d[13] == 0x00 {
        d[23]
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_has_the_documented_shape() {
        let frames = mixed(8, 0);
        assert_eq!(frames.len(), 8 + 8 + 2);
        assert_eq!(
            count(&frames, |f| ip_proto(f) == 6),
            (8, 8 * (14 + 20 + 20 + 100))
        );
        assert_eq!(
            count(&frames, |f| ip_proto(f) == 17),
            (8, 8 * (14 + 20 + 8 + 40))
        );
        assert_eq!(count(&frames, |f| ip_proto(f) == 1).0, 2);
    }

    #[test]
    fn written_files_have_a_header_and_records() {
        let dir = std::env::temp_dir().join(format!("pcapgen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let frames = mixed(2, 1_000_000_000);
        write_pcap(&path, linktype::ETHERNET, &frames).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let expected = 24 + frames.iter().map(|f| 16 + f.data.len()).sum::<usize>();
        assert_eq!(bytes.len(), expected);
        assert_eq!(&bytes[..4], &0xa1b2_3c4d_u32.to_le_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
