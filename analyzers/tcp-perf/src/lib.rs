//! `tcp-perf`: TCP performance per connection and per link.
//!
//! A connection is a bidirectional 5-tuple; its client is the side that
//! sent the SYN (or, joined mid-stream, the first packet's source). Per
//! direction the analyzer follows the highest sequence number seen and the
//! gaps below it:
//!
//! - a segment starting beyond the highest sequence leaves a *gap* (loss
//!   before the capture point, or reordering);
//! - a segment filling (part of) a gap is *out of order*;
//! - a segment whose bytes were all seen before is a *retransmission*.
//!
//! SYN and FIN each take one sequence number, so their retransmissions
//! count too. Up to 16 gaps per direction are remembered; older ones are
//! forgotten (a late fill of a forgotten gap counts as a retransmission).
//! Handshake RTT as seen from the capture point: SYN → SYN/ACK (towards the
//! server) plus SYN/ACK → ACK (towards the client). Zero windows are
//! segments advertising a window of 0 (RSTs excepted).
//!
//! A connection is *flagged* when it has at least `min_packets` data
//! segments and its retransmissions reach `retrans_threshold` of them; the
//! flag raises an alert event at once (`emit`), once per connection.
//!
//! Params (all optional): `{"retrans_threshold": 0.05, "min_packets": 10,
//! "top_n": 10, "max_flows": 100000, "idle_timeout_s": 300}`.
//!
//! Results: `{"packets", "tcp_packets", "data_packets", "retransmissions",
//! "out_of_order", "zero_windows", "resets", "handshakes", "rtt_us":
//! {"count", "min", "mean", "max"}, "active_flows", "expired_flows",
//! "refused_packets", "links": {link: {"packets", "data_packets",
//! "retransmissions", "out_of_order", "zero_windows", "resets",
//! "retrans_rate"}}, "flows": [flow…], "flagged": [flow…]}` where a flow is
//! `{"client", "server", "client_port", "server_port", "link", "packets",
//! "data_packets", "retransmissions", "out_of_order", "zero_windows",
//! "resets", "retrans_rate", "rtt_us", "flagged"}`. `flows` holds the
//! `top_n` connections by retransmissions (then packets); `flagged` every
//! flagged connection still tracked (at most 1000).
//!
//! The alert: `{"kind": "tcp_retransmissions", "link", "client", "server",
//! "client_port", "server_port", "retransmissions", "data_packets",
//! "retrans_rate", "ts_ns"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tm_sdk::abi::tcp;
use tm_sdk::{ip, Analyzer, Direction, FlowKey, FxHashMap, Packet};

/// Gaps remembered per direction.
const MAX_GAPS: usize = 16;
/// Flagged connections listed in the results.
const MAX_FLAGGED: usize = 1000;

/// Parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Retransmitted share of data segments that flags a connection.
    pub retrans_threshold: f64,
    /// Data segments a connection needs before it can be flagged.
    pub min_packets: u32,
    /// Connections listed in `flows`.
    pub top_n: u32,
    /// Connections tracked at once.
    pub max_flows: u32,
    /// Idle time (packet time) after which a connection is forgotten; 0 never.
    pub idle_timeout_s: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            retrans_threshold: 0.05,
            min_packets: 10,
            top_n: 10,
            max_flows: 100_000,
            idle_timeout_s: 300,
        }
    }
}

impl Params {
    fn check(self) -> Result<Self, String> {
        if !(self.retrans_threshold > 0.0 && self.retrans_threshold <= 1.0) {
            return Err(format!(
                "retrans_threshold = {}: must be above 0 and at most 1",
                self.retrans_threshold
            ));
        }
        if self.top_n > 10_000 {
            return Err(format!("top_n = {}: must be 0 to 10000", self.top_n));
        }
        if self.max_flows == 0 || self.max_flows > 10_000_000 {
            return Err(format!(
                "max_flows = {}: must be 1 to 10000000",
                self.max_flows
            ));
        }
        Ok(self)
    }
}

/// Counters shared by connections, links and the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// TCP packets.
    pub packets: u64,
    /// Segments taking sequence space (data, SYN, FIN).
    pub data_packets: u64,
    /// Segments whose sequence space was all seen before.
    pub retransmissions: u64,
    /// Segments filling a gap.
    pub out_of_order: u64,
    /// Segments advertising a zero window.
    pub zero_windows: u64,
    /// Segments with RST.
    pub resets: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.data_packets += o.data_packets;
        self.retransmissions += o.retransmissions;
        self.out_of_order += o.out_of_order;
        self.zero_windows += o.zero_windows;
        self.resets += o.resets;
    }

    fn rate(&self) -> f64 {
        if self.data_packets == 0 {
            0.0
        } else {
            self.retransmissions as f64 / self.data_packets as f64
        }
    }
}

