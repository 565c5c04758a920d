//! Lenient packet parsing into the ABI's [`PacketHeader`].
//!
//! Never fails: what cannot be parsed is flagged ([`flag::PARSE_ERROR`]) and
//! the fields found so far are kept. Link types: Ethernet (with 802.1Q/QinQ
//! and MPLS), raw IPv4/IPv6, Linux cooked capture v1 and v2, BSD
//! NULL/LOOP, PPP (with or without HDLC framing), PPPoE, Cisco HDLC, IEEE
//! 802.11 with and without radiotap (LLC/SNAP to IP). Any other link type's
//! packets are counted and reach analyzers as non-IP packets.
//!
//! etherparse parses everything. The one shape most traffic has (Ethernet,
//! at most one 802.1Q tag, IPv4 or IPv6 without extension headers, not a
//! fragment, TCP or UDP) also has a direct path (`fast_ethernet`) that
//! gives the very same header without building etherparse's slices (which
//! cost half the link thread in the flow benchmark's profile); anything it
//! is not sure of goes to etherparse. A test compares both paths on every
//! packet of mutated and cut captures.

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use tm_abi::{NO_OFFSET, PacketHeader, flag};

/// The link-layer types the monitor understands (pcap `DLT_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// DLT_EN10MB
    Ethernet,
    /// DLT_RAW (12 on Linux; 14 on OpenBSD), LINKTYPE_RAW (101), IPV4 (228), IPV6 (229)
    RawIp,
    /// DLT_LINUX_SLL (113)
    LinuxSll,
    /// DLT_LINUX_SLL2 (276)
    LinuxSll2,
    /// DLT_NULL (0) and DLT_LOOP (108): 4-byte address family, then IP
    Null,
    /// DLT_PPP (9) and DLT_PPP_SERIAL (50): optional `ff 03`, then the PPP
    /// protocol (IPv4 0x21, IPv6 0x57)
    Ppp,
    /// DLT_PPP_ETHER (51): a PPPoE session header, then PPP
    PppOverEthernet,
    /// DLT_C_HDLC (104): address, control, then an EtherType
    CiscoHdlc,
    /// DLT_IEEE802_11 (105): 802.11 frames; data frames carry LLC/SNAP
    Ieee80211,
    /// DLT_IEEE802_11_RADIO (127): a radiotap header, then 802.11
    Radiotap,
    /// Anything else: counted, passed on as non-IP packets
    Other(i32),
}

impl LinkType {
    /// The type for a pcap datalink value (the upper bits a file's header
    /// may carry, FCS length and flags, masked off as libpcap does).
    #[must_use]
    pub fn from_dlt(dlt: i32) -> LinkType {
        match dlt & LINKTYPE_MASK {
            1 => LinkType::Ethernet,
            12 | 14 | 101 | 228 | 229 => LinkType::RawIp,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            0 | 108 => LinkType::Null,
            9 | 50 => LinkType::Ppp,
            51 => LinkType::PppOverEthernet,
            104 => LinkType::CiscoHdlc,
            105 => LinkType::Ieee80211,
            127 => LinkType::Radiotap,
            other => LinkType::Other(other),
        }
    }
}

/// libpcap's `LT_LINKTYPE`: the link type without the FCS length and the
/// flags in a file header's upper bits.
pub const LINKTYPE_MASK: i32 = 0x03FF_FFFF;

fn offset(base: &[u8], part: &[u8]) -> u16 {
    let at = part.as_ptr() as usize - base.as_ptr() as usize;
    u16::try_from(at).unwrap_or(NO_OFFSET)
}

fn put_addr(dst: &mut [u8; 16], src: &[u8]) {
    dst[..src.len()].copy_from_slice(src);
}

