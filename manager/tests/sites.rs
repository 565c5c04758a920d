//! A remote site behind a NATS leaf node: one monitor on the hub, one at the
//! remote site (connected to a leaf-node server without JetStream of its
//! own), a manager on the hub. The leaf link is cut for 10 s and restored:
//! the remote monitor goes on analysing, commands to it fail fast with a
//! clear error during the cut and work after it, and its result windows
//! made during the cut reach the stream after it, each once, in order.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::{Filter, Value};
use harness::monitor::MonitorProc;
use harness::site::Site;
use manager::control::{Control, DeploySpec, Targets};

const START_NS: u64 = 1_764_000_000_000_000_000;

fn config(dir: &std::path::Path, address: &str) -> String {
    // 60 s of packets, one every 20 ms: the replay outlasts the test.
    let frames = pcapgen::paced(3000, START_NS, 20_000_000);
    pcapgen::write_pcap(&dir.join("l.pcap"), pcapgen::linktype::ETHERNET, &frames).unwrap();
    format!(
        "address = \"{address}\"\n[[link]]\nid = 0\npcap = \"l.pcap\"\nreplay = \"recorded-pace\"\nfrom_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n"
    )
}

#[tokio::test]
async fn a_remote_site_keeps_analysing_through_a_cut_leaf_link() {
    let mut site = Site::start().await.unwrap();
    let client = site.hub.client().await;
    let js = jetstream::new(client.clone());
    let control = Control::connect(client.clone(), "mgr", 1).await.unwrap();
    let sha = common::put_blob(
        &js,
        "packet-count",
        bus_schema::store::BlobKind::Analyzer,
        1,
    )
    .await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (conf_a, conf_b) = (
        config(dir_a.path(), "10.9.0.1"),
        format!(
            "jetstream_domain = \"{}\"\n{}",
            harness::site::DOMAIN,
            config(dir_b.path(), "10.9.0.2")
        ),
    );
    let _a = MonitorProc::start_at(&site.hub.url(), &client, "a", &conf_a, dir_a).await;
    let leaf_client = site.leaf.client().await;
    let b = MonitorProc::start_at(&site.leaf.url(), &leaf_client, "b", &conf_b, dir_b).await;
    let placed = control
        .deploy(&DeploySpec {
            deployment: "pc".into(),
            analyzer: "packet-count".into(),
            sha256: Some(sha),
            params: Value::Nil,
            filter: Filter::default(),
            targets: Targets::Monitors(vec!["a".into(), "b".into()]),
            report_every_ms: Some(500),
        })
        .await
        .unwrap();
    assert_eq!(placed.placed.len(), 2, "{:?}", placed.failed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = b.status(&leaf_client).await.deployments[0].stats.packets_in;
    assert!(before > 0);

    // The cut: the remote monitor cannot be reached, the local one can.
    site.link.cut();
    let cut_at = manager::control::now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    let statuses = control
        .status(&["a".into(), "b".into()], Duration::from_secs(5))
        .await
        .unwrap();
    let took = asked.elapsed();
    let (ok_a, err_b) = (&statuses[0], &statuses[1]);
    assert!(ok_a.1.is_ok(), "{ok_a:?}");
    let e = err_b.1.as_ref().expect_err("b is behind the cut link");
    assert!(
        took < Duration::from_secs(3),
        "b's refusal took {took:?}: {e}"
    );
    // No responder on the hub's side: `unavailable`, naming the subject.
    assert_eq!(e.code, bus_schema::ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("tm.v1.mon.b.status"), "{e}");
    // Still analysing behind the cut, as seen from its own site.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let during = b.status(&leaf_client).await.deployments[0].stats.packets_in;
    assert!(during > before + 200, "b analysed {before} then {during}");
    let restored_at = manager::control::now_ms();
    site.link.restore();
    site.wait_joined(Duration::from_secs(20)).await.unwrap();

    // After: commands work, and every window of b is stored once, in order,
    // the ones made during the cut among them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = control
            .status(&["b".into()], Duration::from_secs(2))
            .await
            .unwrap();
        if s[0].1.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b unreachable after the cut: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let windows: Vec<_> = harness::stream_windows(&js, "pc")
            .await
            .into_iter()
            .map(|(_, w)| w)
            .filter(|w| w.monitor == "b")
            .collect();
        let seqs: Vec<u64> = windows.iter().map(|w| w.seq).collect();
        let made_during_cut = windows
            .iter()
            .filter(|w| w.end_unix_ms > cut_at && w.end_unix_ms < restored_at)
            .count();
        let newest_after = windows.iter().any(|w| w.end_unix_ms > restored_at);
        if made_during_cut >= 10 && newest_after {
            let want: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, want, "b's windows once each, in order");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's windows after the cut: {seqs:?} ({made_during_cut} made during it)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(b);
}
