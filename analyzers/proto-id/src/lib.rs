//! `proto-id`: Protocol identification: L3/L4 mix and application protocols by payload inspection with port hints.
//!
//! Every packet counts in `l3` (ipv4, ipv6, other) and IP packets in `l4` by
//! IP protocol number (tcp, udp, icmp, icmpv6, other). Application
//! protocols are found per bidirectional flow (a 5-tuple, both directions)
//! by inspecting the first payload packets: HTTP/1.x, TLS, DNS, SSH, QUIC,
//! SMTP, DHCP and NTP (see `docs/analyzers/proto-id.md` for the rules).
//! A packet counts under its flow's application only if it carries TCP/UDP
//! payload, as in tshark's protocol hierarchy: handshakes and pure ACKs are
//! only `tcp`; payload packets of flows not identified (yet, or after
//! `inspect_packets` tries) count as `unknown`. ICMP and ICMPv6 packets
//! count under the `icmp` and `icmpv6` applications.
//!
//! Params (all optional): `{"top_n": 10, "max_flows": 100000,
//! "idle_timeout_s": 300, "inspect_packets": 4, "max_names": 1000}`.
//!
//! Results: `{"packets", "bytes", "l3": {name: {"packets", "bytes"}},
//! "l4": {…}, "app": {name: {"packets", "bytes", "flows"}}, "http":
//! {"requests", "responses", "methods": {method: n}, "hosts": [{"host",
//! "requests", "methods"}], "untracked_requests"}, "tls": {"client_hellos",
//! "server_hellos", "no_sni", "versions": {version: n}, "snis": [{"sni",
//! "version", "handshakes"}], "untracked_hellos"}, "active_flows",
//! "expired_flows", "refused_packets"}`.

mod detect;
mod params;
mod results;
mod tables;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tm_sdk::{abi, Analyzer, FlowKey as Key, FxHashMap, Packet};

pub use params::Params;
pub use results::{AppTally, HostOut, HttpOut, Results, SniOut, Tally, TlsOut};

use detect::{app, tls_version_name, APP_NAMES, METHODS, TLS_OTHER};

const L3_NAMES: [&str; 3] = ["ipv4", "ipv6", "other"];
const L4_NAMES: [&str; 5] = ["tcp", "udp", "icmp", "icmpv6", "other"];

/// A flow being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Flow {
    /// Application (`app::UNKNOWN` while not identified).
    app: u8,
    /// Payload packets inspected so far.
    tries: u8,
    /// Last packet, Unix ns.
    last_ns: u64,
}

/// Requests of one HTTP host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HostCount {
    requests: u64,
    methods: [u64; METHODS.len()],
}

/// Counters; all of them are saved in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    packets: u64,
    bytes: u64,
    l3: [Tally; 3],
    l4: [Tally; 5],
    app: [AppTally; app::COUNT],
    expired_flows: u64,
    refused_packets: u64,
    http_requests: u64,
    http_responses: u64,
    http_methods: [u64; METHODS.len()],
    http_untracked: u64,
    tls_client_hellos: u64,
    tls_server_hellos: u64,
    tls_no_sni: u64,
    tls_versions: [u64; TLS_OTHER + 1],
    tls_untracked: u64,
    latest_ns: u64,
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    counters: Counters,
    flows: Vec<(Key, Flow)>,
    hosts: Vec<(String, HostCount)>,
    snis: Vec<((String, u8), u64)>,
}

/// The analyzer.
pub struct ProtoId {
    params: Params,
    c: Counters,
    flows: FxHashMap<Key, Flow>,
    hosts: FxHashMap<String, HostCount>,
    /// ClientHellos per (SNI, version index).
    snis: FxHashMap<(String, u8), u64>,
}