/// Parses one captured packet. `data` is what was captured, `wire_len` the
/// length on the wire.
#[must_use]
#[inline]
pub fn parse(
    link_type: LinkType,
    link: u32,
    ts_ns: u64,
    wire_len: u32,
    data: &[u8],
) -> PacketHeader {
    let mut h = PacketHeader {
        link,
        ts_ns,
        wire_len,
        cap_len: data.len() as u32,
        l3_offset: NO_OFFSET,
        l4_offset: NO_OFFSET,
        payload_offset: NO_OFFSET,
        ..PacketHeader::default()
    };
    let truncated = (data.len() as u32) < wire_len;
    if truncated {
        h.flags |= flag::TRUNCATED;
    }
    if link_type == LinkType::Ethernet
        && let Some(fast) = fast_ethernet(data, &h)
    {
        return fast;
    }
    general(link_type, data, h)
}

/// Ethernet, at most one 802.1Q tag, IPv4 (any options) or IPv6 without
/// extension headers, not a fragment, then TCP or UDP: the header that
/// [`general`] would give, or `None` when the packet is anything else or
/// anything about it is odd (lengths that disagree, a header cut short).
#[inline]
fn fast_ethernet(data: &[u8], base: &PacketHeader) -> Option<PacketHeader> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
    };
    let mut h = *base;
    let mut l3 = 14;
    let mut ether = be16(12)?;
    if ether == 0x8100 {
        h.vlan = be16(14)? & 0x0fff;
        h.flags |= flag::VLAN;
        ether = be16(16)?;
        l3 = 18;
    }
    // Where L4 starts and where the IP packet ends by its length field.
    let (l4, end) = match ether {
        0x0800 => {
            let ip = data.get(l3..l3 + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || fragment != 0 {
                return None;
            }
            h.ip_version = 4;
            h.ip_proto = ip[9];
            h.src_addr[..4].copy_from_slice(&ip[12..16]);
            h.dst_addr[..4].copy_from_slice(&ip[16..20]);
            (l3 + ihl, l3 + total)
        }
        0x86dd => {
            let ip = data.get(l3..l3 + 40)?;
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[0] >> 4 != 6 || payload == 0 {
                return None;
            }
            h.ip_version = 6;
            h.ip_proto = ip[6];
            h.src_addr.copy_from_slice(&ip[8..24]);
            h.dst_addr.copy_from_slice(&ip[24..40]);
            (l3 + 40, l3 + 40 + payload)
        }
        _ => return None,
    };
    // The IP packet may be cut by the snap length, never by the sender.
    let cut = end > data.len();
    if cut && h.flags & flag::TRUNCATED == 0 {
        return None;
    }
    let captured = end.min(data.len());
    let payload = match h.ip_proto {
        6 => {
            let tcp = data.get(l4..l4 + 20)?;
            let header = usize::from(tcp[12] >> 4) * 4;
            if header < 20 || l4 + header > captured {
                return None;
            }
            h.tcp_flags = tcp[13];
            h.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            h.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            l4 + header
        }
        17 => {
            let udp = data.get(l4..l4 + 8)?;
            if cut || usize::from(u16::from_be_bytes([udp[4], udp[5]])) != end - l4 {
                return None;
            }
            h.src_port = u16::from_be_bytes([udp[0], udp[1]]);
            h.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
            l4 + 8
        }
        _ => return None,
    };
    h.l3_offset = u16::try_from(l3).ok()?;
    h.l4_offset = u16::try_from(l4).ok()?;
    h.payload_offset = u16::try_from(payload).ok()?;
    Some(h)
}

