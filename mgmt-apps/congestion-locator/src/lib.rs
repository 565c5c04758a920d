//! congestion-locator: which link is dropping TCP segments.
//!
//! Deploys `tcp-perf` to every monitor (S2), collects it every `every_ms`
//! (S4) and publishes a `congestion` report each round: every tap's
//! per-link figures laid on the topology's directed links, the hotspots
//! (links whose loss rate passes `retrans_threshold`, worst first), the
//! paths of the flagged connections with the link each path points at, and
//! the `suspect`: the link most likely congested, or null with the reason.
//! After `rounds` collects, or when the manager unloads the app (S8), it
//! unloads tcp-perf (S6) and publishes a `congestion-final` report from the
//! final results (S7).
//!
//! # What a tap can tell
//!
//! tcp-perf follows the sequence space of each direction of each connection
//! at each tap. When a segment is lost and the sender resends it, a tap on
//! the segment's path sees one of two things:
//!
//! * the tap is **upstream of the loss**: it saw the original go through,
//!   then sees the resend: a *retransmission* (sequence space seen before);
//! * the tap is **downstream of the loss**: it never saw the original, saw
//!   the segments after it (a gap), and the resend fills the gap: *out of
//!   order*.
//!
//! So at a tap, `retrans_rate` (retransmissions / data segments) counts
//! losses *after* the tap and `gap_rate` (out of order / data segments)
//! losses *before* it; `loss_rate` is their sum, the share of the tap's
//! data segments that were lost somewhere on their path and resent. A
//! congested link drops segments in the output queue of the router feeding
//! it, before the wire its tap watches: its own tap shows the loss as gaps,
//! the taps upstream of it show it as retransmissions.
//!
//! # Reasoning
//!
//! 1. **Figures.** Each monitor's `links` map (keyed by link id) is laid on
//!    the topology's directed links by (monitor address, link id). A tap
//!    with fewer than `min_data_packets` data segments is not considered. A
//!    considered tap whose `loss_rate` passes `retrans_threshold` is a
//!    hotspot; it *missed the originals* (`lost: before_tap`) if its gap rate
//!    is the larger, else it *saw them* (`lost: after_tap`). Hotspots are
//!    ranked by loss rate, worst first. Where several taps watch one link,
//!    the one with the most data segments speaks for it.
//! 2. **Paths.** Each flagged connection's client and server are mapped to
//!    routers by `prefixes`; both directions (`flow_path` client→server and
//!    server→client) are affected paths, since either may carry the lost
//!    data. Along a path the loss lies after every tap that saw the
//!    originals and before every tap that missed them. So when a link and
//!    the link downstream of it on the path both show loss, the upstream
//!    one is not blamed for segments it saw go through: the path points at
//!    the **earliest link whose tap missed the originals** (`evidence:
//!    missed_originals`); unmonitored links between it and the previous
//!    considered tap cannot be told apart from it and are listed as
//!    `also_possible`. When no tap on the path missed them but some saw the
//!    resends, the loss lies after the last of those: the path points at the
//!    next link (`after_last_tap`), or at that last link itself when it ends
//!    the path (`after_tap`: lost in its far router or beyond).
//! 3. **Suspect.** The link the paths of the most flagged connections point
//!    at (then the most paths, then the higher loss rate).
//! 4. **Without paths** (no `prefixes`, no flagged connection, or no hotspot
//!    on their paths) the per-link figures alone decide: the upstream-most
//!    hotspot that missed the originals (no such hotspot on a link into its
//!    from-router), worst first; failing that, the downstream-most hotspot
//!    that saw them, the loss being after its tap. Unmonitored links next to
//!    it on the loss side are `also_possible`.
//! 5. No hotspot: `suspect` is null and `reason` says why.
//!
//! Caveats: reordering also fills gaps (it reads as loss before the tap); a
//! lost last segment of a flight is resent after a timeout without leaving
//! a gap, so only the taps upstream of the loss count it; lost ACKs make the
//! sender resend segments every tap saw, which reads as loss after the last
//! tap. Figures are cumulative since the deployment (tcp-perf's totals).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
pub use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};
use tm_app_sdk::rounds::{Round, Rounds, Schedule};
use tm_app_sdk::{Collected, Deploy, Filter, Level, LinkView, Targets, TopologyView};

