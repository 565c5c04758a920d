//! The shipped mgmt apps `congestion-locator` and `dos-trace` in a real
//! `tm-manager`, on the figure-5 network with traffic whose answer is known:
//! loss in R2's queue onto R2→R3, and a SYN flood entering at R1→R2.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bus_schema::AppStatus;
use bus_schema::store::BlobKind;
use common::{ManagerProc, Reports, System, Traffic, host};
use pcapgen::{Frame, Timeline, scenarios};

async fn load(system: &System, app: &str, p: serde_json::Value) -> AppStatus {
    common::load_app(system, "mgr-a", app, p).await
}

async fn unload(system: &System, app: &str) -> AppStatus {
    common::unload_app(system, "mgr-a", app).await
}

fn src_ip(f: &Frame) -> Ipv4Addr {
    Ipv4Addr::new(f.data[26], f.data[27], f.data[28], f.data[29])
}

fn tcp_seq(f: &Frame) -> u32 {
    u32::from_be_bytes([f.data[38], f.data[39], f.data[40], f.data[41]])
}

fn has_payload(f: &Frame) -> bool {
    f.data.len() > 54
}

/// Segments each congested transfer loses.
const LOST_PER_TRANSFER: u64 = 19;

/// Bulk transfers from hosts behind R1 to hosts behind R3 lose every 10th
/// segment in R2's queue: the tap on R1→R2 sees each lost segment twice
/// (original and retransmission), the tap on R2→R3 sees only the
/// retransmission, filling a gap. ACKs return over R3→R2→R1. A clean
/// transfer R1→R4 runs beside them.
fn congested() -> Traffic {
    let mut t = Traffic::default();
    for k in 0..3u8 {
        let client = SocketAddr::new(host(1, k + 1).into(), 40_000 + u16::from(k));
        let server = SocketAddr::new(host(3, k + 1).into(), 443);
        let mut tl = Timeline::new(
            1_764_000_000_000_000_000 + u64::from(k) * 1_000_000,
            200_000,
        );
        // Every 10th segment is resent three segments later.
        let mut s = scenarios::Session::new(client, server);
        s.handshake(&mut tl, 2_000_000, 500_000);
        let mut seqs = vec![0u32];
        for i in 1..=200usize {
            seqs.push(s.send(&mut tl, 1000));
            if i > 3 && (i - 3) % 10 == 0 {
                s.resend(&mut tl, seqs[i - 3], 1000);
            }
            s.ack(&mut tl, 65535);
        }
        s.close(&mut tl);
        assert_eq!(s.truth.retransmissions, LOST_PER_TRANSFER);
        let (up, down): (Vec<Frame>, Vec<Frame>) = tl
            .frames
            .into_iter()
            .partition(|f| src_ip(f) == host(1, k + 1));
        // Downstream of the drop, the first copy of each resent segment is gone.
        let mut seen = std::collections::HashMap::new();
        for f in up.iter().filter(|f| has_payload(f)) {
            *seen.entry(tcp_seq(f)).or_insert(0) += 1;
        }
        let mut dropped = std::collections::HashSet::new();
        let after_drop: Vec<Frame> = up
            .iter()
            .filter(|f| !(has_payload(f) && seen[&tcp_seq(f)] == 2 && dropped.insert(tcp_seq(f))))
            .cloned()
            .collect();
        assert_eq!(after_drop.len() as u64, up.len() as u64 - LOST_PER_TRANSFER);
        t.add(("10.9.0.1", 0), up);
        t.add(("10.9.0.2", 0), after_drop);
        t.add(("10.9.0.2", 1), down.clone());
        t.add(("10.9.0.1", 1), down);
    }
    let mut tl = Timeline::new(1_764_000_000_000_000_000, 300_000);
    scenarios::transfer(
        &mut tl,
        SocketAddr::new(host(1, 9).into(), 41_000),
        SocketAddr::new(host(4, 9).into(), 80),
        150,
        0,
    );
    let (up, _down): (Vec<Frame>, Vec<Frame>) =
        tl.frames.into_iter().partition(|f| src_ip(f) == host(1, 9));
    t.add(("10.9.0.3", 1), up);
    t.finish();
    t
}