/// Sequence tracking of one direction.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Seq {
    /// One past the highest sequence number seen, once any was.
    next: Option<u32>,
    /// Unfilled ranges below `next`, oldest first.
    gaps: Vec<(u32, u32)>,
}

/// `a < b` in sequence space (RFC 1982 style).
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// What a segment was.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    InOrder,
    OutOfOrder,
    Retransmission,
}

impl Seq {
    /// Classifies the segment `[seq, seq + len)`, `len > 0`, and records it.
    fn segment(&mut self, seq: u32, len: u32) -> Kind {
        let end = seq.wrapping_add(len);
        let next = match self.next {
            None => {
                self.next = Some(end);
                return Kind::InOrder;
            }
            Some(n) => n,
        };
        if !before(seq, next) {
            if seq != next {
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((next, seq));
            }
            self.next = Some(end);
            return Kind::InOrder;
        }
        // Starts below the highest sequence: fills a gap, or was seen.
        let mut filled = false;
        let mut kept = Vec::with_capacity(self.gaps.len() + 1);
        for &(lo, hi) in &self.gaps {
            if before(seq, hi) && before(lo, end) {
                filled = true;
                if before(lo, seq) {
                    kept.push((lo, seq));
                }
                if before(end, hi) {
                    kept.push((end, hi));
                }
            } else {
                kept.push((lo, hi));
            }
        }
        kept.truncate(MAX_GAPS);
        self.gaps = kept;
        if before(next, end) {
            self.next = Some(end);
        }
        if filled {
            Kind::OutOfOrder
        } else {
            Kind::Retransmission
        }
    }
}

/// One connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Conn {
    /// True if the key's `src` is the client.
    client_is_src: bool,
    link: u32,
    counters: Counters,
    dirs: [Seq; 2],
    syn_ns: u64,
    synack_ns: u64,
    rtt_ns: Option<u64>,
    last_ns: u64,
    flagged: bool,
}

/// A connection in the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowOut {
    /// Client address.
    pub client: String,
    /// Server address.
    pub server: String,
    /// Client port.
    pub client_port: u16,
    /// Server port.
    pub server_port: u16,
    /// Link of its first packet.
    pub link: u32,
    /// TCP packets both ways.
    pub packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Out-of-order segments.
    pub out_of_order: u64,
    /// Zero-window segments.
    pub zero_windows: u64,
    /// RST segments.
    pub resets: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
    /// Handshake RTT, µs, if the handshake was seen.
    pub rtt_us: Option<u64>,
    /// Whether it passed the threshold.
    pub flagged: bool,
}

/// Per-link figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkOut {
    /// TCP packets.
    pub packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Out-of-order segments.
    pub out_of_order: u64,
    /// Zero-window segments.
    pub zero_windows: u64,
    /// RST segments.
    pub resets: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
}

/// RTT summary, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    /// Handshakes measured.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean.
    pub mean: u64,
    /// Largest.
    pub max: u64,
}

/// The results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Every packet given.
    pub packets: u64,
    /// TCP packets.
    pub tcp_packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Out-of-order segments.
    pub out_of_order: u64,
    /// Zero-window segments.
    pub zero_windows: u64,
    /// RST segments.
    pub resets: u64,
    /// Handshakes measured.
    pub handshakes: u64,
    /// Handshake RTTs.
    pub rtt_us: Rtt,
    /// Connections tracked now.
    pub active_flows: u64,
    /// Connections forgotten after the idle timeout.
    pub expired_flows: u64,
    /// Packets of new connections refused at `max_flows`.
    pub refused_packets: u64,
    /// Per link.
    pub links: BTreeMap<u32, LinkOut>,
    /// Top connections by retransmissions.
    pub flows: Vec<FlowOut>,
    /// Flagged connections.
    pub flagged: Vec<FlowOut>,
}

/// The alert raised when a connection is flagged.
#[derive(Debug, Serialize)]
struct Alert<'a> {
    kind: &'a str,
    link: u32,
    client: String,
    server: String,
    client_port: u16,
    server_port: u16,
    retransmissions: u64,
    data_packets: u64,
    retrans_rate: f64,
    ts_ns: u64,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    packets: u64,
    totals: Counters,
    links: Vec<Counters>,
    rtt: (u64, u64, u64, u64),
    expired: u64,
    refused: u64,
    latest_ns: u64,
    conns: Vec<(FlowKey, Conn)>,
}

/// The analyzer.
pub struct TcpPerf {
    params: Params,
    packets: u64,
    totals: Counters,
    links: Vec<Counters>,
    /// count, sum, min, max of handshake RTTs, ns.
    rtt: (u64, u64, u64, u64),
    expired: u64,
    refused: u64,
    latest_ns: u64,
    conns: FxHashMap<FlowKey, Conn>,
}