/// Params.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The tcp-perf blob's name.
    pub analyzer: String,
    /// Its SHA-256 (empty: whatever is stored under the name).
    pub sha256: String,
    /// Collect period, ms.
    pub every_ms: u64,
    /// Collects before the app unloads tcp-perf itself; 0: until unloaded.
    pub rounds: u32,
    /// Per-monitor collect timeout, ms.
    pub collect_timeout_ms: u64,
    /// Loss rate that makes a hotspot; also tcp-perf's threshold for
    /// flagging a connection.
    pub retrans_threshold: f64,
    /// Data segments a tap needs on a link before its figures count.
    pub min_data_packets: u64,
    /// Host prefixes behind each router, to find flagged connections' paths.
    pub prefixes: Vec<PrefixRow>,
    /// Also archive every round's results and reports.
    pub archive: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            analyzer: "tcp-perf".into(),
            sha256: String::new(),
            every_ms: 1000,
            rounds: 0,
            collect_timeout_ms: 2000,
            retrans_threshold: 0.05,
            min_data_packets: 100,
            prefixes: Vec::new(),
            archive: false,
        }
    }
}

impl Params {
    /// Checks every param; returns the prefix table. Errors name the field
    /// and its value.
    pub fn check(&self) -> Result<Table<String>, String> {
        if self.analyzer.is_empty() {
            return Err("analyzer = \"\": must name the tcp-perf blob".into());
        }
        if self.every_ms < 100 {
            return Err(format!(
                "every_ms = {}: must be at least 100",
                self.every_ms
            ));
        }
        if self.collect_timeout_ms == 0 {
            return Err("collect_timeout_ms = 0: must be at least 1".into());
        }
        if !(self.retrans_threshold > 0.0 && self.retrans_threshold <= 1.0) {
            return Err(format!(
                "retrans_threshold = {}: must be above 0 and at most 1",
                self.retrans_threshold
            ));
        }
        routers_of(&self.prefixes)
    }

    /// The figures' thresholds.
    fn settings(&self) -> Settings {
        Settings {
            retrans_threshold: self.retrans_threshold,
            min_data_packets: self.min_data_packets,
        }
    }
}

/// The part of tcp-perf's results this app reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpResults {
    /// Per link id.
    pub links: BTreeMap<u32, TcpLink>,
    /// Flagged connections.
    pub flagged: Vec<TcpFlow>,
}

/// tcp-perf's per-link figures.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpLink {
    /// TCP packets.
    pub packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Segments whose sequence space this tap had seen.
    pub retransmissions: u64,
    /// Segments filling a gap.
    pub out_of_order: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
}

/// A connection of tcp-perf's `flagged`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpFlow {
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
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Out-of-order segments.
    pub out_of_order: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
}

/// Which side of a tap a hotspot's losses happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The tap missed the originals (gaps): lost before it.
    BeforeTap,
    /// The tap saw the originals and their resends: lost after it.
    AfterTap,
}

/// Why a link is blamed, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Its tap missed the originals that upstream taps (if any) saw.
    MissedOriginals,
    /// It is the next link after the last tap that saw the originals.
    AfterLastTap,
    /// Its tap saw the originals; the loss is after it, nothing says where.
    AfterTap,
}

/// How the suspect was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// From flagged connections' paths.
    Paths,
    /// From the per-link figures and the topology alone.
    Links,
}

