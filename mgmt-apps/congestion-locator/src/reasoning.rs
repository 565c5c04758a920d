//! The reasoning (steps 1 to 5 of the crate documentation): tcp-perf's
//! figures laid on the topology, each affected path's verdict, and the
//! suspect; pure functions, the host's `flow_path` passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tm_app_sdk::lpm::Table;
use tm_app_sdk::{Collected, LinkView, TopologyView};

use crate::report::{
    AffectedPath, Evidence, LinkFigure, LinkRef, Method, PathLink, Report, Side, Suspect, Verdict,
};
use crate::tcp_perf::{TcpLink, TcpResults};

/// Thresholds of the reasoning.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Loss rate that makes a hotspot.
    pub retrans_threshold: f64,
    /// Data segments a tap needs to count.
    pub min_data_packets: u64,
}

pub(crate) fn rate(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

pub(crate) fn arrow(from: &str, to: &str) -> String {
    format!("{}→{}", from, to)
}

pub(crate) fn link_ref(from: &str, to: &str) -> LinkRef {
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
pub(crate) fn locate(figs: &[Option<&LinkFigure>]) -> Option<(usize, Evidence, Vec<usize>)> {
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
