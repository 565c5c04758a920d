//! `flow-records`: a record for every flow when it ends, as flow exporters
//! (NetFlow/IPFIX meters) make them.
//!
//! A flow is a directional 5-tuple on one link (ports 0 for port-less
//! protocols, except ICMP and ICMPv6, whose type and code are the
//! destination port, `type << 8 | code`, as NetFlow and IPFIX exporters
//! put them). It ends, on *packet* time so that a replay gives the records
//! a live capture would:
//! - idle: no packet for `idle_timeout_s` (reason 1, as IPFIX's
//!   `flowEndReason`);
//! - active: it has lasted `active_timeout_s`; its next packet starts a new
//!   record (reason 2);
//! - end detected: a TCP FIN or RST was seen and no packet came for
//!   `closed_timeout_s` (reason 3);
//! - forced: the deployment is unloaded (reason 4);
//! - lack of resources: the table held `max_flows` flows and a new one
//!   came; the eighth of the flows idle longest end (reason 5).
//!
//! The clock is the latest packet time seen. When no packet has come for
//! `idle_timeout_s` of wall time (the end of a replay, a quiet link), the
//! clock runs on from the last packet at wall-clock pace, so open flows
//! still end.
//!
//! Params (all optional): `{"idle_timeout_s": 15, "active_timeout_s": 1800,
//! "closed_timeout_s": 2, "max_flows": 100000, "max_held": 2000}`.
//!
//! Results: `{"packets", "non_ip_packets", "active_flows", "records_total",
//! "records_dropped", "clock_ns", "records": [{"seq", "src", "dst", "sport",
//! "dport", "proto", "packets", "octets", "start_ns", "end_ns",
//! "tcp_flags", "link", "reason"}]}`. `records` are those that ended since
//! the last *published* window (each record is in one published window;
//! `seq` numbers them 1, 2, … over the deployment), at most `max_held`
//! (up to 4000; about 150 bytes each in a window, 200 for IPv6): beyond it the oldest are
//! dropped and counted in `records_dropped`, so publish windows often
//! enough for the rate at which flows end.
//! `octets` are IP bytes (header and payload, from the IP length field), as
//! IPFIX's `octetDeltaCount`; `tcp_flags` is the OR of every packet's.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tm_sdk::abi::{tcp, NO_OFFSET};
use tm_sdk::{ip, Analyzer, FlowKey, FxHashMap, Packet};

const NS: u64 = 1_000_000_000;

/// Why a flow ended (IPFIX `flowEndReason`, IE 136).
pub mod reason {
    /// No packet for the idle timeout.
    pub const IDLE: u8 = 1;
    /// Lasted the active timeout.
    pub const ACTIVE: u8 = 2;
    /// TCP FIN or RST.
    pub const END_DETECTED: u8 = 3;
    /// The deployment was unloaded.
    pub const FORCED: u8 = 4;
    /// The table was full.
    pub const LACK_OF_RESOURCES: u8 = 5;
}

/// Parameters.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// A flow with no packet for this long (packet time) ends.
    pub idle_timeout_s: u64,
    /// A flow that has lasted this long ends; its next packet starts a new one.
    pub active_timeout_s: u64,
    /// A flow that saw FIN or RST ends after this long without a packet.
    pub closed_timeout_s: u64,
    /// Most flows open at once.
    pub max_flows: u32,
    /// Most ended records held until the next published window.
    pub max_held: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            idle_timeout_s: 15,
            active_timeout_s: 1800,
            closed_timeout_s: 2,
            max_flows: 100_000,
            max_held: 2000,
        }
    }
}

impl Params {
    fn check(self) -> Result<Self, String> {
        for (name, v) in [
            ("idle_timeout_s", self.idle_timeout_s),
            ("active_timeout_s", self.active_timeout_s),
            ("closed_timeout_s", self.closed_timeout_s),
        ] {
            if v == 0 || v > 7 * 86_400 {
                return Err(format!("{name} = {v}: must be 1 to 604800 (seconds)"));
            }
        }
        if self.max_flows == 0 || self.max_flows > 10_000_000 {
            return Err(format!(
                "max_flows = {}: must be 1 to 10000000",
                self.max_flows
            ));
        }
        // At most about 200 bytes a record (IPv6): 4000 keep a window
        // under the bus's default 1 MiB max payload.
        if self.max_held == 0 || self.max_held > 4_000 {
            return Err(format!("max_held = {}: must be 1 to 4000", self.max_held));
        }
        Ok(self)
    }
}

