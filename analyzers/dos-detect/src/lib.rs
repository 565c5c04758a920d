//! `dos-detect`: SYN floods, UDP floods and port scans.
//!
//! Packet time is cut into tumbling windows of `window_ms`. Within a window:
//!
//! - **SYN flood**: SYNs without ACK towards one destination address reach
//!   `syn_threshold`;
//! - **UDP flood**: UDP datagrams towards one destination address reach
//!   `udp_threshold`;
//! - **port scan**: one source address probes (TCP SYN without ACK, or UDP)
//!   `scan_threshold` distinct destination (address, port) pairs.
//!
//! The alert is raised through `emit` the moment the threshold is reached —
//! not at the end of the window — once per window per target (or scanner).
//! Its `count` in the results keeps growing until the window closes.
//!
//! Params (all optional): `{"window_ms": 1000, "syn_threshold": 1000,
//! "udp_threshold": 5000, "scan_threshold": 100, "max_tracked": 100000,
//! "max_alerts": 100}`. `max_tracked` bounds the addresses and probe pairs
//! tracked per window; past it new ones are not tracked (counted in
//! `untracked_packets`). The results keep the latest `max_alerts` alerts.
//!
//! Results: `{"packets", "windows", "alerts_total", "by_kind": {"syn_flood",
//! "udp_flood", "port_scan"}, "untracked_packets", "alerts": [alert…]}`.
//! An alert (also the event's `data`): `{"kind": "syn_flood" | "udp_flood" |
//! "port_scan", "link", "target"` (the attacked address, or the scanner's
//! for a scan)`, "window_start_ns", "ts_ns"` (packet that crossed the
//! threshold)`, "threshold", "count", "sources"` (up to 8 sources seen for
//! a flood; the scanned address for a scan)`}`.

use serde::{Deserialize, Serialize};
use tm_sdk::abi::tcp;
use tm_sdk::{ip, Analyzer, FxHashMap, FxHashSet, Packet, Window};

/// Sources listed per flood alert.
const MAX_SOURCES: usize = 8;

/// Parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Window width, ms of packet time.
    pub window_ms: u64,
    /// SYNs to one address per window that make a SYN flood.
    pub syn_threshold: u32,
    /// UDP datagrams to one address per window that make a UDP flood.
    pub udp_threshold: u32,
    /// Distinct (address, port) probes from one source per window that make a scan.
    pub scan_threshold: u32,
    /// Addresses and probe pairs tracked per window.
    pub max_tracked: u32,
    /// Alerts kept in the results.
    pub max_alerts: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window_ms: 1000,
            syn_threshold: 1000,
            udp_threshold: 5000,
            scan_threshold: 100,
            max_tracked: 100_000,
            max_alerts: 100,
        }
    }
}

impl Params {
    fn check(self) -> Result<Self, String> {
        if self.window_ms == 0 || self.window_ms > 3_600_000 {
            return Err(format!(
                "window_ms = {}: must be 1 to 3600000",
                self.window_ms
            ));
        }
        for (name, v) in [
            ("syn_threshold", self.syn_threshold),
            ("udp_threshold", self.udp_threshold),
            ("scan_threshold", self.scan_threshold),
        ] {
            if v == 0 {
                return Err(format!("{} = 0: must be at least 1", name));
            }
        }
        if self.max_tracked == 0 || self.max_tracked > 10_000_000 {
            return Err(format!(
                "max_tracked = {}: must be 1 to 10000000",
                self.max_tracked
            ));
        }
        if self.max_alerts > 10_000 {
            return Err(format!(
                "max_alerts = {}: must be 0 to 10000",
                self.max_alerts
            ));
        }
        Ok(self)
    }
}

/// An address as the view carries it.
type Addr = (u8, [u8; 16]);

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `syn_flood`, `udp_flood` or `port_scan`.
    pub kind: String,
    /// Link of the packet that crossed the threshold.
    pub link: u32,
    /// The attacked address; the scanner's for a scan.
    pub target: String,
    /// Start of the window, Unix ns.
    pub window_start_ns: u64,
    /// Time of the packet that crossed the threshold.
    pub ts_ns: u64,
    /// The threshold crossed.
    pub threshold: u32,
    /// Packets (or probes) in the window so far.
    pub count: u64,
    /// Flood sources seen (at most 8), or the scanned address.
    pub sources: Vec<String>,
}