/// Any supported link type, through etherparse. Kept out of line: when
/// it was inlined into [`parse`], its large stack frame (etherparse's
/// sliced packet) was set up for every packet, fast path included.
#[inline(never)]
fn general(link_type: LinkType, data: &[u8], mut h: PacketHeader) -> PacketHeader {
    let truncated = h.flags & flag::TRUNCATED != 0;
    let sliced = match link_type {
        LinkType::Ethernet => ethernet(data, &mut h),
        LinkType::RawIp => Inner::from(LaxSlicedPacket::from_ip(data).ok()),
        LinkType::LinuxSll => after_header(data, 16, |d| u16::from_be_bytes([d[14], d[15]])),
        LinkType::LinuxSll2 => after_header(data, 20, |d| u16::from_be_bytes([d[0], d[1]])),
        LinkType::Null => null_family(data),
        LinkType::Ppp => ppp(data),
        LinkType::PppOverEthernet => match data.get(6..) {
            // version/type, code, session id, length: then PPP.
            Some(rest) if data[0] == 0x11 => ppp(rest),
            Some(_) => Inner::NotIp,
            None => Inner::Malformed,
        },
        LinkType::CiscoHdlc => after_header(data, 4, |d| u16::from_be_bytes([d[2], d[3]])),
        LinkType::Ieee80211 => wifi(data),
        LinkType::Radiotap => radiotap(data),
        LinkType::Other(_) => Inner::NotIp,
    };
    let p = match sliced {
        Inner::Ip(p) => p,
        Inner::NotIp => return h,
        Inner::Malformed => {
            h.flags |= flag::PARSE_ERROR;
            return h;
        }
    };
    // A packet cut by the snap length is expected to stop early; anything
    // else that stops parsing is a malformed packet.
    if p.stop_err.is_some() && !truncated {
        h.flags |= flag::PARSE_ERROR;
    }
    for ext in &p.link_exts {
        if let etherparse::LaxLinkExtSlice::Vlan(v) = ext {
            if h.flags & flag::VLAN == 0 {
                h.vlan = v.vlan_identifier().value();
            }
            h.flags |= flag::VLAN;
        }
    }
    match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let hdr = ip.header();
            h.ip_version = 4;
            h.l3_offset = offset(data, hdr.slice());
            put_addr(&mut h.src_addr, &hdr.source());
            put_addr(&mut h.dst_addr, &hdr.destination());
            h.ip_proto = ip.payload().ip_number.0;
            if ip.payload().fragmented && hdr.fragments_offset().value() != 0 {
                h.flags |= flag::FRAGMENT;
            }
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let hdr = ip.header();
            h.ip_version = 6;
            h.l3_offset = offset(data, hdr.slice());
            put_addr(&mut h.src_addr, &hdr.source());
            put_addr(&mut h.dst_addr, &hdr.destination());
            h.ip_proto = ip.payload().ip_number.0;
            if ip.payload().fragmented && p.transport.is_none() {
                h.flags |= flag::FRAGMENT;
            }
        }
        Some(LaxNetSlice::Arp(_)) | None => {}
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            h.l4_offset = offset(data, t.slice());
            h.payload_offset = offset(data, t.payload());
            h.src_port = t.source_port();
            h.dst_port = t.destination_port();
            h.tcp_flags = t.slice()[13];
        }
        Some(TransportSlice::Udp(u)) => {
            h.l4_offset = offset(data, u.slice());
            h.payload_offset = offset(data, u.payload());
            h.src_port = u.source_port();
            h.dst_port = u.destination_port();
        }
        Some(TransportSlice::Icmpv4(i)) => {
            h.l4_offset = offset(data, i.slice());
            h.payload_offset = offset(data, i.payload());
        }
        Some(TransportSlice::Icmpv6(i)) => {
            h.l4_offset = offset(data, i.slice());
            h.payload_offset = offset(data, i.payload());
        }
        Some(TransportSlice::Igmp(i)) => {
            h.l4_offset = offset(data, i.slice());
        }
        None => {}
    }
    h
}

/// What is inside a link-layer frame.
// Only ever a local of `general`; boxing the slice would allocate per packet.
#[allow(clippy::large_enum_variant)]
enum Inner<'a> {
    /// A network layer etherparse sliced (IP, or an EtherType it knows).
    Ip(LaxSlicedPacket<'a>),
    /// A well-formed frame that carries no IP (PPP control, 802.11
    /// management, an unknown link type): not a parse error.
    NotIp,
    /// A frame too short or inconsistent to read.
    Malformed,
}

