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
    /// Timestamp of the first packet, Unix ns (0 if none).
    pub first_ts_ns: u64,
    /// Timestamp of the last packet, Unix ns (0 if none).
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

/// The analyzer.
#[derive(Debug, Default)]
pub struct PacketCount {
    results: Results,
}

impl Analyzer for PacketCount {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        let mut a = PacketCount::default();
        a.results.label = params.label;
        Ok(a)
    }

    fn on_packet(&mut self, p: &Packet) {
        let r = &mut self.results;
        let h = &p.header;
        r.packets += 1;
        r.bytes += u64::from(h.wire_len);
        if p.parse_error() {
            r.parse_errors += 1;
        }
        if r.first_ts_ns == 0 {
            r.first_ts_ns = h.ts_ns;
        }
        r.last_ts_ns = h.ts_ns;
        let link = r.links.entry(h.link).or_default();
        link.packets += 1;
        link.bytes += u64::from(h.wire_len);
        *r.protocols.entry(h.ip_proto).or_default() += 1;
        // Look up before inserting: no allocation on the per-packet path.
        match r.by_label.get_mut(&r.label) {
            Some(n) => *n += 1,
            None => {
                r.by_label.insert(r.label.clone(), 1);
            }
        }
    }

    fn tick(&mut self, _now_ns: u64) {
        self.results.ticks += 1;
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.results.label = params.label;
        Ok(())
    }

    fn results(&self) -> Results {
        self.results.clone()
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&self.results)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        // The label comes from the params `init` just applied.
        let label = std::mem::take(&mut self.results.label);
        self.results = tm_sdk::decode_state(state)?;
        self.results.label = label;
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
