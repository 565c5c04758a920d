//! End to end on the lab (`harness::lab`): the figure-1 network in network
//! namespaces with real traffic, three `tm-monitor` processes capturing its
//! six tapped directions live, `tm-manager` processes running the mgmt apps.
//! Needs root and the lab's tools (`xtask/setup.sh`); each test is skipped
//! with a printed reason where they are unavailable.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bus_schema::AppStatus;
use bus_schema::store::BlobKind;
use common::{ManagerProc, Reports, System};
use harness::lab::{self, Lab};

/// Skips the test (returns) with a printed reason where the lab cannot run.
macro_rules! lab_or_skip {
    () => {
        if let Some(why) = lab::unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

async fn load_app(
    system: &System,
    manager: &ManagerProc,
    app: &str,
    p: serde_json::Value,
) -> AppStatus {
    common::load_app(system, &manager.id, app, p).await
}

async fn unload_app(system: &System, manager: &ManagerProc, app: &str) -> AppStatus {
    common::unload_app(system, &manager.id, app).await
}

/// Runs blocking lab work (traffic) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Every tapped direction's (packets, bytes) on its veth's counters.
fn counters(lab: &Lab) -> BTreeMap<(String, u32), (u64, u64)> {
    lab.taps
        .iter()
        .map(|t| {
            (
                (t.monitor_address.to_owned(), t.link_id),
                lab.counters(t).unwrap(),
            )
        })
        .collect()
}

/// S1–S8 with link-load on live captures: every link's bytes (and packets)
/// are within 1% of what its tapped veth counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_load_matches_the_interface_counters() {
    lab_or_skip!();
    let mut lab = Lab::create().unwrap();
    let system = System::start_live(&lab).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    system.put("link-load", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "link-load").await;

    // S1–S3: the app starts and deploys flow-stats to the three monitors.
    load_app(
        &system,
        &manager,
        "link-load",
        serde_json::json!({"every_ms": 500, "prefixes": common::prefixes(), "capacity_bps": 1e9}),
    )
    .await;
    reports
        .until("link-load", Duration::from_secs(30), |_| true)
        .await
        .unwrap_or_else(|| panic!("no first round\n{}", manager.log()));

    // The lab is quiet until the workload starts (no IPv6, no daemons).
    let before = counters(&lab);
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().to_owned();
    let lab = blocking(move || {
        lab.workload(&www, &mut |step| eprintln!("lab: {step}"))
            .unwrap();
        // The last mirrored frames reach the taps.
        std::thread::sleep(Duration::from_millis(500));
        lab
    })
    .await;
    let after = counters(&lab);
    let delta: BTreeMap<_, _> = after
        .iter()
        .map(|(k, &(p, b))| (k.clone(), (p - before[k].0, b - before[k].1)))
        .collect();

    // S4/S5: a round whose every link has caught up with its counters.
    let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.01;
    let (_, body) = reports
        .until("link-load", Duration::from_secs(30), |b| {
            b["links"].as_array().is_some_and(|links| {
                links.len() == 6
                    && links.iter().all(|l| {
                        let key = (
                            l["monitor_address"].as_str().unwrap().to_owned(),
                            l["link_id"].as_u64().unwrap() as u32,
                        );
                        close(l["bytes"].as_u64().unwrap(), delta[&key].1)
                    })
            })
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no round within 1% of the counters {delta:?}\n{}",
                manager.log()
            )
        });
    eprintln!("link (monitor/link, from → to): link-load packets/bytes vs veth packets/bytes");
    for l in body["links"].as_array().unwrap() {
        let key = (
            l["monitor_address"].as_str().unwrap().to_owned(),
            l["link_id"].as_u64().unwrap() as u32,
        );
        let (packets, bytes) = (l["packets"].as_u64().unwrap(), l["bytes"].as_u64().unwrap());
        eprintln!(
            "{}/{} {} → {}: {packets} / {bytes} vs {} / {} ({:+.3}% bytes), capture drops {}",
            key.0,
            key.1,
            l["from_router"].as_str().unwrap(),
            l["to_router"].as_str().unwrap(),
            delta[&key].0,
            delta[&key].1,
            (bytes as f64 - delta[&key].1 as f64) * 100.0 / delta[&key].1 as f64,
            l["capture_drops"]
        );
        assert!(
            delta[&key].1 > 10_000,
            "{key:?} carried too little: {delta:?}"
        );
        assert!(close(packets, delta[&key].0), "{key:?} packets: {l:#}");
        assert_eq!(l["capture_state"], "running");
        assert_eq!(l["capture_drops"], 0);
    }
    // The matrix names the routers behind the hosts that talked.
    let pairs = common::router_pairs(&body["matrix"]);
    for (a, b) in [(1, 3), (3, 1), (3, 4), (2, 4), (4, 2)] {
        let pair = (lab::router(a).to_string(), lab::router(b).to_string());
        assert!(pairs.contains(&pair), "{pair:?} missing from {pairs:?}");
    }

    // S6–S8: unloading the app unloads flow-stats everywhere.
    unload_app(&system, &manager, "link-load").await;
    reports
        .until("link-load-final", Duration::from_secs(10), |_| true)
        .await
        .unwrap_or_else(|| panic!("no final report\n{}", manager.log()));
    for m in &system.monitors {
        assert!(m.status(&system.client).await.deployments.is_empty());
    }
    drop(lab);
}

