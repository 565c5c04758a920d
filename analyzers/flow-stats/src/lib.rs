//! `flow-stats`: per-flow statistics.
//!
//! A flow is a directional 5-tuple (source and destination address, source
//! and destination port, IP protocol); ICMP and other port-less protocols
//! have ports 0. Non-IP packets are only counted.
//!
//! Params (all optional):
//! `{"top_n": 10, "idle_timeout_s": 300, "max_flows": 100000}` —
//! `top_n` flows by bytes in the results (0 to 10000); flows idle for
//! `idle_timeout_s` of *packet* time are expired on `tick` (0: never);
//! at most `max_flows` flows are tracked (packets of refused new flows are
//! counted in `refused_packets`). `configure` takes the same params and keeps
//! every flow.
//!
//! Results: `{"packets", "bytes", "non_ip_packets", "active_flows",
//! "expired_flows", "expired_packets", "expired_bytes", "refused_packets",
//! "links": {link: {"packets", "bytes", "first_ns", "last_ns"}}, "top": [{"src", "dst", "sport",
//! "dport", "proto", "packets", "bytes", "first_ns", "last_ns", "tcp_flags"}]}`
//! — `top` sorted by bytes, then packets, descending; `bytes` are wire
//! lengths; `tcp_flags` is the OR of every packet's flags.
//!
//! Two builds exist for testing upgrades (`cargo xtask guests` makes both;
//! docs/guests.md): with the `next-state` feature the module saves state
//! version 2 (version 1's form plus `generation`, how many modules the flow
//! table has lived in, also in the results) and converts version 1; with
//! `trap-restore` its `tm_restore` traps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tm_sdk::{ip, Analyzer, FlowKey as Key, FlowTable, Packet};

/// Parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Flows by bytes in the results.
    pub top_n: u32,
    /// Idle time (packet time) after which a flow is expired; 0 never.
    pub idle_timeout_s: u64,
    /// Most flows tracked at once.
    pub max_flows: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            top_n: 10,
            idle_timeout_s: 300,
            max_flows: 100_000,
        }
    }
}

impl Params {
    fn check(self) -> Result<Self, String> {
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

/// Counters of a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// First packet, Unix ns.
    pub first_ns: u64,
    /// Last packet, Unix ns.
    pub last_ns: u64,
    /// OR of TCP flags.
    pub tcp_flags: u8,
}

/// A flow in the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowOut {
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
    /// Wire bytes.
    pub bytes: u64,
    /// First packet, Unix ns.
    pub first_ns: u64,
    /// Last packet, Unix ns.
    pub last_ns: u64,
    /// OR of TCP flags.
    pub tcp_flags: u8,
}

/// Per-link totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTotals {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// Time of its first packet, Unix ns (packet time).
    #[serde(default)]
    pub first_ns: u64,
    /// Time of its last packet, Unix ns.
    #[serde(default)]
    pub last_ns: u64,
}

impl LinkTotals {
    fn add(&mut self, wire: u64, ts_ns: u64) {
        if self.packets == 0 || ts_ns < self.first_ns {
            self.first_ns = ts_ns;
        }
        self.last_ns = self.last_ns.max(ts_ns);
        self.packets += 1;
        self.bytes += wire;
    }
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Packets seen.
    pub packets: u64,
    /// Wire bytes seen.
    pub bytes: u64,
    /// Packets that were not IP.
    pub non_ip_packets: u64,
    /// Flows tracked now.
    pub active_flows: u64,
    /// Flows expired by the idle timeout.
    pub expired_flows: u64,
    /// Their packets.
    pub expired_packets: u64,
    /// Their bytes.
    pub expired_bytes: u64,
    /// Packets of new flows refused at `max_flows`.
    pub refused_packets: u64,
    /// Per link id.
    pub links: BTreeMap<u32, LinkTotals>,
    /// The top flows by bytes.
    pub top: Vec<FlowOut>,
    /// How many modules the flow table has lived in (the `next-state`
    /// build only).
    #[cfg(feature = "next-state")]
    #[serde(default)]
    pub generation: u64,
}

type Table = FlowTable<Counters>;

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    totals: Results,
    links: Vec<LinkTotals>,
    flows: Vec<(Key, Counters)>,
    latest_ns: u64,
}

/// The analyzer.
pub struct FlowStats {
    params: Params,
    flows: Table,
    /// Totals; `links`, `top` and `active_flows` are filled in `results`.
    totals: Results,
    links: Vec<LinkTotals>,
    /// Latest packet time seen: the clock of the idle timeout.
    latest_ns: u64,
}

impl FlowStats {
    fn expire(&mut self) {
        if self.params.idle_timeout_s == 0 {
            return;
        }
        let limit = self.params.idle_timeout_s * 1_000_000_000;
        let now = self.latest_ns;
        let t = &mut self.totals;
        self.flows.retain(|_, c| {
            let keep = now.saturating_sub(c.last_ns) < limit;
            if !keep {
                t.expired_flows += 1;
                t.expired_packets += c.packets;
                t.expired_bytes += c.bytes;
            }
            keep
        });
    }
}

