//! Unit tests on the reference network and its link table (docs/lab.md)
//! (examples/topology/figure5.toml): routers R1..R4 = 10.0.1.1..10.0.4.1;
//! monitor 10.9.0.1 taps R1→R2 (link 0) and R2→R1 (1), 10.9.0.2 taps
//! R2→R3 (0) and R3→R2 (1), 10.9.0.3 taps R3→R4 (0) and R1→R4 (1); R4→R1
//! and R4→R3 exist (lines are bidirectional) and nobody taps them. Hosts
//! 10.N.0.0/16 sit behind router RN.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::reasoning::{link_ref, locate, rate};
use tm_app_sdk::api::{self, Reply};
use tm_app_sdk::{App, LinkView, Missing, MonitorResults, Stats};

use tm_app_sdk::testing::*;

fn hops(path: &[LinkView]) -> Vec<(&str, &str)> {
    path.iter()
        .map(|l| (l.from_router.as_str(), l.to_router.as_str()))
        .collect()
}

fn routers() -> Table<String> {
    routers_of(&[
        row("10.1.0.0/16", R1),
        row("10.2.0.0/16", R2),
        row("10.3.0.0/16", R3),
        row("10.4.0.0/16", R4),
    ])
    .unwrap()
}

fn row(prefix: &str, router: &str) -> PrefixRow {
    PrefixRow {
        prefix: prefix.into(),
        router: router.into(),
    }
}

/// Per-link figures: data segments, retransmissions, out-of-order.
fn tl(data: u64, retrans: u64, ooo: u64) -> TcpLink {
    TcpLink {
        packets: data * 3 / 2,
        data_packets: data,
        retransmissions: retrans,
        out_of_order: ooo,
        retrans_rate: rate(retrans, data),
    }
}

fn flagged(client: &str, server: &str, port: u16, link: u32, data: u64, retrans: u64) -> TcpFlow {
    TcpFlow {
        client: client.into(),
        server: server.into(),
        client_port: port,
        server_port: 443,
        link,
        data_packets: data,
        retransmissions: retrans,
        out_of_order: 0,
        retrans_rate: rate(retrans, data),
    }
}

fn monitor(
    address: &str,
    links: Vec<(u32, TcpLink)>,
    flagged: Vec<TcpFlow>,
) -> MonitorResults<TcpResults> {
    MonitorResults {
        monitor: format!("mon-{}", address),
        address: address.into(),
        seq: 3,
        start_unix_ms: 1_764_108_000_000,
        end_unix_ms: 1_764_108_001_000,
        stats: Stats::default(),
        results: TcpResults {
            links: links.into_iter().collect(),
            flagged,
        },
    }
}

fn collected(results: Vec<MonitorResults<TcpResults>>) -> Collected<TcpResults> {
    Collected {
        deployment: "congestion-locator-tcp-perf-1".into(),
        results,
        missing: Vec::new(),
    }
}

const SETTINGS: Settings = Settings {
    retrans_threshold: 0.05,
    min_data_packets: 100,
};

fn report(c: &Collected<TcpResults>) -> Report {
    let t = figure5();
    let topo = t.clone();
    let mut path = move |a: &str, b: &str| host_flow_path(&topo, a, b);
    build_report(&t, c, &routers(), &SETTINGS, 1, &mut path)
}

fn suspect_link(r: &Report) -> Option<(&str, &str)> {
    r.suspect
        .as_ref()
        .map(|s| (s.from_router.as_str(), s.to_router.as_str()))
}

/// Quiet taps everywhere except what a scenario overrides.
fn quiet(m1: [TcpLink; 2], m2: [TcpLink; 2], m3: [TcpLink; 2]) -> Vec<MonitorResults<TcpResults>> {
    vec![
        monitor(M1, vec![(0, m1[0]), (1, m1[1])], vec![]),
        monitor(M2, vec![(0, m2[0]), (1, m2[1])], vec![]),
        monitor(M3, vec![(0, m3[0]), (1, m3[1])], vec![]),
    ]
}

