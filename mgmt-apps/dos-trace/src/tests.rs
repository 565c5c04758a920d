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
use tm_app_sdk::api::{self, Reply};
use tm_app_sdk::{App, MonitorResults, Stats, TopologyView};

use tm_app_sdk::testing::*;

fn row(prefix: &str, router: &str) -> PrefixRow {
    PrefixRow {
        prefix: prefix.into(),
        router: router.into(),
    }
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

const T0: u64 = 1_764_108_000_000_000_000;

fn alert(kind: &str, link: u32, target: &str, sources: &[&str], window: u64, ts: u64) -> DosAlert {
    DosAlert {
        kind: kind.into(),
        link,
        target: target.into(),
        window_start_ns: T0 + window * 1_000_000_000,
        ts_ns: T0 + ts,
        threshold: 1000,
        count: 1000,
        sources: sources.iter().map(|s| s.to_string()).collect(),
    }
}

fn traced(t: &TopologyView, inc: &Incident) -> AttackPath {
    let topo = t.clone();
    let mut path = move |a: &str, b: &str| host_flow_path(&topo, a, b);
    trace(t, inc, &routers(), &mut path)
}

fn hops(p: &AttackPath) -> Vec<(&str, &str, bool)> {
    p.path
        .iter()
        .map(|h| (h.from_router.as_str(), h.to_router.as_str(), h.alerted))
        .collect()
}

fn ingress(p: &AttackPath) -> Option<(&str, &str, &str, u32)> {
    p.ingress.as_ref().map(|i| {
        (
            i.from_router.as_str(),
            i.to_router.as_str(),
            i.monitor_address.as_str(),
            i.link_id,
        )
    })
}

fn dark(p: &AttackPath) -> Vec<(&str, &str, Position)> {
    p.unmonitored
        .iter()
        .map(|u| (u.from_router.as_str(), u.to_router.as_str(), u.position))
        .collect()
}

const FLOODERS: [&str; 3] = ["10.1.0.11", "10.1.0.12", "10.1.0.13"];
const VICTIM: &str = "10.3.0.80";

/// A SYN flood from hosts behind R1 at a web server behind R3, alerted by
/// the taps on R1→R2 (10.9.0.1:0) and R2→R3 (10.9.0.2:0): the attack
/// enters the monitored network on R1→R2. Each new tap changes the
/// picture, a repeated alert does not.
#[test]
fn syn_flood_from_r1_at_victim_behind_r3_enters_at_r1_r2() {
    let mut incidents = Incidents::default();
    // R2→R3's monitor crosses the threshold first (its clock runs ahead).
    assert!(incidents.record(
        M2,
        &alert("syn_flood", 0, VICTIM, &FLOODERS[..2], 0, 4_000_000)
    ));
    let one = traced(
        &figure5(),
        &incidents.map[&(VICTIM.to_string(), "syn_flood".to_string())],
    );
    assert_eq!(ingress(&one), Some((R2, R3, M2, 0)));

    assert!(incidents.record(
        M1,
        &alert("syn_flood", 0, VICTIM, &FLOODERS[1..], 0, 3_000_000)
    ));
    assert!(!incidents.record(M1, &alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 3_000_000)));
    let inc = &incidents.map[&(VICTIM.to_string(), "syn_flood".to_string())];
    let p = traced(&figure5(), inc);

    assert_eq!(p.method, Method::SourcePath);
    assert_eq!(p.victim_router.as_deref(), Some(R3));
    assert_eq!(p.source_routers, vec![R1.to_string()]);
    assert_eq!(
        p.sources,
        FLOODERS.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(ingress(&p), Some((R1, R2, M1, 0)));
    assert_eq!(hops(&p), vec![(R1, R2, true), (R2, R3, true)]);
    assert!(p.unmonitored.is_empty());
    // Along the path, ingress first.
    let taps: Vec<(&str, u32, &str, &str, bool)> = p
        .alerting_taps
        .iter()
        .map(|t| {
            (
                t.monitor_address.as_str(),
                t.link_id,
                t.from_router.as_str(),
                t.to_router.as_str(),
                t.on_path,
            )
        })
        .collect();
    assert_eq!(taps, vec![(M1, 0, R1, R2, true), (M2, 0, R2, R3, true)]);
    assert_eq!(p.alerting_taps[0].first_ts_ns, T0 + 3_000_000);
    assert_eq!(p.alerting_taps[0].alerts, 1);
    assert_eq!(
        (p.first_ts_ns, p.last_ts_ns),
        (T0 + 3_000_000, T0 + 4_000_000)
    );
    assert!(p.reason.contains("10.0.1.1→10.0.2.1"), "{}", p.reason);
}

/// The same flood with spoofed sources (no prefix covers them): no source
/// path, so the walk goes upstream from R2→R3 (which enters the victim's
/// router) to R1→R2, and no further: R2→R1 is the way back and R4→R1,
/// unmonitored, is where the trail goes dark.
#[test]
fn spoofed_flood_is_walked_upstream_to_the_same_ingress() {
    let spoofed = ["198.51.100.7", "203.0.113.9"];
    let mut incidents = Incidents::default();
    incidents.record(M2, &alert("syn_flood", 0, VICTIM, &spoofed, 0, 4_000_000));
    incidents.record(M1, &alert("syn_flood", 0, VICTIM, &spoofed, 0, 3_000_000));
    let p = traced(
        &figure5(),
        &incidents.map[&(VICTIM.to_string(), "syn_flood".to_string())],
    );
    assert_eq!(p.method, Method::UpstreamWalk);
    assert!(p.source_routers.is_empty());
    assert_eq!(ingress(&p), Some((R1, R2, M1, 0)));
    assert_eq!(hops(&p), vec![(R1, R2, true), (R2, R3, true)]);
    assert_eq!(dark(&p), vec![(R4, R1, Position::Upstream)]);
    assert!(
        p.reason.starts_with("no source address maps to a router"),
        "{}",
        p.reason
    );
}

/// Sources behind R1, but the only alert comes from the tap on R3→R4:
/// the sources' path (R1→R2→R3) has no alerting tap, so they are taken as
/// spoofed and the alerting taps are walked instead.
#[test]
fn sources_whose_path_never_alerted_are_treated_as_spoofed() {
    let mut incidents = Incidents::default();
    // A UDP flood at a host behind R4, seen on R3→R4 only.
    incidents.record(
        M3,
        &alert("udp_flood", 0, "10.4.0.9", &["10.1.0.5"], 0, 1_000),
    );
    let p = traced(
        &figure5(),
        &incidents.map[&("10.4.0.9".to_string(), "udp_flood".to_string())],
    );
    assert_eq!(p.victim_router.as_deref(), Some(R4));
    assert_eq!(p.source_routers, vec![R1.to_string()]);
    assert_eq!(p.method, Method::UpstreamWalk);
    assert_eq!(ingress(&p), Some((R3, R4, M3, 0)));
    assert_eq!(hops(&p), vec![(R3, R4, true)]);
    // Into R3 other than from R4: R2→R3 is monitored and silent; nothing dark.
    assert!(p.unmonitored.is_empty());
    assert!(p.reason.contains("sources spoofed?"), "{}", p.reason);
}

/// A flood from hosts behind R4 at a host behind R2 crosses R4→R1, which
/// nobody taps, then R1→R2: the ingress is R1→R2 and the trail goes dark
/// upstream on R4→R1.
#[test]
fn flood_from_behind_r4_goes_dark_on_r4_r1() {
    let mut incidents = Incidents::default();
    incidents.record(
        M1,
        &alert("udp_flood", 0, "10.2.0.80", &["10.4.0.1", "10.4.0.2"], 0, 0),
    );
    let p = traced(
        &figure5(),
        &incidents.map[&("10.2.0.80".to_string(), "udp_flood".to_string())],
    );
    assert_eq!(p.method, Method::SourcePath);
    assert_eq!(
        (p.victim_router.as_deref(), p.source_routers.clone()),
        (Some(R2), vec![R4.to_string()])
    );
    assert_eq!(ingress(&p), Some((R1, R2, M1, 0)));
    assert_eq!(hops(&p), vec![(R1, R2, true)]);
    assert_eq!(dark(&p), vec![(R4, R1, Position::Upstream)]);
}

/// A port scan reports the scanner as target and the scanned hosts as
/// sources: the traffic runs from the target (behind R1) to the sources'
/// router (R3), so the ingress is still R1→R2.
#[test]
fn port_scan_runs_from_the_target_to_the_scanned_hosts() {
    let mut incidents = Incidents::default();
    let scanner = "10.1.0.66";
    incidents.record(M1, &alert("port_scan", 0, scanner, &["10.3.0.1"], 0, 10));
    incidents.record(M2, &alert("port_scan", 0, scanner, &["10.3.0.2"], 0, 20));
    incidents.record(
        M2,
        &alert("port_scan", 0, scanner, &["10.3.0.3"], 1, 1_000_000_020),
    );
    let inc = &incidents.map[&(scanner.to_string(), "port_scan".to_string())];
    assert_eq!(inc.taps[&(M2.to_string(), 0)].alerts, 2);
    let p = traced(&figure5(), inc);
    assert_eq!(p.victim_router.as_deref(), Some(R3));
    assert_eq!(p.source_routers, vec![R1.to_string()]);
    assert_eq!(p.method, Method::SourcePath);
    assert_eq!(ingress(&p), Some((R1, R2, M1, 0)));
    assert_eq!(hops(&p), vec![(R1, R2, true), (R2, R3, true)]);
}

/// The walk crosses links nobody taps to reach alerting taps further up,
/// but not monitored links that stayed silent. Chain A→B (tapped), B→C
/// (not), C→D (tapped), and E→C (tapped, silent); victim behind D.
#[test]
fn walk_crosses_unmonitored_links_but_not_silent_taps() {
    let (a, b, c, d, e) = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5");
    let t = TopologyView {
        revision: 1,
        routers: vec![a.into(), b.into(), c.into(), d.into(), e.into()],
        links: vec![
            link(a, b, &[("10.9.1.1", 0)]),
            link(b, a, &[]),
            link(b, c, &[]),
            link(c, b, &[]),
            link(c, d, &[("10.9.1.2", 0)]),
            link(c, e, &[]),
            link(d, c, &[]),
            link(e, c, &[("10.9.1.3", 0)]),
        ],
    };
    let mut incidents = Incidents::default();
    incidents.record(
        "10.9.1.2",
        &alert("syn_flood", 0, "10.4.0.1", &["192.0.2.1"], 0, 2),
    );
    incidents.record(
        "10.9.1.1",
        &alert("syn_flood", 0, "10.4.0.1", &["192.0.2.1"], 0, 1),
    );
    let inc = &incidents.map[&("10.4.0.1".to_string(), "syn_flood".to_string())];
    let routers = routers_of(&[row("10.4.0.0/16", d)]).unwrap();
    let topo = t.clone();
    let mut path = move |x: &str, y: &str| host_flow_path(&topo, x, y);
    let p = trace(&t, inc, &routers, &mut path);
    assert_eq!(p.method, Method::UpstreamWalk);
    assert_eq!(ingress(&p), Some((a, b, "10.9.1.1", 0)));
    assert_eq!(hops(&p), vec![(a, b, true), (b, c, false), (c, d, true)]);
    assert_eq!(dark(&p), vec![(b, c, Position::Downstream)]);
    assert!(
        p.reason.contains("walked upstream from 10.0.0.3→10.0.0.4"),
        "{}",
        p.reason
    );
}

/// Alerts from a tap the topology does not know are listed, not traced.
#[test]
fn unknown_taps_are_listed() {
    let mut incidents = Incidents::default();
    incidents.record("10.9.0.9", &alert("syn_flood", 3, VICTIM, &FLOODERS, 0, 0));
    let p = traced(
        &figure5(),
        &incidents.map[&(VICTIM.to_string(), "syn_flood".to_string())],
    );
    assert_eq!(p.method, Method::None);
    assert_eq!(p.unknown_taps, vec!["10.9.0.9:3".to_string()]);
    assert!(p.alerting_taps.is_empty() && p.ingress.is_none() && p.path.is_empty());
    assert_eq!(p.reason, "no alerting tap is on the topology");
}

/// Each (tap, window) counts once; counts keep the largest; sources are
/// merged; a new window on a known tap is not a new tap.
#[test]
fn incidents_count_each_window_once() {
    let mut incidents = Incidents::default();
    let mut a = alert("syn_flood", 0, VICTIM, &["10.1.0.11"], 0, 5);
    assert!(incidents.record(M1, &a));
    a.count = 4_000;
    a.sources = vec!["10.1.0.12".into()];
    assert!(!incidents.record(M1, &a));
    let mut b = alert("syn_flood", 0, VICTIM, &["10.1.0.11"], 1, 1_000_000_005);
    b.count = 1_500;
    assert!(!incidents.record(M1, &b));
    assert!(incidents.record(M1, &alert("udp_flood", 0, VICTIM, &[], 0, 7)));
    assert_eq!(incidents.map.len(), 2);
    let inc = &incidents.map[&(VICTIM.to_string(), "syn_flood".to_string())];
    let s = &inc.taps[&(M1.to_string(), 0)];
    assert_eq!(
        (s.alerts, s.count, s.first_ts_ns, s.last_ts_ns),
        (2, 4_000, T0 + 5, T0 + 1_000_000_005)
    );
    assert_eq!(inc.sources.len(), 2);
}

#[test]
fn summary_sums_monitors_and_lists_incidents() {
    let mut incidents = Incidents::default();
    incidents.record(M1, &alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 5));
    let res = |addr: &str, packets, syn, scan| MonitorResults {
        monitor: format!("mon-{}", addr),
        address: addr.into(),
        seq: 1,
        start_unix_ms: 0,
        end_unix_ms: 0,
        stats: Stats::default(),
        results: DetectResults {
            packets,
            windows: 10,
            alerts_total: syn + scan,
            by_kind: ByKind {
                syn_flood: syn,
                udp_flood: 0,
                port_scan: scan,
            },
            untracked_packets: 0,
            alerts: vec![],
        },
    };
    let c = Collected {
        deployment: "dos-trace-dos-detect-1".into(),
        results: vec![res(M1, 50_000, 2, 0), res(M2, 30_000, 1, 1)],
        missing: vec![tm_app_sdk::Missing {
            monitor: "mon-10.9.0.3".into(),
            code: "timeout".into(),
            message: "no reply".into(),
        }],
    };
    let s = build_summary(&c, &incidents, 4);
    assert_eq!((s.round, s.packets, s.alerts_total), (4, 80_000, 4));
    assert_eq!((s.by_kind.syn_flood, s.by_kind.port_scan), (3, 1));
    assert_eq!(s.monitors.len(), 2);
    assert_eq!(s.incidents.len(), 1);
    assert_eq!((s.incidents[0].taps, s.incidents[0].alerts), (1, 1));
    assert_eq!(s.missing, vec!["mon-10.9.0.3: no reply".to_string()]);
}

