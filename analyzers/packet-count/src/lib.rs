//! `packet-count`: packets and bytes per link and per IP protocol.
//!
//! Params: `{"label": string}` (default `""`). Packets are also counted per
//! label in force when they arrived (`by_label`), so a `configure` mid-run
//! shows exactly which packets came before and after it; other counts are
//! kept across `configure`.
//!
//! Results:
//! `{"label", "packets", "bytes", "parse_errors", "first_ts_ns", "last_ts_ns",
//!   "ticks", "links": {link: {"packets", "bytes"}}, "protocols": {proto: packets},
//!   "by_label": {label: packets}}`
//! where `bytes` are wire lengths and `protocols` keys are IP protocol numbers
//! (0 for non-IP).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tm_sdk::{Analyzer, Packet};

/// Parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Free text echoed in the results.
    pub label: String,
}

/// Counters of one link.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkCount {
    /// Packets.
    pub packets: u64,
    /// Bytes on the wire.
    pub bytes: u64,
}

/// The results, which are also the state saved for a restart.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The `label` parameter in force.
    pub label: String,
    /// Packets seen.
    pub packets: u64,
    /// Bytes on the wire.
    pub bytes: u64,
    /// Packets the host flagged as not fully parsed.
    pub parse_errors: u64,
    /// The earliest packet's timestamp, Unix ns (0 if none).
    pub first_ts_ns: u64,
    /// The latest packet's timestamp, Unix ns (0 if none).
    pub last_ts_ns: u64,
    /// Timer ticks received.
    pub ticks: u64,
    /// Per link id.
    pub links: BTreeMap<u32, LinkCount>,
    /// Packets per IP protocol number.
    pub protocols: BTreeMap<u8, u64>,
    /// Packets per label in force when they arrived.
    pub by_label: BTreeMap<String, u64>,
}

/// The analyzer. The per-packet path only adds to plain counters and
/// arrays; the maps of [`Results`] are built when results are asked for.
#[derive(Debug)]
pub struct PacketCount {
    /// Totals, label, timestamps, ticks and the closed `by_label` entries.
    totals: Results,
    /// Per link id (links are small integers): (packets, bytes).
    links: Vec<(u64, u64)>,
    /// Packets per IP protocol number.
    protocols: [u64; 256],
    /// Packets since the current label took effect.
    label_packets: u64,
}

impl PacketCount {
    fn new(label: String) -> Self {
        PacketCount {
            totals: Results {
                label,
                ..Results::default()
            },
            links: Vec::new(),
            protocols: [0; 256],
            label_packets: 0,
        }
    }

    /// Moves the current label's count into `by_label`.
    fn close_label(&mut self) {
        if self.label_packets > 0 {
            *self
                .totals
                .by_label
                .entry(self.totals.label.clone())
                .or_default() += self.label_packets;
            self.label_packets = 0;
        }
    }
}

impl Analyzer for PacketCount {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(PacketCount::new(params.label))
    }

    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        let wire = u64::from(h.wire_len);
        let r = &mut self.totals;
        r.packets += 1;
        r.bytes += wire;
        r.parse_errors += u64::from(p.parse_error());
        // Earliest and latest, not first and last seen: on a link fanned
        // out over capture threads, flows arrive interleaved batch by batch.
        if r.first_ts_ns == 0 || h.ts_ns < r.first_ts_ns {
            r.first_ts_ns = h.ts_ns;
        }
        r.last_ts_ns = r.last_ts_ns.max(h.ts_ns);
        let link = h.link as usize;
        if link >= self.links.len() {
            self.links.resize(link + 1, (0, 0));
        }
        self.links[link].0 += 1;
        self.links[link].1 += wire;
        self.protocols[h.ip_proto as usize] += 1;
        self.label_packets += 1;
    }

    fn tick(&mut self, _now_ns: u64) {
        self.totals.ticks += 1;
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.close_label();
        self.totals.label = params.label;
        Ok(())
    }

    fn results(&self) -> Results {
        let mut r = self.totals.clone();
        if self.label_packets > 0 {
            *r.by_label.entry(r.label.clone()).or_default() += self.label_packets;
        }
        for (id, &(packets, bytes)) in self.links.iter().enumerate() {
            if packets > 0 {
                r.links.insert(id as u32, LinkCount { packets, bytes });
            }
        }
        for (proto, &n) in self.protocols.iter().enumerate() {
            if n > 0 {
                r.protocols.insert(proto as u8, n);
            }
        }
        r
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&self.results())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: Results = tm_sdk::decode_state(state)?;
        // The label comes from the params `init` just applied.
        let label = std::mem::take(&mut self.totals.label);
        *self = PacketCount::new(label);
        for (id, c) in &saved.links {
            let id = *id as usize;
            if id >= self.links.len() {
                self.links.resize(id + 1, (0, 0));
            }
            self.links[id] = (c.packets, c.bytes);
        }
        for (proto, n) in &saved.protocols {
            self.protocols[*proto as usize] = *n;
        }
        let label = std::mem::take(&mut self.totals.label);
        self.totals = Results {
            label,
            links: BTreeMap::new(),
            protocols: BTreeMap::new(),
            ..saved
        };
        Ok(())
    }
}

tm_sdk::export_analyzer!(PacketCount);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_sdk::abi::PacketHeader;

    #[test]
    fn counts_per_link_and_protocol_and_keeps_them_across_configure() {
        let mut a = PacketCount::init(tm_sdk::decode_params(&[0xc0]).unwrap()).unwrap();
        let h = |link, proto, len, ts| PacketHeader {
            link,
            ip_proto: proto,
            wire_len: len,
            ts_ns: ts,
            ..PacketHeader::default()
        };
        for (link, proto, len, ts) in [(0, 6, 100, 5), (0, 17, 60, 6), (1, 6, 1500, 7)] {
            a.on_packet(&Packet {
                header: h(link, proto, len, ts),
                data: &[],
            });
        }
        a.configure(Params {
            label: "after".into(),
        })
        .unwrap();
        let r = a.results();
        assert_eq!(
            (r.packets, r.bytes, r.first_ts_ns, r.last_ts_ns),
            (3, 1660, 5, 7)
        );
        assert_eq!(
            r.links[&0],
            LinkCount {
                packets: 2,
                bytes: 160
            }
        );
        assert_eq!(r.protocols[&6], 2);
        assert_eq!(r.label, "after");
        assert_eq!(r.by_label[""], 3);
        a.on_packet(&Packet {
            header: h(0, 6, 100, 8),
            data: &[],
        });
        assert_eq!(a.results().by_label["after"], 1);
    }

    #[test]
    fn snapshot_restores_counts_under_the_current_label() {
        let mut a = PacketCount::init(Params { label: "x".into() }).unwrap();
        a.on_packet(&Packet {
            header: PacketHeader {
                wire_len: 60,
                ..PacketHeader::default()
            },
            data: &[],
        });
        let saved = a.snapshot().unwrap();
        let mut b = PacketCount::init(Params { label: "y".into() }).unwrap();
        b.restore(&saved).unwrap();
        let r = b.results();
        assert_eq!((r.packets, r.bytes, r.label.as_str()), (1, 60, "y"));
        assert!(b.restore(b"\xc1").is_err());
    }

    #[test]
    fn unknown_params_are_refused_naming_the_field() {
        // {"lable": "x"}
        let bytes = [0x81, 0xa5, b'l', b'a', b'b', b'l', b'e', 0xa1, b'x'];
        let err = tm_sdk::decode_params::<Params>(&bytes).unwrap_err();
        assert!(err.contains("lable"), "{}", err);
    }
}
