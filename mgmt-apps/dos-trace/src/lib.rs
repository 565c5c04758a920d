//! dos-trace: follows denial-of-service alerts back through the topology.
//!
//! Deploys `dos-detect` to every monitor (S2) and subscribes to its events,
//! so every alert (SYN flood, UDP flood, port scan) reaches the app the
//! moment a monitor raises it. Alerts are grouped into incidents by
//! (target, kind); whenever a tap (monitor address + the alert's link)
//! joins an incident, the app traces the attack and publishes an
//! `attack-path` report: the taps that alerted, ordered along the path, the
//! path from the attack's ingress to the victim, the ingress link, and the
//! unmonitored links where the trail goes dark. Every `every_ms` it collects
//! dos-detect (S4), folds the alerts of the results into the incidents (so
//! alerts raised before the subscription, or lost, still count) and
//! publishes a `dos-summary`. When the manager unloads the app (S8) it
//! unloads dos-detect (S6) and publishes a `dos-summary-final` from the
//! final results (S7).
//!
//! # Roles
//!
//! For a flood the attacked host is the alert's `target` and the attackers
//! are its `sources`. For a port scan dos-detect reports the scanner as
//! `target` and the scanned addresses as `sources`: the roles swap, the
//! traffic runs from the target to the sources. The victim's router is the
//! router of the attacked address (for a scan, the router most scanned
//! addresses sit behind); the source routers are those of the attackers.
//! Addresses are mapped to routers by longest match in `prefixes`.
//!
//! # Tracing
//!
//! The alerting taps are laid on the topology's directed links. The ingress
//! is the alerting link farthest upstream, towards the sources:
//!
//! 1. **Source path.** If the victim's router is known and some source
//!    router is not the victim's, the attack follows `flow_path(source
//!    router, victim router)`. Of the source routers, the one whose path
//!    holds the most alerting links is taken; the ingress is the first
//!    alerting link on it, `path` runs from there to the victim, and the
//!    path's unmonitored links are reported `upstream` (before the ingress:
//!    where the trail goes dark) or `downstream` of it.
//! 2. **Upstream walk.** Otherwise (sources unmapped, spoofed — their path
//!    holds no alerting tap — or behind the victim's router), the walk
//!    starts at the alerting link nearest the victim (one no other alerting
//!    link continues; entering the victim's router if any does) and goes
//!    against the traffic through the topology's incoming links, never
//!    straight back over the reverse direction: an alerting link is
//!    followed, an unmonitored one is crossed (the trail may resume beyond
//!    it), a monitored link that did not alert is not taken (its tap would
//!    have seen the attack). The last alerting link reached is the ingress;
//!    the unmonitored links into its from-router are where the trail goes
//!    dark (`upstream`), and if the victim's router is known the path is
//!    completed to it with `flow_path`.
//!
//! dos-detect counts per monitor, not per link: a monitor tapping two links
//! of one path alerts once per window, on whichever link crossed the
//! threshold. Incidents are kept in memory (at most 1000, the least
//! recently active dropped first).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
pub use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};
use tm_app_sdk::{
    Collected, Deploy, EventView, Filter, Level, LinkView, TapView, Targets, TopologyView,
};

/// Incidents kept at once.
pub const MAX_INCIDENTS: usize = 1000;
/// Sources kept per incident.
pub const MAX_SOURCES: usize = 64;
/// Windows remembered per tap (to count each alert once).
const MAX_WINDOWS: usize = 64;

/// Params.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The dos-detect blob's name.
    pub analyzer: String,
    /// Its SHA-256 (empty: whatever is stored under the name).
    pub sha256: String,
    /// dos-detect's params, passed through (unset: dos-detect's defaults).
    pub analyzer_params: Option<DetectParams>,
    /// dos-detect's `window_ms` (or give it in `analyzer_params`).
    pub window_ms: Option<u64>,
    /// dos-detect's `syn_threshold`.
    pub syn_threshold: Option<u32>,
    /// dos-detect's `udp_threshold`.
    pub udp_threshold: Option<u32>,
    /// dos-detect's `scan_threshold`.
    pub scan_threshold: Option<u32>,
    /// Host prefixes behind each router, to find the victim's and the
    /// sources' routers.
    pub prefixes: Vec<PrefixRow>,
    /// Summary period, ms; 0: only the final summary.
    pub every_ms: u64,
    /// Per-monitor collect timeout, ms.
    pub collect_timeout_ms: u64,
    /// Also archive collected results and every report.
    pub archive: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            analyzer: "dos-detect".into(),
            sha256: String::new(),
            analyzer_params: None,
            window_ms: None,
            syn_threshold: None,
            udp_threshold: None,
            scan_threshold: None,
            prefixes: Vec::new(),
            every_ms: 10_000,
            collect_timeout_ms: 2000,
            archive: false,
        }
    }
}