/// The `tmctl` binary, run against the system's NATS; its stdout.
fn tmctl(system: &System, args: &[&str]) -> String {
    common::tmctl_at(&system.nats.url(), args)
}

/// Sum of the counter deltas of a monitor's taps between two readings.
fn packets_of(
    monitor_address: &str,
    from: &BTreeMap<(String, u32), (u64, u64)>,
    to: &BTreeMap<(String, u32), (u64, u64)>,
) -> u64 {
    to.iter()
        .filter(|(k, _)| k.0 == monitor_address)
        .map(|(k, v)| v.0 - from[k].0)
        .sum()
}

/// Traffic for every monitor: UDP H1→H3 and pings H3→H1 (monitors 1 and
/// 2), UDP H3→H4 and pings H1→H4 (monitor 3).
fn some_traffic(lab: &mut Lab, port: u16) {
    lab.iperf(1, 3, port, &["-u", "-t", "1", "-b", "4M", "-l", "800"])
        .unwrap();
    lab.iperf(3, 4, port + 1, &["-u", "-t", "1", "-b", "4M", "-l", "800"])
        .unwrap();
    lab.ping(3, 1, 20).unwrap();
    lab.ping(1, 4, 20).unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

/// An operator's session: tmctl deploys packet-count to every monitor with
/// periodic windows, configures it mid-run, one monitor is killed and
/// restarted mid-run, and the nats-py subscriber in examples/ receives
/// every published window exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_mid_run_monitor_restart_and_an_outside_subscriber() {
    lab_or_skip!();
    if let Err(e) = lab::sh(&["python3", "-c", "import nats, msgpack"]) {
        panic!("nats-py and msgpack are missing (xtask/setup.sh installs them): {e}");
    }
    let lab = Lab::create().unwrap();
    let mut system = System::start_live(&lab).await;
    system.put("packet-count", BlobKind::Analyzer).await;
    let sub_log = tempfile::NamedTempFile::new().unwrap();
    let subscriber = std::process::Command::new("python3")
        .arg(common::root().join("examples/subscriber.py"))
        .args(["--nats", &system.nats.url(), "--deployment", "pc"])
        .args(["--until-last", "3", "--idle-s", "60", "--no-results"])
        .stdout(std::process::Stdio::piped())
        .stderr(sub_log.reopen().unwrap())
        .spawn()
        .unwrap();

    let start = counters(&lab);
    tmctl(
        &system,
        &[
            "deploy",
            "--id",
            "pc",
            "packet-count",
            "--params",
            r#"{"label":"before"}"#,
            "--report-every-ms",
            "300",
        ],
    );
    let lab = blocking(move || {
        let mut lab = lab;
        some_traffic(&mut lab, 5300);
        lab
    })
    .await;
    let configured = counters(&lab);
    let out = tmctl(
        &system,
        &[
            "configure",
            "pc",
            "--params",
            r#"{"label":"after"}"#,
            "--json",
        ],
    );
    assert!(
        out.contains("\"config_revision\": 1") || out.contains("\"config_revision\":1"),
        "{out}"
    );

    let lab = blocking(move || {
        let mut lab = lab;
        some_traffic(&mut lab, 5310);
        lab
    })
    .await;
    // Monitor 2 dies mid-run and comes back: its deployment is restored
    // from its snapshot, configured as it was.
    let m2 = system
        .monitors
        .iter()
        .position(|m| m.id == "10-9-0-2")
        .unwrap();
    system.monitors[m2].crash_and_restart(&system.client).await;
    let st = system.monitors[m2]
        .wait_status(&system.client, "pc restored", |st| {
            st.deployments.iter().any(|d| d.deployment == "pc")
        })
        .await;
    assert_eq!(st.deployments[0].config_revision, 1, "{st:#?}");
    let restarted = counters(&lab);
    let m2_restored = st.deployments[0].stats.packets_in;
    let lab = blocking(move || {
        let mut lab = lab;
        some_traffic(&mut lab, 5320);
        lab
    })
    .await;
    let end = counters(&lab);

    // The final windows: tmctl unload publishes one per monitor.
    tmctl(&system, &["unload", "pc"]);
    let output = blocking(move || subscriber.wait_with_output().unwrap()).await;
    let sub_err = std::fs::read_to_string(sub_log.path()).unwrap();
    assert!(output.status.success(), "subscriber: {sub_err}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // What the stream holds, read directly.
    let held = harness::stream_windows(&system.js, "pc").await;
    // The subscriber printed each held window once, in stream order.
    let printed: Vec<(u64, String, u64, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["stream_seq"].as_u64().unwrap(),
                l["monitor"].as_str().unwrap().to_owned(),
                l["seq"].as_u64().unwrap(),
                l["last"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, String, u64, bool)> = held
        .iter()
        .map(|(s, w)| (*s, w.monitor.clone(), w.seq, w.last))
        .collect();
    assert_eq!(printed, expected);
    // Per monitor: window seqs 1, 2, 3, … without gap or repeat, the last
    // one flagged.
    for m in &system.monitors {
        let seqs: Vec<u64> = printed
            .iter()
            .filter(|p| p.1 == m.id)
            .map(|p| p.2)
            .collect();
        assert!(seqs.len() >= 5, "{}: {seqs:?}", m.id);
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{}",
            m.id
        );
        let lasts: Vec<bool> = printed
            .iter()
            .filter(|p| p.1 == m.id)
            .map(|p| p.3)
            .collect();
        assert_eq!(lasts.iter().filter(|&&l| l).count(), 1);
        assert!(lasts.last().unwrap());
    }

    // The final windows: packets per label equal the veth counters for the
    // monitors that ran throughout; the restarted one kept its "before"
    // packets through the restart and counted what came after it.
    for (_, w) in held.iter().filter(|(_, w)| w.last) {
        let monitor_address = w.monitor.replace('-', ".");
        let results = manager::archive::to_json(&w.results);
        let before = results["by_label"]["before"].as_u64().unwrap_or(0);
        let after = results["by_label"]["after"].as_u64().unwrap_or(0);
        let want_before = packets_of(&monitor_address, &start, &configured);
        eprintln!(
            "{monitor_address}: before {before} (veth {want_before}), after {after} (veth {} over the run, {} since the restart)",
            packets_of(&monitor_address, &configured, &end),
            packets_of(&monitor_address, &restarted, &end)
        );
        assert!(want_before > 100, "{monitor_address}: too little traffic");
        assert_eq!(
            before, want_before,
            "{monitor_address}: packets before the configure"
        );
        if monitor_address == "10.9.0.2" {
            assert!(
                after >= packets_of(&monitor_address, &restarted, &end),
                "{results:#}"
            );
            assert!(before + after >= m2_restored);
        } else {
            assert_eq!(
                after,
                packets_of(&monitor_address, &configured, &end),
                "{monitor_address}: after"
            );
        }
    }
}

/// A bounded SYN flood from H1 at H3's port 80: dos-detect's alert events
/// arrive within 2 s of its start and dos-trace names R1→R2 as the ingress;
/// a port scan from H2 across H4's ports is traced to R2→R1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_scan_are_detected_and_traced_to_their_ingress() {
    use futures::StreamExt;
    lab_or_skip!();
    let lab = Lab::create().unwrap();
    let system = System::start_live(&lab).await;
    system.put("dos-detect", BlobKind::Analyzer).await;
    system.put("dos-trace", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "dos-trace").await;
    let mut events = system.client.subscribe("tm.v1.events.>").await.unwrap();
    system.client.flush().await.unwrap();
    load_app(
        &system,
        &manager,
        "dos-trace",
        serde_json::json!({
            "prefixes": common::prefixes(), "every_ms": 1000,
            "window_ms": 1000, "syn_threshold": 300, "scan_threshold": 100,
        }),
    )
    .await;
    // dos-detect runs on the three monitors.
    for m in &system.monitors {
        m.wait_status(&system.client, "dos-detect loaded", |st| {
            st.deployments.len() == 1
        })
        .await;
    }

    // 2000 SYNs, one per 500 µs: ~1 s.
    let started = tokio::time::Instant::now();
    let flood = tokio::task::spawn_blocking(move || {
        let out = lab.syn_flood(1, 3, 80, 2000, 500);
        (lab, out)
    });
    let first_alert = loop {
        let msg = tokio::time::timeout_at(started + Duration::from_secs(10), events.next())
            .await
            .expect("no alert event within 10 s of the flood's start")
            .unwrap();
        let event: bus_schema::Event = bus_schema::decode(&msg.payload).unwrap();
        let data = manager::archive::to_json(&event.data);
        if event.kind == bus_schema::EventKind::Alert && data["kind"] == "syn_flood" {
            assert_eq!(data["target"], lab::host(3).to_string(), "{data:#}");
            break started.elapsed();
        }
    };
    let (lab, out) = flood.await.unwrap();
    out.unwrap();
    eprintln!("first syn_flood alert event {first_alert:?} after the flood started");
    assert!(
        first_alert <= Duration::from_secs(2),
        "first alert after {first_alert:?}"
    );
    let (_, path) = reports
        .until("attack-path", Duration::from_secs(20), |b| {
            // Reported whenever a tap joins: wait for the whole path.
            b["kind"] == "syn_flood" && b["ingress"]["from_router"] == "10.0.1.1"
        })
        .await
        .unwrap_or_else(|| panic!("no syn_flood attack path\n{}", manager.log()));
    eprintln!("syn flood: {}", path["reason"]);
    assert_eq!(path["target"], lab::host(3).to_string());
    assert_eq!(path["method"], "source_path", "{path:#}");
    assert_eq!(path["ingress"]["from_router"], "10.0.1.1", "{path:#}");
    assert_eq!(path["ingress"]["to_router"], "10.0.2.1", "{path:#}");
    assert_eq!(path["ingress"]["monitor_address"], "10.9.0.1");
    assert_eq!(path["ingress"]["link_id"], 0);
    assert_eq!(
        common::router_pairs(&path["path"]),
        common::pairs(&[("10.0.1.1", "10.0.2.1"), ("10.0.2.1", "10.0.3.1")])
    );

    // 400 SYNs to consecutive ports of H4, one per 1 ms: a scan by H2.
    let (_lab, out) = blocking(move || {
        let out = lab.port_scan(2, 4, 1000, 400, 1000);
        (lab, out)
    })
    .await;
    out.unwrap();
    let (_, scan) = reports
        .until("attack-path", Duration::from_secs(20), |b| {
            // Reported whenever a tap joins: wait for the whole path.
            b["kind"] == "port_scan" && b["ingress"]["from_router"] == "10.0.2.1"
        })
        .await
        .unwrap_or_else(|| panic!("no port_scan attack path\n{}", manager.log()));
    eprintln!("port scan: {}", scan["reason"]);
    assert_eq!(scan["target"], lab::host(2).to_string(), "{scan:#}");
    assert_eq!(scan["victim_router"], "10.0.4.1", "{scan:#}");
    assert_eq!(scan["ingress"]["from_router"], "10.0.2.1", "{scan:#}");
    assert_eq!(scan["ingress"]["to_router"], "10.0.1.1", "{scan:#}");

    unload_app(&system, &manager, "dos-trace").await;
    reports
        .until("dos-summary-final", Duration::from_secs(10), |_| true)
        .await
        .unwrap_or_else(|| panic!("no final summary\n{}", manager.log()));
}