impl Analyzer for ProtoId {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        Ok(ProtoId {
            params: params.check()?,
            c: Counters::default(),
            flows: FxHashMap::default(),
            hosts: FxHashMap::default(),
            snis: FxHashMap::default(),
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        let h = &p.header;
        let wire = u64::from(h.wire_len);
        self.c.packets += 1;
        self.c.bytes += wire;
        self.c.latest_ns = self.c.latest_ns.max(h.ts_ns);
        let key = match p.flow() {
            Some(k) => k,
            None => {
                self.c.l3[2].add(wire);
                return;
            }
        };
        self.c.l3[if h.ip_version == 4 { 0 } else { 1 }].add(wire);
        let (l4, fixed) = match h.ip_proto {
            6 => (0, None),
            17 => (1, None),
            1 => (2, Some(app::ICMP)),
            58 => (3, Some(app::ICMPV6)),
            _ => (4, None),
        };
        self.c.l4[l4].add(wire);
        // Non-first fragments have no L4 header; other protocols no rules.
        if h.flags & abi::flag::FRAGMENT != 0 || l4 == 4 {
            return;
        }
        let (key, _) = key.bidirectional();
        if fixed.is_none() && p.payload_len() == 0 {
            // Handshakes and pure ACKs: only keep the flow alive.
            if let Some(f) = self.flows.get_mut(&key) {
                f.last_ns = f.last_ns.max(h.ts_ns);
            }
            return;
        }
        let app_id = match self.classify(p, key, fixed) {
            Some(a) => a,
            None => {
                self.c.refused_packets += 1;
                fixed.unwrap_or(app::UNKNOWN)
            }
        };
        let t = &mut self.c.app[app_id as usize];
        t.packets += 1;
        t.bytes += wire;
        if app_id == app::HTTP || app_id == app::TLS {
            self.inspect_app(app_id, p.payload());
        }
    }

    fn tick(&mut self, _now_ns: u64) {
        self.expire();
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        self.params = params.check()?;
        Ok(())
    }

    fn results(&self) -> Results {
        let c = &self.c;
        let tallies = |names: &[&str], t: &[Tally]| {
            names
                .iter()
                .zip(t)
                .map(|(n, t)| (n.to_string(), *t))
                .collect()
        };
        let methods = |counts: &[u64]| {
            METHODS
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(m, n)| (m.to_string(), *n))
                .collect::<BTreeMap<String, u64>>()
        };
        let top_n = self.params.top_n as usize;
        let mut hosts: Vec<(&String, &HostCount)> = self.hosts.iter().collect();
        hosts.sort_unstable_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
        let mut snis: Vec<(&(String, u8), &u64)> = self.snis.iter().collect();
        snis.sort_unstable_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        Results {
            packets: c.packets,
            bytes: c.bytes,
            l3: tallies(&L3_NAMES, &c.l3),
            l4: tallies(&L4_NAMES, &c.l4),
            app: APP_NAMES
                .iter()
                .zip(c.app.iter())
                .map(|(n, t)| (n.to_string(), *t))
                .collect(),
            http: HttpOut {
                requests: c.http_requests,
                responses: c.http_responses,
                methods: methods(&c.http_methods),
                hosts: hosts
                    .into_iter()
                    .take(top_n)
                    .map(|(host, h)| HostOut {
                        host: host.clone(),
                        requests: h.requests,
                        methods: methods(&h.methods),
                    })
                    .collect(),
                untracked_requests: c.http_untracked,
            },
            tls: TlsOut {
                client_hellos: c.tls_client_hellos,
                server_hellos: c.tls_server_hellos,
                no_sni: c.tls_no_sni,
                versions: c
                    .tls_versions
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| (tls_version_name(i).to_string(), *n))
                    .collect(),
                snis: snis
                    .into_iter()
                    .take(top_n)
                    .map(|((sni, v), n)| SniOut {
                        sni: sni.clone(),
                        version: tls_version_name(usize::from(*v)).to_string(),
                        handshakes: *n,
                    })
                    .collect(),
                untracked_hellos: c.tls_untracked,
            },
            active_flows: self.flows.len() as u64,
            expired_flows: c.expired_flows,
            refused_packets: c.refused_packets,
        }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        tm_sdk::encode_state(&Saved {
            counters: self.c.clone(),
            flows: self.flows.iter().map(|(k, f)| (*k, *f)).collect(),
            hosts: self.hosts.iter().map(|(k, h)| (k.clone(), *h)).collect(),
            snis: self.snis.iter().map(|(k, n)| (k.clone(), *n)).collect(),
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: Saved = tm_sdk::decode_state(state)?;
        if saved
            .flows
            .iter()
            .any(|(_, f)| usize::from(f.app) >= app::COUNT)
            || saved
                .snis
                .iter()
                .any(|((_, v), _)| usize::from(*v) > TLS_OTHER)
        {
            return Err("bad saved state: application or version out of range".into());
        }
        self.c = saved.counters;
        self.flows = saved.flows.into_iter().collect();
        self.hosts = saved.hosts.into_iter().collect();
        self.snis = saved.snis.into_iter().collect();
        Ok(())
    }
}

tm_sdk::export_analyzer!(ProtoId);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::{client_hello, dhcp, server_hello};
    use crate::detect::{http_host, tls_hello};
    use tm_sdk::abi::{PacketHeader, NO_OFFSET};