/// dos-detect's params; unset fields are left to dos-detect's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectParams {
    /// Window width, ms of packet time (1 to 3600000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// SYNs to one address per window (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_threshold: Option<u32>,
    /// UDP datagrams to one address per window (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_threshold: Option<u32>,
    /// Distinct probes from one source per window (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_threshold: Option<u32>,
    /// Addresses and probe pairs tracked per window (1 to 10000000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tracked: Option<u32>,
    /// Alerts kept in the results (0 to 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_alerts: Option<u32>,
}

/// One of dos-detect's params, given at the top or in `analyzer_params`.
fn merged<T: PartialEq + Copy + std::fmt::Display>(
    name: &str,
    top: Option<T>,
    nested: Option<T>,
) -> Result<(Option<T>, String), String> {
    match (top, nested) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{} = {} and analyzer_params.{} = {}: give it once",
            name, a, name, b
        )),
        (Some(a), _) => Ok((Some(a), name.to_string())),
        (None, b) => Ok((b, format!("analyzer_params.{}", name))),
    }
}

fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    v: (Option<T>, String),
    lo: T,
    hi: Option<T>,
    range: &str,
) -> Result<Option<T>, String> {
    match v.0 {
        Some(x) if x < lo || hi.map_or(false, |h| x > h) => {
            Err(format!("{} = {}: must be {}", v.1, x, range))
        }
        other => Ok(other),
    }
}

impl Params {
    /// Checks every param; returns dos-detect's params and the prefix table.
    /// Errors name the field and its value.
    pub fn check(&self) -> Result<(DetectParams, Table<String>), String> {
        if self.analyzer.is_empty() {
            return Err("analyzer = \"\": must name the dos-detect blob".into());
        }
        if self.every_ms != 0 && self.every_ms < 100 {
            return Err(format!(
                "every_ms = {}: must be 0 (no periodic summary) or at least 100",
                self.every_ms
            ));
        }
        if self.collect_timeout_ms == 0 {
            return Err("collect_timeout_ms = 0: must be at least 1".into());
        }
        let n = self.analyzer_params.clone().unwrap_or_default();
        let detect = DetectParams {
            window_ms: in_range(
                merged("window_ms", self.window_ms, n.window_ms)?,
                1,
                Some(3_600_000),
                "1 to 3600000",
            )?,
            syn_threshold: in_range(
                merged("syn_threshold", self.syn_threshold, n.syn_threshold)?,
                1,
                None,
                "at least 1",
            )?,
            udp_threshold: in_range(
                merged("udp_threshold", self.udp_threshold, n.udp_threshold)?,
                1,
                None,
                "at least 1",
            )?,
            scan_threshold: in_range(
                merged("scan_threshold", self.scan_threshold, n.scan_threshold)?,
                1,
                None,
                "at least 1",
            )?,
            max_tracked: in_range(
                (n.max_tracked, "analyzer_params.max_tracked".into()),
                1,
                Some(10_000_000),
                "1 to 10000000",
            )?,
            max_alerts: in_range(
                (n.max_alerts, "analyzer_params.max_alerts".into()),
                0,
                Some(10_000),
                "0 to 10000",
            )?,
        };
        Ok((detect, routers_of(&self.prefixes)?))
    }
}

/// A dos-detect alert (the event's data, and an entry of its results).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DosAlert {
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
    /// Flood sources seen (at most 8), or the scanned address for a scan.
    pub sources: Vec<String>,
}

/// dos-detect's alert counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByKind {
    /// SYN floods.
    pub syn_flood: u64,
    /// UDP floods.
    pub udp_flood: u64,
    /// Port scans.
    pub port_scan: u64,
}

/// The part of dos-detect's results this app reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectResults {
    /// Packets given.
    pub packets: u64,
    /// Windows closed.
    pub windows: u64,
    /// Alerts raised.
    pub alerts_total: u64,
    /// Alerts by kind.
    pub by_kind: ByKind,
    /// Packets not tracked (max_tracked reached).
    pub untracked_packets: u64,
    /// The latest alerts, oldest first.
    pub alerts: Vec<DosAlert>,
}

// ---------------------------------------------------------------------------
// Incidents
// ---------------------------------------------------------------------------