#[test]
fn params_are_checked_naming_field_and_value() {
    let (d, _) = Params::default().check().unwrap();
    assert_eq!(d, DetectParams::default());
    // Nothing set: dos-detect gets an empty map and uses its defaults.
    assert_eq!(tm_app_sdk::encode(&d).unwrap(), vec![0x80]);

    let check = |f: &dyn Fn(&mut Params)| {
        let mut p = Params::default();
        f(&mut p);
        p.check().map(|r| r.0)
    };
    // Top-level fields and the map merge.
    let d = check(&|p| {
        p.window_ms = Some(500);
        p.analyzer_params = Some(DetectParams {
            syn_threshold: Some(200),
            window_ms: Some(500),
            ..DetectParams::default()
        });
    })
    .unwrap();
    assert_eq!(
        (d.window_ms, d.syn_threshold, d.udp_threshold),
        (Some(500), Some(200), None)
    );
    assert_eq!(
        check(&|p| {
            p.window_ms = Some(500);
            p.analyzer_params = Some(DetectParams {
                window_ms: Some(1000),
                ..DetectParams::default()
            });
        })
        .unwrap_err(),
        "window_ms = 500 and analyzer_params.window_ms = 1000: give it once"
    );
    assert_eq!(
        check(&|p| p.syn_threshold = Some(0)).unwrap_err(),
        "syn_threshold = 0: must be at least 1"
    );
    assert_eq!(
        check(&|p| p.window_ms = Some(3_600_001)).unwrap_err(),
        "window_ms = 3600001: must be 1 to 3600000"
    );
    assert_eq!(
        check(&|p| {
            p.analyzer_params = Some(DetectParams {
                max_alerts: Some(20_000),
                ..DetectParams::default()
            })
        })
        .unwrap_err(),
        "analyzer_params.max_alerts = 20000: must be 0 to 10000"
    );
    assert_eq!(
        check(&|p| p.every_ms = 20).unwrap_err(),
        "every_ms = 20: must be 0 (no periodic summary) or at least 100"
    );
    assert!(check(&|p| p.every_ms = 0).is_ok());
    assert_eq!(
        check(&|p| p.prefixes = vec![row("10.1.0.0/16", "R1")]).unwrap_err(),
        "prefixes[0].router = \"R1\": not an IP address"
    );

    // Unknown keys are refused, at the top and in analyzer_params.
    let mut top = BTreeMap::new();
    top.insert("syn_treshold", 5u32);
    let e = tm_app_sdk::decode_params::<Params>(&tm_app_sdk::encode(&top).unwrap()).unwrap_err();
    assert!(e.contains("syn_treshold"), "{}", e);
    let mut nested = BTreeMap::new();
    nested.insert("analyzer_params", top);
    let e = tm_app_sdk::decode_params::<Params>(&tm_app_sdk::encode(&nested).unwrap()).unwrap_err();
    assert!(e.contains("syn_treshold"), "{}", e);
}