/// What one tap saw on one directed link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkFigure {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The tap's monitor address.
    pub monitor_address: String,
    /// The tap's link id.
    pub link_id: u32,
    /// TCP packets.
    pub packets: u64,
    /// Segments taking sequence space.
    pub data_packets: u64,
    /// Segments this tap saw twice (lost after it).
    pub retransmissions: u64,
    /// Segments filling a gap (lost before it, or reordered).
    pub out_of_order: u64,
    /// retransmissions / data_packets.
    pub retrans_rate: f64,
    /// out_of_order / data_packets.
    pub gap_rate: f64,
    /// retrans_rate + gap_rate.
    pub loss_rate: f64,
    /// At least `min_data_packets` data segments.
    pub considered: bool,
    /// For a hotspot, which side of the tap the losses were.
    pub lost: Option<Side>,
}

/// A directed link by its routers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LinkRef {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
}

/// One link of an affected path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathLink {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Whether any monitor taps it.
    pub monitored: bool,
    /// The considered tap that speaks for it.
    pub monitor_address: Option<String>,
    /// Its link id.
    pub link_id: Option<u32>,
    /// Its data segments.
    pub data_packets: Option<u64>,
    /// Its retransmission rate.
    pub retrans_rate: Option<f64>,
    /// Its gap rate.
    pub gap_rate: Option<f64>,
    /// For a hotspot, which side of the tap the losses were.
    pub lost: Option<Side>,
}

/// The link a path points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// Why.
    pub evidence: Evidence,
    /// Unmonitored (or unconsidered) links the figures cannot tell from it.
    pub also_possible: Vec<LinkRef>,
}

/// The path of flagged connections between two routers, one direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AffectedPath {
    /// Source router.
    pub from_router: String,
    /// Destination router.
    pub to_router: String,
    /// Distinct flagged connections between the two routers.
    pub connections: u64,
    /// Its links, first to last.
    pub links: Vec<PathLink>,
    /// The link it points at.
    pub verdict: Option<Verdict>,
    /// Why (or why none).
    pub reason: String,
}

/// The most likely congested link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suspect {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The considered tap on it, if any.
    pub monitor_address: Option<String>,
    /// Its link id.
    pub link_id: Option<u32>,
    /// Its data segments.
    pub data_packets: Option<u64>,
    /// Its retransmission rate.
    pub retrans_rate: Option<f64>,
    /// Its gap rate.
    pub gap_rate: Option<f64>,
    /// Why it is blamed.
    pub evidence: Evidence,
    /// How it was found.
    pub method: Method,
    /// Flagged connections whose paths point at it.
    pub connections: u64,
    /// Affected paths that point at it.
    pub paths: u32,
    /// Links the figures cannot tell from it.
    pub also_possible: Vec<LinkRef>,
}

/// What the app publishes each round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The tcp-perf deployment.
    pub deployment: String,
    /// Collect round (1, 2, …); the final report repeats the last + 1.
    pub round: u32,
    /// Topology revision the report was laid on.
    pub topology_revision: u64,
    /// The hotspot threshold on loss_rate.
    pub retrans_threshold: f64,
    /// Data segments a tap needs to count.
    pub min_data_packets: u64,
    /// Every tap's figures, sorted by (from, to, monitor, link).
    pub links: Vec<LinkFigure>,
    /// Considered taps whose loss rate passes the threshold, worst first.
    pub hotspots: Vec<LinkFigure>,
    /// The most likely congested link.
    pub suspect: Option<Suspect>,
    /// Why that suspect, or why none.
    pub reason: String,
    /// Paths of flagged connections, sorted by (from, to).
    pub paths: Vec<AffectedPath>,
    /// Flagged connections with an end no prefix covers.
    pub unmapped_connections: u64,
    /// Flagged connections whose ends sit behind one router.
    pub local_connections: u64,
    /// Links nobody taps.
    pub unmonitored: Vec<LinkRef>,
    /// Taps whose results came in but that the topology does not know
    /// (`monitor_address:link_id`).
    pub unknown_taps: Vec<String>,
    /// Monitors that did not answer (id: reason).
    pub missing: Vec<String>,
}

/// Thresholds of the reasoning.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Loss rate that makes a hotspot.
    pub retrans_threshold: f64,
    /// Data segments a tap needs to count.
    pub min_data_packets: u64,
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

