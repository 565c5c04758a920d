//! The scale run's setup at a small N: 20 monitors on a 3-node cluster, 5
//! of them at a remote site behind a leaf node. A killed monitor is
//! noticed within seconds; each node in turn is killed and restarted
//! during collect rounds (every command answered or failed with a named
//! error); the leaf link is cut (the remote site's monitors keep analysing,
//! commands to them fail fast, then work again); every result window is
//! stored once, in order, read back through a JetStream consumer.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::{ErrorCode, Filter, Value};
use manager::control::{Control, DeploySpec, Targets};
use scale::{Fleet, FleetSpec};

async fn remote_packets(leaf: &async_nats::Client, ids: &[String]) -> u64 {
    scale::statuses(leaf, ids)
        .await
        .iter()
        .flat_map(|s| &s.links)
        .map(|l| l.packets)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_monitors_three_nodes_and_a_leaf_survive_node_kills_and_a_cut() {
    let mut fleet = Fleet::start(&FleetSpec {
        monitors: 20,
        remote: 5,
        analyzers: vec!["packet-count".into()],
    })
    .await;
    let control = Control::connect(scale::node_client(&fleet.site, 0).await, "mgr-a", 3)
        .await
        .unwrap();
    tokio::spawn(control.clone().watch_monitors());

    // A killed monitor is no longer counted within seconds (the liveness
    // probe), not when its record expires.
    assert_eq!(control.monitors().await.unwrap().len(), 20);
    let killed = fleet.kill_process();
    let t = Instant::now();
    while control.monitors().await.unwrap().contains_key(&killed) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{killed} still counted after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alive = fleet.ids();
    assert_eq!(alive.len(), 19);

    let placed = control
        .deploy(&DeploySpec {
            deployment: "windows".into(),
            analyzer: "packet-count".into(),
            sha256: Some(fleet.digests["packet-count"].clone()),
            params: Value::Nil,
            filter: Filter::default(),
            targets: Targets::All,
            report_every_ms: Some(500),
        })
        .await
        .unwrap();
    assert_eq!(placed.placed.len(), 19, "{:?}", placed.failed);

    // Each node in turn down for 4 s, then back: every collect round gives
    // each monitor's result or a named error for it.
    let (mut answered, mut missing, mut failed_rounds) = (0, 0, 0);
    for k in 0..3 {
        fleet.site.cluster.nodes[k].kill();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(4) {
            let c = match control.collect("windows", Duration::from_secs(2)).await {
                Ok(c) => c,
                // The deployment record unreadable while its stream's
                // leader is elected: a named error, not a hang.
                Err(e) => {
                    assert!(
                        e.code == ErrorCode::Unavailable && e.message.contains("tm_deployments"),
                        "a collect round with node {k} down: {e}"
                    );
                    failed_rounds += 1;
                    continue;
                }
            };
            assert_eq!(c.results.len() + c.missing.len(), 19);
            for m in &c.missing {
                assert!(
                    matches!(m.error.code, ErrorCode::Unavailable | ErrorCode::Timeout)
                        && m.error.message.contains(&m.monitor),
                    "{m:?}"
                );
            }
            answered += c.results.len();
            missing += c.missing.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fleet.site.cluster.nodes[k].restart().await.unwrap();
        // Back: soon every monitor answers again.
        let t = Instant::now();
        loop {
            let c = control.collect("windows", Duration::from_secs(2)).await;
            if c.as_ref().is_ok_and(|c| c.results.len() == 19) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "after node {k}: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "with a node down: {answered} answers, {missing} named errors, {failed_rounds} rounds refused whole"
    );
    assert!(answered > 0);

    // The leaf link cut: the remote monitors analyse on, commands to them
    // fail fast with `unavailable`, and work again once it is back.
    let remote = fleet.remote_ids();
    assert_eq!(remote.len(), 5);
    let leaf = fleet.site.leaf.client().await;
    let before = remote_packets(&leaf, &remote).await;
    fleet.site.link.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let during = control
        .status(&remote, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for (id, r) in &during {
        let e = r.as_ref().expect_err("behind the cut link");
        assert_eq!(e.code, ErrorCode::Unavailable, "{id}: {e}");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = remote_packets(&leaf, &remote).await;
    assert!(after >= before + 5 * 8, "remote packets {before} → {after}");
    fleet.site.link.restore();
    fleet
        .site
        .wait_joined(Duration::from_secs(20))
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        let s = control
            .status(&remote, Duration::from_secs(2))
            .await
            .unwrap();
        if s.iter().all(|(_, r)| r.is_ok()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every window once, in order, the cut's among them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unloaded = control.unload("windows", false).await.unwrap();
    assert_eq!(unloaded.results.len(), 19, "{:?}", unloaded.missing);
    let js = jetstream::new(scale::node_client(&fleet.site, 0).await);
    let t = Instant::now();
    loop {
        let windows = scale::windows_by_monitor(&js, "windows").await;
        let bad = scale::out_of_order(&windows);
        assert!(bad.is_empty(), "windows not once and in order: {bad:?}");
        // A window every 500 ms for the ~30 s the deployment ran.
        let thin: Vec<_> = windows.iter().filter(|(_, s)| s.len() < 20).collect();
        if windows.len() == 19 && thin.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{} monitors with windows; few: {thin:?}",
            windows.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
