//! Tracing an incident on the topology (see the crate documentation): the
//! source path or the upstream walk, and the `attack-path` report it gives.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;
use tm_app_sdk::lpm::Table;
use tm_app_sdk::{LinkView, TapView, TopologyView};

use crate::incidents::Incident;

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

pub(crate) type Key = (String, String);

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