fn flow_out(key: &FlowKey, c: &Conn) -> FlowOut {
    let (client, server) = if c.client_is_src {
        ((key.src, key.sport), (key.dst, key.dport))
    } else {
        ((key.dst, key.dport), (key.src, key.sport))
    };
    FlowOut {
        client: ip(key.version, &client.0).to_string(),
        server: ip(key.version, &server.0).to_string(),
        client_port: client.1,
        server_port: server.1,
        link: c.link,
        packets: c.counters.packets,
        data_packets: c.counters.data_packets,
        retransmissions: c.counters.retransmissions,
        out_of_order: c.counters.out_of_order,
        zero_windows: c.counters.zero_windows,
        resets: c.counters.resets,
        retrans_rate: c.counters.rate(),
        rtt_us: c.rtt_ns.map(|n| n / 1000),
        flagged: c.flagged,
    }
}

impl TcpPerf {
    fn expire(&mut self) {
        if self.params.idle_timeout_s == 0 {
            return;
        }
        let limit = self.params.idle_timeout_s * 1_000_000_000;
        let now = self.latest_ns;
        let before = self.conns.len();
        self.conns
            .retain(|_, c| now.saturating_sub(c.last_ns) < limit);
        self.expired += (before - self.conns.len()) as u64;
    }
}

