//! link-load: per-link load laid on the topology, and the traffic matrix
//! between routers.
//!
//! Deploys `flow-stats` to every monitor (S2), collects it every `every_ms`
//! (S4), and publishes a `link-load` report each round: for each directed
//! link of the topology its packets, bytes, packets/s, bits/s and
//! utilisation (rates over the link's packet-time span), the links nobody
//! monitors, monitors that did not answer, and the router-to-router traffic
//! matrix (flows mapped to routers by the `prefixes` param, each flow
//! counted once however many taps saw it). After `rounds` collects, or when
//! the manager unloads the app (S8), it unloads flow-stats (S6) and
//! publishes a `link-load-final` report from the final results (S7).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
pub use tm_app_sdk::lpm::{routers_of, PrefixRow, Table};
use tm_app_sdk::rounds::{Round, Rounds, Schedule};
use tm_app_sdk::{Collected, Deploy, Targets, TopologyView};

/// Params.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The flow-stats blob's name.
    pub analyzer: String,
    /// Its SHA-256 (empty: whatever is stored under the name).
    pub sha256: String,
    /// Collect period, ms.
    pub every_ms: u64,
    /// Collects before the app unloads flow-stats itself; 0: until unloaded.
    pub rounds: u32,
    /// Per-monitor collect timeout, ms.
    pub collect_timeout_ms: u64,
    /// Capacity of every link, bits/s (for utilisation).
    pub capacity_bps: f64,
    /// Host prefixes behind each router, for the traffic matrix.
    pub prefixes: Vec<PrefixRow>,
    /// Flows flow-stats lists (the matrix sees only these).
    pub top_n: u32,
    /// Also archive every round's results.
    pub archive: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            analyzer: "flow-stats".into(),
            sha256: String::new(),
            every_ms: 1000,
            rounds: 0,
            collect_timeout_ms: 2000,
            capacity_bps: 1e9,
            prefixes: Vec::new(),
            top_n: 10000,
            archive: false,
        }
    }
}

/// The part of flow-stats' results this app reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FlowResults {
    /// Per link id.
    pub links: BTreeMap<u32, LinkTotals>,
    /// Top flows by bytes.
    pub top: Vec<Flow>,
}

/// flow-stats' per-link totals.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct LinkTotals {
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// First packet, ns.
    pub first_ns: u64,
    /// Last packet, ns.
    pub last_ns: u64,
}

/// One flow of flow-stats' `top`.
#[derive(Debug, Clone, Deserialize)]
pub struct Flow {
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
}

/// Load of one directed link, as one tap saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkLoad {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
    /// The tap's monitor address.
    pub monitor_address: String,
    /// The tap's link id.
    pub link_id: u32,
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
    /// Packet-time span from first to last packet, s.
    pub duration_s: f64,
    /// Packets per second over that span (0 if under two packets).
    pub pps: f64,
    /// Bits per second over that span.
    pub bps: f64,
    /// `bps / capacity_bps`.
    pub utilisation: f64,
    /// The capture's state at the monitor (`running`, `finished` for a
    /// replay that ended, `failed`), empty if its status did not come.
    pub capture_state: String,
    /// Packets the capture lost (kernel and interface drops): the figures
    /// above undercount the link by this much.
    pub capture_drops: u64,
}

/// Capture state and drops per tap (monitor address, link id).
pub type Captures = BTreeMap<(String, u32), (String, u64)>;

/// Traffic from one router's hosts to another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatrixCell {
    /// Source router.
    pub from_router: String,
    /// Destination router.
    pub to_router: String,
    /// Flows.
    pub flows: u64,
    /// Packets.
    pub packets: u64,
    /// Wire bytes.
    pub bytes: u64,
}

/// A directed link nobody taps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmonitored {
    /// The router it leaves.
    pub from_router: String,
    /// The router it enters.
    pub to_router: String,
}

/// What the app publishes each round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The flow-stats deployment.
    pub deployment: String,
    /// Collect round (1, 2, …); the final report repeats the last + 1.
    pub round: u32,
    /// Topology revision the report was laid on.
    pub topology_revision: u64,
    /// Every monitored link of the topology, sorted by (from, to, monitor, link).
    pub links: Vec<LinkLoad>,
    /// Links nobody taps.
    pub unmonitored: Vec<Unmonitored>,
    /// Taps whose results came in but that the topology does not know
    /// (`monitor_address:link_id`).
    pub unknown_taps: Vec<String>,
    /// Router-to-router traffic, sorted by (from, to).
    pub matrix: Vec<MatrixCell>,
    /// Bytes of flows whose source or destination no prefix covers.
    pub unmapped_bytes: u64,
    /// Monitors that did not answer (id: reason).
    pub missing: Vec<String>,
}