impl Analyzer for FlowStats {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(FlowStats {
            params: params.check()?,
            flows: Table::default(),
            totals: Results {
                #[cfg(feature = "next-state")]
                generation: 1,
                ..Results::default()
            },
            links: Vec::new(),
            latest_ns: 0,
        })
    }

    const PREPARES: bool = true;

    #[inline]
    fn prepare(&self, record: &[u8; tm_sdk::abi::RECORD_HEADER_LEN]) {
        self.flows.touch_record(record);
    }

    #[inline]
    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        let wire = u64::from(h.wire_len);
        self.totals.packets += 1;
        self.totals.bytes += wire;
        let link = h.link as usize;
        if link >= self.links.len() {
            self.links.resize(link + 1, LinkTotals::default());
        }
        self.links[link].add(wire, h.ts_ns);
        if h.ts_ns > self.latest_ns {
            self.latest_ns = h.ts_ns;
        }
        if let Some(c) = self.flows.packet_mut(p) {
            c.packets += 1;
            c.bytes += wire;
            c.last_ns = c.last_ns.max(h.ts_ns);
            c.tcp_flags |= h.tcp_flags;
            return;
        }
        let key = match p.flow() {
            Some(k) => k,
            None => {
                self.totals.non_ip_packets += 1;
                return;
            }
        };
        if self.flows.len() >= self.params.max_flows as usize {
            self.totals.refused_packets += 1;
            return;
        }
        self.flows.insert(
            key,
            Counters {
                packets: 1,
                bytes: wire,
                first_ns: h.ts_ns,
                last_ns: h.ts_ns,
                tcp_flags: h.tcp_flags,
            },
        );
    }

    fn tick(&mut self, _now_ns: u64) {
        self.expire();
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        Ok(())
    }

    /// Everything it reads is in the parsed header.
    fn snap_len(&self) -> u32 {
        0
    }

    fn results(&self) -> Results {
        let mut r = self.totals.clone();
        r.active_flows = self.flows.len() as u64;
        for (id, link) in self.links.iter().enumerate() {
            if link.packets > 0 {
                r.links.insert(id as u32, *link);
            }
        }
        let mut all: Vec<(Key, &Counters)> = self.flows.iter().collect();
        // Ties broken by the key, so results are deterministic.
        all.sort_unstable_by(|a, b| {
            (b.1.bytes, b.1.packets)
                .cmp(&(a.1.bytes, a.1.packets))
                .then_with(|| {
                    (
                        a.0.version,
                        a.0.src,
                        a.0.dst,
                        a.0.sport,
                        a.0.dport,
                        a.0.proto,
                    )
                        .cmp(&(
                            b.0.version,
                            b.0.src,
                            b.0.dst,
                            b.0.sport,
                            b.0.dport,
                            b.0.proto,
                        ))
                })
        });
        r.top = all
            .into_iter()
            .take(self.params.top_n as usize)
            .map(|(k, c)| FlowOut {
                src: ip(k.version, &k.src).to_string(),
                dst: ip(k.version, &k.dst).to_string(),
                sport: k.sport,
                dport: k.dport,
                proto: k.proto,
                packets: c.packets,
                bytes: c.bytes,
                first_ns: c.first_ns,
                last_ns: c.last_ns,
                tcp_flags: c.tcp_flags,
            })
            .collect();
        r
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let saved = Saved {
            totals: self.totals.clone(),
            links: self.links.clone(),
            flows: self.flows.iter().map(|(k, c)| (k, *c)).collect(),
            latest_ns: self.latest_ns,
        };
        #[cfg(feature = "next-state")]
        return tm_sdk::encode_state(&(saved, self.totals.generation));
        #[cfg(not(feature = "next-state"))]
        tm_sdk::encode_state(&saved)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        if cfg!(feature = "trap-restore") {
            panic!("this build traps in tm_restore");
        }
        #[cfg(feature = "next-state")]
        {
            let (saved, generation): (Saved, u64) = tm_sdk::decode_state(state)?;
            self.take(saved);
            self.totals.generation = generation + 1;
            Ok(())
        }
        #[cfg(not(feature = "next-state"))]
        {
            self.take(tm_sdk::decode_state(state)?);
            Ok(())
        }
    }

    #[cfg(feature = "next-state")]
    const STATE_VERSION: u32 = 2;
    #[cfg(feature = "next-state")]
    const OLDEST_STATE_VERSION: u32 = 1;

    /// Version 1 is version 2 without a generation: its table lived in one
    /// module before this one.
    #[cfg(feature = "next-state")]
    fn restore_older(&mut self, _version: u32, state: &[u8]) -> Result<(), String> {
        self.take(tm_sdk::decode_state(state)?);
        self.totals.generation = 2;
        Ok(())
    }
}