/// Alert counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByKind {
    /// SYN floods.
    pub syn_flood: u64,
    /// UDP floods.
    pub udp_flood: u64,
    /// Port scans.
    pub port_scan: u64,
}

/// The results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Packets given.
    pub packets: u64,
    /// Windows begun.
    pub windows: u64,
    /// Alerts raised.
    pub alerts_total: u64,
    /// Alerts raised, by kind.
    pub by_kind: ByKind,
    /// Packets whose address or probe could not be tracked (`max_tracked`).
    pub untracked_packets: u64,
    /// The latest alerts, oldest first.
    pub alerts: Vec<Alert>,
}

/// Counting towards one target within a window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    count: u64,
    /// Index into `alerts` once raised (`alerts_total` at the time).
    alert: Option<u64>,
    sources: Vec<Addr>,
}

/// One source's probes within a window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Scan {
    probes: FxHashSet<(Addr, u16)>,
    /// Index into `alerts` once raised.
    alert: Option<u64>,
}

/// The analyzer; its whole state is its snapshot.
#[derive(Serialize, Deserialize)]
pub struct DosDetect {
    params: Params,
    window: Window,
    syn: FxHashMap<Addr, Tally>,
    udp: FxHashMap<Addr, Tally>,
    /// Per scanner: distinct probes.
    scans: FxHashMap<Addr, Scan>,
    probes: usize,
    results: Results,
    /// Alerts kept; the first has number `alerts_total - alerts.len()`.
    alerts: std::collections::VecDeque<Alert>,
}

fn show(a: &Addr) -> String {
    ip(a.0, &a.1).to_string()
}

impl DosDetect {
    fn raise(&mut self, alert: Alert) -> u64 {
        tm_sdk::emit(&alert);
        let n = self.results.alerts_total;
        self.results.alerts_total += 1;
        match alert.kind.as_str() {
            "syn_flood" => self.results.by_kind.syn_flood += 1,
            "udp_flood" => self.results.by_kind.udp_flood += 1,
            _ => self.results.by_kind.port_scan += 1,
        }
        self.alerts.push_back(alert);
        while self.alerts.len() > self.params.max_alerts as usize {
            self.alerts.pop_front();
        }
        n
    }

    /// The kept alert with number `n`, if still kept.
    fn alert_mut(&mut self, n: u64) -> Option<&mut Alert> {
        let first = self.results.alerts_total - self.alerts.len() as u64;
        let at = n.checked_sub(first)?;
        self.alerts.get_mut(at as usize)
    }

    fn flood(&mut self, syn: bool, p: &Packet, src: Addr, dst: Addr) {
        let threshold = if syn {
            self.params.syn_threshold
        } else {
            self.params.udp_threshold
        };
        let max = self.params.max_tracked as usize;
        let table = if syn { &mut self.syn } else { &mut self.udp };
        if !table.contains_key(&dst) && table.len() >= max {
            self.results.untracked_packets += 1;
            return;
        }
        let tally = table.entry(dst).or_default();
        tally.count += 1;
        if tally.sources.len() < MAX_SOURCES && !tally.sources.contains(&src) {
            tally.sources.push(src);
        }
        let count = tally.count;
        if let Some(n) = tally.alert {
            if let Some(a) = self.alert_mut(n) {
                a.count = count;
            }
            return;
        }
        if count < u64::from(threshold) {
            return;
        }
        let sources = tally.sources.iter().map(show).collect();
        let n = self.raise(Alert {
            kind: if syn { "syn_flood" } else { "udp_flood" }.into(),
            link: p.header.link,
            target: show(&dst),
            window_start_ns: self.window.start_ns,
            ts_ns: p.header.ts_ns,
            threshold,
            count,
            sources,
        });
        let table = if syn { &mut self.syn } else { &mut self.udp };
        if let Some(t) = table.get_mut(&dst) {
            t.alert = Some(n);
        }
    }