/// Two managers at once on the same monitors: mgr-a runs link-load, mgr-b
/// congestion-locator, while R2's output queue onto L23 drops segments
/// (`Lab::lossy`: netem, or a congested tbf queue where the kernel has no
/// netem). The locator names R2→R3; link-load's figures still equal the
/// counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_and_a_lossy_queue_named_by_congestion_locator() {
    lab_or_skip!();
    let lab = Lab::create().unwrap();
    let qdisc = lab.lossy(2, 3, 4, "4mbit").unwrap();
    eprintln!("R2's queue onto L23: {qdisc}");
    let system = System::start_live(&lab).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    system.put("tcp-perf", BlobKind::Analyzer).await;
    system.put("link-load", BlobKind::MgmtApp).await;
    system.put("congestion-locator", BlobKind::MgmtApp).await;
    let mgr_a = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mgr_b = ManagerProc::start(&system.nats, &system.client, "mgr-b", &[]).await;
    let mut loads = Reports::subscribe(&system.client, "mgr-a", "link-load").await;
    let mut congestion = Reports::subscribe(&system.client, "mgr-b", "congestion-locator").await;
    load_app(
        &system,
        &mgr_a,
        "link-load",
        serde_json::json!({"every_ms": 500, "prefixes": common::prefixes()}),
    )
    .await;
    load_app(
        &system,
        &mgr_b,
        "congestion-locator",
        serde_json::json!({"every_ms": 500, "prefixes": common::prefixes(), "min_data_packets": 200,
                            "retrans_threshold": 0.005}),
    )
    .await;
    // Each monitor runs one deployment per manager, each owned by its manager.
    for m in &system.monitors {
        let st = m
            .wait_status(&system.client, "both deployed", |st| {
                st.deployments.len() == 2
            })
            .await;
        let mut owners: Vec<&str> = st.deployments.iter().map(|d| d.owner.as_str()).collect();
        owners.sort_unstable();
        assert_eq!(owners, ["mgr-a", "mgr-b"]);
    }
    let before = counters(&lab);
    let lab = blocking(move || {
        let mut lab = lab;
        lab.iperf(1, 3, 5201, &["-t", "3", "-b", "20M"]).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        lab
    })
    .await;
    let after = counters(&lab);

    let (_, body) = congestion
        .until("congestion", Duration::from_secs(30), |b| {
            // Early rounds may not yet have enough data segments at the
            // downstream tap to consider it: wait for its evidence.
            b["suspect"]["evidence"] == "missed_originals"
        })
        .await
        .unwrap_or_else(|| panic!("no suspect\n{}", mgr_b.log()));
    let suspect = &body["suspect"];
    eprintln!("congestion-locator: {}", body["reason"]);
    for h in body["hotspots"].as_array().unwrap() {
        eprintln!(
            "  hotspot {} → {}: retrans {:.4}, gaps {:.4} over {} data packets",
            h["from_router"], h["to_router"], h["retrans_rate"], h["gap_rate"], h["data_packets"]
        );
    }
    assert_eq!(suspect["from_router"], "10.0.2.1", "{body:#}");
    assert_eq!(suspect["to_router"], "10.0.3.1", "{body:#}");
    assert_eq!(suspect["evidence"], "missed_originals", "{body:#}");

    // mgr-a's link-load, side by side: R1→R2 and R2→R3 within 1% of their
    // counters (R2→R3's after the netem drops).
    let key = |m: &str, l: u32| (m.to_owned(), l);
    let want: Vec<((String, u32), u64)> = [key("10.9.0.1", 0), key("10.9.0.2", 0)]
        .into_iter()
        .map(|k| {
            let d = after[&k].1 - before[&k].1;
            (k, d)
        })
        .collect();
    let (_, loads_body) = loads
        .until("link-load", Duration::from_secs(20), |b| {
            want.iter().all(|(k, bytes)| {
                b["links"].as_array().is_some_and(|links| {
                    links.iter().any(|l| {
                        l["monitor_address"] == k.0.as_str()
                            && l["link_id"] == k.1
                            && (l["bytes"].as_u64().unwrap() as f64 - *bytes as f64).abs()
                                <= *bytes as f64 * 0.01
                    })
                })
            })
        })
        .await
        .unwrap_or_else(|| panic!("link-load never matched {want:?}\n{}", mgr_a.log()));
    assert_eq!(loads_body["missing"], serde_json::json!([]));

    unload_app(&system, &mgr_b, "congestion-locator").await;
    unload_app(&system, &mgr_a, "link-load").await;
    for m in &system.monitors {
        assert!(m.status(&system.client).await.deployments.is_empty());
    }
}