/// An open flow.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Flow {
    packets: u64,
    octets: u64,
    start_ns: u64,
    end_ns: u64,
    tcp_flags: u8,
}

/// An ended flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// 1, 2, … over the deployment.
    pub seq: u64,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub octets: u64,
    /// First packet, Unix ns.
    pub start_ns: u64,
    /// Last packet, Unix ns.
    pub end_ns: u64,
    /// OR of the packets' TCP flags.
    pub tcp_flags: u8,
    /// Link id.
    pub link: u32,
    /// Why it ended ([`reason`]).
    pub reason: u8,
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Packets seen.
    pub packets: u64,
    /// Packets that were not IP.
    pub non_ip_packets: u64,
    /// Flows open now.
    pub active_flows: u64,
    /// Records made so far (the last one's `seq`).
    pub records_total: u64,
    /// Records dropped because `max_held` were waiting for a window.
    pub records_dropped: u64,
    /// The packet clock, Unix ns.
    pub clock_ns: u64,
    /// Records ended since the last published window.
    pub records: Vec<FlowRecord>,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    totals: Results,
    flows: Vec<(u32, FlowKey, Flow)>,
    held: Vec<FlowRecord>,
    clock_ns: u64,
}

/// The analyzer.
pub struct FlowRecords {
    params: Params,
    flows: FxHashMap<(u32, FlowKey), Flow>,
    /// Counters; `records`, `active_flows` and `clock_ns` are filled in
    /// `results`.
    totals: Results,
    held: VecDeque<FlowRecord>,
    /// Latest packet time seen (or run on by the wall clock on a quiet link).
    clock_ns: u64,
    /// Packet time of the next expiry scan.
    next_scan_ns: u64,
    /// Wall time of the first tick after the last packet, and the clock then.
    quiet_since: Option<(u64, u64)>,
    /// Packets since the last tick.
    packets_at_tick: u64,
}

impl FlowRecords {
    fn end(&mut self, link: u32, key: FlowKey, f: Flow, why: u8) {
        self.totals.records_total += 1;
        if self.held.len() >= self.params.max_held as usize {
            self.held.pop_front();
            self.totals.records_dropped += 1;
        }
        self.held.push_back(FlowRecord {
            seq: self.totals.records_total,
            src: ip(key.version, &key.src).to_string(),
            dst: ip(key.version, &key.dst).to_string(),
            sport: key.sport,
            dport: key.dport,
            proto: key.proto,
            packets: f.packets,
            octets: f.octets,
            start_ns: f.start_ns,
            end_ns: f.end_ns,
            tcp_flags: f.tcp_flags,
            link,
            reason: why,
        });
    }
}

impl Params {
    /// Why `f` has ended at `now`, if it has.
    fn ended(&self, f: &Flow, now: u64) -> Option<u8> {
        let idle = now.saturating_sub(f.end_ns);
        if f.tcp_flags & (tcp::FIN | tcp::RST) != 0 && idle >= self.closed_timeout_s * NS {
            Some(reason::END_DETECTED)
        } else if idle >= self.idle_timeout_s * NS {
            Some(reason::IDLE)
        } else if now.saturating_sub(f.start_ns) >= self.active_timeout_s * NS {
            Some(reason::ACTIVE)
        } else {
            None
        }
    }
}

impl FlowRecords {
    /// Ends every flow that has ended by the clock, in a fixed order (by
    /// start, then key) so that records are numbered the same every run.
    fn scan(&mut self) {
        let now = self.clock_ns;
        let mut done: Vec<(u32, FlowKey, Flow, u8)> = self
            .flows
            .iter()
            .filter_map(|(&(link, key), f)| {
                self.params.ended(f, now).map(|why| (link, key, *f, why))
            })
            .collect();
        done.sort_unstable_by_key(|d| (d.2.start_ns, d.0, d.1));
        for (link, key, f, why) in done {
            self.flows.remove(&(link, key));
            self.end(link, key, f, why);
        }
        self.next_scan_ns = now - now % NS + NS;
    }