fn arrow(from: &str, to: &str) -> String {
    format!("{}→{}", from, to)
}

fn link_ref(from: &str, to: &str) -> LinkRef {
    LinkRef {
        from_router: from.into(),
        to_router: to.into(),
    }
}

fn figure(link: &LinkView, address: &str, id: u32, t: &TcpLink, s: &Settings) -> LinkFigure {
    let retrans_rate = rate(t.retransmissions, t.data_packets);
    let gap_rate = rate(t.out_of_order, t.data_packets);
    let loss_rate = retrans_rate + gap_rate;
    let considered = t.data_packets > 0 && t.data_packets >= s.min_data_packets;
    let lost = if considered && loss_rate > s.retrans_threshold {
        Some(if gap_rate > retrans_rate {
            Side::BeforeTap
        } else {
            Side::AfterTap
        })
    } else {
        None
    };
    LinkFigure {
        from_router: link.from_router.clone(),
        to_router: link.to_router.clone(),
        monitor_address: address.into(),
        link_id: id,
        packets: t.packets,
        data_packets: t.data_packets,
        retransmissions: t.retransmissions,
        out_of_order: t.out_of_order,
        retrans_rate,
        gap_rate,
        loss_rate,
        considered,
        lost,
    }
}

/// Where a path's losses are: the index of the link it points at, why, and
/// the indices of links that cannot be told from it. `figs[i]` is the
/// considered figure of the path's link `i`, if any.
fn locate(figs: &[Option<&LinkFigure>]) -> Option<(usize, Evidence, Vec<usize>)> {
    let lost = |f: &Option<&LinkFigure>, side| f.map_or(false, |f| f.lost == Some(side));
    if let Some(b) = figs.iter().position(|f| lost(f, Side::BeforeTap)) {
        // Lost after the previous considered tap and before this one.
        let start = figs[..b]
            .iter()
            .rposition(|f| f.is_some())
            .map_or(0, |p| p + 1);
        return Some((b, Evidence::MissedOriginals, (start..b).collect()));
    }
    let a = figs.iter().rposition(|f| lost(f, Side::AfterTap))?;
    if a + 1 == figs.len() {
        return Some((a, Evidence::AfterTap, Vec::new()));
    }
    // Lost after tap `a`: at the next link, or at any unseen one after it
    // before the next considered tap.
    let end = figs[a + 1..]
        .iter()
        .position(|f| f.is_some())
        .map_or(figs.len(), |i| a + 1 + i);
    Some((a + 1, Evidence::AfterLastTap, (a + 2..end).collect()))
}

fn why(path: &[LinkView], figs: &[Option<&LinkFigure>], at: usize, evidence: Evidence) -> String {
    let name = |i: usize| arrow(&path[i].from_router, &path[i].to_router);
    match evidence {
        Evidence::MissedOriginals => {
            let f = figs[at].expect("a tap that missed originals has figures");
            let upstream = figs[..at]
                .iter()
                .rposition(|f| f.is_some())
                .and_then(|p| figs[p].map(|f| (p, f)));
            let before = match upstream {
                Some((p, u)) if u.lost == Some(Side::AfterTap) => format!(
                    ", while the tap on {} upstream saw them go through ({} retransmissions)",
                    name(p),
                    pct(u.retrans_rate)
                ),
                Some((p, u)) => format!(
                    ", while the tap on {} upstream shows {} loss",
                    name(p),
                    pct(u.loss_rate)
                ),
                None => String::new(),
            };
            format!(
                "the tap on {} missed the originals of {} of its data segments (resends filled gaps){}: lost at or before {}",
                name(at),
                pct(f.gap_rate),
                before,
                name(at)
            )
        }
        Evidence::AfterLastTap => {
            let f = figs[at - 1].expect("the tap before has figures");
            format!(
                "the tap on {} saw the originals and their resends ({} retransmissions) and no tap after it missed them: lost after it, at {} or later",
                name(at - 1),
                pct(f.retrans_rate),
                name(at)
            )
        }
        Evidence::AfterTap => {
            let f = figs[at].expect("the last tap has figures");
            format!(
                "the tap on {}, the last of the path, saw the originals and their resends ({} retransmissions): lost after it, in {} or beyond",
                name(at),
                pct(f.retrans_rate),
                path[at].to_router
            )
        }
    }
}