impl Analyzer for TcpPerf {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(TcpPerf {
            params: params.check()?,
            packets: 0,
            totals: Counters::default(),
            links: Vec::new(),
            rtt: (0, 0, u64::MAX, 0),
            expired: 0,
            refused: 0,
            latest_ns: 0,
            conns: FxHashMap::default(),
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        self.packets += 1;
        let t = match p.tcp() {
            Some(t) => t,
            None => return,
        };
        let key = match p.flow() {
            Some(k) => k,
            None => return,
        };
        let h = &p.header;
        self.latest_ns = self.latest_ns.max(h.ts_ns);
        let (key, dir) = key.bidirectional();
        let full = self.conns.len() >= self.params.max_flows as usize;
        let conn = match self.conns.get_mut(&key) {
            Some(c) => c,
            None if full => {
                self.refused += 1;
                return;
            }
            None => {
                // The SYN's sender is the client; a SYN/ACK's receiver is.
                let synack = t.flags & (tcp::SYN | tcp::ACK) == (tcp::SYN | tcp::ACK);
                let sender_is_src = dir == Direction::Forward;
                let client_is_src = if synack {
                    !sender_is_src
                } else {
                    sender_is_src
                };
                self.conns.entry(key).or_insert(Conn {
                    client_is_src,
                    link: h.link,
                    ..Conn::default()
                })
            }
        };
        let mut seen = Counters {
            packets: 1,
            ..Counters::default()
        };
        let from_client = (dir == Direction::Forward) == conn.client_is_src;
        // Handshake timing.
        let syn = t.flags & tcp::SYN != 0;
        let ack = t.flags & tcp::ACK != 0;
        if syn && !ack && from_client && conn.syn_ns == 0 {
            conn.syn_ns = h.ts_ns;
        } else if syn && ack && !from_client && conn.syn_ns != 0 && conn.synack_ns == 0 {
            conn.synack_ns = h.ts_ns;
        } else if !syn && ack && from_client && conn.synack_ns != 0 && conn.rtt_ns.is_none() {
            let rtt = h.ts_ns.saturating_sub(conn.syn_ns);
            conn.rtt_ns = Some(rtt);
            self.rtt.0 += 1;
            self.rtt.1 += rtt;
            self.rtt.2 = self.rtt.2.min(rtt);
            self.rtt.3 = self.rtt.3.max(rtt);
        }
        // Sequence space: payload, plus one each for SYN and FIN.
        let len = t.payload_len + u32::from(syn) + u32::from(t.flags & tcp::FIN != 0);
        if len > 0 && t.flags & tcp::RST == 0 {
            seen.data_packets = 1;
            match conn.dirs[usize::from(!from_client)].segment(t.seq, len) {
                Kind::InOrder => {}
                Kind::OutOfOrder => seen.out_of_order = 1,
                Kind::Retransmission => seen.retransmissions = 1,
            }
        }
        if t.flags & tcp::RST != 0 {
            seen.resets = 1;
        } else if t.window == 0 {
            seen.zero_windows = 1;
        }
        conn.counters.add(&seen);
        conn.last_ns = conn.last_ns.max(h.ts_ns);
        if !conn.flagged
            && seen.retransmissions > 0
            && conn.counters.data_packets >= u64::from(self.params.min_packets)
            && conn.counters.rate() >= self.params.retrans_threshold
        {
            conn.flagged = true;
            let f = flow_out(&key, conn);
            tm_sdk::emit(&Alert {
                kind: "tcp_retransmissions",
                link: h.link,
                client: f.client,
                server: f.server,
                client_port: f.client_port,
                server_port: f.server_port,
                retransmissions: f.retransmissions,
                data_packets: f.data_packets,
                retrans_rate: f.retrans_rate,
                ts_ns: h.ts_ns,
            });
        }
        self.totals.add(&seen);
        let link = h.link as usize;
        if link >= self.links.len() {
            if link > 4096 {
                return;
            }
            self.links.resize(link + 1, Counters::default());
        }
        self.links[link].add(&seen);
    }

    fn tick(&mut self, _now_ns: u64) {
        self.expire();
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        Ok(())
    }

    fn results(&self) -> Results {
        let t = &self.totals;
        let mut links = BTreeMap::new();
        for (id, c) in self.links.iter().enumerate() {
            if c.packets > 0 {
                links.insert(
                    id as u32,
                    LinkOut {
                        packets: c.packets,
                        data_packets: c.data_packets,
                        retransmissions: c.retransmissions,
                        out_of_order: c.out_of_order,
                        zero_windows: c.zero_windows,
                        resets: c.resets,
                        retrans_rate: c.rate(),
                    },
                );
            }
        }
        let mut all: Vec<(&FlowKey, &Conn)> = self.conns.iter().collect();
        all.sort_unstable_by(|a, b| {
            (b.1.counters.retransmissions, b.1.counters.packets)
                .cmp(&(a.1.counters.retransmissions, a.1.counters.packets))
                .then_with(|| a.0.cmp(b.0))
        });
        let flagged = all
            .iter()
            .filter(|(_, c)| c.flagged)
            .take(MAX_FLAGGED)
            .map(|(k, c)| flow_out(k, c))
            .collect();
        let flows = all
            .iter()
            .take(self.params.top_n as usize)
            .map(|(k, c)| flow_out(k, c))
            .collect();
        let (count, sum, min, max) = self.rtt;
        Results {
            packets: self.packets,
            tcp_packets: t.packets,
            data_packets: t.data_packets,
            retransmissions: t.retransmissions,
            out_of_order: t.out_of_order,
            zero_windows: t.zero_windows,
            resets: t.resets,
            handshakes: count,
            rtt_us: if count == 0 {
                Rtt::default()
            } else {
                Rtt {
                    count,
                    min: min / 1000,
                    mean: sum / count / 1000,
                    max: max / 1000,
                }
            },
            active_flows: self.conns.len() as u64,
            expired_flows: self.expired,
            refused_packets: self.refused,
            links,
            flows,
            flagged,
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&Saved {
            packets: self.packets,
            totals: self.totals,
            links: self.links.clone(),
            rtt: self.rtt,
            expired: self.expired,
            refused: self.refused,
            latest_ns: self.latest_ns,
            conns: self.conns.iter().map(|(k, c)| (*k, c.clone())).collect(),
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let s: Saved = tm_sdk::decode_state(state)?;
        self.packets = s.packets;
        self.totals = s.totals;
        self.links = s.links;
        self.rtt = s.rtt;
        self.expired = s.expired;
        self.refused = s.refused;
        self.latest_ns = s.latest_ns;
        self.conns = s.conns.into_iter().collect();
        Ok(())
    }
}

tm_sdk::export_analyzer!(TcpPerf);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_tracking_tells_retransmissions_from_reordering() {
        let mut s = Seq::default();
        assert_eq!(s.segment(100, 10), Kind::InOrder); // 100..110
        assert_eq!(s.segment(120, 10), Kind::InOrder); // gap 110..120
        assert_eq!(s.segment(110, 10), Kind::OutOfOrder); // fills it
        assert_eq!(s.segment(110, 10), Kind::Retransmission); // seen now
        assert_eq!(s.segment(100, 30), Kind::Retransmission);
        assert!(s.gaps.is_empty());
        // Across the 32-bit wrap.
        let mut s = Seq::default();
        assert_eq!(s.segment(u32::MAX - 4, 10), Kind::InOrder);
        assert_eq!(s.segment(5, 10), Kind::InOrder);
        assert_eq!(s.segment(u32::MAX - 4, 10), Kind::Retransmission);
        // A partial fill leaves the rest of the gap open.
        let mut s = Seq::default();
        s.segment(0, 10);
        s.segment(30, 10); // gap 10..30
        assert_eq!(s.segment(15, 5), Kind::OutOfOrder);
        assert_eq!(s.gaps, vec![(10, 15), (20, 30)]);
    }

    #[test]
    fn bad_params_are_named() {
        let e = TcpPerf::init(Params {
            retrans_threshold: 0.0,
            ..Params::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("retrans_threshold = 0"), "{}", e);
        let e = TcpPerf::init(Params {
            max_flows: 0,
            ..Params::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("max_flows = 0"), "{}", e);
    }
}