impl FlowStats {
    /// Puts a saved state in place of the fresh one.
    fn take(&mut self, saved: Saved) {
        #[cfg(feature = "next-state")]
        let generation = self.totals.generation;
        self.totals = saved.totals;
        #[cfg(feature = "next-state")]
        {
            self.totals.generation = generation;
        }
        self.links = saved.links;
        self.flows.clear();
        for (k, c) in saved.flows {
            self.flows.insert(k, c);
        }
        self.latest_ns = saved.latest_ns;
    }
}

tm_sdk::export_analyzer!(FlowStats);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_sdk::abi::PacketHeader;

    fn pkt(src: u8, dst: u8, sport: u16, dport: u16, proto: u8, len: u32, ts: u64) -> PacketHeader {
        let mut h = PacketHeader {
            ip_version: 4,
            ip_proto: proto,
            src_port: sport,
            dst_port: dport,
            wire_len: len,
            ts_ns: ts,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&[10, 0, 0, src]);
        h.dst_addr[..4].copy_from_slice(&[10, 0, 0, dst]);
        h
    }

    fn feed(a: &mut FlowStats, h: PacketHeader) {
        a.on_packet(&Packet {
            header: h,
            data: &[],
        });
    }

    #[test]
    fn flows_are_directional_and_ranked_by_bytes() {
        let mut a = FlowStats::init(Params {
            top_n: 2,
            ..Params::default()
        })
        .unwrap();
        for i in 0..3 {
            feed(&mut a, pkt(1, 2, 1000, 80, 6, 100, 10 + i));
        }
        feed(&mut a, pkt(2, 1, 80, 1000, 6, 1500, 20));
        feed(&mut a, pkt(3, 4, 0, 0, 1, 98, 30));
        feed(
            &mut a,
            PacketHeader {
                wire_len: 60,
                ..PacketHeader::default()
            },
        );
        let r = a.results();
        assert_eq!(
            (r.packets, r.bytes, r.non_ip_packets, r.active_flows),
            (6, 1958, 1, 3)
        );
        assert_eq!(r.top.len(), 2);
        assert_eq!((r.top[0].src.as_str(), r.top[0].bytes), ("10.0.0.2", 1500));
        assert_eq!(
            (
                r.top[1].sport,
                r.top[1].packets,
                r.top[1].first_ns,
                r.top[1].last_ns
            ),
            (1000, 3, 10, 12)
        );
        a.configure(Params {
            top_n: 5,
            ..Params::default()
        })
        .unwrap();
        assert_eq!(a.results().top.len(), 3);
    }

    #[test]
    fn idle_flows_expire_on_packet_time_and_max_flows_refuses() {
        let mut a = FlowStats::init(Params {
            idle_timeout_s: 1,
            max_flows: 2,
            ..Params::default()
        })
        .unwrap();
        feed(&mut a, pkt(1, 2, 1, 1, 17, 100, 0));
        feed(&mut a, pkt(1, 2, 2, 2, 17, 100, 500_000_000));
        feed(&mut a, pkt(1, 2, 3, 3, 17, 100, 600_000_000)); // refused: table full
        feed(&mut a, pkt(1, 2, 2, 2, 17, 100, 1_200_000_000));
        a.tick(0);
        let r = a.results();
        assert_eq!(
            (
                r.active_flows,
                r.expired_flows,
                r.expired_packets,
                r.refused_packets
            ),
            (1, 1, 1, 1)
        );
    }

    #[test]
    #[cfg_attr(
        feature = "trap-restore",
        should_panic(expected = "this build traps in tm_restore")
    )]
    fn snapshot_restores_flows_and_bad_params_are_named() {
        let mut a = FlowStats::init(Params::default()).unwrap();
        feed(&mut a, pkt(1, 2, 1, 1, 17, 100, 5));
        let saved = a.snapshot().unwrap();
        let mut b = FlowStats::init(Params::default()).unwrap();
        b.restore(&saved).unwrap();
        #[allow(unused_mut)]
        let mut want = a.results();
        #[cfg(feature = "next-state")]
        {
            want.generation = 2;
        }
        assert_eq!(b.results(), want);
        let err = FlowStats::init(Params {
            top_n: 20_000,
            ..Params::default()
        })
        .err()
        .unwrap();
        assert!(err.contains("top_n = 20000"), "{}", err);
    }

    /// A version 1 state (the default build's form) taken by the
    /// `next-state` build: the same table, one more generation.
    #[cfg(feature = "next-state")]
    #[test]
    fn the_next_state_build_converts_version_1() {
        let mut a = FlowStats::init(Params::default()).unwrap();
        feed(&mut a, pkt(1, 2, 1, 1, 17, 100, 5));
        let v1 = tm_sdk::encode_state(&Saved {
            totals: a.totals.clone(),
            links: a.links.clone(),
            flows: a.flows.iter().map(|(k, c)| (k, *c)).collect(),
            latest_ns: a.latest_ns,
        })
        .unwrap();
        let mut b = FlowStats::init(Params::default()).unwrap();
        b.restore_older(1, &v1).unwrap();
        let mut want = a.results();
        want.generation = 2;
        assert_eq!(b.results(), want);
    }
}