impl<'a> From<Option<LaxSlicedPacket<'a>>> for Inner<'a> {
    fn from(p: Option<LaxSlicedPacket<'a>>) -> Self {
        p.map_or(Inner::Malformed, Inner::Ip)
    }
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

/// Ethernet through etherparse, except MPLS (which it does not read):
/// the label stack is skipped and what follows is read as IP by its
/// version nibble.
fn ethernet<'a>(data: &'a [u8], h: &mut PacketHeader) -> Inner<'a> {
    let mut at = 12;
    let mut ether = be16(data, at);
    let mut vlan = None;
    while let Some(0x8100 | 0x88a8 | 0x9100) = ether {
        vlan = vlan.or(be16(data, at + 2).map(|tci| tci & 0x0fff));
        at += 4;
        ether = be16(data, at);
    }
    if !matches!(ether, Some(0x8847 | 0x8848)) {
        return LaxSlicedPacket::from_ethernet(data).ok().into();
    }
    if let Some(id) = vlan {
        h.vlan = id;
        h.flags |= flag::VLAN;
    }
    at += 2;
    // Labels of 4 bytes; the bottom of the stack has bit 0 of byte 2 set.
    loop {
        let Some(label) = data.get(at..at + 4) else {
            return Inner::Malformed;
        };
        at += 4;
        if label[2] & 1 == 1 {
            break;
        }
    }
    match data.get(at).map(|b| b >> 4) {
        Some(4 | 6) => LaxSlicedPacket::from_ip(&data[at..]).ok().into(),
        Some(_) => Inner::NotIp,
        None => Inner::Malformed,
    }
}

fn after_header(data: &[u8], len: usize, proto: impl Fn(&[u8]) -> u16) -> Inner<'_> {
    if data.len() < len {
        return Inner::Malformed;
    }
    Inner::Ip(LaxSlicedPacket::from_ether_type(
        EtherType(proto(data)),
        &data[len..],
    ))
}

fn null_family(data: &[u8]) -> Inner<'_> {
    if data.len() < 4 {
        return Inner::Malformed;
    }
    // The family is in the capturing host's byte order; IPv4 is 2 everywhere,
    // IPv6 is 24, 28 or 30 depending on the OS.
    let le = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let be = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let ether = match le.min(be) {
        2 => EtherType::IPV4,
        24 | 28 | 30 => EtherType::IPV6,
        _ => return Inner::NotIp,
    };
    Inner::Ip(LaxSlicedPacket::from_ether_type(ether, &data[4..]))
}

/// PPP: an optional HDLC address and control (`ff 03`), then the protocol
/// in one byte (compressed: odd) or two.
fn ppp(data: &[u8]) -> Inner<'_> {
    let d = match data {
        [0xff, 0x03, rest @ ..] => rest,
        _ => data,
    };
    let (proto, rest) = match d {
        [p, rest @ ..] if p & 1 == 1 => (u16::from(*p), rest),
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Inner::Malformed,
    };
    let ether = match proto {
        0x0021 => EtherType::IPV4,
        0x0057 => EtherType::IPV6,
        _ => return Inner::NotIp,
    };
    Inner::Ip(LaxSlicedPacket::from_ether_type(ether, rest))
}

/// Radiotap: its own length (little-endian, bytes 2–3), then 802.11.
fn radiotap(data: &[u8]) -> Inner<'_> {
    match data
        .get(2..4)
        .map(|l| usize::from(u16::from_le_bytes([l[0], l[1]])))
    {
        Some(len) if len >= 8 && len <= data.len() => wifi(&data[len..]),
        _ => Inner::Malformed,
    }
}