/// The test replica of the host's flow_path agrees with the host's own
/// figure-5 tests (manager/src/topology.rs).
#[test]
fn figure5_flow_paths_match_the_host() {
    let t = figure5();
    let p = |a: &str, b: &str| host_flow_path(&t, a, b).unwrap();
    assert_eq!(hops(&p(R1, R3)), vec![(R1, R2), (R2, R3)]);
    assert_eq!(hops(&p(R3, R1)), vec![(R3, R2), (R2, R1)]);
    assert_eq!(hops(&p(R2, R4)), vec![(R2, R1), (R1, R4)]);
    assert_eq!(hops(&p(R4, R2)), vec![(R4, R1), (R1, R2)]);
    assert_eq!(hops(&p(R4, R3)), vec![(R4, R3)]);
    assert!(p(R2, R2).is_empty());
}

/// The brief's case: R2→R3's tap shows 8% of its segments filling gaps
/// while R1→R2 upstream is clean (0.3%: its bulk is traffic for R2's own
/// hosts). Connections R1→R3 are flagged at 10.9.0.1 (they see their
/// resends there). Suspect: R2→R3, found from the connections' path.
#[test]
fn congestion_on_r2_r3_with_clean_upstream_blames_r2_r3() {
    let mut results = quiet(
        [tl(200_000, 600, 100), tl(150_000, 90, 30)],
        [tl(40_000, 120, 3_200), tl(30_000, 20, 10)],
        [tl(10_000, 5, 5), tl(20_000, 10, 4)],
    );
    results[0].results.flagged = vec![
        flagged("10.1.0.5", "10.3.0.20", 50_001, 0, 900, 81),
        flagged("10.1.0.6", "10.3.0.21", 50_002, 0, 700, 56),
    ];
    let r = report(&collected(results));

    assert_eq!(r.links.len(), 6);
    assert_eq!(r.hotspots.len(), 1);
    let h = &r.hotspots[0];
    assert_eq!(
        (
            h.from_router.as_str(),
            h.to_router.as_str(),
            h.monitor_address.as_str(),
            h.link_id
        ),
        (R2, R3, M2, 0)
    );
    assert_eq!(h.gap_rate, 0.08);
    assert_eq!(h.lost, Some(Side::BeforeTap));

    assert_eq!(suspect_link(&r), Some((R2, R3)));
    let s = r.suspect.as_ref().unwrap();
    assert_eq!(s.method, Method::Paths);
    assert_eq!(s.evidence, Evidence::MissedOriginals);
    assert_eq!(s.connections, 2);
    assert_eq!(s.paths, 1);
    assert_eq!(
        (s.monitor_address.as_deref(), s.link_id),
        (Some(M2), Some(0))
    );
    assert!(s.also_possible.is_empty());
    assert!(r.reason.contains("10.0.2.1→10.0.3.1"), "{}", r.reason);

    // Both directions of the connections are affected paths; only the
    // data direction R1→R3 has a verdict.
    assert_eq!(r.paths.len(), 2);
    let fwd = &r.paths[0];
    assert_eq!((fwd.from_router.as_str(), fwd.to_router.as_str()), (R1, R3));
    assert_eq!(fwd.connections, 2);
    assert_eq!(
        fwd.links
            .iter()
            .map(|l| (l.from_router.as_str(), l.to_router.as_str()))
            .collect::<Vec<_>>(),
        vec![(R1, R2), (R2, R3)]
    );
    assert_eq!(fwd.verdict.as_ref().map(|v| v.to_router.as_str()), Some(R3));
    let back = &r.paths[1];
    assert_eq!(
        (back.from_router.as_str(), back.to_router.as_str()),
        (R3, R1)
    );
    assert!(back.verdict.is_none());
    assert_eq!(r.unmonitored, vec![link_ref(R4, R1), link_ref(R4, R3)]);
}

