//! IPFIX messages (RFC 7011) for ended flows: two templates (IPv4, IPv6)
//! of the information elements collectors expect, data sets packed into
//! datagrams of at most a given size, a sequence number per observation
//! domain, and the templates sent again every refresh interval (UDP loses
//! them, and a collector that restarts needs them again).

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The IPFIX version number.
pub const VERSION: u16 = 10;
/// Template id of IPv4 flows.
pub const TEMPLATE_V4: u16 = 256;
/// Template id of IPv6 flows.
pub const TEMPLATE_V6: u16 = 257;
/// Set id of a template set.
const TEMPLATE_SET: u16 = 2;
const MESSAGE_HEADER: usize = 16;
const SET_HEADER: usize = 4;

/// Information elements (IANA id, length) after the two addresses, the
/// same in both templates.
const COMMON: &[(u16, u16)] = &[
    (7, 2),   // sourceTransportPort
    (11, 2),  // destinationTransportPort
    (4, 1),   // protocolIdentifier
    (6, 2),   // tcpControlBits
    (2, 8),   // packetDeltaCount
    (1, 8),   // octetDeltaCount
    (152, 8), // flowStartMilliseconds
    (153, 8), // flowEndMilliseconds
    (10, 4),  // ingressInterface
    (136, 1), // flowEndReason
];
/// sourceIPv4Address, destinationIPv4Address.
const V4_ADDRESSES: [(u16, u16); 2] = [(8, 4), (12, 4)];
/// sourceIPv6Address, destinationIPv6Address.
const V6_ADDRESSES: [(u16, u16); 2] = [(27, 16), (28, 16)];

/// One ended flow, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (the same family as `src`).
    pub dst: IpAddr,
    /// Source port (0 for port-less protocols).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// OR of the packets' TCP flags.
    pub tcp_flags: u8,
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub octets: u64,
    /// First packet, Unix ms.
    pub start_ms: u64,
    /// Last packet, Unix ms.
    pub end_ms: u64,
    /// The link the monitor saw it on.
    pub ingress: u32,
    /// IPFIX `flowEndReason`.
    pub reason: u8,
}

impl Flow {
    fn template(&self) -> u16 {
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => TEMPLATE_V4,
            _ => TEMPLATE_V6,
        }
    }

    fn len(&self) -> usize {
        record_len(self.template())
    }

    fn write(&self, out: &mut Vec<u8>) {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
            }
            (s, d) => {
                out.extend_from_slice(&v6(s).octets());
                out.extend_from_slice(&v6(d).octets());
            }
        }
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.push(self.proto);
        out.extend_from_slice(&u16::from(self.tcp_flags).to_be_bytes());
        out.extend_from_slice(&self.packets.to_be_bytes());
        out.extend_from_slice(&self.octets.to_be_bytes());
        out.extend_from_slice(&self.start_ms.to_be_bytes());
        out.extend_from_slice(&self.end_ms.to_be_bytes());
        out.extend_from_slice(&self.ingress.to_be_bytes());
        out.push(self.reason);
    }
}

fn v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn fields(template: u16) -> impl Iterator<Item = (u16, u16)> {
    let addresses = if template == TEMPLATE_V4 {
        V4_ADDRESSES
    } else {
        V6_ADDRESSES
    };
    addresses.into_iter().chain(COMMON.iter().copied())
}

fn record_len(template: u16) -> usize {
    fields(template).map(|(_, len)| usize::from(len)).sum()
}

/// The template set of both templates.
fn template_set() -> Vec<u8> {
    let mut set = Vec::new();
    set.extend_from_slice(&TEMPLATE_SET.to_be_bytes());
    set.extend_from_slice(&[0, 0]);
    for template in [TEMPLATE_V4, TEMPLATE_V6] {
        set.extend_from_slice(&template.to_be_bytes());
        set.extend_from_slice(&(fields(template).count() as u16).to_be_bytes());
        for (id, len) in fields(template) {
            set.extend_from_slice(&id.to_be_bytes());
            set.extend_from_slice(&len.to_be_bytes());
        }
    }
    let len = set.len() as u16;
    set[2..4].copy_from_slice(&len.to_be_bytes());
    set
}