/// One tap's alerts for an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Its first alert's packet time.
    pub first_ts_ns: u64,
    /// Its latest alert's packet time.
    pub last_ts_ns: u64,
    /// The largest count its alerts carried (packets or probes in a window).
    pub count: u64,
    /// Alerts (windows) it raised.
    pub alerts: u64,
    windows: BTreeSet<u64>,
}

/// The alerts for one (target, kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The alerts' target.
    pub target: String,
    /// The alerts' kind.
    pub kind: String,
    /// By (monitor address, link id).
    pub taps: BTreeMap<(String, u32), Sighting>,
    /// Sources seen in its alerts (at most [`MAX_SOURCES`]).
    pub sources: BTreeSet<String>,
    /// First alert's packet time.
    pub first_ts_ns: u64,
    /// Latest alert's packet time.
    pub last_ts_ns: u64,
    /// The ingress of its latest trace.
    pub ingress: Option<Ingress>,
}

/// Every incident, by (target, kind).
#[derive(Debug, Clone, Default)]
pub struct Incidents {
    /// The incidents.
    pub map: BTreeMap<(String, String), Incident>,
}

impl Incidents {
    /// Adds an alert a monitor at `address` raised; true if its tap is new
    /// to the incident (the picture changed). Each (tap, window) counts once,
    /// so an alert delivered as an event and listed in the results again
    /// is not counted twice.
    pub fn record(&mut self, address: &str, a: &DosAlert) -> bool {
        let key = (a.target.clone(), a.kind.clone());
        if !self.map.contains_key(&key) && self.map.len() >= MAX_INCIDENTS {
            let stale = self
                .map
                .iter()
                .min_by_key(|(_, i)| i.last_ts_ns)
                .map(|(k, _)| k.clone());
            if let Some(k) = stale {
                self.map.remove(&k);
            }
        }
        let inc = self.map.entry(key).or_insert_with(|| Incident {
            target: a.target.clone(),
            kind: a.kind.clone(),
            taps: BTreeMap::new(),
            sources: BTreeSet::new(),
            first_ts_ns: a.ts_ns,
            last_ts_ns: a.ts_ns,
            ingress: None,
        });
        inc.first_ts_ns = inc.first_ts_ns.min(a.ts_ns);
        inc.last_ts_ns = inc.last_ts_ns.max(a.ts_ns);
        for s in &a.sources {
            if inc.sources.len() >= MAX_SOURCES {
                break;
            }
            inc.sources.insert(s.clone());
        }
        let tap = (address.to_string(), a.link);
        let new_tap = !inc.taps.contains_key(&tap);
        let s = inc.taps.entry(tap).or_insert(Sighting {
            first_ts_ns: a.ts_ns,
            last_ts_ns: a.ts_ns,
            count: 0,
            alerts: 0,
            windows: BTreeSet::new(),
        });
        if s.windows.insert(a.window_start_ns) {
            s.alerts += 1;
            if s.windows.len() > MAX_WINDOWS {
                let oldest = s.windows.iter().next().copied();
                if let Some(o) = oldest {
                    s.windows.remove(&o);
                }
            }
        }
        s.first_ts_ns = s.first_ts_ns.min(a.ts_ns);
        s.last_ts_ns = s.last_ts_ns.max(a.ts_ns);
        s.count = s.count.max(a.count);
        new_tap
    }
}

// ---------------------------------------------------------------------------
// Tracing
// ---------------------------------------------------------------------------

/// How the path was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `flow_path` from a source router to the victim's router.
    SourcePath,
    /// Upstream from the alerting link nearest the victim.
    UpstreamWalk,
    /// No alerting tap is on the topology.
    None,
}

/// Where an unmonitored link sits relative to the ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Before the ingress: where the trail goes dark.
    Upstream,
    /// Between the ingress and the victim.
    Downstream,
}

/// A tap that alerted for the incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertingTap {
    /// The monitor's address.
    pub monitor_address: String,
    /// Its link id.
    pub link_id: u32,
    /// The router the link leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Its first alert's packet time.
    pub first_ts_ns: u64,
    /// Its latest alert's packet time.
    pub last_ts_ns: u64,
    /// The largest count its alerts carried.
    pub count: u64,
    /// Alerts (windows) it raised.
    pub alerts: u64,
    /// Whether its link is on the reported path.
    pub on_path: bool,
}

/// A link of the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathHop {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Its taps (empty: unmonitored).
    pub taps: Vec<TapView>,
    /// Whether one of its taps alerted.
    pub alerted: bool,
}