/// Without dilution the tap upstream of the drop is the worst hotspot: it
/// saw every lost segment go through and then saw it again (8.2%
/// retransmissions). It is not blamed: R2→R3's tap missed the originals
/// (7.5% gaps), so the segments were lost between the two taps, in R2's
/// queue onto R2→R3. Ranking by retrans_rate alone would name R1→R2.
#[test]
fn upstream_tap_that_saw_the_originals_is_not_blamed() {
    let mut results = quiet(
        [tl(50_000, 4_100, 60), tl(40_000, 30, 20)],
        [tl(48_000, 90, 3_600), tl(38_000, 25, 15)],
        [tl(10_000, 5, 5), tl(20_000, 10, 4)],
    );
    results[0].results.flagged = vec![
        flagged("10.1.0.5", "10.3.0.20", 50_001, 0, 900, 81),
        flagged("10.1.0.7", "10.3.0.22", 50_003, 0, 1_200, 97),
        flagged("10.1.0.8", "10.3.0.23", 50_004, 0, 400, 33),
    ];
    let r = report(&collected(results));

    // Worst first: R1→R2 (8.32%) then R2→R3 (7.69%).
    let order: Vec<(&str, &str, Option<Side>)> = r
        .hotspots
        .iter()
        .map(|h| (h.from_router.as_str(), h.to_router.as_str(), h.lost))
        .collect();
    assert_eq!(
        order,
        vec![
            (R1, R2, Some(Side::AfterTap)),
            (R2, R3, Some(Side::BeforeTap))
        ]
    );
    assert_eq!(suspect_link(&r), Some((R2, R3)));
    let s = r.suspect.unwrap();
    assert_eq!(
        (s.method, s.evidence, s.connections),
        (Method::Paths, Evidence::MissedOriginals, 3)
    );
    assert!(
        r.reason
            .contains("upstream saw them go through (8.2% retransmissions)"),
        "{}",
        r.reason
    );
}

/// Segments dropped in R1's queue onto R1→R2: both R1→R2 and R2→R3 miss
/// them, no tap saw them first, so tcp-perf flags nothing. From the
/// per-link figures, the earliest link that missed them is blamed; R4→R1
/// feeds R1 unseen and cannot be told apart.
#[test]
fn loss_missed_by_two_taps_in_a_row_blames_the_earliest() {
    let results = quiet(
        [tl(60_000, 100, 3_900), tl(40_000, 30, 20)],
        [tl(45_000, 80, 2_900), tl(38_000, 25, 15)],
        [tl(10_000, 5, 5), tl(20_000, 10, 4)],
    );
    let r = report(&collected(results));
    assert_eq!(r.hotspots.len(), 2);
    assert_eq!(suspect_link(&r), Some((R1, R2)));
    let s = r.suspect.unwrap();
    assert_eq!(
        (s.method, s.evidence),
        (Method::Links, Evidence::MissedOriginals)
    );
    assert_eq!(s.also_possible, vec![link_ref(R4, R1)]);
    assert!(
        r.reason.starts_with("no flagged connection;"),
        "{}",
        r.reason
    );
    assert!(r.paths.is_empty());
}