/// IEEE 802.11: only unprotected data frames carry IP, after the MAC
/// header (24 bytes, 30 with four addresses, +2 for QoS, +4 for HT
/// control) and an LLC/SNAP header with the EtherType.
fn wifi(data: &[u8]) -> Inner<'_> {
    let (Some(&fc0), Some(&fc1)) = (data.first(), data.get(1)) else {
        return Inner::Malformed;
    };
    let (kind, subtype) = ((fc0 >> 2) & 3, fc0 >> 4);
    // Data frames only, with a body (not "null"), not encrypted.
    if kind != 2 || subtype & 0x4 != 0 || fc1 & 0x40 != 0 {
        return Inner::NotIp;
    }
    let mut len = 24;
    if fc1 & 0x03 == 0x03 {
        len += 6;
    }
    if subtype & 0x8 != 0 {
        len += 2;
        if fc1 & 0x80 != 0 {
            len += 4;
        }
    }
    let Some(body) = data.get(len..) else {
        return Inner::Malformed;
    };
    match body {
        [0xaa, 0xaa, 0x03, 0, 0, 0 | 0xf8, t0, t1, rest @ ..] => Inner::Ip(
            LaxSlicedPacket::from_ether_type(EtherType(u16::from_be_bytes([*t0, *t1])), rest),
        ),
        _ if body.len() < 8 => Inner::Malformed,
        _ => Inner::NotIp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_v4(vlan: Option<u16>) -> Vec<u8> {
        let payload = b"GET / HTTP/1.1\r\n";
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2([1; 6], [2; 6]);
        match vlan {
            Some(id) => eth
                .single_vlan(id.try_into().unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(43122, 80, 1000, 65535)
                .syn()
                .ack(1)
                .write(&mut out, payload),
            None => eth
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(43122, 80, 1000, 65535)
                .syn()
                .ack(1)
                .write(&mut out, payload),
        }
        .unwrap();
        out
    }

    /// An IPv4 TCP packet 10.0.0.1:43122 → 10.0.0.2:80 and an IPv6 UDP one
    /// [2001:db8::1]:5353 → [2001:db8::2]:53, without a link layer.
    fn ip_packets() -> [Vec<u8>; 2] {
        let mut v4 = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(43122, 80, 1000, 65535)
            .write(&mut v4, b"hello")
            .unwrap();
        let mut v6 = Vec::new();
        let (a, b) = (
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            "2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        PacketBuilder::ipv6(a, b, 64)
            .udp(5353, 53)
            .write(&mut v6, b"query")
            .unwrap();
        [v4, v6]
    }

    #[test]
    fn every_link_type_captures_carry_gives_its_ip_packets() {
        use pcapgen::linktype as lt;
        let [v4, v6] = ip_packets();
        for dlt in [
            lt::ETHERNET,
            lt::RAW,
            lt::IPV4,
            lt::IPV6,
            lt::NULL,
            lt::LOOP,
            lt::PPP,
            lt::PPP_HDLC,
            lt::PPP_ETHER,
            lt::C_HDLC,
            lt::IEEE802_11,
            lt::IEEE802_11_RADIOTAP,
            lt::LINUX_SLL,
            lt::LINUX_SLL2,
        ] {
            for (ip, want) in [(&v4, (4, 6, 43122, 80)), (&v6, (6, 17, 5353, 53))] {
                let frame = pcapgen::frame_ip(dlt, ip);
                let h = parse(
                    LinkType::from_dlt(dlt as i32),
                    0,
                    0,
                    frame.len() as u32,
                    &frame,
                );
                assert_eq!(
                    (h.ip_version, h.ip_proto, h.src_port, h.dst_port),
                    want,
                    "link type {dlt}"
                );
                assert_eq!(
                    usize::from(h.l3_offset),
                    frame.len() - ip.len(),
                    "link type {dlt}"
                );
                assert_eq!(h.flags & flag::PARSE_ERROR, 0, "link type {dlt}");
            }
        }
        // VLAN, QinQ and MPLS inside Ethernet.
        for (vlans, labels) in [
            (&[][..], &[16][..]),
            (&[7][..], &[16, 17][..]),
            (&[10, 20][..], &[][..]),
            (&[10, 20][..], &[100, 200, 300][..]),
        ] {
            for (ip, want) in [(&v4, (4, 43122)), (&v6, (6, 5353))] {
                let frame = pcapgen::ethernet_vlan_mpls(vlans, labels, ip);
                let h = parse(LinkType::Ethernet, 0, 0, frame.len() as u32, &frame);
                assert_eq!((h.ip_version, h.src_port), want, "{vlans:?} {labels:?}");
                assert_eq!(usize::from(h.l3_offset), frame.len() - ip.len());
                if let Some(&outer) = vlans.first() {
                    assert_eq!((h.vlan, h.flags & flag::VLAN), (outer, flag::VLAN));
                }
            }
        }
    }

    #[test]
    fn file_header_flags_are_masked_and_unknown_types_pass_as_non_ip() {
        // FCS length and the "FCS present" bit in the upper bits.
        assert_eq!(LinkType::from_dlt(0x3000_0001), LinkType::Ethernet);
        assert_eq!(LinkType::from_dlt(0x0400_0001), LinkType::Ethernet);
        assert_eq!(LinkType::from_dlt(0x1000_00e5), LinkType::RawIp);
        assert_eq!(LinkType::from_dlt(147), LinkType::Other(147));
        let [v4, _] = ip_packets();
        let h = parse(LinkType::Other(147), 0, 0, v4.len() as u32, &v4);
        assert_eq!((h.ip_version, h.flags & flag::PARSE_ERROR), (0, 0));
        // Well-formed frames without IP are no parse errors either; cut ones are.
        let lcp = [0xff, 0x03, 0xc0, 0x21, 1, 1, 0, 4];
        let h = parse(LinkType::Ppp, 0, 0, 8, &lcp);
        assert_eq!((h.ip_version, h.flags & flag::PARSE_ERROR), (0, 0));
        let beacon = [0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let h = parse(LinkType::Ieee80211, 0, 0, 10, &beacon);
        assert_eq!(h.flags & flag::PARSE_ERROR, 0);
        let cut = pcapgen::frame_ip(pcapgen::linktype::IEEE802_11, &v4)[..20].to_vec();
        let h = parse(LinkType::Ieee80211, 0, 0, 20, &cut);
        assert_ne!(h.flags & flag::PARSE_ERROR, 0);
    }

    #[test]
    fn ethernet_ipv4_tcp_is_fully_parsed() {
        let pkt = tcp_v4(None);
        let h = parse(LinkType::Ethernet, 3, 7, pkt.len() as u32, &pkt);
        assert_eq!(
            (h.ip_version, h.ip_proto, h.src_port, h.dst_port),
            (4, 6, 43122, 80)
        );
        assert_eq!((h.l3_offset, h.l4_offset, h.payload_offset), (14, 34, 54));
        assert_eq!(&h.src_addr[..4], &[10, 0, 0, 1]);
        assert_eq!(h.tcp_flags, tm_abi::tcp::SYN | tm_abi::tcp::ACK);
        assert_eq!(h.flags, 0);
        assert_eq!(&pkt[h.payload_offset as usize..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn vlan_tags_are_skipped_and_recorded() {
        let pkt = tcp_v4(Some(100));
        let h = parse(LinkType::Ethernet, 0, 0, pkt.len() as u32, &pkt);
        assert_eq!(h.vlan, 100);
        assert_ne!(h.flags & flag::VLAN, 0);
        assert_eq!((h.l3_offset, h.dst_port), (18, 80));
    }

    #[test]
    fn ipv6_udp_raw_and_sll2() {
        let mut pkt = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .udp(5353, 53)
            .write(&mut pkt, b"dns")
            .unwrap();
        let h = parse(LinkType::RawIp, 0, 0, pkt.len() as u32, &pkt);
        assert_eq!(
            (
                h.ip_version,
                h.ip_proto,
                h.src_port,
                h.dst_port,
                h.l3_offset
            ),
            (6, 17, 5353, 53, 0)
        );
        // SLL2: protocol 0x86dd, then 18 more header bytes.
        let mut sll2 = vec![0x86, 0xdd];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&pkt);
        let h = parse(LinkType::LinuxSll2, 0, 0, sll2.len() as u32, &sll2);
        assert_eq!((h.ip_version, h.dst_port, h.l3_offset), (6, 53, 20));
    }

    #[test]
    fn qinq_sll_null_and_ipv6_extension_headers() {
        // QinQ: two tags; the outer VLAN id is reported.
        let mut qinq = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .double_vlan(10.try_into().unwrap(), 20.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut qinq, b"x")
            .unwrap();
        let h = parse(LinkType::Ethernet, 0, 0, qinq.len() as u32, &qinq);
        assert_eq!((h.vlan, h.l3_offset, h.dst_port), (10, 22, 2));

        // IPv6 with a hop-by-hop extension header before TCP.
        let mut ip6 = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .tcp(1000, 443, 1, 100)
            .write(&mut ip6, b"")
            .unwrap();
        ip6[6] = 0; // next header: hop-by-hop
        let mut with_ext = ip6[..40].to_vec();
        with_ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next: TCP, 8 bytes, PadN
        with_ext.extend_from_slice(&ip6[40..]);
        let payload_len = (with_ext.len() - 40) as u16;
        with_ext[4..6].copy_from_slice(&payload_len.to_be_bytes());
        let h = parse(LinkType::RawIp, 0, 0, with_ext.len() as u32, &with_ext);
        assert_eq!(
            (h.ip_version, h.ip_proto, h.l4_offset, h.dst_port),
            (6, 6, 48, 443)
        );

        // Linux cooked v1 (16-byte header, protocol at 14) and BSD loopback.
        let mut v4 = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5, 53)
            .write(&mut v4, b"q")
            .unwrap();
        let mut sll = vec![0; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&v4);
        let h = parse(LinkType::LinuxSll, 0, 0, sll.len() as u32, &sll);
        assert_eq!((h.ip_version, h.l3_offset, h.dst_port), (4, 16, 53));
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&v4);
        let h = parse(LinkType::Null, 0, 0, null.len() as u32, &null);
        assert_eq!((h.ip_version, h.l3_offset, h.dst_port), (4, 4, 53));
        assert_eq!(LinkType::from_dlt(276), LinkType::LinuxSll2);
        assert_eq!(LinkType::from_dlt(9999), LinkType::Other(9999));
    }

    /// A deterministic xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Frames of every shape the direct path takes and many it must refuse.
    fn shapes() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for vlan in [None, Some(7u16), Some(4000)] {
            for v6 in [false, true] {
                for l4 in 0..3 {
                    for payload in [&b""[..], b"x", &[0x5a; 300]] {
                        let eth = PacketBuilder::ethernet2([1; 6], [2; 6]);
                        let ip = match (vlan, v6) {
                            (Some(id), false) => eth.single_vlan(id.try_into().unwrap()).ipv4(
                                [10, 0, 0, 1],
                                [10, 0, 0, 2],
                                64,
                            ),
                            (Some(id), true) => eth
                                .single_vlan(id.try_into().unwrap())
                                .ipv6([1; 16], [2; 16], 64),
                            (None, false) => eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64),
                            (None, true) => eth.ipv6([1; 16], [2; 16], 64),
                        };
                        let mut f = Vec::new();
                        match l4 {
                            0 => ip
                                .tcp(40000, 443, 9, 100)
                                .syn()
                                .ack(3)
                                .write(&mut f, payload),
                            1 => ip.udp(5353, 53).write(&mut f, payload),
                            _ => ip.icmpv4_echo_request(1, 2).write(&mut f, payload),
                        }
                        .unwrap();
                        out.push(f);
                    }
                }
            }
        }
        // IPv4 with options (IHL 6), and Ethernet padding after a short packet.
        let mut opt = out[0].clone();
        opt.splice(34..34, [1, 1, 1, 0]);
        opt[14] = 0x46;
        let total = u16::from_be_bytes([opt[16], opt[17]]) + 4;
        opt[16..18].copy_from_slice(&total.to_be_bytes());
        out.push(opt);
        let mut padded = out[0].clone();
        padded.resize(padded.len() + 6, 0);
        out.push(padded);
        out
    }

    #[test]
    fn the_direct_path_gives_what_etherparse_gives() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut fast = 0;
        let mut compared = 0;
        let mut check = |frame: &[u8], wire: u32| {
            let base = parse(LinkType::Ethernet, 5, 9, wire, &[]);
            let h = PacketHeader {
                cap_len: frame.len() as u32,
                flags: if (frame.len() as u32) < wire {
                    flag::TRUNCATED
                } else {
                    0
                },
                ..base
            };
            let want = general(LinkType::Ethernet, frame, h);
            let got = parse(LinkType::Ethernet, 5, 9, wire, frame);
            assert_eq!(got, want, "frame {frame:02x?} wire {wire}");
            fast += usize::from(fast_ethernet(frame, &h).is_some());
            compared += 1;
        };
        for frame in shapes() {
            let wire = frame.len() as u32;
            check(&frame, wire);
            // Cut by a snap length at every point.
            for cut in 0..frame.len() {
                check(&frame[..cut], wire);
            }
            // One to four damaged bytes among the headers, whole or cut.
            for _ in 0..3000 {
                let mut f = frame.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len().min(80));
                    f[at] = rng.next() as u8;
                }
                check(&f, wire);
                let cut = rng.below(f.len() + 1);
                check(&f[..cut], wire);
            }
        }
        // The direct path took a good share and left the rest to etherparse.
        assert!(
            fast > compared / 10 && fast < compared,
            "{fast} of {compared}"
        );
    }

    #[test]
    fn truncated_and_garbage_packets_never_panic() {
        let pkt = tcp_v4(None);
        for cut in 0..pkt.len() {
            let h = parse(LinkType::Ethernet, 0, 0, pkt.len() as u32, &pkt[..cut]);
            assert_ne!(h.flags & flag::TRUNCATED, 0);
            assert_eq!(h.cap_len as usize, cut);
        }
        // Deterministic random bytes on every link type.
        let mut x: u32 = 12345;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for lt in [
                LinkType::Ethernet,
                LinkType::RawIp,
                LinkType::LinuxSll,
                LinkType::LinuxSll2,
                LinkType::Null,
                LinkType::Ppp,
                LinkType::PppOverEthernet,
                LinkType::CiscoHdlc,
                LinkType::Ieee80211,
                LinkType::Radiotap,
                LinkType::Other(147),
            ] {
                let _ = parse(lt, 0, 0, len as u32, &bytes);
            }
        }
        // Every framing cut at every length, and MPLS stacks cut short.
        let [v4, v6] = ip_packets();
        for dlt in [9, 50, 51, 104, 105, 127, 0, 108, 113, 276] {
            for ip in [&v4, &v6] {
                let frame = pcapgen::frame_ip(dlt, ip);
                for cut in 0..frame.len() {
                    let _ = parse(
                        LinkType::from_dlt(dlt as i32),
                        0,
                        0,
                        frame.len() as u32,
                        &frame[..cut],
                    );
                }
            }
        }
        let mpls = pcapgen::ethernet_vlan_mpls(&[5, 6], &[1, 2, 3], &v4);
        for cut in 0..mpls.len() {
            let _ = parse(LinkType::Ethernet, 0, 0, mpls.len() as u32, &mpls[..cut]);
        }
        // A corrupted IPv4 header (bad IHL) is flagged as a parse error.
        let mut bad = tcp_v4(None);
        bad[14] = 0x41;
        let h = parse(LinkType::Ethernet, 0, 0, bad.len() as u32, &bad);
        assert_ne!(h.flags & flag::PARSE_ERROR, 0);
    }
}