/// The ingress link: the alerting link farthest upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingress {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The tap that alerted on it.
    pub monitor_address: String,
    /// Its link id.
    pub link_id: u32,
}

/// An unmonitored link on or next to the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmonitored {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Relative to the ingress.
    pub position: Position,
}

/// The `attack-path` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttackPath {
    /// The alerts' target (the scanner, for a scan).
    pub target: String,
    /// `syn_flood`, `udp_flood` or `port_scan`.
    pub kind: String,
    /// The attacked router.
    pub victim_router: Option<String>,
    /// The attackers' routers, sorted.
    pub source_routers: Vec<String>,
    /// The attackers' addresses seen (the scanned ones, for a scan).
    pub sources: Vec<String>,
    /// First alert's packet time.
    pub first_ts_ns: u64,
    /// Latest alert's packet time.
    pub last_ts_ns: u64,
    /// The taps that alerted, along the path (ingress first), then the
    /// others by first alert.
    pub alerting_taps: Vec<AlertingTap>,
    /// How the path was found.
    pub method: Method,
    /// Links from the ingress to the victim.
    pub path: Vec<PathHop>,
    /// The alerting link farthest upstream.
    pub ingress: Option<Ingress>,
    /// Unmonitored links on the path, and into the ingress for a walk.
    pub unmonitored: Vec<Unmonitored>,
    /// Alerting taps the topology does not know (`address:link`).
    pub unknown_taps: Vec<String>,
    /// How the ingress was found, or why not.
    pub reason: String,
    /// Topology revision it was laid on.
    pub topology_revision: u64,
}

type Key = (String, String);

fn key_of(l: &LinkView) -> Key {
    (l.from_router.clone(), l.to_router.clone())
}

fn arrow(k: &Key) -> String {
    format!("{}→{}", k.0, k.1)
}

fn lookup<'t>(routers: &'t Table<String>, addr: &str) -> Option<&'t String> {
    addr.parse::<IpAddr>()
        .ok()
        .and_then(|ip| routers.lookup(ip))
}