/// What the exporter keeps per observation domain: the sequence number
/// (data records sent so far, modulo 2^32) and when it last sent the
/// templates.
#[derive(Debug, Clone)]
pub struct Domain {
    /// The observation domain id.
    pub id: u32,
    /// Data records sent in this domain so far.
    pub seq: u32,
    templates_at: Option<Instant>,
}

impl Domain {
    /// A domain that has sent nothing yet.
    #[must_use]
    pub fn new(id: u32) -> Domain {
        Domain {
            id,
            seq: 0,
            templates_at: None,
        }
    }

    /// `flows` as IPFIX messages of at most `max_len` bytes each (at least
    /// one record's worth), exported at `export_s` (Unix seconds); the
    /// first carries the templates if they were never sent or were sent
    /// `refresh` or longer ago.
    #[must_use]
    pub fn messages(
        &mut self,
        flows: &[Flow],
        export_s: u32,
        refresh: Duration,
        max_len: usize,
    ) -> Vec<Vec<u8>> {
        let templates = template_set();
        let max_len =
            max_len.max(MESSAGE_HEADER + templates.len() + SET_HEADER + record_len(TEMPLATE_V6));
        let mut out = Vec::new();
        let mut rest = flows;
        let now = Instant::now();
        // At most once a call, however short `refresh` is.
        let mut templates_due = self.templates_due(now, refresh);
        while !rest.is_empty() || templates_due {
            let mut msg = Vec::with_capacity(max_len);
            msg.extend_from_slice(&VERSION.to_be_bytes());
            msg.extend_from_slice(&[0, 0]);
            msg.extend_from_slice(&export_s.to_be_bytes());
            msg.extend_from_slice(&self.seq.to_be_bytes());
            msg.extend_from_slice(&self.id.to_be_bytes());
            if templates_due {
                msg.extend_from_slice(&templates);
                self.templates_at = Some(now);
                templates_due = false;
            }
            let mut records = 0u32;
            let mut set_at: Option<(usize, u16)> = None;
            while let Some(flow) = rest.first() {
                let template = flow.template();
                let opens = set_at.is_none_or(|(_, t)| t != template);
                let need = flow.len() + if opens { SET_HEADER } else { 0 };
                if msg.len() + need > max_len {
                    break;
                }
                if opens {
                    close_set(&mut msg, set_at);
                    set_at = Some((msg.len(), template));
                    msg.extend_from_slice(&template.to_be_bytes());
                    msg.extend_from_slice(&[0, 0]);
                }
                flow.write(&mut msg);
                records += 1;
                rest = &rest[1..];
            }
            close_set(&mut msg, set_at);
            let len = msg.len() as u16;
            msg[2..4].copy_from_slice(&len.to_be_bytes());
            self.seq = self.seq.wrapping_add(records);
            out.push(msg);
        }
        out
    }

    fn templates_due(&self, now: Instant, refresh: Duration) -> bool {
        self.templates_at
            .is_none_or(|at| now.duration_since(at) >= refresh)
    }
}

