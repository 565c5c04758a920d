//! `dns-stats`: DNS statistics — queries by type, response codes, top
//! names, query→response latency.
//!
//! DNS messages are read from UDP datagrams and TCP segments with port 53
//! (or a port of `ports`) on either side. Over TCP each message carries its
//! 2-byte length prefix and must lie within one segment (several messages
//! in one segment are all read); segments are not reassembled. Names are
//! reported lower-cased, in presentation form (`www.example.com`, `.` for
//! the root; bytes outside `!`..`~` and `.` or `\` inside a label as
//! `\DDD`).
//!
//! A message is well-formed when its header, every question and every
//! resource record parse: names within 255 bytes, labels 1 to 63 bytes,
//! compression pointers only to earlier names (each jump lands strictly
//! before the previous one, so no loop), record data within the message.
//! A query also needs a question. When the capture cut the packet short,
//! records past the cut are not required, and a message cut before its
//! first question ended is `truncated`. Anything else is `malformed`.
//! Malformed and truncated messages count nowhere else.
//!
//! Latency: a response matches the query awaiting it with the same client
//! address and port, server address and port, protocol and id; latency is
//! the difference of their packet timestamps. A query awaits a response
//! for `timeout_ms` of packet time (the clock is the latest packet seen);
//! after that it is `unanswered` (expired from the table on `tick`, and
//! counted as unanswered by `collect` even before). A response later than
//! that, or with no query awaiting it, is an `unmatched_response`.
//!
//! Params (all optional): `{"ports": [], "top_n": 10, "max_names": 10000,
//! "max_pending": 10000, "timeout_ms": 5000, "latency_samples": 4096}` —
//! `ports`: DNS ports besides 53 (at most 16, 1 to 65535); `top_n` names
//! in the results (0 to 1000); `max_names` names counted at once (1 to
//! 1000000; queries for further names go to `untracked_name_queries`);
//! `max_pending` queries awaiting a response at once (1 to 1000000; further
//! queries go to `untracked_queries`); `timeout_ms` 1 to 3600000;
//! `latency_samples` the ring of the latest latencies the quantiles come
//! from (1 to 1000000). `configure` takes the same params and keeps the
//! counts; lowering `max_names` drops the least-queried names (their
//! queries move to `untracked_name_queries`), lowering `max_pending` drops
//! the oldest pending queries (to `untracked_queries`), lowering
//! `latency_samples` drops the oldest samples.
//!
//! Results: `{"packets", "dns_packets", "other_packets", "queries",
//! "responses", "malformed", "truncated", "qtypes": {type: n}, "rcodes": {code: n},
//! "top_names": [{"name", "queries"}], "names", "untracked_name_queries",
//! "latency_us": {"count", "min", "mean", "max", "p50", "p90", "p99",
//! "samples"}, "pending", "unanswered", "unmatched_responses",
//! "untracked_queries", "duplicate_queries"}`. `packets = dns_packets +
//! other_packets`; a DNS packet holds one message (several for TCP), each
//! counted once in `queries`, `responses`, `malformed` or `truncated`. `qtypes` counts
//! queries by the type of their first question (A, NS, CNAME, SOA, PTR, MX,
//! TXT, AAAA, SRV, HTTPS, ANY, else `TYPE<n>`); `rcodes` counts responses
//! (NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, else
//! `RCODE<n>`, extended by an EDNS OPT record's upper bits); `top_names`
//! are by queries, descending, then by name. Latency `count`, `min`,
//! `mean` (floor) and `max` cover every matched response; the quantiles are
//! nearest-rank over the ring of the latest `latency_samples` latencies
//! (`samples` of them), so they are exact while `count <= latency_samples`.
//! All times are microseconds, truncated.

mod params;
mod results;
mod tables;
mod wire;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use tm_sdk::{Analyzer, FxHashMap, Packet};

pub use params::Params;
pub use results::{Latency, NameCount, Results};
pub use tables::{Counters, PendingKey};

use tables::{percentile, LatencyTotals};
use wire::{be16, qtype_name, rcode_name};

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    counters: Counters,
    qtypes: Vec<(u16, u64)>,
    rcodes: Vec<(u16, u64)>,
    names: Vec<(String, u64)>,
    pending: Vec<(PendingKey, u64)>,
    latency: LatencyTotals,
    samples_us: Vec<u64>,
    latest_ns: u64,
}