#[tokio::test]
async fn congestion_locator_names_the_congested_link() {
    let system = System::start(&congested()).await;
    system.put("tcp-perf", BlobKind::Analyzer).await;
    system.put("congestion-locator", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "congestion-locator").await;
    load(
        &system,
        "congestion-locator",
        serde_json::json!({"every_ms": 300, "prefixes": common::prefixes(), "min_data_packets": 50}),
    )
    .await;
    let (_, body) = reports
        .until("congestion", Duration::from_secs(60), |b| {
            !b["suspect"].is_null()
        })
        .await
        .unwrap_or_else(|| panic!("no suspect named\n{}", manager.log()));
    let suspect = &body["suspect"];
    assert_eq!(
        (
            suspect["from_router"].as_str(),
            suspect["to_router"].as_str()
        ),
        (Some("10.0.2.1"), Some("10.0.3.1")),
        "{body:#}"
    );
    assert_eq!(suspect["monitor_address"], "10.9.0.2");
    assert_eq!(suspect["link_id"], 0);
    // The upstream tap saw the originals go through: retransmissions, no gaps.
    let links = body["links"].as_array().unwrap();
    let link = |from: &str, to: &str| {
        links
            .iter()
            .find(|l| l["from_router"] == from && l["to_router"] == to)
            .unwrap_or_else(|| panic!("no {from}->{to} in {body:#}"))
    };
    let r1r2 = link("10.0.1.1", "10.0.2.1");
    assert_eq!(r1r2["retransmissions"], 3 * LOST_PER_TRANSFER);
    let r2r3 = link("10.0.2.1", "10.0.3.1");
    assert_eq!(r2r3["retransmissions"], 0);
    assert!(r2r3["gap_rate"].as_f64().unwrap() > 0.05, "{r2r3:#}");
    // The clean R1→R4 transfer is no hotspot.
    let hot = common::router_pairs(&body["hotspots"]);
    assert!(
        !hot.contains(&("10.0.1.1".into(), "10.0.4.1".into())),
        "{hot:?}"
    );

    let stopped = unload(&system, "congestion-locator").await;
    assert_eq!(stopped.last_error, None);
    let (_, last) = reports
        .until("congestion-final", Duration::from_secs(10), |_| true)
        .await
        .expect("final report");
    assert_eq!(last["suspect"]["to_router"], "10.0.3.1");
    for m in &system.monitors {
        assert!(m.status(&system.client).await.deployments.is_empty());
    }
}

/// A SYN flood from hosts behind R1 at a server behind R3 (crossing R1→R2
/// and R2→R3), with ordinary traffic beside it.
fn flood() -> Traffic {
    let victim = SocketAddr::new(host(3, 5).into(), 80);
    let mut tl = Timeline::new(1_764_000_000_000_000_000, 100_000);
    for i in 0..400u32 {
        let src = SocketAddr::new(host(1, 1 + (i % 20) as u8).into(), 1024 + i as u16);
        tl.push(pcapgen::tcp_segment(
            src,
            victim,
            i.wrapping_mul(7919),
            0,
            pcapgen::flags::SYN,
            1024,
            &[],
        ));
    }
    let mut t = Traffic::default();
    t.add(("10.9.0.1", 0), tl.frames.clone());
    t.add(("10.9.0.2", 0), tl.frames);
    let normal = common::traffic(&common::figure5(), &[(3, 4, 2, 30, 100), (1, 4, 1, 20, 60)]);
    for (tap, frames) in normal.frames {
        t.add((&tap.0, tap.1), frames);
    }
    t.finish();
    t
}

#[tokio::test]
async fn dos_trace_follows_a_flood_to_its_ingress() {
    let system = System::start(&flood()).await;
    system.put("dos-detect", BlobKind::Analyzer).await;
    system.put("dos-trace", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "dos-trace").await;
    load(
        &system,
        "dos-trace",
        serde_json::json!({"every_ms": 300, "syn_threshold": 100, "prefixes": common::prefixes()}),
    )
    .await;
    let (_, body) = reports
        .until("attack-path", Duration::from_secs(60), |b| {
            b["alerting_taps"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await
        .unwrap_or_else(|| panic!("no attack path over both taps\n{}", manager.log()));
    assert_eq!(body["target"], "10.30.0.5");
    assert_eq!(body["kind"], "syn_flood");
    assert_eq!(body["victim_router"], "10.0.3.1");
    assert_eq!(body["source_routers"], serde_json::json!(["10.0.1.1"]));
    assert_eq!(body["method"], "source_path");
    assert_eq!(
        body["ingress"],
        serde_json::json!({"from_router": "10.0.1.1", "to_router": "10.0.2.1", "monitor_address": "10.9.0.1", "link_id": 0})
    );
    assert_eq!(
        common::router_pairs(&body["path"]),
        common::pairs(&[("10.0.1.1", "10.0.2.1"), ("10.0.2.1", "10.0.3.1")])
    );
    // The 100th SYN of the window crossed the threshold at each tap.
    for tap in body["alerting_taps"].as_array().unwrap() {
        assert!(tap["count"].as_u64().unwrap() >= 100, "{tap:#}");
    }

    unload(&system, "dos-trace").await;
    let (_, summary) = reports
        .until("dos-summary-final", Duration::from_secs(10), |_| true)
        .await
        .expect("final summary");
    assert_eq!(summary["by_kind"]["syn_flood"], 2, "{summary:#}");
    assert_eq!(summary["incidents"].as_array().unwrap().len(), 1);
    for m in &system.monitors {
        assert!(m.status(&system.client).await.deployments.is_empty());
    }
}