/// Lays collected results on the topology.
pub fn build_report(
    topology: &TopologyView,
    collected: &Collected<FlowResults>,
    routers: &Table<String>,
    captures: &Captures,
    capacity_bps: f64,
    round: u32,
) -> Report {
    let mut links = Vec::new();
    let mut unknown_taps = Vec::new();
    // (src, dst, sport, dport, proto) → (packets, bytes)
    type FlowKey = (String, String, u16, u16, u8);
    let mut flows: BTreeMap<FlowKey, (u64, u64)> = BTreeMap::new();
    for m in &collected.results {
        for (&id, t) in &m.results.links {
            let link = topology.links.iter().find(|l| {
                l.taps
                    .iter()
                    .any(|tap| tap.monitor_address == m.address && tap.link_id == id)
            });
            let link = match link {
                Some(l) => l,
                None => {
                    unknown_taps.push(format!("{}:{}", m.address, id));
                    continue;
                }
            };
            let duration_s = t.last_ns.saturating_sub(t.first_ns) as f64 / 1e9;
            let (pps, bps) = if duration_s > 0.0 {
                (
                    t.packets as f64 / duration_s,
                    t.bytes as f64 * 8.0 / duration_s,
                )
            } else {
                (0.0, 0.0)
            };
            links.push(LinkLoad {
                from_router: link.from_router.clone(),
                to_router: link.to_router.clone(),
                monitor_address: m.address.clone(),
                link_id: id,
                packets: t.packets,
                bytes: t.bytes,
                duration_s,
                pps,
                bps,
                utilisation: if capacity_bps > 0.0 {
                    bps / capacity_bps
                } else {
                    0.0
                },
                capture_state: captures
                    .get(&(m.address.clone(), id))
                    .map(|c| c.0.clone())
                    .unwrap_or_default(),
                capture_drops: captures.get(&(m.address.clone(), id)).map_or(0, |c| c.1),
            });
        }
        for f in &m.results.top {
            // One flow seen by several taps counts once: its largest sighting.
            let e = flows
                .entry((f.src.clone(), f.dst.clone(), f.sport, f.dport, f.proto))
                .or_insert((0, 0));
            if f.bytes > e.1 {
                *e = (f.packets, f.bytes);
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
    let mut matrix: BTreeMap<(String, String), MatrixCell> = BTreeMap::new();
    let mut unmapped_bytes = 0;
    for ((src, dst, ..), (packets, bytes)) in flows {
        let router = |a: &str| a.parse::<IpAddr>().ok().and_then(|ip| routers.lookup(ip));
        match (router(&src), router(&dst)) {
            (Some(from), Some(to)) => {
                let cell = matrix
                    .entry((from.clone(), to.clone()))
                    .or_insert_with(|| MatrixCell {
                        from_router: from.clone(),
                        to_router: to.clone(),
                        flows: 0,
                        packets: 0,
                        bytes: 0,
                    });
                cell.flows += 1;
                cell.packets += packets;
                cell.bytes += bytes;
            }
            _ => unmapped_bytes += bytes,
        }
    }
    Report {
        deployment: collected.deployment.clone(),
        round,
        topology_revision: topology.revision,
        links,
        unmonitored: topology
            .links
            .iter()
            .filter(|l| l.taps.is_empty())
            .map(|l| Unmonitored {
                from_router: l.from_router.clone(),
                to_router: l.to_router.clone(),
            })
            .collect(),
        unknown_taps,
        matrix: matrix.into_values().collect(),
        unmapped_bytes,
        missing: collected
            .missing
            .iter()
            .map(|m| format!("{}: {}", m.monitor, m.message))
            .collect(),
    }
}

#[derive(Serialize)]
struct FlowStatsParams {
    top_n: u32,
    idle_timeout_s: u64,
}

/// The app.
pub struct LinkLoadApp {
    params: Params,
    routers: Table<String>,
    rounds: Rounds,
}

const COLLECT_TIMER: u32 = 1;

fn err(e: tm_app_sdk::CallError) -> String {
    e.to_string()
}

/// Lays a round's results on the topology, with each tap's capture state,
/// and publishes them.
fn report(
    params: &Params,
    routers: &Table<String>,
    collected: &Collected<FlowResults>,
    round: Round,
) -> Result<(), String> {
    let topology = tm_app_sdk::topology().map_err(err)?;
    let statuses = tm_app_sdk::status(&[], params.collect_timeout_ms).map_err(err)?;
    let mut captures = Captures::new();
    for m in statuses.monitors {
        for l in m.links {
            captures.insert((m.address.clone(), l.id), (l.state, l.drops));
        }
    }
    let report = build_report(
        &topology,
        collected,
        routers,
        &captures,
        params.capacity_bps,
        round.number,
    );
    round.publish(&report)
}

impl tm_app_sdk::App for LinkLoadApp {
    type Params = Params;

    fn start(params: Params) -> Result<Self, String> {
        if params.every_ms < 100 {
            return Err(format!(
                "every_ms = {}: must be at least 100",
                params.every_ms
            ));
        }
        if params.capacity_bps.is_nan() || params.capacity_bps <= 0.0 {
            return Err(format!(
                "capacity_bps = {}: must be positive",
                params.capacity_bps
            ));
        }
        let routers = routers_of(&params.prefixes)?;
        let rounds = Rounds::start(
            &Deploy {
                deployment: String::new(),
                analyzer: params.analyzer.clone(),
                sha256: params.sha256.clone(),
                params: FlowStatsParams {
                    top_n: params.top_n,
                    idle_timeout_s: 0,
                },
                filter: Default::default(),
                targets: Targets::All,
                report_every_ms: None,
            },
            Schedule {
                timer: COLLECT_TIMER,
                every_ms: params.every_ms,
                rounds: params.rounds,
                collect_timeout_ms: params.collect_timeout_ms,
                archive: params.archive,
                kind: "link-load",
                final_kind: "link-load-final",
            },
        )?;
        Ok(LinkLoadApp {
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

tm_app_sdk::export_app!(LinkLoadApp);

#[cfg(test)]
mod tests {
    use super::*;
    use tm_app_sdk::net::Prefix;
    use tm_app_sdk::{LinkView, Missing, MonitorResults, Stats, TapView};

    fn tap(addr: &str, id: u32) -> TapView {
        TapView {
            monitor_address: addr.into(),
            link_id: id,
        }
    }

    fn flow(src: &str, dst: &str, packets: u64, bytes: u64) -> Flow {
        Flow {
            src: src.into(),
            dst: dst.into(),
            sport: 1,
            dport: 2,
            proto: 6,
            packets,
            bytes,
        }
    }

    #[test]
    fn report_lays_taps_on_links_and_counts_each_flow_once() {
        let topology = TopologyView {
            revision: 3,
            routers: vec!["r1".into(), "r2".into(), "r3".into()],
            links: vec![
                LinkView {
                    from_router: "r1".into(),
                    to_router: "r2".into(),
                    taps: vec![tap("m1", 0)],
                },
                LinkView {
                    from_router: "r2".into(),
                    to_router: "r3".into(),
                    taps: vec![tap("m2", 0)],
                },
                LinkView {
                    from_router: "r3".into(),
                    to_router: "r1".into(),
                    taps: vec![],
                },
            ],
        };
        let mut l = BTreeMap::new();
        l.insert(
            0,
            LinkTotals {
                packets: 11,
                bytes: 1000,
                first_ns: 1_000_000_000,
                last_ns: 3_000_000_000,
            },
        );
        let mut l2 = l.clone();
        l2.insert(
            7,
            LinkTotals {
                packets: 1,
                bytes: 60,
                first_ns: 5,
                last_ns: 5,
            },
        );
        let result = |addr: &str, links, top| MonitorResults {
            monitor: addr.into(),
            address: addr.into(),
            seq: 1,
            start_unix_ms: 0,
            end_unix_ms: 0,
            stats: Stats::default(),
            results: FlowResults { links, top },
        };
        let collected = Collected {
            deployment: "d".into(),
            results: vec![
                result("m1", l, vec![flow("10.1.0.1", "10.3.0.1", 11, 1000)]),
                result(
                    "m2",
                    l2,
                    vec![
                        flow("10.1.0.1", "10.3.0.1", 11, 1000),
                        flow("10.9.0.1", "10.3.0.1", 1, 60),
                    ],
                ),
            ],
            missing: vec![Missing {
                monitor: "m3".into(),
                code: "timeout".into(),
                message: "no reply".into(),
            }],
        };
        let mut routers = Table::new();
        routers.insert(Prefix::parse("10.1.0.0/16").unwrap(), "r1".to_string());
        routers.insert(Prefix::parse("10.3.0.0/16").unwrap(), "r3".to_string());
        let mut captures = Captures::new();
        captures.insert(("m1".into(), 0), ("finished".into(), 3));
        let r = build_report(&topology, &collected, &routers, &captures, 8000.0, 4);
        assert_eq!(r.links.len(), 2);
        assert_eq!(r.links[0].from_router, "r1");
        assert_eq!(r.links[0].pps, 5.5);
        assert_eq!(r.links[0].bps, 4000.0);
        assert_eq!(r.links[0].utilisation, 0.5);
        assert_eq!(
            (r.links[0].capture_state.as_str(), r.links[0].capture_drops),
            ("finished", 3)
        );
        assert_eq!(
            (r.links[1].capture_state.as_str(), r.links[1].capture_drops),
            ("", 0)
        );
        assert_eq!(r.unknown_taps, vec!["m2:7".to_string()]);
        assert_eq!(r.unmonitored.len(), 1);
        assert_eq!(r.matrix.len(), 1);
        assert_eq!(
            (r.matrix[0].flows, r.matrix[0].packets, r.matrix[0].bytes),
            (1, 11, 1000)
        );
        assert_eq!(r.unmapped_bytes, 60);
        assert_eq!(r.missing, vec!["m3: no reply".to_string()]);
    }
}