    /// Ends the eighth of the flows idle longest.
    fn make_room(&mut self) {
        let mut all: Vec<(u64, u64, u32, FlowKey)> = self
            .flows
            .iter()
            .map(|(&(link, key), f)| (f.end_ns, f.start_ns, link, key))
            .collect();
        all.sort_unstable();
        let n = (all.len() / 8).max(1);
        for (_, _, link, key) in all.into_iter().take(n) {
            if let Some(f) = self.flows.remove(&(link, key)) {
                self.end(link, key, f, reason::LACK_OF_RESOURCES);
            }
        }
    }

    /// Ends every open flow (the deployment ends).
    fn end_all(&mut self, why: u8) {
        let mut all: Vec<((u32, FlowKey), Flow)> = self.flows.drain().collect();
        all.sort_unstable_by_key(|a| (a.1.start_ns, a.0));
        for ((link, key), f) in all {
            self.end(link, key, f, why);
        }
    }
}

/// ICMP's (and ICMPv6's) type and code as `type << 8 | code`, where
/// NetFlow and IPFIX exporters put them: in the destination port.
fn icmp_type_code(p: &Packet) -> Option<u16> {
    let h = &p.header;
    let icmp = (h.ip_version == 4 && h.ip_proto == 1) || (h.ip_version == 6 && h.ip_proto == 58);
    if !icmp || h.l4_offset == NO_OFFSET {
        return None;
    }
    let at = h.l4_offset as usize;
    Some(u16::from_be_bytes([*p.data.get(at)?, *p.data.get(at + 1)?]))
}

/// IP bytes of the packet: from the IP header's length field where it was
/// captured, else the frame from the IP header on.
fn ip_octets(p: &Packet) -> u64 {
    let h = &p.header;
    let l3 = h.l3_offset;
    let wire_rest = u64::from(h.wire_len.saturating_sub(u32::from(l3)));
    if l3 == NO_OFFSET {
        return wire_rest;
    }
    let at = l3 as usize;
    let field = |off: usize| -> Option<u64> {
        Some(u64::from(u16::from_be_bytes([
            *p.data.get(at + off)?,
            *p.data.get(at + off + 1)?,
        ])))
    };
    match h.ip_version {
        4 => field(2),
        6 => field(4).map(|payload| payload + 40),
        _ => None,
    }
    .unwrap_or(wire_rest)
}