    fn probe(&mut self, p: &Packet, src: Addr, dst: Addr, port: u16) {
        let max = self.params.max_tracked as usize;
        if !self.scans.contains_key(&src) && self.scans.len() >= max {
            self.results.untracked_packets += 1;
            return;
        }
        let probes = self.probes;
        let entry = self.scans.entry(src).or_default();
        let new = if entry.probes.contains(&(dst, port)) {
            false
        } else if probes >= max {
            self.results.untracked_packets += 1;
            return;
        } else {
            entry.probes.insert((dst, port));
            true
        };
        if new {
            self.probes += 1;
        }
        let count = entry.probes.len() as u64;
        let raised = entry.alert;
        if let Some(n) = raised {
            if let Some(a) = self.alert_mut(n) {
                a.count = count;
            }
            return;
        }
        if count < u64::from(self.params.scan_threshold) {
            return;
        }
        let n = self.raise(Alert {
            kind: "port_scan".into(),
            link: p.header.link,
            target: show(&src),
            window_start_ns: self.window.start_ns,
            ts_ns: p.header.ts_ns,
            threshold: self.params.scan_threshold,
            count,
            sources: vec![show(&dst)],
        });
        if let Some(e) = self.scans.get_mut(&src) {
            e.alert = Some(n);
        }
    }
}

impl Analyzer for DosDetect {
    type Params = Params;
    type Results = Results;

    fn init(params: Params) -> Result<Self, String> {
        let params = params.check()?;
        Ok(DosDetect {
            window: Window::new(params.window_ms * 1_000_000),
            params,
            syn: FxHashMap::default(),
            udp: FxHashMap::default(),
            scans: FxHashMap::default(),
            probes: 0,
            results: Results::default(),
            alerts: Default::default(),
        })
    }

    fn on_packet(&mut self, p: &Packet) {
        self.results.packets += 1;
        let h = &p.header;
        if h.ip_version == 0 {
            return;
        }
        if self.window.advance(h.ts_ns) {
            self.results.windows += 1;
            self.syn.clear();
            self.udp.clear();
            self.scans.clear();
            self.probes = 0;
        }
        let src = (h.ip_version, h.src_addr);
        let dst = (h.ip_version, h.dst_addr);
        let syn = h.ip_proto == 6 && h.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
        let udp = h.ip_proto == 17;
        if syn {
            self.flood(true, p, src, dst);
        }
        if udp {
            self.flood(false, p, src, dst);
        }
        if syn || udp {
            self.probe(p, src, dst, h.dst_port);
        }
    }

    fn configure(&mut self, params: Params) -> Result<(), String> {
        let params = params.check()?;
        self.window.width_ns = params.window_ms * 1_000_000;
        self.params = params;
        while self.alerts.len() > self.params.max_alerts as usize {
            self.alerts.pop_front();
        }
        Ok(())
    }

    /// Everything it reads is in the parsed header.
    fn snap_len(&self) -> u32 {
        0
    }

    fn results(&self) -> Results {
        let mut r = self.results.clone();
        r.alerts = self.alerts.iter().cloned().collect();
        r
    }

    tm_sdk::snapshot_from_serde!();
}

