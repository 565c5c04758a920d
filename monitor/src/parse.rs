//! Lenient packet parsing into the ABI's [`PacketHeader`].
//!
//! Never fails: what cannot be parsed is flagged ([`flag::PARSE_ERROR`]) and
//! the fields found so far are kept. Link types: Ethernet (with 802.1Q/QinQ),
//! raw IP, Linux cooked capture v1 and v2, BSD loopback.
//!
//! etherparse parses everything. The one shape most traffic has (Ethernet,
//! at most one 802.1Q tag, IPv4 or IPv6 without extension headers, not a
//! fragment, TCP or UDP) also has a direct path ([`fast_ethernet`]) that
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
}

impl LinkType {
    /// The type for a pcap datalink value, if supported.
    #[must_use]
    pub fn from_dlt(dlt: i32) -> Option<LinkType> {
        Some(match dlt {
            1 => LinkType::Ethernet,
            12 | 14 | 101 | 228 | 229 => LinkType::RawIp,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            0 | 108 => LinkType::Null,
            _ => return None,
        })
    }
}

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
        LinkType::Ethernet => LaxSlicedPacket::from_ethernet(data).ok(),
        LinkType::RawIp => LaxSlicedPacket::from_ip(data).ok(),
        LinkType::LinuxSll => after_header(data, 16, |d| u16::from_be_bytes([d[14], d[15]])),
        LinkType::LinuxSll2 => after_header(data, 20, |d| u16::from_be_bytes([d[0], d[1]])),
        LinkType::Null => null_family(data),
    };
    let Some(p) = sliced else {
        h.flags |= flag::PARSE_ERROR;
        return h;
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

fn after_header(
    data: &[u8],
    len: usize,
    proto: impl Fn(&[u8]) -> u16,
) -> Option<LaxSlicedPacket<'_>> {
    if data.len() < len {
        return None;
    }
    Some(LaxSlicedPacket::from_ether_type(
        EtherType(proto(data)),
        &data[len..],
    ))
}

fn null_family(data: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    if data.len() < 4 {
        return None;
    }
    // The family is in the capturing host's byte order; IPv4 is 2 everywhere,
    // IPv6 is 24, 28 or 30 depending on the OS.
    let le = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let be = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let ether = match le.min(be) {
        2 => EtherType::IPV4,
        24 | 28 | 30 => EtherType::IPV6,
        _ => return None,
    };
    Some(LaxSlicedPacket::from_ether_type(ether, &data[4..]))
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
        assert_eq!(LinkType::from_dlt(276), Some(LinkType::LinuxSll2));
        assert_eq!(LinkType::from_dlt(9999), None);
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
            ] {
                let _ = parse(lt, 0, 0, len as u32, &bytes);
            }
        }
        // A corrupted IPv4 header (bad IHL) is flagged as a parse error.
        let mut bad = tcp_v4(None);
        bad[14] = 0x41;
        let h = parse(LinkType::Ethernet, 0, 0, bad.len() as u32, &bad);
        assert_ne!(h.flags & flag::PARSE_ERROR, 0);
    }
}