/// Uploads from R2's hosts to R4's cross R2→R1 then R1→R4; both taps saw
/// the originals and the resends (loss in R4 or beyond): the last link of
/// the path is named, the loss after its tap.
#[test]
fn loss_after_the_last_tap_names_the_last_link() {
    let mut results = quiet(
        [tl(80_000, 150, 40), tl(30_000, 2_100, 30)],
        [tl(40_000, 60, 20), tl(38_000, 25, 15)],
        [tl(10_000, 5, 5), tl(29_000, 2_050, 25)],
    );
    results[0].results.flagged = vec![flagged("10.2.0.9", "10.4.0.30", 40_000, 1, 3_000, 240)];
    results[2].results.flagged = vec![flagged("10.2.0.9", "10.4.0.30", 40_000, 1, 2_950, 236)];
    let r = report(&collected(results));
    assert_eq!(suspect_link(&r), Some((R1, R4)));
    let s = r.suspect.as_ref().unwrap();
    assert_eq!((s.method, s.evidence), (Method::Paths, Evidence::AfterTap));
    // One connection, seen at two taps, counts once.
    assert_eq!(s.connections, 1);
    let fwd = r
        .paths
        .iter()
        .find(|p| p.from_router == R2 && p.to_router == R4)
        .unwrap();
    assert_eq!(
        fwd.links
            .iter()
            .map(|l| (l.from_router.as_str(), l.lost))
            .collect::<Vec<_>>(),
        vec![(R2, Some(Side::AfterTap)), (R1, Some(Side::AfterTap))]
    );
    assert!(r.reason.contains("in 10.0.4.1 or beyond"), "{}", r.reason);
}

/// `locate` on paths with unseen links: the loss between two taps is at the
/// first tap that missed the originals or at an unmonitored link before it;
/// after the last tap that saw them, at the next link or the unseen ones
/// after it.
#[test]
fn locate_lists_unseen_links_it_cannot_tell_apart() {
    let f = |lost| LinkFigure {
        from_router: String::new(),
        to_router: String::new(),
        monitor_address: M1.into(),
        link_id: 0,
        packets: 1000,
        data_packets: 1000,
        retransmissions: 0,
        out_of_order: 0,
        retrans_rate: 0.0,
        gap_rate: 0.0,
        loss_rate: 0.0,
        considered: true,
        lost,
    };
    let saw = f(Some(Side::AfterTap));
    let missed = f(Some(Side::BeforeTap));
    let clean = f(None);
    // saw, unseen, unseen, missed → blame index 3, also 1 and 2.
    assert_eq!(
        locate(&[Some(&saw), None, None, Some(&missed)]),
        Some((3, Evidence::MissedOriginals, vec![1, 2]))
    );
    // missed twice → the earliest.
    assert_eq!(
        locate(&[Some(&clean), Some(&missed), Some(&missed)]),
        Some((1, Evidence::MissedOriginals, vec![]))
    );
    // saw, unseen, unseen, clean tap → the next link, also the other unseen.
    assert_eq!(
        locate(&[Some(&saw), None, None, Some(&clean)]),
        Some((1, Evidence::AfterLastTap, vec![2]))
    );
    // saw, saw → after the last one, which ends the path.
    assert_eq!(
        locate(&[Some(&saw), Some(&saw)]),
        Some((1, Evidence::AfterTap, vec![]))
    );
    assert_eq!(locate(&[Some(&clean), None]), None);
}

/// Nothing passes the threshold: no suspect, and the reason says which
/// threshold; a tap with too few segments is shown but not considered even
/// at 20% loss.
#[test]
fn no_hotspot_no_suspect() {
    let mut results = quiet(
        [tl(50_000, 400, 100), tl(40_000, 30, 20)],
        [tl(48_000, 90, 160), tl(38_000, 25, 15)],
        [tl(10_000, 5, 5), tl(20_000, 10, 4)],
    );
    results[2].results.links.insert(0, tl(50, 10, 0));
    results[0].results.flagged = vec![flagged("10.1.0.5", "10.3.0.20", 50_001, 0, 900, 81)];
    let r = report(&collected(results));
    assert!(r.hotspots.is_empty());
    assert!(r.suspect.is_none());
    let small = r
        .links
        .iter()
        .find(|l| l.monitor_address == M3 && l.link_id == 0)
        .unwrap();
    assert!(!small.considered);
    assert_eq!(small.retrans_rate, 0.2);
    assert_eq!(
        r.reason,
        "no tap with 100 data segments shows a loss rate above 5.0% (retrans_threshold)"
    );
    assert_eq!(
        r.paths[0].reason,
        "no tap on this path shows a loss rate above 5.0%"
    );

    let r = report(&collected(vec![monitor(
        M1,
        vec![(0, tl(40, 10, 0))],
        vec![],
    )]));
    assert!(r.suspect.is_none());
    assert_eq!(
        r.reason,
        "no tap has 100 data segments yet (min_data_packets)"
    );
    assert_eq!(report(&collected(vec![])).reason, "no monitor answered");
}