/// Traces an incident on the topology (see the crate documentation).
/// `flow_path(from, to)` gives the links a flow between two routers crosses
/// (the host's `flow_path`), none if it cannot be had.
pub fn trace(
    topology: &TopologyView,
    inc: &Incident,
    routers: &Table<String>,
    flow_path: &mut dyn FnMut(&str, &str) -> Option<Vec<LinkView>>,
) -> AttackPath {
    // Roles.
    let scan = inc.kind == "port_scan";
    let target = vec![inc.target.clone()];
    let sources: Vec<String> = inc.sources.iter().cloned().collect();
    let (attackers, victims) = if scan {
        (&target, &sources)
    } else {
        (&sources, &target)
    };
    let mut victim_votes: BTreeMap<&String, usize> = BTreeMap::new();
    for v in victims {
        if let Some(r) = lookup(routers, v) {
            *victim_votes.entry(r).or_insert(0) += 1;
        }
    }
    let mut victim_router: Option<String> = None;
    let mut most = 0;
    for (r, n) in victim_votes {
        if n > most {
            most = n;
            victim_router = Some(r.clone());
        }
    }
    let source_routers: Vec<String> = attackers
        .iter()
        .filter_map(|a| lookup(routers, a).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // Alerting taps on the topology; per link, its strongest sighting.
    let mut by_tap: BTreeMap<(&str, u32), &LinkView> = BTreeMap::new();
    for l in &topology.links {
        for t in &l.taps {
            by_tap.insert((t.monitor_address.as_str(), t.link_id), l);
        }
    }
    let mut taps = Vec::new();
    let mut unknown_taps = Vec::new();
    let mut alerted: BTreeMap<Key, (u64, String, u32)> = BTreeMap::new();
    for ((address, id), s) in &inc.taps {
        let l = match by_tap.get(&(address.as_str(), *id)) {
            Some(l) => *l,
            None => {
                unknown_taps.push(format!("{}:{}", address, id));
                continue;
            }
        };
        taps.push(AlertingTap {
            monitor_address: address.clone(),
            link_id: *id,
            from_router: l.from_router.clone(),
            to_router: l.to_router.clone(),
            first_ts_ns: s.first_ts_ns,
            last_ts_ns: s.last_ts_ns,
            count: s.count,
            alerts: s.alerts,
            on_path: false,
        });
        let e = alerted
            .entry(key_of(l))
            .or_insert((0, address.clone(), *id));
        if s.count > e.0 {
            *e = (s.count, address.clone(), *id);
        }
    }
    let ingress_of = |k: &Key| {
        alerted.get(k).map(|e| Ingress {
            from_router: k.0.clone(),
            to_router: k.1.clone(),
            monitor_address: e.1.clone(),
            link_id: e.2,
        })
    };
    let hop = |l: &LinkView| PathHop {
        from_router: l.from_router.clone(),
        to_router: l.to_router.clone(),
        taps: l.taps.clone(),
        alerted: alerted.contains_key(&key_of(l)),
    };

    let mut method = Method::None;
    let mut path: Vec<PathHop> = Vec::new();
    let mut unmonitored = Vec::new();
    let mut ingress = None;
    let reason;

    // 1. The path from the sources' routers.
    let mut best: Option<(String, Vec<LinkView>, usize)> = None;
    if let Some(v) = &victim_router {
        if !alerted.is_empty() {
            for s in source_routers.iter().filter(|s| *s != v) {
                let p = match flow_path(s, v) {
                    Some(p) => p,
                    None => continue,
                };
                let n = p
                    .iter()
                    .filter(|l| alerted.contains_key(&key_of(l)))
                    .count();
                if n > 0 && best.as_ref().map_or(true, |b| n > b.2) {
                    best = Some((s.clone(), p, n));
                }
            }
        }
    }
    if let Some((s, p, n)) = best {
        let at = p
            .iter()
            .position(|l| alerted.contains_key(&key_of(l)))
            .expect("the best path has an alerting link");
        for (i, l) in p.iter().enumerate() {
            if l.taps.is_empty() {
                unmonitored.push(Unmonitored {
                    from_router: l.from_router.clone(),
                    to_router: l.to_router.clone(),
                    position: if i < at {
                        Position::Upstream
                    } else {
                        Position::Downstream
                    },
                });
            }
        }
        let k = key_of(&p[at]);
        ingress = ingress_of(&k);
        path = p[at..].iter().map(&hop).collect();
        method = Method::SourcePath;
        reason = format!(
            "the attack follows the path from {} to the victim's router {} ({} link(s), {} alerted); its farthest upstream alerting link is {}",
            s,
            victim_router.as_deref().unwrap_or_default(),
            p.len(),
            n,
            arrow(&k)
        );
    } else if alerted.is_empty() {
        reason = if inc.taps.is_empty() {
            "no alert".to_string()
        } else {
            "no alerting tap is on the topology".to_string()
        };
    } else {
        // 2. Walk upstream.
        let why_not = if source_routers.is_empty() {
            "no source address maps to a router (outside prefixes, or spoofed)".to_string()
        } else if victim_router.is_none() {
            "the victim's address maps to no router".to_string()
        } else if source_routers
            .iter()
            .all(|s| Some(s) == victim_router.as_ref())
        {
            "the sources sit behind the victim's router".to_string()
        } else {
            format!(
                "no alerting tap is on the path from {} to the victim's router (sources spoofed?)",
                source_routers.join(", ")
            )
        };
        let (chain, start) = walk(topology, &alerted, victim_router.as_deref());
        let first = chain[0].clone();
        let mut links: Vec<LinkView> = chain
            .iter()
            .filter_map(|k| topology.links.iter().find(|l| key_of(l) == *k))
            .cloned()
            .collect();
        let mut tail_note = String::new();
        if let Some(v) = &victim_router {
            let end = links.last().map(|l| l.to_router.clone());
            if let Some(end) = end {
                if &end != v {
                    match flow_path(&end, v) {
                        Some(t) => links.extend(t),
                        None => {
                            tail_note =
                                format!("; no flow path from {} to the victim's router {}", end, v)
                        }
                    }
                }
            }
        }
        for l in &topology.links {
            if l.taps.is_empty() && l.to_router == first.0 && l.from_router != first.1 {
                unmonitored.push(Unmonitored {
                    from_router: l.from_router.clone(),
                    to_router: l.to_router.clone(),
                    position: Position::Upstream,
                });
            }
        }
        for l in &links {
            if l.taps.is_empty() {
                unmonitored.push(Unmonitored {
                    from_router: l.from_router.clone(),
                    to_router: l.to_router.clone(),
                    position: Position::Downstream,
                });
            }
        }
        ingress = ingress_of(&first);
        path = links.iter().map(&hop).collect();
        method = Method::UpstreamWalk;
        reason = format!(
            "{}: walked upstream from {} over the taps that alerted; the farthest is {}{}",
            why_not,
            arrow(&start),
            arrow(&first),
            tail_note
        );
    }

    // Taps along the path first, then by first alert.
    let on_path: Vec<Key> = path
        .iter()
        .map(|h| (h.from_router.clone(), h.to_router.clone()))
        .collect();
    for t in &mut taps {
        t.on_path = on_path
            .iter()
            .any(|k| k.0 == t.from_router && k.1 == t.to_router);
    }
    taps.sort_by_key(|t| {
        let at = on_path
            .iter()
            .position(|k| k.0 == t.from_router && k.1 == t.to_router)
            .unwrap_or(usize::MAX);
        (at, t.first_ts_ns, t.monitor_address.clone(), t.link_id)
    });

    AttackPath {
        target: inc.target.clone(),
        kind: inc.kind.clone(),
        victim_router,
        source_routers,
        sources,
        first_ts_ns: inc.first_ts_ns,
        last_ts_ns: inc.last_ts_ns,
        alerting_taps: taps,
        method,
        path,
        ingress,
        unmonitored,
        unknown_taps,
        reason,
        topology_revision: topology.revision,
    }
}

/// The upstream walk: the chain of links from the ingress (first) to the
/// alerting link nearest the victim (last), unmonitored gaps included; and
/// that nearest link.
fn walk(
    topology: &TopologyView,
    alerted: &BTreeMap<Key, (u64, String, u32)>,
    victim: Option<&str>,
) -> (Vec<Key>, Key) {
    let count = |k: &Key| alerted.get(k).map_or(0, |e| e.0);
    // The strongest of some links (then the first in order).
    let strongest = |c: &[Key]| -> Option<Key> {
        let mut best: Option<&Key> = None;
        for k in c {
            if best.map_or(true, |b| count(k) > count(b)) {
                best = Some(k);
            }
        }
        best.cloned()
    };
    let keys: Vec<Key> = alerted.keys().cloned().collect();
    let ends: Vec<Key> = keys
        .iter()
        .filter(|a| !keys.iter().any(|b| b.0 == a.1 && b.1 != a.0))
        .cloned()
        .collect();
    let ends = if ends.is_empty() { keys.clone() } else { ends };
    let at_victim: Vec<Key> = ends
        .iter()
        .filter(|k| Some(k.1.as_str()) == victim)
        .cloned()
        .collect();
    let start = strongest(if at_victim.is_empty() {
        &ends
    } else {
        &at_victim
    })
    .expect("some link alerted");

    // Built from the victim's side: chain[0] is the nearest to it.
    let mut chain = vec![start.clone()];
    let mut used: BTreeSet<Key> = BTreeSet::new();
    used.insert(start.clone());
    let mut current = start.clone();
    loop {
        // Breadth-first against the traffic from `current`'s from-router,
        // across unmonitored links, to the nearest alerting links.
        let mut seen: BTreeSet<String> = BTreeSet::new();
        seen.insert(current.0.clone());
        let mut frontier: Vec<(String, String, Vec<Key>)> =
            vec![(current.0.clone(), current.1.clone(), Vec::new())];
        let mut found: Option<(Key, Vec<Key>)> = None;
        for _ in 0..topology.links.len() {
            if frontier.is_empty() {
                break;
            }
            let mut hits: Vec<(Key, Vec<Key>)> = Vec::new();
            let mut next = Vec::new();
            for (router, came_from, gap) in &frontier {
                for l in &topology.links {
                    if &l.to_router != router || &l.from_router == came_from {
                        continue;
                    }
                    let k = key_of(l);
                    if alerted.contains_key(&k) {
                        if !used.contains(&k) {
                            hits.push((k, gap.clone()));
                        }
                    } else if l.taps.is_empty() && seen.insert(l.from_router.clone()) {
                        let mut g = gap.clone();
                        g.push(k);
                        next.push((l.from_router.clone(), router.clone(), g));
                    }
                }
            }
            if !hits.is_empty() {
                let ks: Vec<Key> = hits.iter().map(|h| h.0.clone()).collect();
                let k = strongest(&ks).expect("hits is not empty");
                found = hits.into_iter().find(|h| h.0 == k);
                break;
            }
            frontier = next;
        }
        match found {
            Some((k, gap)) => {
                chain.extend(gap);
                used.insert(k.clone());
                chain.push(k.clone());
                current = k;
            }
            None => break,
        }
    }
    chain.reverse();
    (chain, start)
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

/// One monitor's dos-detect figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitorSummary {
    /// Monitor id.
    pub monitor: String,
    /// Its address.
    pub address: String,
    /// Packets given to dos-detect.
    pub packets: u64,
    /// Windows closed.
    pub windows: u64,
    /// Alerts raised.
    pub alerts_total: u64,
    /// Alerts by kind.
    pub by_kind: ByKind,
    /// Packets not tracked.
    pub untracked_packets: u64,
}

/// One incident in a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentSummary {
    /// The alerts' target.
    pub target: String,
    /// The alerts' kind.
    pub kind: String,
    /// Taps that alerted.
    pub taps: u64,
    /// Alerts (tap windows).
    pub alerts: u64,
    /// First alert's packet time.
    pub first_ts_ns: u64,
    /// Latest alert's packet time.
    pub last_ts_ns: u64,
    /// Its latest trace's ingress.
    pub ingress: Option<Ingress>,
}