impl Analyzer for FlowRecords {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(FlowRecords {
            params: params.check()?,
            flows: FxHashMap::default(),
            totals: Results::default(),
            held: VecDeque::new(),
            clock_ns: 0,
            next_scan_ns: 0,
            quiet_since: None,
            packets_at_tick: 0,
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        self.totals.packets += 1;
        if h.ts_ns > self.clock_ns {
            self.clock_ns = h.ts_ns;
            if self.clock_ns >= self.next_scan_ns {
                self.scan();
            }
        }
        let key = match p.flow() {
            Some(mut k) => {
                if let Some(type_code) = icmp_type_code(p) {
                    k.dport = type_code;
                }
                k
            }
            None => {
                self.totals.non_ip_packets += 1;
                return;
            }
        };
        let octets = ip_octets(p);
        let slot = (h.link, key);
        if let Some(f) = self.flows.get_mut(&slot) {
            // A flow whose time is up ends before this packet starts the next.
            match self.params.ended(f, h.ts_ns) {
                None => {
                    f.packets += 1;
                    f.octets += octets;
                    f.end_ns = f.end_ns.max(h.ts_ns);
                    f.tcp_flags |= h.tcp_flags;
                    return;
                }
                Some(why) => {
                    let f = *f;
                    self.flows.remove(&slot);
                    self.end(h.link, key, f, why);
                }
            }
        }
        if self.flows.len() >= self.params.max_flows as usize {
            self.make_room();
        }
        self.flows.insert(
            slot,
            Flow {
                packets: 1,
                octets,
                start_ns: h.ts_ns,
                end_ns: h.ts_ns,
                tcp_flags: h.tcp_flags,
            },
        );
    }

    /// On a link quiet for the idle timeout (wall time), the clock runs on
    /// from the last packet at wall-clock pace.
    fn tick(&mut self, now_ns: u64) {
        if self.totals.packets != self.packets_at_tick || self.flows.is_empty() {
            self.packets_at_tick = self.totals.packets;
            self.quiet_since = None;
            return;
        }
        let (wall, clock) = *self.quiet_since.get_or_insert((now_ns, self.clock_ns));
        let quiet = now_ns.saturating_sub(wall);
        if quiet >= self.params.idle_timeout_s * NS {
            self.clock_ns = self.clock_ns.max(clock + quiet);
            self.scan();
        }
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        Ok(())
    }

    /// The IP header's length field, behind up to 78 bytes of link, VLAN
    /// and MPLS headers.
    fn snap_len(&self) -> u32 {
        128
    }

    fn results(&self) -> Results {
        let mut r = self.totals.clone();
        r.active_flows = self.flows.len() as u64;
        r.clock_ns = self.clock_ns;
        r.records = self.held.iter().cloned().collect();
        r
    }

    fn published(&mut self) {
        self.held.clear();
    }

    fn finish(&mut self) {
        self.end_all(reason::FORCED);
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&Saved {
            totals: self.totals.clone(),
            flows: self.flows.iter().map(|(&(l, k), f)| (l, k, *f)).collect(),
            held: self.held.iter().cloned().collect(),
            clock_ns: self.clock_ns,
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: Saved = tm_sdk::decode_state(state)?;
        self.totals = saved.totals;
        self.flows = saved
            .flows
            .into_iter()
            .map(|(l, k, f)| ((l, k), f))
            .collect();
        self.held = saved.held.into();
        self.clock_ns = saved.clock_ns;
        self.next_scan_ns = 0;
        Ok(())
    }
}

tm_sdk::export_analyzer!(FlowRecords);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_sdk::abi::PacketHeader;

    /// An IPv4 packet of `len` IP bytes on `link` at `ts` seconds.
    fn pkt(
        link: u32,
        src: u8,
        sport: u16,
        flags: u8,
        len: u16,
        ts: f64,
    ) -> (PacketHeader, Vec<u8>) {
        let mut h = PacketHeader {
            link,
            ip_version: 4,
            ip_proto: 6,
            src_port: sport,
            dst_port: 80,
            tcp_flags: flags,
            wire_len: u32::from(len) + 14,
            l3_offset: 14,
            l4_offset: 34,
            ts_ns: (ts * 1e9) as u64,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&[10, 0, 0, src]);
        h.dst_addr[..4].copy_from_slice(&[10, 0, 0, 99]);
        let mut data = vec![0u8; 34];
        data[14] = 0x45;
        data[16..18].copy_from_slice(&len.to_be_bytes());
        (h, data)
    }

    fn feed(a: &mut FlowRecords, (h, data): (PacketHeader, Vec<u8>)) {
        a.on_packet(&Packet {
            header: h,
            data: &data,
        });
    }

    fn short() -> Params {
        Params {
            idle_timeout_s: 10,
            active_timeout_s: 60,
            closed_timeout_s: 2,
            ..Params::default()
        }
    }

    fn ends(a: &FlowRecords) -> Vec<(u64, u16, u64, u64, u8)> {
        a.results()
            .records
            .iter()
            .map(|r| (r.seq, r.sport, r.packets, r.octets, r.reason))
            .collect()
    }

    #[test]
    fn flows_end_on_idle_fin_active_and_unload_by_packet_time() {
        let mut a = FlowRecords::init(short()).unwrap();
        // 1000: idle after its packets at 0 and 1 s.
        feed(&mut a, pkt(0, 1, 1000, tcp::SYN, 60, 0.0));
        feed(&mut a, pkt(0, 1, 1000, tcp::ACK, 1500, 1.0));
        // 2000: FIN at 2 s, its last ACK at 2.5 s.
        feed(&mut a, pkt(0, 2, 2000, tcp::FIN | tcp::ACK, 52, 2.0));
        feed(&mut a, pkt(0, 2, 2000, tcp::ACK, 40, 2.5));
        // 3000: a packet a second from 0 s to 70 s (active timeout at 60).
        for s in 0..=70 {
            feed(&mut a, pkt(1, 3, 3000, tcp::ACK, 100, f64::from(s)));
        }
        // 2000 ended at 4.5 s (closed), 1000 at 11 s (idle), 3000's first
        // part at its packet of 60 s, the next one open.
        assert_eq!(
            ends(&a),
            vec![
                (1, 2000, 2, 92, reason::END_DETECTED),
                (2, 1000, 2, 1560, reason::IDLE),
                (3, 3000, 60, 6000, reason::ACTIVE),
            ]
        );
        let r = a.results();
        assert_eq!(r.records[2].link, 1);
        assert_eq!(r.records[1].tcp_flags, tcp::SYN | tcp::ACK);
        assert_eq!(r.records[1].start_ns, 0);
        assert_eq!(r.records[1].end_ns, 1_000_000_000);
        assert_eq!(r.records[1].src, "10.0.0.1");
        assert_eq!(r.active_flows, 1);
        // A published window takes the records; collects before it do not.
        assert_eq!(a.results().records.len(), 3);
        a.published();
        assert!(a.results().records.is_empty());
        assert_eq!(a.results().records_total, 3);
        // Unload ends what is open.
        a.finish();
        assert_eq!(ends(&a), vec![(4, 3000, 11, 1100, reason::FORCED)]);
        assert_eq!(a.results().active_flows, 0);
    }

    #[test]
    fn a_quiet_link_ends_flows_on_the_wall_clock() {
        let mut a = FlowRecords::init(short()).unwrap();
        feed(&mut a, pkt(0, 1, 1000, tcp::ACK, 100, 5.0));
        let wall = 1_800_000_000 * NS;
        a.tick(wall);
        a.tick(wall + NS);
        assert!(ends(&a).is_empty());
        a.tick(wall + 12 * NS);
        assert_eq!(ends(&a), vec![(1, 1000, 1, 100, reason::IDLE)]);
        // Packet times stay packet times.
        assert_eq!(a.results().records[0].end_ns, 5 * NS);
    }

    #[test]
    fn a_full_table_ends_the_flows_idle_longest_and_held_records_are_bounded() {
        let mut a = FlowRecords::init(Params {
            max_flows: 16,
            max_held: 3,
            ..short()
        })
        .unwrap();
        for i in 0..17u16 {
            feed(
                &mut a,
                pkt(0, 1, 1000 + i, tcp::ACK, 100, f64::from(i) * 0.01),
            );
        }
        let r = a.results();
        // Two ended (16 / 8), the oldest first; max_held keeps the last 3.
        assert_eq!(r.records_total, 2);
        assert_eq!(ends(&a), vec![(1, 1000, 1, 100, 5), (2, 1001, 1, 100, 5)]);
        assert_eq!(r.active_flows, 15);
        a.finish();
        let r = a.results();
        assert_eq!(r.records_total, 17);
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.records_dropped, 14);
        assert_eq!(r.records[2].seq, 17);
    }