/// Writes the length of the set that starts at `set_at`.
fn close_set(msg: &mut [u8], set_at: Option<(usize, u16)>) {
    if let Some((at, _)) = set_at {
        let len = (msg.len() - at) as u16;
        msg[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// The observation domain of a monitor: FNV-1a (32 bits) of its id, so
/// every exporter gives a monitor the same one without configuration.
#[must_use]
pub fn domain_of(monitor: &str) -> u32 {
    monitor.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, dst: &str, sport: u16) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport: 443,
            proto: 6,
            tcp_flags: 0x1b,
            packets: 10,
            octets: 5000,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_001_500,
            ingress: 3,
            reason: 3,
        }
    }

    fn be16(b: &[u8], at: usize) -> usize {
        usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Walks a message's sets: (set id, records or templates, body bytes).
    fn sets(msg: &[u8]) -> Vec<(usize, usize)> {
        assert_eq!(be16(msg, 0), 10);
        assert_eq!(be16(msg, 2), msg.len());
        let mut at = MESSAGE_HEADER;
        let mut out = Vec::new();
        while at < msg.len() {
            let (id, len) = (be16(msg, at), be16(msg, at + 2));
            assert!(len >= SET_HEADER && at + len <= msg.len(), "set at {at}");
            let body = len - SET_HEADER;
            let n = match id {
                2 => 2,
                256 => {
                    assert_eq!(body % 52, 0);
                    body / 52
                }
                257 => {
                    assert_eq!(body % 76, 0);
                    body / 76
                }
                other => panic!("set id {other}"),
            };
            out.push((id, n));
            at += len;
        }
        out
    }

    #[test]
    fn records_are_packed_by_family_with_sequence_numbers_and_templates_first() {
        let mut d = Domain::new(7);
        let flows: Vec<Flow> = (0..30)
            .map(|i| {
                if i % 10 < 7 {
                    flow("10.0.0.1", "10.0.0.2", 1000 + i)
                } else {
                    flow("2001:db8::1", "2001:db8::2", 1000 + i)
                }
            })
            .collect();
        let msgs = d.messages(&flows, 1_700_000_002, Duration::from_secs(60), 600);
        assert!(
            msgs.iter().all(|m| m.len() <= 600),
            "{:?}",
            msgs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let mut seq = 0;
        let mut records = 0;
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(be32(m, 8), seq, "message {i}'s sequence number");
            assert_eq!(be32(m, 12), 7);
            let s = sets(m);
            assert_eq!(
                s.first().map(|x| x.0) == Some(2),
                i == 0,
                "templates only in the first"
            );
            let n: usize = s.iter().filter(|x| x.0 != 2).map(|x| x.1).sum();
            seq += n as u32;
            records += n;
        }
        assert_eq!(records, 30);
        assert_eq!(d.seq, 30);
        // The first record as written: addresses, ports, counters, times.
        let m = &msgs[0];
        let first = MESSAGE_HEADER + be16(m, MESSAGE_HEADER + 2) + SET_HEADER;
        assert_eq!(&m[first..first + 8], &[10, 0, 0, 1, 10, 0, 0, 2]);
        assert_eq!(be16(m, first + 8), 1000);
        assert_eq!(be16(m, first + 10), 443);
        assert_eq!(m[first + 12], 6);
        assert_eq!(be16(m, first + 13), 0x1b);
        assert_eq!(
            u64::from_be_bytes(m[first + 15..first + 23].try_into().unwrap()),
            10
        );
        assert_eq!(
            u64::from_be_bytes(m[first + 23..first + 31].try_into().unwrap()),
            5000
        );
        assert_eq!(
            u64::from_be_bytes(m[first + 31..first + 39].try_into().unwrap()),
            1_700_000_000_000
        );
        // No flows and templates not due: no message at all.
        assert!(d.messages(&[], 0, Duration::from_secs(60), 600).is_empty());
        // Due again: a message of templates alone, at the current sequence.
        let again = d.messages(&[], 0, Duration::ZERO, 600);
        assert_eq!(again.len(), 1);
        assert_eq!(be32(&again[0], 8), 30);
        assert_eq!(sets(&again[0]), vec![(2, 2)]);
    }

    #[test]
    fn observation_domains_are_stable_per_monitor() {
        assert_eq!(domain_of(""), 0x811c_9dc5);
        assert_eq!(domain_of("a"), 0xe40c_292c);
        assert_ne!(domain_of("10.0.0.1"), domain_of("10.0.0.2"));
    }
}