/// The `dos-summary` (and `dos-summary-final`) report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The dos-detect deployment.
    pub deployment: String,
    /// Collect round (1, 2, …); the final summary repeats the last + 1.
    pub round: u32,
    /// Per monitor, sorted by monitor id.
    pub monitors: Vec<MonitorSummary>,
    /// Packets over all monitors.
    pub packets: u64,
    /// Alerts over all monitors.
    pub alerts_total: u64,
    /// Alerts by kind over all monitors.
    pub by_kind: ByKind,
    /// Incidents, by (target, kind).
    pub incidents: Vec<IncidentSummary>,
    /// Monitors that did not answer (id: reason).
    pub missing: Vec<String>,
}

/// Sums collected results and lists the incidents.
pub fn build_summary(
    collected: &Collected<DetectResults>,
    incidents: &Incidents,
    round: u32,
) -> Summary {
    let mut by_kind = ByKind::default();
    let mut monitors = Vec::new();
    for m in &collected.results {
        let r = &m.results;
        by_kind.syn_flood += r.by_kind.syn_flood;
        by_kind.udp_flood += r.by_kind.udp_flood;
        by_kind.port_scan += r.by_kind.port_scan;
        monitors.push(MonitorSummary {
            monitor: m.monitor.clone(),
            address: m.address.clone(),
            packets: r.packets,
            windows: r.windows,
            alerts_total: r.alerts_total,
            by_kind: r.by_kind,
            untracked_packets: r.untracked_packets,
        });
    }
    Summary {
        deployment: collected.deployment.clone(),
        round,
        packets: monitors.iter().map(|m| m.packets).sum(),
        alerts_total: monitors.iter().map(|m| m.alerts_total).sum(),
        monitors,
        by_kind,
        incidents: incidents
            .map
            .values()
            .map(|i| IncidentSummary {
                target: i.target.clone(),
                kind: i.kind.clone(),
                taps: i.taps.len() as u64,
                alerts: i.taps.values().map(|s| s.alerts).sum(),
                first_ts_ns: i.first_ts_ns,
                last_ts_ns: i.last_ts_ns,
                ingress: i.ingress.clone(),
            })
            .collect(),
        missing: collected
            .missing
            .iter()
            .map(|m| format!("{}: {}", m.monitor, m.message))
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------

/// The app.
pub struct DosTrace {
    params: Params,
    routers: Table<String>,
    deployment: Option<String>,
    incidents: Incidents,
    round: u32,
}

const SUMMARY_TIMER: u32 = 1;

fn err(e: tm_app_sdk::CallError) -> String {
    e.to_string()
}

impl DosTrace {
    /// Publishes the trace of each incident in `keys`.
    fn publish_traces(&mut self, keys: &BTreeSet<Key>) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        let topology = tm_app_sdk::topology().map_err(err)?;
        let mut flow_path = |from: &str, to: &str| match tm_app_sdk::flow_path(from, to) {
            Ok(p) => Some(p),
            Err(e) => {
                tm_app_sdk::log(Level::Warn, &format!("flow_path {} → {}: {}", from, to, e));
                None
            }
        };
        for k in keys {
            let report = match self.incidents.map.get(k) {
                Some(inc) => trace(&topology, inc, &self.routers, &mut flow_path),
                None => continue,
            };
            if let Some(inc) = self.incidents.map.get_mut(k) {
                inc.ingress = report.ingress.clone();
            }
            tm_app_sdk::publish("attack-path", &report).map_err(err)?;
            if self.params.archive {
                tm_app_sdk::archive("attack-path", &report).map_err(err)?;
            }
            tm_app_sdk::log(
                Level::Info,
                &format!(
                    "{} on {}: {} tap(s), ingress {}",
                    report.kind,
                    report.target,
                    report.alerting_taps.len(),
                    report.ingress.as_ref().map_or_else(
                        || "unknown".to_string(),
                        |i| format!("{}→{}", i.from_router, i.to_router)
                    )
                ),
            );
        }
        Ok(())
    }

    /// Folds collected alerts into the incidents; traces those with a new tap.
    fn absorb(&mut self, collected: &Collected<DetectResults>) -> Result<(), String> {
        let mut changed = BTreeSet::new();
        for m in &collected.results {
            for a in &m.results.alerts {
                if self.incidents.record(&m.address, a) {
                    changed.insert((a.target.clone(), a.kind.clone()));
                }
            }
        }
        self.publish_traces(&changed)
    }

    fn summary(&self, collected: &Collected<DetectResults>, kind: &str) -> Result<(), String> {
        let s = build_summary(collected, &self.incidents, self.round);
        tm_app_sdk::publish(kind, &s).map_err(err)?;
        if self.params.archive {
            tm_app_sdk::archive(kind, &s).map_err(err)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Some(d) = self.deployment.take() {
            if self.params.every_ms > 0 {
                tm_app_sdk::cancel_timer(SUMMARY_TIMER).map_err(err)?;
            }
            let last = tm_app_sdk::unload::<DetectResults>(&d).map_err(err)?;
            self.absorb(&last)?;
            self.round += 1;
            self.summary(&last, "dos-summary-final")?;
            tm_app_sdk::log(
                Level::Info,
                &format!("unloaded {}: {} incident(s)", d, self.incidents.map.len()),
            );
        }
        Ok(())
    }
}

impl tm_app_sdk::App for DosTrace {
    type Params = Params;

    fn start(params: Params) -> Result<Self, String> {
        let (detect, routers) = params.check()?;
        let deployed = tm_app_sdk::deploy(&Deploy {
            deployment: String::new(),
            analyzer: params.analyzer.clone(),
            sha256: params.sha256.clone(),
            params: detect,
            filter: Filter {
                protocols: vec![6, 17],
                ..Filter::default()
            },
            targets: Targets::All,
            report_every_ms: None,
        })
        .map_err(err)?;
        let d = deployed.deployment.clone();
        let armed = tm_app_sdk::subscribe(&d).and_then(|_| {
            if params.every_ms > 0 {
                tm_app_sdk::set_timer(SUMMARY_TIMER, params.every_ms)
            } else {
                Ok(())
            }
        });
        if let Err(e) = armed {
            // Do not leave dos-detect running for an app that did not start.
            let _ = tm_app_sdk::unload::<serde::de::IgnoredAny>(&d);
            return Err(err(e));
        }
        tm_app_sdk::log(
            Level::Info,
            &format!(
                "deployed {} to {} monitors ({} failed), subscribed to its alerts",
                d,
                deployed.placed.len(),
                deployed.failed.len()
            ),
        );
        Ok(DosTrace {
            params,
            routers,
            deployment: Some(d),
            incidents: Incidents::default(),
            round: 0,
        })
    }

    fn on_event(&mut self, event: &[u8]) -> Result<(), String> {
        let head: EventView<serde::de::IgnoredAny> = tm_app_sdk::decode(event)?;
        if self.deployment.as_deref() != Some(head.deployment.as_str()) {
            return Ok(());
        }
        if head.kind != "alert" {
            tm_app_sdk::log(
                Level::Info,
                &format!(
                    "{} ({}): {}: {}",
                    head.monitor, head.address, head.kind, head.message
                ),
            );
            return Ok(());
        }
        let ev: EventView<DosAlert> = tm_app_sdk::decode(event)?;
        if self.incidents.record(&ev.address, &ev.data) {
            let mut keys = BTreeSet::new();
            keys.insert((ev.data.target.clone(), ev.data.kind.clone()));
            self.publish_traces(&keys)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, _timer: u32, _now_ns: u64) -> Result<(), String> {
        let d = match &self.deployment {
            Some(d) => d.clone(),
            None => return Ok(()),
        };
        let collected = tm_app_sdk::collect::<DetectResults>(
            &d,
            self.params.collect_timeout_ms,
            self.params.archive,
        )
        .map_err(err)?;
        self.absorb(&collected)?;
        self.round += 1;
        self.summary(&collected, "dos-summary")
    }

    fn stop(&mut self) -> Result<(), String> {
        self.finish()
    }
}

tm_app_sdk::export_app!(DosTrace);

#[cfg(test)]
mod tests;