struct Vote {
    connections: u64,
    paths: u32,
    evidence: Evidence,
    also: BTreeSet<LinkRef>,
    first_reason: String,
}

/// Lays collected results on the topology and locates the congestion.
/// `flow_path(from, to)` gives the links a flow between two routers crosses
/// (the host's `flow_path`), none if it cannot be had.
pub fn build_report(
    topology: &TopologyView,
    collected: &Collected<TcpResults>,
    routers: &Table<String>,
    settings: &Settings,
    round: u32,
    flow_path: &mut dyn FnMut(&str, &str) -> Option<Vec<LinkView>>,
) -> Report {
    // Figures, by tap.
    let mut taps: BTreeMap<(&str, u32), &LinkView> = BTreeMap::new();
    for l in &topology.links {
        for t in &l.taps {
            taps.insert((t.monitor_address.as_str(), t.link_id), l);
        }
    }
    let mut links = Vec::new();
    let mut unknown_taps = Vec::new();
    for m in &collected.results {
        for (&id, t) in &m.results.links {
            match taps.get(&(m.address.as_str(), id)) {
                Some(l) => links.push(figure(l, &m.address, id, t, settings)),
                None => unknown_taps.push(format!("{}:{}", m.address, id)),
            }
        }
    }
    links.sort_by(|a, b| {
        (&a.from_router, &a.to_router, &a.monitor_address, a.link_id).cmp(&(
            &b.from_router,
            &b.to_router,
            &b.monitor_address,
            b.link_id,
        ))
    });
    // The considered tap that speaks for each link: the most data segments.
    let mut best: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, f) in links.iter().enumerate() {
        if !f.considered {
            continue;
        }
        let key = (f.from_router.clone(), f.to_router.clone());
        let better = best
            .get(&key)
            .map_or(true, |&j| f.data_packets > links[j].data_packets);
        if better {
            best.insert(key, i);
        }
    }
    let fig_of = |from: &str, to: &str| {
        best.get(&(from.to_string(), to.to_string()))
            .map(|&i| &links[i])
    };
    let mut hotspots: Vec<LinkFigure> =
        links.iter().filter(|f| f.lost.is_some()).cloned().collect();
    hotspots.sort_by(|a, b| {
        b.loss_rate
            .partial_cmp(&a.loss_rate)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| (&a.from_router, &a.to_router).cmp(&(&b.from_router, &b.to_router)))
    });

    // Flagged connections, by directed router pair (both directions).
    type Conn = (String, String, u16, u16);
    let mut pairs: BTreeMap<(String, String), BTreeSet<Conn>> = BTreeMap::new();
    let mut unmapped: BTreeSet<Conn> = BTreeSet::new();
    let mut local: BTreeSet<Conn> = BTreeSet::new();
    let router = |a: &str| a.parse::<IpAddr>().ok().and_then(|ip| routers.lookup(ip));
    for m in &collected.results {
        for f in &m.results.flagged {
            let key = (
                f.client.clone(),
                f.server.clone(),
                f.client_port,
                f.server_port,
            );
            match (router(&f.client), router(&f.server)) {
                (Some(a), Some(b)) if a == b => {
                    local.insert(key);
                }
                (Some(a), Some(b)) => {
                    for pair in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
                        pairs.entry(pair).or_default().insert(key.clone());
                    }
                }
                _ => {
                    unmapped.insert(key);
                }
            }
        }
    }

    // Each path's verdict, and the votes for each link.
    let mut paths = Vec::new();
    let mut votes: BTreeMap<LinkRef, Vote> = BTreeMap::new();
    for ((from, to), conns) in &pairs {
        let path = match flow_path(from, to) {
            Some(p) => p,
            None => {
                paths.push(AffectedPath {
                    from_router: from.clone(),
                    to_router: to.clone(),
                    connections: conns.len() as u64,
                    links: Vec::new(),
                    verdict: None,
                    reason: format!("no flow path from {} to {}", from, to),
                });
                continue;
            }
        };
        let figs: Vec<Option<&LinkFigure>> = path
            .iter()
            .map(|l| fig_of(&l.from_router, &l.to_router))
            .collect();
        let path_links = path
            .iter()
            .zip(&figs)
            .map(|(l, f)| PathLink {
                from_router: l.from_router.clone(),
                to_router: l.to_router.clone(),
                monitored: !l.taps.is_empty(),
                monitor_address: f.map(|f| f.monitor_address.clone()),
                link_id: f.map(|f| f.link_id),
                data_packets: f.map(|f| f.data_packets),
                retrans_rate: f.map(|f| f.retrans_rate),
                gap_rate: f.map(|f| f.gap_rate),
                lost: f.and_then(|f| f.lost),
            })
            .collect();
        let (verdict, reason) = match locate(&figs) {
            Some((at, evidence, also)) => {
                let reason = why(&path, &figs, at, evidence);
                let v = Verdict {
                    from_router: path[at].from_router.clone(),
                    to_router: path[at].to_router.clone(),
                    evidence,
                    also_possible: also
                        .iter()
                        .map(|&i| link_ref(&path[i].from_router, &path[i].to_router))
                        .collect(),
                };
                let vote = votes
                    .entry(link_ref(&v.from_router, &v.to_router))
                    .or_insert_with(|| Vote {
                        connections: 0,
                        paths: 0,
                        evidence,
                        also: BTreeSet::new(),
                        first_reason: reason.clone(),
                    });
                vote.connections += conns.len() as u64;
                vote.paths += 1;
                if evidence < vote.evidence {
                    vote.evidence = evidence;
                    vote.first_reason = reason.clone();
                }
                vote.also.extend(v.also_possible.iter().cloned());
                (Some(v), reason)
            }
            None if figs.iter().all(|f| f.is_none()) => (
                None,
                format!(
                    "no tap on this path has {} data segments",
                    settings.min_data_packets
                ),
            ),
            None => (
                None,
                format!(
                    "no tap on this path shows a loss rate above {}",
                    pct(settings.retrans_threshold)
                ),
            ),
        };
        paths.push(AffectedPath {
            from_router: from.clone(),
            to_router: to.clone(),
            connections: conns.len() as u64,
            links: path_links,
            verdict,
            reason,
        });
    }

    // The suspect: most connections, then paths, then loss rate.
    let loss_of = |l: &LinkRef| fig_of(&l.from_router, &l.to_router).map_or(0.0, |f| f.loss_rate);
    let mut chosen: Option<(&LinkRef, &Vote)> = None;
    for (l, v) in &votes {
        let better = match chosen {
            None => true,
            Some((cl, cv)) => {
                (v.connections, v.paths) > (cv.connections, cv.paths)
                    || ((v.connections, v.paths) == (cv.connections, cv.paths)
                        && loss_of(l) > loss_of(cl))
            }
        };
        if better {
            chosen = Some((l, v));
        }
    }
    let suspect_of = |l: &LinkRef,
                      evidence: Evidence,
                      method: Method,
                      connections: u64,
                      paths: u32,
                      also: Vec<LinkRef>| {
        let f = fig_of(&l.from_router, &l.to_router);
        Suspect {
            from_router: l.from_router.clone(),
            to_router: l.to_router.clone(),
            monitor_address: f.map(|f| f.monitor_address.clone()),
            link_id: f.map(|f| f.link_id),
            data_packets: f.map(|f| f.data_packets),
            retrans_rate: f.map(|f| f.retrans_rate),
            gap_rate: f.map(|f| f.gap_rate),
            evidence,
            method,
            connections,
            paths,
            also_possible: also,
        }
    };
    let (suspect, reason) = match chosen {
        Some((l, v)) => (
            Some(suspect_of(
                l,
                v.evidence,
                Method::Paths,
                v.connections,
                v.paths,
                v.also.iter().cloned().collect(),
            )),
            format!(
                "the paths of {} flagged connection(s) ({} path(s)) point at {}: {}",
                v.connections,
                v.paths,
                arrow(&l.from_router, &l.to_router),
                v.first_reason
            ),
        ),
        None => {
            let no_paths = if pairs.is_empty() {
                if unmapped.is_empty() && local.is_empty() {
                    "no flagged connection".to_string()
                } else {
                    "no flagged connection between two mapped routers (see prefixes)".to_string()
                }
            } else {
                "no flagged connection's path has a hotspot".to_string()
            };
            match by_links(topology, &links, &best) {
                Some((l, evidence, also, r)) => (
                    Some(suspect_of(&l, evidence, Method::Links, 0, 0, also)),
                    format!("{}; from the per-link figures alone: {}", no_paths, r),
                ),
                None => {
                    let r = if collected.results.is_empty() {
                        "no monitor answered".to_string()
                    } else if best.is_empty() {
                        format!(
                            "no tap has {} data segments yet (min_data_packets)",
                            settings.min_data_packets
                        )
                    } else {
                        format!(
                            "no tap with {} data segments shows a loss rate above {} (retrans_threshold)",
                            settings.min_data_packets,
                            pct(settings.retrans_threshold)
                        )
                    };
                    (None, r)
                }
            }
        }
    };

    Report {
        deployment: collected.deployment.clone(),
        round,
        topology_revision: topology.revision,
        retrans_threshold: settings.retrans_threshold,
        min_data_packets: settings.min_data_packets,
        links,
        hotspots,
        suspect,
        reason,
        paths,
        unmapped_connections: unmapped.len() as u64,
        local_connections: local.len() as u64,
        unmonitored: topology
            .links
            .iter()
            .filter(|l| l.taps.is_empty())
            .map(|l| link_ref(&l.from_router, &l.to_router))
            .collect(),
        unknown_taps,
        missing: collected
            .missing
            .iter()
            .map(|m| format!("{}: {}", m.monitor, m.message))
            .collect(),
    }
}