    /// Ethernet + IPv4 + TCP (20-byte header) or UDP + payload, and the
    /// host's view of it.
    fn frame(
        proto: u8,
        src: u8,
        dst: u8,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> (PacketHeader, Vec<u8>) {
        let l4_len = if proto == 6 { 20 } else { 8 };
        let mut f = vec![0u8; 14 + 20 + l4_len];
        f[12] = 0x08;
        f[14] = 0x45;
        let total = (20 + l4_len + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[23] = proto;
        f[26..30].copy_from_slice(&[10, 0, 0, src]);
        f[30..34].copy_from_slice(&[10, 0, 0, dst]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            f[34 + 12] = 5 << 4;
            f[34 + 13] = flags;
        } else {
            f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        let mut h = PacketHeader {
            ip_version: 4,
            ip_proto: proto,
            l3_offset: 14,
            l4_offset: 34,
            payload_offset: (34 + l4_len) as u16,
            src_port: sport,
            dst_port: dport,
            tcp_flags: flags,
            cap_len: f.len() as u32,
            wire_len: f.len() as u32,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&[10, 0, 0, src]);
        h.dst_addr[..4].copy_from_slice(&[10, 0, 0, dst]);
        (h, f)
    }

    fn feed(a: &mut ProtoId, (h, f): &(PacketHeader, Vec<u8>)) {
        a.on_packet(&Packet {
            header: *h,
            data: f,
        });
    }

    fn tcp(src: u8, dst: u8, sport: u16, dport: u16, payload: &[u8]) -> (PacketHeader, Vec<u8>) {
        frame(6, src, dst, sport, dport, 0x18, payload)
    }

    fn udp(src: u8, dst: u8, sport: u16, dport: u16, payload: &[u8]) -> (PacketHeader, Vec<u8>) {
        frame(17, src, dst, sport, dport, 0, payload)
    }

    fn app_of(r: &Results, name: &str) -> (u64, u64, u64) {
        let t = r.app[name];
        (t.packets, t.bytes, t.flows)
    }

    #[test]
    fn payload_packets_count_under_the_flow_application_and_acks_do_not() {
        let mut a = ProtoId::init(Params::default()).unwrap();
        // SYN, then a request, a pure ACK and a response.
        feed(&mut a, &frame(6, 1, 2, 40000, 80, 0x02, b""));
        let req = tcp(
            1,
            2,
            40000,
            80,
            b"GET /a HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        );
        feed(&mut a, &req);
        let ack = frame(6, 2, 1, 80, 40000, 0x10, b"");
        feed(&mut a, &ack);
        let resp = tcp(
            2,
            1,
            80,
            40000,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        feed(&mut a, &resp);
        feed(&mut a, &req);
        let r = a.results();
        let len = |p: &(PacketHeader, Vec<u8>)| p.1.len() as u64;
        assert_eq!(app_of(&r, "http"), (3, 2 * len(&req) + len(&resp), 1));
        assert_eq!(r.l4["tcp"].packets, 5);
        assert_eq!(r.l3["ipv4"].packets, 5);
        assert_eq!((r.http.requests, r.http.responses), (2, 1));
        assert_eq!(r.http.hosts[0].host, "www.example.com");
        assert_eq!(r.http.hosts[0].methods["GET"], 2);
        assert_eq!(r.active_flows, 1);
    }

    #[test]
    fn flows_move_from_unknown_when_identified_late_and_give_up_after_tries() {
        let mut a = ProtoId::init(Params {
            inspect_packets: 2,
            ..Params::default()
        })
        .unwrap();
        // A banner that is not a known protocol, then an SSH banner.
        feed(&mut a, &tcp(1, 2, 40000, 2222, b"hello\r\n"));
        assert_eq!(app_of(&a.results(), "unknown").2, 1);
        feed(&mut a, &tcp(2, 1, 2222, 40000, b"SSH-2.0-x\r\n"));
        let r = a.results();
        assert_eq!(app_of(&r, "unknown").0, 1, "packets before stay unknown");
        assert_eq!(app_of(&r, "unknown").2, 0);
        assert_eq!((app_of(&r, "ssh").0, app_of(&r, "ssh").2), (1, 1));
        // Another flow: two misses and it is given up for good.
        for _ in 0..2 {
            feed(&mut a, &tcp(1, 3, 40001, 2222, b"nope"));
        }
        feed(&mut a, &tcp(1, 3, 40001, 2222, b"SSH-2.0-late\r\n"));
        let r = a.results();
        assert_eq!(app_of(&r, "unknown").0, 4);
        assert_eq!(app_of(&r, "unknown").2, 1);
        assert_eq!(app_of(&r, "ssh").0, 1);
    }

    #[test]
    fn refused_flows_still_count_and_idle_flows_expire() {
        let mut a = ProtoId::init(Params {
            max_flows: 1,
            idle_timeout_s: 1,
            ..Params::default()
        })
        .unwrap();
        let mut p = udp(
            1,
            2,
            5000,
            53,
            &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
        );
        feed(&mut a, &p);
        let q = udp(1, 3, 5001, 123, &[0x23; 48]);
        feed(&mut a, &q); // refused: the table is full
        let mut icmp = frame(1, 1, 4, 0, 0, 0, &[8, 0, 0, 0]);
        icmp.0.src_port = 0;
        feed(&mut a, &icmp); // refused too, but still ICMP
        let r = a.results();
        assert_eq!(r.refused_packets, 2);
        assert_eq!((r.l4["udp"].packets, r.l4["icmp"].packets), (2, 1));
        assert_eq!(app_of(&r, "dns"), (1, p.1.len() as u64, 1));
        assert_eq!(app_of(&r, "unknown"), (1, q.1.len() as u64, 0));
        assert_eq!(app_of(&r, "icmp").0, 1);
        assert_eq!(app_of(&r, "ntp").0, 0);
        // Two seconds later the DNS flow is idle: expired at tick.
        p.0.ts_ns = 2_000_000_000;
        p.0.src_port = 5002;
        feed(&mut a, &p);
        a.tick(0);
        let r = a.results();
        assert_eq!((r.active_flows, r.expired_flows), (0, 1));
        assert_eq!(r.refused_packets, 3);
    }

    #[test]
    fn tls_handshakes_are_listed_by_sni_and_version() {
        let mut a = ProtoId::init(Params {
            top_n: 1,
            max_names: 2,
            ..Params::default()
        })
        .unwrap();
        for (i, sni) in ["b.example", "a.example", "a.example", "c.example"]
            .iter()
            .enumerate()
        {
            let port = 40000 + i as u16;
            feed(&mut a, &tcp(1, 2, port, 443, &client_hello(sni)));
            feed(&mut a, &tcp(2, 1, 443, port, &server_hello(Some(0x0304))));
        }
        let r = a.results();
        assert_eq!((r.tls.client_hellos, r.tls.server_hellos), (4, 4));
        assert_eq!(r.tls.versions["TLS 1.3"], 4);
        assert_eq!(
            r.tls.snis,
            vec![SniOut {
                sni: "a.example".into(),
                version: "TLS 1.3".into(),
                handshakes: 2
            }]
        );
        assert_eq!(
            r.tls.untracked_hellos, 1,
            "c.example came with the table full"
        );
        assert_eq!(app_of(&r, "tls"), (8, app_of(&r, "tls").1, 4));
    }

    #[test]
    fn snapshot_restores_everything_and_bad_params_are_named() {
        let mut a = ProtoId::init(Params::default()).unwrap();
        feed(&mut a, &tcp(1, 2, 40000, 443, &client_hello("x.example")));
        feed(
            &mut a,
            &tcp(1, 2, 40000, 80, b"POST /p HTTP/1.1\r\nHost: h\r\n\r\n"),
        );
        feed(&mut a, &udp(1, 2, 68, 67, &dhcp()));
        let saved = a.snapshot().unwrap();
        let mut b = ProtoId::init(Params::default()).unwrap();
        b.restore(&saved).unwrap();
        assert_eq!(b.results(), a.results());
        assert_eq!(b.flows, a.flows);
        assert!(b.restore(b"\x01\x02").is_err());
        for (params, needle) in [
            (
                Params {
                    top_n: 5000,
                    ..Params::default()
                },
                "top_n = 5000",
            ),
            (
                Params {
                    max_flows: 0,
                    ..Params::default()
                },
                "max_flows = 0",
            ),
            (
                Params {
                    inspect_packets: 65,
                    ..Params::default()
                },
                "inspect_packets = 65",
            ),
            (
                Params {
                    max_names: 0,
                    ..Params::default()
                },
                "max_names = 0",
            ),
        ] {
            let err = a.configure(params).err().unwrap();
            assert!(err.contains(needle), "{}", err);
        }
        let err = tm_sdk::decode_params::<Params>(&[0x81, 0xa5, b'b', b'o', b'g', b'u', b's', 1])
            .err()
            .unwrap();
        assert!(err.contains("bogus"), "{}", err);
        // {"top_n": "x"}: a wrong type names the field too.
        let mut wrong = vec![0x81, 0xa5];
        wrong.extend_from_slice(b"top_n");
        wrong.extend_from_slice(&[0xa1, b'x']);
        let err = tm_sdk::decode_params::<Params>(&wrong).err().unwrap();
        assert!(err.contains("top_n: invalid type"), "{}", err);
        // {"max_names": 7} alone: the other fields keep their defaults.
        let mut one = vec![0x81, 0xa9];
        one.extend_from_slice(b"max_names");
        one.push(7);
        let p = tm_sdk::decode_params::<Params>(&one).unwrap();
        assert_eq!((p.max_names, p.top_n, p.inspect_packets), (7, 10, 4));
        assert_eq!(a.results().packets, 3, "a refused configure keeps state");
    }

    /// Random and cut payloads at every length, with offsets pointing
    /// anywhere: no panic (a trap in WebAssembly).
    #[test]
    fn malformed_and_truncated_packets_never_panic() {
        let mut a = ProtoId::init(Params {
            inspect_packets: 64,
            ..Params::default()
        })
        .unwrap();
        let mut x: u32 = 0x1234_5678;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let seeds = [
            client_hello("fuzz.example"),
            server_hello(Some(0x0304)),
            b"GET / HTTP/1.1\r\nHost: fuzz\r\n\r\n".to_vec(),
            dhcp(),
            vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 30],
            vec![0, 12, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        ];
        for (s, seed) in seeds.iter().enumerate() {
            for cut in 0..=seed.len() {
                for (proto, port) in [(6u8, [443u16, 80, 53, 25]), (17, [53, 67, 123, 443])] {
                    for &dport in &port {
                        let mut payload = seed[..cut].to_vec();
                        if cut > 0 && next() % 2 == 0 {
                            let at = next() as usize % cut;
                            payload[at] ^= next() as u8 | 1;
                        }
                        let (mut h, f) =
                            frame(proto, 1, 2, 40000 + s as u16, dport, 0x18, &payload);
                        // Claim the original length on the wire.
                        h.wire_len = (f.len() + seed.len() - cut) as u32;
                        feed(&mut a, &(h, f.clone()));
                        // The same with wild offsets and a short capture.
                        let keep = next() as usize % (f.len() + 1);
                        let mut h2 = h;
                        h2.cap_len = keep as u32;
                        h2.l3_offset = next() as u16;
                        h2.l4_offset = if next() % 3 == 0 {
                            NO_OFFSET
                        } else {
                            next() as u16 % 80
                        };
                        h2.payload_offset = next() as u16 % 100;
                        a.on_packet(&Packet {
                            header: h2,
                            data: &f[..keep],
                        });
                    }
                }
            }
        }
        for hello in seeds.iter() {
            for cut in 0..hello.len() {
                let _ = tls_hello(&hello[..cut]);
                let _ = http_host(&hello[..cut]);
            }
        }
        let r = a.results();
        let l3: u64 = r.l3.values().map(|t| t.packets).sum();
        assert_eq!(l3, r.packets);
    }
}