    #[test]
    fn icmp_type_and_code_are_the_destination_port() {
        let mut a = FlowRecords::init(short()).unwrap();
        for (icmp_type, ts) in [(8u8, 1.0), (8, 2.0), (0, 2.5)] {
            let (mut h, mut data) = pkt(0, 1, 0, 0, 84, ts);
            h.ip_proto = 1;
            h.src_port = 0;
            h.dst_port = 0;
            data.extend_from_slice(&[icmp_type, 0, 0, 0]);
            feed(&mut a, (h, data));
        }
        a.finish();
        let r = a.results();
        let got: Vec<(u16, u64)> = r.records.iter().map(|r| (r.dport, r.packets)).collect();
        assert_eq!(got, vec![(0x0800, 2), (0x0000, 1)]);
    }

    #[test]
    fn bad_params_are_named_and_state_survives_a_snapshot() {
        let e = FlowRecords::init(Params {
            idle_timeout_s: 0,
            ..Params::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("idle_timeout_s = 0"), "{e}");
        let mut a = FlowRecords::init(short()).unwrap();
        feed(&mut a, pkt(0, 1, 1000, tcp::ACK, 100, 1.0));
        feed(&mut a, pkt(0, 2, 2000, tcp::RST, 40, 1.0));
        feed(&mut a, pkt(0, 1, 1000, tcp::ACK, 100, 4.0));
        let state = a.snapshot().unwrap();
        let mut b = FlowRecords::init(short()).unwrap();
        b.restore(&state).unwrap();
        assert_eq!(a.results(), b.results());
        b.finish();
        assert_eq!(
            ends(&b),
            vec![
                (1, 2000, 1, 40, reason::END_DETECTED),
                (2, 1000, 2, 200, reason::FORCED)
            ]
        );
    }
}