/// The suspect from per-link figures and adjacency alone (reasoning step 4).
fn by_links(
    topology: &TopologyView,
    links: &[LinkFigure],
    best: &BTreeMap<(String, String), usize>,
) -> Option<(LinkRef, Evidence, Vec<LinkRef>, String)> {
    let hot = |side| -> Vec<&LinkFigure> {
        best.values()
            .map(|&i| &links[i])
            .filter(|f| f.lost == Some(side))
            .collect()
    };
    let worst = |c: Vec<&LinkFigure>| -> Option<LinkFigure> {
        let mut w: Option<&LinkFigure> = None;
        for f in c {
            if w.map_or(true, |w| f.loss_rate > w.loss_rate) {
                w = Some(f);
            }
        }
        w.cloned()
    };
    let unmonitored = |pick: &dyn Fn(&LinkView) -> bool| -> Vec<LinkRef> {
        topology
            .links
            .iter()
            .filter(|l| l.taps.is_empty() && pick(l))
            .map(|l| link_ref(&l.from_router, &l.to_router))
            .collect()
    };
    let missed = hot(Side::BeforeTap);
    if !missed.is_empty() {
        // Upstream-most: no hotspot that missed them feeds its from-router.
        let heads: Vec<&LinkFigure> = missed
            .iter()
            .filter(|f| {
                !missed
                    .iter()
                    .any(|g| g.to_router == f.from_router && g.from_router != f.to_router)
            })
            .cloned()
            .collect();
        let f = worst(if heads.is_empty() { missed } else { heads })?;
        let also = unmonitored(&|l| l.to_router == f.from_router && l.from_router != f.to_router);
        let r = format!(
            "the tap on {} missed the originals of {} of its data segments and no hotspot upstream did: lost at or before {}",
            arrow(&f.from_router, &f.to_router),
            pct(f.gap_rate),
            arrow(&f.from_router, &f.to_router)
        );
        return Some((
            link_ref(&f.from_router, &f.to_router),
            Evidence::MissedOriginals,
            also,
            r,
        ));
    }
    let saw = hot(Side::AfterTap);
    // Downstream-most: no hotspot that saw them leaves its to-router.
    let tails: Vec<&LinkFigure> = saw
        .iter()
        .filter(|f| {
            !saw.iter()
                .any(|g| g.from_router == f.to_router && g.to_router != f.from_router)
        })
        .cloned()
        .collect();
    let f = worst(if tails.is_empty() { saw } else { tails })?;
    let also = unmonitored(&|l| l.from_router == f.to_router && l.to_router != f.from_router);
    let r = format!(
        "the tap on {} saw the originals and their resends ({} retransmissions) and no tap downstream missed them: lost after it, in {} or beyond",
        arrow(&f.from_router, &f.to_router),
        pct(f.retrans_rate),
        f.to_router
    );
    Some((
        link_ref(&f.from_router, &f.to_router),
        Evidence::AfterTap,
        also,
        r,
    ))
}