/// The analyzer.
pub struct DnsStats {
    params: Params,
    c: Counters,
    qtypes: BTreeMap<u16, u64>,
    rcodes: BTreeMap<u16, u64>,
    names: FxHashMap<String, u64>,
    /// Pending queries and their timestamps.
    pending: FxHashMap<PendingKey, u64>,
    latency: LatencyTotals,
    /// The latest latencies, µs, oldest first.
    samples_us: VecDeque<u64>,
    /// Latest packet time: the clock of the timeout.
    latest_ns: u64,
}

impl Analyzer for DnsStats {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(DnsStats {
            params: params.check()?,
            c: Counters::default(),
            qtypes: BTreeMap::new(),
            rcodes: BTreeMap::new(),
            names: FxHashMap::default(),
            pending: FxHashMap::default(),
            latency: LatencyTotals::default(),
            samples_us: VecDeque::new(),
            latest_ns: 0,
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        self.c.packets += 1;
        if h.ts_ns > self.latest_ns {
            self.latest_ns = h.ts_ns;
        }
        let dns_port = (h.ip_version == 4 || h.ip_version == 6)
            && (self.is_dns_port(h.src_port) || self.is_dns_port(h.dst_port));
        let payload = p.payload();
        let messages_before = self.messages();
        match h.ip_proto {
            17 if dns_port && !payload.is_empty() => {
                // Without the link layer's padding; `cut` if the capture ended early.
                let wire = p.payload_len() as usize;
                let msg = &payload[..payload.len().min(wire)];
                self.on_message(p, msg, msg.len() < wire);
            }
            6 if dns_port && !payload.is_empty() => {
                let wire = p.tcp().map_or(0, |t| t.payload_len as usize);
                let mut rest = &payload[..payload.len().min(wire)];
                let cut = rest.len() < wire;
                // Each round consumes at least 2 bytes.
                while !rest.is_empty() {
                    let len = match be16(rest, 0) {
                        Some(n) => usize::from(n),
                        None if cut => {
                            self.c.truncated += 1;
                            break;
                        }
                        None => {
                            // A lone byte: not even a length prefix.
                            self.c.malformed += 1;
                            break;
                        }
                    };
                    match rest.get(2..2 + len) {
                        Some(msg) => {
                            self.on_message(p, msg, false);
                            rest = &rest[2 + len..];
                        }
                        None if cut => {
                            // The capture ended inside this message.
                            self.on_message(p, &rest[2..], true);
                            break;
                        }
                        None => {
                            // The message continues in another segment.
                            self.c.malformed += 1;
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
        if self.messages() > messages_before {
            self.c.dns_packets += 1;
        } else {
            self.c.other_packets += 1;
        }
    }

    fn tick(&mut self, _now_ns: u64) {
        let (now, limit) = (self.latest_ns, self.timeout_ns());
        let mut expired = 0;
        self.pending.retain(|_, &mut at| {
            let keep = now.saturating_sub(at) <= limit;
            expired += u64::from(!keep);
            keep
        });
        self.c.expired += expired;
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        self.shrink();
        Ok(())
    }

    fn results(&self) -> Results {
        let c = &self.c;
        let timed_out = self
            .pending
            .values()
            .filter(|&&at| self.timed_out(at))
            .count() as u64;
        let mut top: Vec<(&String, &u64)> = self.names.iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let mut sorted: Vec<u64> = self.samples_us.iter().copied().collect();
        sorted.sort_unstable();
        let l = &self.latency;
        // min_ns and max_ns stay 0 until the first match.
        let mut latency_us = Latency {
            count: l.count,
            min: l.min_ns / 1000,
            mean: l.total_ns.checked_div(l.count).unwrap_or(0) / 1000,
            max: l.max_ns / 1000,
            samples: sorted.len() as u64,
            ..Latency::default()
        };
        if !sorted.is_empty() {
            latency_us.p50 = percentile(&sorted, 50);
            latency_us.p90 = percentile(&sorted, 90);
            latency_us.p99 = percentile(&sorted, 99);
        }
        Results {
            packets: c.packets,
            dns_packets: c.dns_packets,
            other_packets: c.other_packets,
            queries: c.queries,
            responses: c.responses,
            malformed: c.malformed,
            truncated: c.truncated,
            qtypes: self
                .qtypes
                .iter()
                .map(|(&t, &n)| (qtype_name(t), n))
                .collect(),
            rcodes: self
                .rcodes
                .iter()
                .map(|(&r, &n)| (rcode_name(r), n))
                .collect(),
            top_names: top
                .into_iter()
                .take(self.params.top_n as usize)
                .map(|(name, &queries)| NameCount {
                    name: name.clone(),
                    queries,
                })
                .collect(),
            names: self.names.len() as u64,
            untracked_name_queries: c.untracked_name_queries,
            latency_us,
            pending: self.pending.len() as u64 - timed_out,
            unanswered: c.expired + timed_out,
            unmatched_responses: c.unmatched_responses,
            untracked_queries: c.untracked_queries,
            duplicate_queries: c.duplicate_queries,
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&Saved {
            counters: self.c,
            qtypes: self.qtypes.iter().map(|(&k, &v)| (k, v)).collect(),
            rcodes: self.rcodes.iter().map(|(&k, &v)| (k, v)).collect(),
            names: self.names.iter().map(|(k, &v)| (k.clone(), v)).collect(),
            pending: self.pending.iter().map(|(k, &v)| (*k, v)).collect(),
            latency: self.latency,
            samples_us: self.samples_us.iter().copied().collect(),
            latest_ns: self.latest_ns,
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: Saved = tm_sdk::decode_state(state)?;
        self.c = saved.counters;
        self.qtypes = saved.qtypes.into_iter().collect();
        self.rcodes = saved.rcodes.into_iter().collect();
        self.names = saved.names.into_iter().collect();
        self.pending = saved.pending.into_iter().collect();
        self.latency = saved.latency;
        self.samples_us = saved.samples_us.into_iter().collect();
        self.latest_ns = saved.latest_ns;
        // The saved state may come from larger bounds.
        self.shrink();
        Ok(())
    }
}

tm_sdk::export_analyzer!(DnsStats);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::{query, response};
    use tm_sdk::abi::{PacketHeader, NO_OFFSET};

    /// An Ethernet/IPv4/UDP packet view around `msg`.
    fn udp(
        client: u8,
        sport: u16,
        dport: u16,
        to_server: bool,
        ts: u64,
        msg: &[u8],
    ) -> (PacketHeader, Vec<u8>) {
        let mut data = vec![0u8; 42];
        data[14] = 0x45;
        data[16..18].copy_from_slice(&((28 + msg.len()) as u16).to_be_bytes());
        data.extend_from_slice(msg);
        let (c, s) = ([10, 0, 0, client], [10, 0, 0, 53]);
        let (src, dst) = if to_server { (c, s) } else { (s, c) };
        let mut h = PacketHeader {
            ts_ns: ts,
            wire_len: data.len() as u32,
            cap_len: data.len() as u32,
            l3_offset: 14,
            l4_offset: 34,
            payload_offset: 42,
            ip_version: 4,
            ip_proto: 17,
            src_port: sport,
            dst_port: dport,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&src);
        h.dst_addr[..4].copy_from_slice(&dst);
        (h, data)
    }

    fn feed(a: &mut DnsStats, (h, data): (PacketHeader, Vec<u8>)) {
        a.on_packet(&Packet {
            header: h,
            data: &data,
        });
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn counts_types_codes_names_and_latency() {
        let mut a = DnsStats::init(Params {
            top_n: 2,
            timeout_ms: 100,
            ..Params::default()
        })
        .unwrap();
        let t = 1_000 * MS;
        feed(&mut a, udp(1, 4000, 53, true, t, &query(1, "a.example", 1)));
        feed(
            &mut a,
            udp(
                1,
                53,
                4000,
                false,
                t + 2 * MS,
                &response(1, "a.example", 1, 0),
            ),
        );
        feed(
            &mut a,
            udp(2, 4000, 53, true, t + 3 * MS, &query(1, "A.example", 28)),
        );
        feed(
            &mut a,
            udp(
                2,
                53,
                4000,
                false,
                t + 7 * MS,
                &response(1, "a.example", 28, 3),
            ),
        );
        feed(
            &mut a,
            udp(3, 4000, 53, true, t + 8 * MS, &query(7, "b.example", 99)),
        );
        feed(
            &mut a,
            udp(3, 4000, 53, true, t + 9 * MS, &query(7, "b.example", 99)),
        );
        feed(
            &mut a,
            udp(3, 4000, 53, true, t + 10 * MS, &query(8, "c.example", 15)),
        );
        // Unsolicited, and a non-DNS port.
        feed(
            &mut a,
            udp(4, 53, 4000, false, t + 11 * MS, &response(5, "x", 1, 5)),
        );
        feed(
            &mut a,
            udp(4, 4000, 9999, true, t + 12 * MS, &query(5, "x", 1)),
        );
        feed(&mut a, udp(4, 4000, 53, true, t + 13 * MS, b"garbage"));
        let r = a.results();
        assert_eq!((r.packets, r.dns_packets, r.other_packets), (10, 9, 1));
        assert_eq!((r.queries, r.responses, r.malformed), (5, 3, 1));
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|&(k, n)| (k.to_string(), n)).collect()
        };
        assert_eq!(
            r.qtypes,
            m(&[("A", 1), ("AAAA", 1), ("TYPE99", 2), ("MX", 1)])
        );
        assert_eq!(
            r.rcodes,
            m(&[("NOERROR", 1), ("NXDOMAIN", 1), ("REFUSED", 1)])
        );
        assert_eq!(
            r.top_names,
            vec![
                NameCount {
                    name: "a.example".into(),
                    queries: 2
                },
                NameCount {
                    name: "b.example".into(),
                    queries: 2
                },
            ]
        );
        assert_eq!(
            r.latency_us,
            Latency {
                count: 2,
                min: 2000,
                mean: 3000,
                max: 4000,
                p50: 2000,
                p90: 4000,
                p99: 4000,
                samples: 2
            }
        );
        assert_eq!(
            (
                r.pending,
                r.unanswered,
                r.unmatched_responses,
                r.duplicate_queries
            ),
            (2, 0, 1, 1)
        );
        // 200 ms later both pending queries have timed out, before and after a tick.
        feed(&mut a, udp(9, 4000, 9999, true, t + 200 * MS, b"x"));
        assert_eq!((a.results().pending, a.results().unanswered), (0, 2));
        a.tick(0);
        assert_eq!(a.pending.len(), 0);
        assert_eq!((a.results().pending, a.results().unanswered), (0, 2));
        // A response after the timeout matches nothing.
        feed(
            &mut a,
            udp(
                1,
                53,
                4000,
                false,
                t + 201 * MS,
                &response(1, "a.example", 1, 0),
            ),
        );
        assert_eq!(a.results().unmatched_responses, 2);
        // Extra ports are DNS ports.
        a.configure(Params {
            ports: vec![5353],
            ..Params::default()
        })
        .unwrap();
        feed(
            &mut a,
            udp(1, 4000, 5353, true, t + 202 * MS, &query(1, "m.local", 1)),
        );
        assert_eq!(a.results().queries, 6);
    }

    #[test]
    fn tables_are_bounded_and_configure_shrinks_them() {
        let mut a = DnsStats::init(Params {
            max_names: 2,
            max_pending: 2,
            latency_samples: 2,
            ..Params::default()
        })
        .unwrap();
        for i in 0..4u16 {
            let name = format!("n{}.example", i);
            feed(
                &mut a,
                udp(
                    1,
                    4000 + i,
                    53,
                    true,
                    u64::from(i) * MS,
                    &query(i, &name, 1),
                ),
            );
        }
        let r = a.results();
        assert_eq!((r.names, r.untracked_name_queries), (2, 2));
        assert_eq!((r.pending, r.untracked_queries), (2, 2));
        for i in 0..2u16 {
            let name = format!("n{}.example", i);
            let at = u64::from(i) * MS + u64::from(i + 1) * 1000 * 1000;
            feed(
                &mut a,
                udp(1, 53, 4000 + i, false, at, &response(i, &name, 1, 0)),
            );
        }
        // Latencies 1 ms and 2 ms; the ring of 2 then takes a third match.
        feed(
            &mut a,
            udp(2, 4000, 53, true, 10 * MS, &query(1, "n0.example", 1)),
        );
        feed(
            &mut a,
            udp(
                2,
                53,
                4000,
                false,
                15 * MS,
                &response(1, "n0.example", 1, 0),
            ),
        );
        let l = a.results().latency_us;
        assert_eq!(
            (l.count, l.min, l.max, l.samples, l.p50, l.p99),
            (3, 1000, 5000, 2, 2000, 5000)
        );
        a.configure(Params {
            max_names: 1,
            latency_samples: 1,
            ..Params::default()
        })
        .unwrap();
        let r = a.results();
        assert_eq!((r.names, r.untracked_name_queries), (1, 3));
        assert_eq!(
            r.top_names[0],
            NameCount {
                name: "n0.example".into(),
                queries: 2
            }
        );
        assert_eq!((r.latency_us.samples, r.latency_us.p50), (1, 5000));
    }

    #[test]
    fn tcp_messages_in_one_segment_and_truncation() {
        let mut a = DnsStats::init(Params::default()).unwrap();
        let mut seg = Vec::new();
        for (id, name) in [(1u16, "t1.example"), (2, "t2.example")] {
            let q = query(id, name, 1);
            seg.extend_from_slice(&(q.len() as u16).to_be_bytes());
            seg.extend_from_slice(&q);
        }
        let tcp = |payload: &[u8], cap: usize| {
            let mut data = vec![0u8; 54];
            data[14] = 0x45;
            data[16..18].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
            data[34 + 12] = 5 << 4;
            data.extend_from_slice(payload);
            let wire = data.len() as u32;
            data.truncate(cap.min(data.len()));
            let h = PacketHeader {
                wire_len: wire,
                cap_len: data.len() as u32,
                l3_offset: 14,
                l4_offset: 34,
                payload_offset: if data.len() > 54 { 54 } else { NO_OFFSET },
                ip_version: 4,
                ip_proto: 6,
                src_port: 5000,
                dst_port: 53,
                ..PacketHeader::default()
            };
            (h, data)
        };
        feed(&mut a, tcp(&seg, usize::MAX));
        assert_eq!((a.results().queries, a.results().dns_packets), (2, 1));
        // Cut by the capture inside the second message's question: the
        // first counts, the second is truncated.
        feed(&mut a, tcp(&seg, 54 + seg.len() - 1));
        assert_eq!((a.results().queries, a.results().truncated), (3, 1));
        // A segment holding only part of a message (not cut by the capture).
        feed(&mut a, tcp(&seg[..10], usize::MAX));
        // A segment with no payload is not DNS.
        feed(&mut a, tcp(&[], usize::MAX));
        let r = a.results();
        assert_eq!(
            (r.malformed, r.truncated, r.dns_packets, r.other_packets),
            (1, 1, 3, 1)
        );
    }

    #[test]
    fn snapshot_restores_and_bad_params_are_named() {
        let mut a = DnsStats::init(Params::default()).unwrap();
        feed(
            &mut a,
            udp(1, 4000, 53, true, MS, &query(1, "a.example", 1)),
        );
        feed(
            &mut a,
            udp(1, 53, 4000, false, 3 * MS, &response(1, "a.example", 1, 0)),
        );
        feed(
            &mut a,
            udp(1, 4000, 53, true, 4 * MS, &query(2, "b.example", 1)),
        );
        let saved = a.snapshot().unwrap();
        let mut b = DnsStats::init(Params::default()).unwrap();
        b.restore(&saved).unwrap();
        assert_eq!(b.results(), a.results());
        // The pending query still matches after the restore.
        feed(
            &mut b,
            udp(1, 53, 4000, false, 5 * MS, &response(2, "b.example", 1, 0)),
        );
        assert_eq!(b.results().latency_us.count, 2);
        for (p, needle) in [
            (
                Params {
                    top_n: 5000,
                    ..Params::default()
                },
                "top_n = 5000",
            ),
            (
                Params {
                    timeout_ms: 0,
                    ..Params::default()
                },
                "timeout_ms = 0",
            ),
            (
                Params {
                    max_pending: 0,
                    ..Params::default()
                },
                "max_pending = 0",
            ),
            (
                Params {
                    ports: vec![53, 0],
                    ..Params::default()
                },
                "ports[1] = 0",
            ),
        ] {
            let err = DnsStats::init(p).err().unwrap();
            assert!(err.contains(needle), "{}", err);
        }
        let err = tm_sdk::decode_params::<Params>(&[0x81, 0xa3, b'f', b'o', b'o', 0x01])
            .err()
            .unwrap();
        assert!(err.contains("foo"), "{}", err);
    }
}
