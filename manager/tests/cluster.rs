//! Everything against a 3-node NATS cluster (streams and buckets with three
//! replicas): one node after another is killed and restarted while two
//! monitors publish result windows and a manager's link-load collects.
//! Commands keep working with a node down, link-load keeps reporting, and
//! every window reaches the results stream once, in order.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use bus_schema::store::BlobKind;
use bus_schema::{
    AppLoadRequest, AppSource, BlobRef, Filter, LinkState, LoadReply, LoadRequest, MonitorStatus,
    Reply, StatusRequest, UnloadReply, UnloadRequest, Value, subject,
};
use common::{ManagerProc, Reports};
use harness::NatsCluster;
use harness::monitor::MonitorProc;
use pcapgen::{linktype, write_pcap};

/// A status request that may need a retry while the client fails over.
async fn status_within(client: &async_nats::Client, id: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let q = bus_schema::encode(&StatusRequest::default()).unwrap();
        if let Ok(Ok(msg)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(subject::monitor_status(id, "t"), q.into()),
        )
        .await
            && bus_schema::decode::<Reply<MonitorStatus>>(&msg.payload)
                .is_ok_and(|r| r.into_result().is_ok())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarts_lose_no_window_and_commands_keep_working() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    bus_schema::nats::ensure_stores(&js, 3, bus_schema::Role::Operator)
        .await
        .unwrap();
    let topology = common::figure5();
    let kv = manager::topology::open_bucket(&js, 3).await.unwrap();
    manager::topology::save(&kv, &topology.to_record("test", 1), None)
        .await
        .unwrap();
    for (name, kind) in [
        ("packet-count", BlobKind::Analyzer),
        ("flow-stats", BlobKind::Analyzer),
        ("link-load", BlobKind::MgmtApp),
    ] {
        common::put_blob(&js, name, kind, 3).await;
    }

    // Two monitors replaying 20 s of packets at recorded pace, each with
    // packet-count publishing a window every 200 ms.
    let frames = pcapgen::paced(2000, 1_764_000_000_000_000_000, 10_000_000);
    let total = frames.len() as u64;
    let mut monitors = Vec::new();
    for address in ["10.9.0.1", "10.9.0.2"] {
        let dir = tempfile::tempdir().unwrap();
        write_pcap(&dir.path().join("l.pcap"), linktype::ETHERNET, &frames).unwrap();
        let config = format!(
            "address = \"{address}\"\nreplicas = 3\n\
             [[link]]\nid = 0\npcap = \"l.pcap\"\nreplay = \"recorded-pace\"\nfrom_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n"
        );
        let id = common::monitor_id(address);
        let m = MonitorProc::start_at(&urls, &client, &id, &config, dir).await;
        let sha = wasm_host::sha256_hex(&std::fs::read(common::wasm_path("packet-count")).unwrap());
        let _: LoadReply = common::request(
            &client,
            subject::monitor_load(&id, "t"),
            &LoadRequest {
                deployment: "pc".into(),
                analyzer: BlobRef {
                    name: "packet-count".into(),
                    sha256: sha,
                },
                params: Value::Nil,
                filter: Filter::default(),
                links: vec![0],
                owner: "t".into(),
                report_every_ms: Some(200),
            },
        )
        .await
        .into_result()
        .unwrap();
        monitors.push(m);
    }
    let manager = ManagerProc::start_at(&urls, &client, "mgr-c", &["--replicas", "3"]).await;
    let mut reports = Reports::subscribe(&client, "mgr-c", "link-load").await;
    let _: bus_schema::AppStatus = common::request(
        &client,
        subject::manager_apps_load("mgr-c"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: String::new(),
            }),
            params: common::params(
                serde_json::json!({"every_ms": 300, "collect_timeout_ms": 1000}),
            ),
        },
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));

    // Three rounds: node 1, 2, 3 killed in turn for 2 s, then restarted.
    for round in 0..3 {
        let node = round % 3;
        cluster.nodes[node].kill();
        for m in &monitors {
            assert!(
                status_within(&client, &m.id, Duration::from_secs(15)).await,
                "round {round}: {} did not answer status with node {} down\n{}",
                m.id,
                node + 1,
                m.log()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.nodes[node].restart().await.unwrap();
        // link-load still reports after the restart, with every monitor.
        let restarted_ms = manager::control::now_ms();
        let (_, body) = loop {
            let (report, body) = reports
                .until("link-load", Duration::from_secs(20), |b| {
                    b["links"].as_array().is_some_and(|l| l.len() >= 2)
                })
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "round {round}: link-load stopped reporting\n{}",
                        manager.log()
                    )
                });
            if report.at_unix_ms >= restarted_ms {
                break (report, body);
            }
        };
        eprintln!(
            "round {round}: node {} killed and restarted; link-load round {}",
            node + 1,
            body["round"]
        );
    }

    // The replays end; unloading publishes each monitor's final window.
    for m in &monitors {
        m.wait_status(&client, "replay analyzed", |st| {
            st.links[0].state == LinkState::Finished
                && st
                    .deployments
                    .iter()
                    .any(|d| d.deployment == "pc" && d.stats.packets_in == total)
        })
        .await;
        let reply: UnloadReply = common::request(
            &client,
            subject::monitor_unload(&m.id, "t"),
            &UnloadRequest {
                deployment: "pc".into(),
                requester: "t".into(),
                force: false,
            },
        )
        .await
        .into_result()
        .unwrap();
        assert_eq!(reply.final_results.stats.packets_in, total);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = harness::stream_windows(&js, "pc").await;
        if held.iter().filter(|(_, w)| w.last).count() == monitors.len() {
            break held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "final windows missing from the stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for m in &monitors {
        let seqs: Vec<u64> = held
            .iter()
            .filter(|(_, w)| w.monitor == m.id)
            .map(|(_, w)| w.seq)
            .collect();
        let n = seqs.len() as u64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{}: window seqs", m.id);
        assert!(n >= 40, "{}: only {n} windows", m.id);
        eprintln!("{}: {n} windows, each once, in order", m.id);
    }
}