/// Unknown taps, monitors that did not answer and connections no prefix
/// covers are reported, not fatal.
#[test]
fn unknown_taps_missing_monitors_and_unmapped_connections() {
    let mut c = collected(vec![monitor(
        M2,
        vec![(0, tl(48_000, 90, 3_600)), (9, tl(1_000, 0, 0))],
        vec![
            flagged("192.0.2.1", "10.3.0.20", 1, 0, 900, 81),
            flagged("10.3.0.4", "10.3.0.20", 2, 0, 900, 81),
        ],
    )]);
    c.missing = vec![Missing {
        monitor: "mon-10.9.0.1".into(),
        code: "timeout".into(),
        message: "no reply in 2000 ms".into(),
    }];
    let r = report(&c);
    assert_eq!(r.unknown_taps, vec!["10.9.0.2:9".to_string()]);
    assert_eq!(
        r.missing,
        vec!["mon-10.9.0.1: no reply in 2000 ms".to_string()]
    );
    assert_eq!((r.unmapped_connections, r.local_connections), (1, 1));
    // Only R2→R3 has figures: the links method names it.
    assert_eq!(suspect_link(&r), Some((R2, R3)));
    assert_eq!(r.suspect.as_ref().unwrap().method, Method::Links);
    assert!(
        r.reason
            .starts_with("no flagged connection between two mapped routers"),
        "{}",
        r.reason
    );
}

#[test]
fn params_are_checked_naming_field_and_value() {
    let ok = Params::default();
    assert!(ok.check().is_ok());
    let bad = |f: &dyn Fn(&mut Params)| {
        let mut p = Params::default();
        f(&mut p);
        p.check().unwrap_err()
    };
    assert_eq!(
        bad(&|p| p.retrans_threshold = 0.0),
        "retrans_threshold = 0: must be above 0 and at most 1"
    );
    assert_eq!(
        bad(&|p| p.retrans_threshold = 1.5),
        "retrans_threshold = 1.5: must be above 0 and at most 1"
    );
    assert_eq!(
        bad(&|p| p.every_ms = 50),
        "every_ms = 50: must be at least 100"
    );
    assert_eq!(
        bad(&|p| p.collect_timeout_ms = 0),
        "collect_timeout_ms = 0: must be at least 1"
    );
    assert_eq!(
        bad(&|p| p.prefixes = vec![row("10.1.0.0/16", R1), row("10.2.0.0/16", "r2")]),
        "prefixes[1].router = \"r2\": not an IP address"
    );
    assert!(bad(&|p| p.prefixes = vec![row("10.1.0/16", R1)]).starts_with("prefixes[0].prefix: "));

    // Decoded as the host passes them: absent params are the defaults,
    // unknown keys are refused.
    let p: Params = tm_app_sdk::decode_params(&[]).unwrap();
    assert_eq!(
        (p.analyzer.as_str(), p.every_ms, p.min_data_packets),
        ("tcp-perf", 1000, 100)
    );
    let mut m = BTreeMap::new();
    m.insert("retrans_treshold", 0.1);
    let e = tm_app_sdk::decode_params::<Params>(&tm_app_sdk::encode(&m).unwrap()).unwrap_err();
    assert!(e.contains("retrans_treshold"), "{}", e);
}

// ---------------------------------------------------------------------------
// The app against a simulated host
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct SeenSuspect {
    from_router: String,
    to_router: String,
}