#[derive(Serialize)]
struct TcpPerfParams {
    retrans_threshold: f64,
}

/// The app.
pub struct CongestionLocator {
    params: Params,
    routers: Table<String>,
    rounds: Rounds,
}

const COLLECT_TIMER: u32 = 1;

fn err(e: tm_app_sdk::CallError) -> String {
    e.to_string()
}

/// Locates the congestion from a round's results, publishes the report and
/// logs the suspect.
fn report(
    params: &Params,
    routers: &Table<String>,
    collected: &Collected<TcpResults>,
    round: Round,
) -> Result<(), String> {
    let topology = tm_app_sdk::topology().map_err(err)?;
    let mut flow_path = |from: &str, to: &str| match tm_app_sdk::flow_path(from, to) {
        Ok(p) => Some(p),
        Err(e) => {
            tm_app_sdk::log(Level::Warn, &format!("flow_path {} → {}: {}", from, to, e));
            None
        }
    };
    let report = build_report(
        &topology,
        collected,
        routers,
        &params.settings(),
        round.number,
        &mut flow_path,
    );
    round.publish(&report)?;
    if let Some(s) = &report.suspect {
        tm_app_sdk::log(
            Level::Info,
            &format!(
                "round {}: suspect {}: {}",
                round.number,
                arrow(&s.from_router, &s.to_router),
                report.reason
            ),
        );
    }
    Ok(())
}