tm_sdk::export_analyzer!(DosDetect);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_sdk::abi::PacketHeader;

    fn pkt(src: u8, dst: u8, proto: u8, flags: u8, dport: u16, ts: u64) -> PacketHeader {
        let mut h = PacketHeader {
            ip_version: 4,
            ip_proto: proto,
            tcp_flags: flags,
            dst_port: dport,
            ts_ns: ts,
            link: 3,
            ..PacketHeader::default()
        };
        h.src_addr[..4].copy_from_slice(&[10, 0, 0, src]);
        h.dst_addr[..4].copy_from_slice(&[10, 0, 1, dst]);
        h
    }

    fn feed(a: &mut DosDetect, h: PacketHeader) {
        a.on_packet(&Packet {
            header: h,
            data: &[],
        });
    }

    #[test]
    fn floods_alert_once_per_window_when_the_threshold_is_crossed() {
        let mut a = DosDetect::init(Params {
            syn_threshold: 10,
            udp_threshold: 5,
            scan_threshold: 1000,
            ..Params::default()
        })
        .unwrap();
        let s = 1_000_000_000;
        for i in 0..9 {
            feed(&mut a, pkt(i as u8, 1, 6, tcp::SYN, 80, s + i));
        }
        assert_eq!(a.results().alerts_total, 0);
        feed(&mut a, pkt(99, 1, 6, tcp::SYN, 80, s + 9));
        let r = a.results();
        assert_eq!(r.alerts_total, 1);
        assert_eq!(r.alerts[0].ts_ns, s + 9);
        assert_eq!(r.alerts[0].sources.len(), MAX_SOURCES);
        // SYN/ACKs are not SYNs; more SYNs grow the count, not the alerts.
        feed(&mut a, pkt(1, 1, 6, tcp::SYN | tcp::ACK, 80, s + 10));
        for i in 0..5 {
            feed(&mut a, pkt(1, 1, 6, tcp::SYN, 80, s + 20 + i));
        }
        let r = a.results();
        assert_eq!((r.alerts_total, r.alerts[0].count), (1, 15));
        // The next window alerts again; UDP floods separately.
        for i in 0..10 {
            feed(&mut a, pkt(2, 1, 6, tcp::SYN, 80, 2 * s + i));
        }
        for i in 0..5 {
            feed(&mut a, pkt(2, 7, 17, 0, 53, 2 * s + 100 + i));
        }
        let r = a.results();
        assert_eq!(
            r.by_kind,
            ByKind {
                syn_flood: 2,
                udp_flood: 1,
                port_scan: 0
            }
        );
        assert_eq!(r.windows, 2);
        assert_eq!(r.alerts[2].target, "10.0.1.7");
        assert_eq!(r.alerts[2].link, 3);
    }

    #[test]
    fn scans_count_distinct_probes_and_tables_are_bounded() {
        let mut a = DosDetect::init(Params {
            scan_threshold: 20,
            max_tracked: 30,
            ..Params::default()
        })
        .unwrap();
        for port in 1..=19 {
            feed(&mut a, pkt(5, 1, 6, tcp::SYN, port, 10));
            feed(&mut a, pkt(5, 1, 6, tcp::SYN, port, 11)); // repeat: not new
        }
        assert_eq!(a.results().alerts_total, 0);
        feed(&mut a, pkt(5, 1, 17, 0, 20, 12));
        let r = a.results();
        assert_eq!(r.by_kind.port_scan, 1);
        assert_eq!(r.alerts[0].target, "10.0.0.5");
        // 30 probe pairs at most: 10 more fit, the rest are untracked.
        for port in 100..120 {
            feed(&mut a, pkt(5, 2, 6, tcp::SYN, port, 13));
        }
        let r = a.results();
        assert_eq!(r.untracked_packets, 10);
        assert_eq!(r.alerts[0].count, 30);
    }

    #[test]
    fn the_whole_state_survives_a_snapshot() {
        let mut a = DosDetect::init(Params {
            syn_threshold: 3,
            ..Params::default()
        })
        .unwrap();
        for i in 0..2 {
            feed(&mut a, pkt(i, 1, 6, tcp::SYN, 80, 10 + u64::from(i)));
        }
        let saved = a.snapshot().unwrap();
        let mut b = DosDetect::init(Params::default()).unwrap();
        b.restore(&saved).unwrap();
        // The restored one is mid-window with the same tallies and params:
        // one more SYN crosses its threshold of 3.
        feed(&mut b, pkt(9, 1, 6, tcp::SYN, 80, 20));
        let r = b.results();
        assert_eq!((r.alerts_total, r.alerts[0].count), (1, 3));
        assert!(b.restore(b"garbage").is_err());
    }

    #[test]
    fn bad_params_are_named_and_alerts_kept_are_bounded() {
        let e = DosDetect::init(Params {
            udp_threshold: 0,
            ..Params::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("udp_threshold = 0"), "{}", e);
        let mut a = DosDetect::init(Params {
            syn_threshold: 1,
            max_alerts: 2,
            ..Params::default()
        })
        .unwrap();
        for d in 0..5 {
            feed(&mut a, pkt(1, d, 6, tcp::SYN, 80, 10));
        }
        let r = a.results();
        assert_eq!((r.alerts_total, r.alerts.len()), (5, 2));
        assert_eq!(r.alerts[1].target, "10.0.1.4");
    }
}