#[derive(Deserialize)]
struct SeenReport {
    round: u32,
    suspect: Option<SeenSuspect>,
}

#[derive(Deserialize)]
struct SeenTcpPerfParams {
    retrans_threshold: f64,
}

fn ok<T: Serialize>(v: T) -> Vec<u8> {
    tm_app_sdk::encode(&Reply::<T>::Ok(v)).unwrap()
}

/// start deploys tcp-perf (TCP only, threshold passed through) and sets the
/// timer; a round publishes `congestion` naming R2→R3; stop unloads and
/// publishes `congestion-final`.
#[test]
fn app_deploys_collects_publishes_and_unloads() {
    let calls: Rc<RefCell<Vec<String>>> = Rc::default();
    type Published = Vec<(String, u32, Option<(String, String)>)>;
    let published: Rc<RefCell<Published>> = Rc::default();
    let (c2, p2) = (calls.clone(), published.clone());
    let t = figure5();
    tm_app_sdk::native::set_host(move |op, req| {
        c2.borrow_mut().push(op.to_string());
        match op {
            "deploy" => {
                let d: Deploy<SeenTcpPerfParams> = tm_app_sdk::decode(req).unwrap();
                assert_eq!(d.analyzer, "tcp-perf");
                assert_eq!(d.params.retrans_threshold, 0.04);
                assert_eq!(d.filter.protocols, vec![6]);
                assert_eq!(d.targets, Targets::All);
                ok(tm_app_sdk::Deployed {
                    deployment: "cl-tcp-perf-1".into(),
                    sha256: "ab".into(),
                    placed: vec![tm_app_sdk::Placement {
                        monitor: "m1".into(),
                        address: M1.into(),
                        links: vec![0, 1],
                    }],
                    failed: vec![],
                })
            }
            "set_timer" | "cancel_timer" => ok(api::Empty {}),
            "topology" => ok(t.clone()),
            "flow_path" => {
                let p: api::RouterPair = tm_app_sdk::decode(req).unwrap();
                ok(host_flow_path(&t, &p.from, &p.to).unwrap())
            }
            "collect" | "unload" => {
                let mut results = quiet(
                    [tl(50_000, 4_100, 60), tl(40_000, 30, 20)],
                    [tl(48_000, 90, 3_600), tl(38_000, 25, 15)],
                    [tl(10_000, 5, 5), tl(20_000, 10, 4)],
                );
                results[0].results.flagged =
                    vec![flagged("10.1.0.5", "10.3.0.20", 50_001, 0, 900, 81)];
                let mut c = collected(results);
                c.deployment = "cl-tcp-perf-1".into();
                ok(c)
            }
            "publish" => {
                let p: api::Publish<SeenReport> = tm_app_sdk::decode(req).unwrap();
                p2.borrow_mut().push((
                    p.kind,
                    p.body.round,
                    p.body.suspect.map(|s| (s.from_router, s.to_router)),
                ));
                ok(1u64)
            }
            other => panic!("unexpected host call {}", other),
        }
    });
    let params = Params {
        retrans_threshold: 0.04,
        prefixes: vec![row("10.1.0.0/16", R1), row("10.3.0.0/16", R3)],
        ..Params::default()
    };
    let mut app = CongestionLocator::start(params).unwrap();
    app.on_timer(COLLECT_TIMER, 0).unwrap();
    app.stop().unwrap();
    app.stop().unwrap(); // a second stop has nothing left to unload
    let r23 = Some((R2.to_string(), R3.to_string()));
    assert_eq!(
        *published.borrow(),
        vec![
            ("congestion".to_string(), 1, r23.clone()),
            ("congestion-final".to_string(), 2, r23)
        ]
    );
    let calls = calls.borrow();
    assert_eq!(calls.iter().filter(|c| *c == "unload").count(), 1);
    assert_eq!(calls[..2], ["deploy".to_string(), "set_timer".to_string()]);
}