impl tm_app_sdk::App for CongestionLocator {
    type Params = Params;

    fn start(params: Params) -> Result<Self, String> {
        let routers = params.check()?;
        let rounds = Rounds::start(
            &Deploy {
                deployment: String::new(),
                analyzer: params.analyzer.clone(),
                sha256: params.sha256.clone(),
                params: TcpPerfParams {
                    retrans_threshold: params.retrans_threshold,
                },
                filter: Filter {
                    protocols: vec![6],
                    ..Filter::default()
                },
                targets: Targets::All,
                report_every_ms: None,
            },
            Schedule {
                timer: COLLECT_TIMER,
                every_ms: params.every_ms,
                rounds: params.rounds,
                collect_timeout_ms: params.collect_timeout_ms,
                archive: params.archive,
                kind: "congestion",
                final_kind: "congestion-final",
            },
        )?;
        Ok(CongestionLocator {
            params,
            routers,
            rounds,
        })
    }

    fn on_timer(&mut self, _timer: u32, _now_ns: u64) -> Result<(), String> {
        let (params, routers) = (&self.params, &self.routers);
        self.rounds
            .on_timer(|collected, round| report(params, routers, collected, round))
    }

    fn stop(&mut self) -> Result<(), String> {
        let (params, routers) = (&self.params, &self.routers);
        self.rounds
            .finish(|collected, round| report(params, routers, collected, round))
    }
}

tm_app_sdk::export_app!(CongestionLocator);

#[cfg(test)]
mod tests;