// ---------------------------------------------------------------------------
// The app against a simulated host
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct SeenIngress {
    from_router: String,
    to_router: String,
}

#[derive(Deserialize)]
struct SeenBody {
    #[serde(default)]
    ingress: Option<SeenIngress>,
    #[serde(default)]
    round: Option<u32>,
}

fn ok<T: Serialize>(v: T) -> Vec<u8> {
    tm_app_sdk::encode(&Reply::<T>::Ok(v)).unwrap()
}

fn event<D: Serialize>(address: &str, deployment: &str, kind: &str, data: D) -> Vec<u8> {
    tm_app_sdk::encode(&EventView {
        monitor: format!("mon-{}", address),
        address: address.into(),
        deployment: deployment.into(),
        kind: kind.into(),
        message: format!("{} on {}", kind, address),
        at_unix_ms: 1_764_108_000_000,
        data,
    })
    .unwrap()
}

/// start deploys dos-detect with the given params, subscribes and sets the
/// summary timer; alert events publish `attack-path` when a tap joins
/// (lifecycle events and other deployments are ignored); the timer
/// publishes `dos-summary`; stop unloads and publishes `dos-summary-final`.
#[test]
fn app_traces_alert_events_and_summarises() {
    type Published = Vec<(String, Option<(String, String)>, Option<u32>)>;
    let calls: Rc<RefCell<Vec<String>>> = Rc::default();
    let published: Rc<RefCell<Published>> = Rc::default();
    let (c2, p2) = (calls.clone(), published.clone());
    let t = figure5();
    let dep = "dos-trace-dos-detect-1";
    tm_app_sdk::native::set_host(move |op, req| {
        c2.borrow_mut().push(op.to_string());
        match op {
            "deploy" => {
                let d: Deploy<DetectParams> = tm_app_sdk::decode(req).unwrap();
                assert_eq!(d.analyzer, "dos-detect");
                assert_eq!(
                    d.params,
                    DetectParams {
                        window_ms: Some(500),
                        syn_threshold: Some(200),
                        ..DetectParams::default()
                    }
                );
                assert_eq!(d.filter.protocols, vec![6, 17]);
                ok(tm_app_sdk::Deployed {
                    deployment: dep.into(),
                    sha256: "ab".into(),
                    placed: vec![tm_app_sdk::Placement {
                        monitor: "m1".into(),
                        address: M1.into(),
                        links: vec![0, 1],
                    }],
                    failed: vec![],
                })
            }
            "subscribe" => {
                let r: api::DeploymentRef = tm_app_sdk::decode(req).unwrap();
                assert_eq!(r.deployment, dep);
                ok(api::Empty {})
            }
            "set_timer" | "cancel_timer" => ok(api::Empty {}),
            "topology" => ok(t.clone()),
            "flow_path" => {
                let p: api::RouterPair = tm_app_sdk::decode(req).unwrap();
                ok(host_flow_path(&t, &p.from, &p.to).unwrap())
            }
            "collect" | "unload" => ok(Collected {
                deployment: dep.to_string(),
                results: vec![MonitorResults {
                    monitor: "mon-10.9.0.1".into(),
                    address: M1.into(),
                    seq: 2,
                    start_unix_ms: 0,
                    end_unix_ms: 0,
                    stats: Stats::default(),
                    results: DetectResults {
                        packets: 90_000,
                        windows: 3,
                        alerts_total: 1,
                        by_kind: ByKind {
                            syn_flood: 1,
                            udp_flood: 0,
                            port_scan: 0,
                        },
                        untracked_packets: 0,
                        // Already delivered as an event: no new tap.
                        alerts: vec![alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 3_000_000)],
                    },
                }],
                missing: vec![],
            }),
            "publish" => {
                let p: api::Publish<SeenBody> = tm_app_sdk::decode(req).unwrap();
                p2.borrow_mut().push((
                    p.kind,
                    p.body.ingress.map(|i| (i.from_router, i.to_router)),
                    p.body.round,
                ));
                ok(1u64)
            }
            other => panic!("unexpected host call {}", other),
        }
    });
    let params = Params {
        window_ms: Some(500),
        syn_threshold: Some(200),
        prefixes: vec![row("10.1.0.0/16", R1), row("10.3.0.0/16", R3)],
        ..Params::default()
    };
    let mut app = DosTrace::start(params).unwrap();

    app.on_event(&event(M2, dep, "loaded", Option::<DosAlert>::None))
        .unwrap();
    app.on_event(&event(
        M2,
        dep,
        "alert",
        alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 4_000_000),
    ))
    .unwrap();
    app.on_event(&event(
        M1,
        dep,
        "alert",
        alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 3_000_000),
    ))
    .unwrap();
    app.on_event(&event(
        M1,
        dep,
        "alert",
        alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 3_000_000),
    ))
    .unwrap();
    app.on_event(&event(
        M3,
        "someone-else",
        "alert",
        alert("syn_flood", 0, VICTIM, &FLOODERS, 0, 1),
    ))
    .unwrap();
    app.on_timer(SUMMARY_TIMER, 0).unwrap();
    app.stop().unwrap();

    let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
    assert_eq!(
        *published.borrow(),
        vec![
            ("attack-path".to_string(), s(R2, R3), None),
            ("attack-path".to_string(), s(R1, R2), None),
            ("dos-summary".to_string(), None, Some(1)),
            ("dos-summary-final".to_string(), None, Some(2)),
        ]
    );
    let calls = calls.borrow();
    assert_eq!(
        calls[..3],
        ["deploy", "subscribe", "set_timer"].map(String::from)
    );
    assert_eq!(calls.iter().filter(|c| *c == "unload").count(), 1);
    assert_eq!(calls.iter().filter(|c| *c == "cancel_timer").count(), 1);
}
