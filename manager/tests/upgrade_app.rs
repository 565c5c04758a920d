//! The `upgrader` mgmt app and the app API's `upgrade` op in a real
//! `tm-manager`: three real monitors replaying the figure-5 network's
//! traffic, flow-stats deployed to all of them by the manager, and the app
//! rolling another module onto that deployment — every monitor taking it
//! (the state carried over), or the first one refusing (the roll stops, the
//! record keeps the old module).

mod common;

use std::time::Duration;

use bus_schema::store::BlobKind;
use bus_schema::{AppLoadRequest, AppSource, AppState, BlobRef, ErrorCode, Reply, subject};
use common::{ManagerProc, Reports, System, Traffic, deployment_record, params};

/// Every tapped direction carries traffic.
fn network_traffic(topology: &manager::topology::Topology) -> Traffic {
    common::traffic(
        topology,
        &[
            (1, 3, 3, 40, 200),
            (3, 1, 2, 25, 900),
            (1, 4, 2, 30, 120),
            (3, 4, 1, 50, 60),
        ],
    )
}

/// Packets the taps of the monitor at `address` carried.
fn packets_of(traffic: &Traffic, address: &str) -> u64 {
    traffic
        .taps
        .iter()
        .filter(|((a, _), _)| a == address)
        .map(|(_, t)| t.packets)
        .sum()
}

/// Loads `upgrader` on mgr-a with `p`; the reply as it came.
async fn load_upgrader(system: &System, p: serde_json::Value) -> Reply<bus_schema::AppStatus> {
    common::request(
        &system.client,
        subject::manager_apps_load("mgr-a"),
        &AppLoadRequest {
            app: "upgrader".into(),
            source: AppSource::Object(BlobRef {
                name: "upgrader".into(),
                sha256: String::new(),
            }),
            params: params(p),
        },
    )
    .await
}

/// Loads the upgrader with `p`, takes its report and unloads it.
async fn roll(
    system: &System,
    manager: &ManagerProc,
    reports: &mut Reports,
    p: serde_json::Value,
) -> serde_json::Value {
    let status = load_upgrader(system, p)
        .await
        .into_result()
        .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));
    assert_eq!(status.state, AppState::Running);
    let (_, body) = reports
        .until("upgrade", Duration::from_secs(30), |_| true)
        .await
        .unwrap_or_else(|| panic!("no upgrade report\n{}", manager.log()));
    let stopped = common::unload_app(system, "mgr-a", "upgrader").await;
    assert_eq!(stopped.last_error, None);
    body
}

fn tmctl(system: &System, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&common::tmctl_at(&system.nats.url(), args)).unwrap()
}

/// The `tmctl --json deployments` entry of `id`.
fn listed(system: &System, id: &str) -> serde_json::Value {
    let all = tmctl(system, &["--json", "deployments"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["deployment"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {all:#}"))
        .clone()
}

/// Each monitor's (id, analyzer name, sha256, state) of deployment `id`,
/// from its status.
async fn running(system: &System, id: &str) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for m in &system.monitors {
        let s = m.status(&system.client).await;
        let d = s
            .deployments
            .iter()
            .find(|d| d.deployment == id)
            .unwrap_or_else(|| panic!("{} does not run {id}: {s:#?}", m.id));
        out.push((
            m.id.clone(),
            d.analyzer.name.clone(),
            d.analyzer.sha256.clone(),
            format!("{:?}", d.state).to_lowercase(),
        ));
    }
    out
}

/// The strings of a JSON array, or each element's `field`.
fn ids(list: &serde_json::Value, field: Option<&str>) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|e| {
            match field {
                Some(f) => &e[f],
                None => e,
            }
            .as_str()
            .unwrap()
            .to_owned()
        })
        .collect()
}

/// link-load deploys flow-stats on every monitor; the upgrader swaps it for
/// the same code stored as `flow-stats-2` on all three, the record and the
/// monitors name the new blob, and link-load's next round still counts every
/// packet of the (finished) replays: the state went over. A second run
/// swaps back with new params, which become the deployment's.
#[tokio::test]
async fn the_upgrader_swaps_every_monitor_and_the_state_goes_over() {
    let topology = common::figure5();
    let traffic = network_traffic(&topology);
    let system = System::start(&traffic).await;
    let sha = system.put("flow-stats", BlobKind::Analyzer).await;
    let bytes = std::fs::read(common::wasm_path("flow-stats")).unwrap();
    let sha2 = harness::put_module(&system.js, "flow-stats-2", BlobKind::Analyzer, &bytes, 1).await;
    assert_eq!(sha2, sha, "the same bytes under another name");
    system.put("link-load", BlobKind::MgmtApp).await;
    system.put("upgrader", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut loads = Reports::subscribe(&system.client, "mgr-a", "link-load").await;
    let mut upgrades = Reports::subscribe(&system.client, "mgr-a", "upgrader").await;

    common::load_app(
        &system,
        "mgr-a",
        "link-load",
        serde_json::json!({"every_ms": 300, "prefixes": common::prefixes()}),
    )
    .await;
    let (_, body) = loads
        .until("link-load", Duration::from_secs(60), |b| {
            common::links_match(b, &traffic.taps)
        })
        .await
        .unwrap_or_else(|| panic!("no exact link-load round\n{}", manager.log()));
    let deployment = body["deployment"].as_str().unwrap().to_owned();
    assert_eq!(deployment, "link-load-flow-stats-mgr-a-1");
    let before = deployment_record(&system.js, &deployment).await.unwrap();
    assert_eq!(before.owner, "mgr-a");
    assert_eq!(before.analyzer.name, "flow-stats");
    let order: Vec<String> = before.targets.iter().map(|t| t.monitor.clone()).collect();
    assert_eq!(order.len(), 3);

    let status = load_upgrader(
        &system,
        serde_json::json!({"deployment": deployment, "blob": "flow-stats-2"}),
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));
    assert_eq!(status.state, AppState::Running);
    let (report, up) = upgrades
        .until("upgrade", Duration::from_secs(30), |_| true)
        .await
        .unwrap_or_else(|| panic!("no upgrade report\n{}", manager.log()));
    assert_eq!(up["deployment"], deployment.as_str(), "{up:#}");
    assert_eq!(
        up["analyzer"],
        serde_json::json!({"name": "flow-stats-2", "sha256": sha})
    );
    assert_eq!(up["complete"], true, "{up:#}");
    // Every monitor, in the record's order, each from flow-stats.
    assert_eq!(ids(&up["upgraded"], Some("monitor")), order, "{up:#}");
    for u in up["upgraded"].as_array().unwrap() {
        assert_eq!(
            u["previous"],
            serde_json::json!({"name": "flow-stats", "sha256": sha}),
            "{u:#}"
        );
        // Snapshot, restore and switch take some microseconds.
        assert!(u["swap_us"].as_u64().unwrap() > 0, "{u:#}");
    }
    assert_eq!(up["refused"], serde_json::json!([]));
    assert_eq!(up["skipped"], serde_json::json!([]));
    assert!(
        manager.log().contains(&format!(
            "upgrade of {deployment} to flow-stats-2 ({sha}): 3 of 3 monitors run it"
        )),
        "{}",
        manager.log()
    );

    // The record, tmctl and every monitor name the new blob; the params
    // stayed link-load's.
    let after = deployment_record(&system.js, &deployment).await.unwrap();
    assert_eq!(after.analyzer.name, "flow-stats-2");
    assert_eq!(after.analyzer.sha256, sha);
    assert_eq!(after.params, before.params);
    let l = listed(&system, &deployment);
    assert_eq!(
        (&l["analyzer"], &l["sha256"]),
        (&"flow-stats-2".into(), &sha.clone().into())
    );
    assert_eq!(l["params"]["top_n"], 10000);
    for (m, name, digest, state) in running(&system, &deployment).await {
        assert_eq!(
            (name.as_str(), digest.as_str(), state.as_str()),
            ("flow-stats-2", sha.as_str(), "running"),
            "{m}"
        );
    }
    // link-load's second round published after the upgrade (so collected
    // from the new instances, after the replays ended) still holds every
    // packet and byte of every tap.
    let mut after_upgrade = Vec::new();
    while after_upgrade.len() < 2 {
        let (r, b) = loads
            .until("link-load", Duration::from_secs(30), |_| true)
            .await
            .unwrap_or_else(|| panic!("link-load stopped reporting\n{}", manager.log()));
        if r.at_unix_ms > report.at_unix_ms {
            after_upgrade.push(b);
        }
    }
    let next = &after_upgrade[1];
    assert!(common::links_match(next, &traffic.taps), "{next:#}");
    assert_eq!(next["missing"], serde_json::json!([]));

    // Again, back to flow-stats with params of its own: they reach the
    // monitors and become the deployment's.
    common::unload_app(&system, "mgr-a", "upgrader").await;
    load_upgrader(
        &system,
        serde_json::json!({"deployment": deployment, "blob": "flow-stats",
                           "params": {"top_n": 1, "idle_timeout_s": 0}}),
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));
    let (_, back) = upgrades
        .until("upgrade", Duration::from_secs(30), |_| true)
        .await
        .unwrap();
    assert_eq!(back["complete"], true, "{back:#}");
    assert_eq!(back["analyzer"]["name"], "flow-stats");
    for u in back["upgraded"].as_array().unwrap() {
        assert_eq!(u["previous"]["name"], "flow-stats-2", "{u:#}");
    }
    let record = deployment_record(&system.js, &deployment).await.unwrap();
    assert_eq!(record.analyzer.name, "flow-stats");
    assert_eq!(
        manager::archive::to_json(&record.params),
        serde_json::json!({"top_n": 1, "idle_timeout_s": 0})
    );
    let collected = tmctl(&system, &["--json", "collect", &deployment]);
    let results = collected["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{collected:#}");
    for r in results {
        assert_eq!(r["results"]["top"].as_array().unwrap().len(), 1, "{r:#}");
        let address = r["address"].as_str().unwrap();
        assert_eq!(
            r["stats"]["packets_in"].as_u64().unwrap(),
            packets_of(&traffic, address),
            "{r:#}"
        );
    }

    // The upgrader's unload undoes nothing; link-load's unloads the
    // deployment it still owns.
    let stopped = common::unload_app(&system, "mgr-a", "upgrader").await;
    assert_eq!(stopped.last_error, None);
    assert_eq!(
        deployment_record(&system.js, &deployment)
            .await
            .unwrap()
            .analyzer
            .name,
        "flow-stats"
    );
    common::unload_app(&system, "mgr-a", "link-load").await;
    assert!(deployment_record(&system.js, &deployment).await.is_none());
}

/// dos-detect refuses flow-stats' params (`bad_params`) and, given its own,
/// flow-stats' state (`restore_refused`): each time the first monitor
/// refuses, the others are not asked, every monitor goes on running
/// flow-stats with its counts, and the record keeps flow-stats.
/// Params the app cannot use, and a deployment its manager does not own,
/// refuse the load and change nothing.
#[tokio::test]
async fn a_refusal_stops_the_roll_and_the_record_keeps_the_old_module() {
    let topology = common::figure5();
    let traffic = network_traffic(&topology);
    let system = System::start(&traffic).await;
    let sha = system.put("flow-stats", BlobKind::Analyzer).await;
    let dd = system.put("dos-detect", BlobKind::Analyzer).await;
    system.put("upgrader", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut upgrades = Reports::subscribe(&system.client, "mgr-a", "upgrader").await;

    // The manager's own deployment, and one of tmctl's.
    let d = tmctl(
        &system,
        &[
            "--json",
            "--as",
            "mgr-a",
            "deploy",
            "flow-stats",
            "--id",
            "f1",
            "--params",
            r#"{"top_n": 50}"#,
        ],
    );
    assert_eq!(d["placed"].as_array().unwrap().len(), 3, "{d:#}");
    tmctl(&system, &["--json", "deploy", "flow-stats", "--id", "f2"]);
    let record = deployment_record(&system.js, "f1").await.unwrap();
    assert_eq!(record.owner, "mgr-a");
    let order: Vec<String> = record.targets.iter().map(|t| t.monitor.clone()).collect();
    assert_eq!(order.len(), 3);
    // Wait until the replays are counted, so there is state to carry.
    let total: u64 = traffic.taps.values().map(|t| t.packets).sum();
    let mut counted = 0;
    for _ in 0..300 {
        let c = tmctl(&system, &["--json", "collect", "f1"]);
        counted = c["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["stats"]["packets_in"].as_u64().unwrap())
            .sum();
        if counted == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, total);

    // Without params, dos-detect is offered flow-stats' params and refuses
    // them; with its own, it refuses flow-stats' state. Either way the
    // first monitor refuses and the others are not asked.
    let first = roll(
        &system,
        &manager,
        &mut upgrades,
        serde_json::json!({"deployment": "f1", "blob": "dos-detect"}),
    )
    .await;
    let second = roll(
        &system,
        &manager,
        &mut upgrades,
        serde_json::json!({"deployment": "f1", "blob": "dos-detect",
                           "params": {"syn_threshold": 100}}),
    )
    .await;
    for (up, code, says) in [
        (&first, "bad_params", "unknown field `top_n`"),
        (&second, "restore_refused", ""),
    ] {
        assert_eq!(up["deployment"], "f1");
        assert_eq!(
            up["analyzer"],
            serde_json::json!({"name": "dos-detect", "sha256": dd})
        );
        assert_eq!(up["complete"], false, "{up:#}");
        assert_eq!(up["upgraded"], serde_json::json!([]), "{up:#}");
        let refused = up["refused"].as_array().unwrap();
        assert_eq!(refused.len(), 1, "{up:#}");
        assert_eq!(refused[0]["monitor"], order[0].as_str(), "{up:#}");
        assert_eq!(refused[0]["code"], code, "{up:#}");
        let message = refused[0]["message"].as_str().unwrap();
        assert!(!message.is_empty() && message.contains(says), "{up:#}");
        assert_eq!(ids(&up["skipped"], None), order[1..].to_vec(), "{up:#}");
    }
    let log = manager.log();
    assert!(
        log.contains(&format!(
            "upgrade of f1 to dos-detect ({dd}): 0 of 3 monitors run it; {} refused (restore_refused: ",
            order[0]
        )) && log.contains(&format!(
            "not asked, on the old module: {}, {}; the deployment's record keeps the old module",
            order[1], order[2]
        )),
        "{log}"
    );

    // Nothing moved: the record, tmctl and every monitor name flow-stats,
    // which still holds every packet (the refusing monitor's included).
    let after = deployment_record(&system.js, "f1").await.unwrap();
    assert_eq!(after.analyzer.name, "flow-stats");
    assert_eq!(after.analyzer.sha256, sha);
    assert_eq!(after.params, record.params);
    let l = listed(&system, "f1");
    assert_eq!(
        (&l["analyzer"], &l["sha256"]),
        (&"flow-stats".into(), &sha.clone().into())
    );
    for (m, name, digest, state) in running(&system, "f1").await {
        assert_eq!(
            (name.as_str(), digest.as_str(), state.as_str()),
            ("flow-stats", sha.as_str(), "running"),
            "{m}"
        );
    }
    let c = tmctl(&system, &["--json", "collect", "f1"]);
    for r in c["results"].as_array().unwrap() {
        assert_eq!(
            r["stats"]["packets_in"].as_u64().unwrap(),
            packets_of(&traffic, r["address"].as_str().unwrap()),
            "{r:#}"
        );
        assert_eq!(
            r["results"]["packets"].as_u64().unwrap(),
            packets_of(&traffic, r["address"].as_str().unwrap()),
            "{r:#}"
        );
    }

    // Refused loads: each names what is wrong; nothing was published and
    // f1 and f2 still run flow-stats.
    let cases = [
        (
            serde_json::json!({"deployment": "f1"}),
            "blob = \"\": it is empty",
        ),
        (
            serde_json::json!({"deployment": "f.1", "blob": "flow-stats"}),
            "deployment = \"f.1\": only letters, digits, '_' and '-' are allowed",
        ),
        (
            serde_json::json!({"deployment": "f1", "blob": "flow-stats", "param": {}}),
            "unknown field `param`",
        ),
        (
            serde_json::json!({"deployment": "nosuch", "blob": "flow-stats"}),
            "unknown_deployment: deployment = \"nosuch\"",
        ),
        (
            serde_json::json!({"deployment": "f1", "blob": "nope"}),
            "blob_not_found: analyzer = \"nope\"",
        ),
        (
            serde_json::json!({"deployment": "f2", "blob": "flow-stats"}),
            "not_owner",
        ),
    ];
    for (p, needle) in cases {
        let e = load_upgrader(&system, p.clone())
            .await
            .into_result()
            .expect_err(&p.to_string());
        assert_eq!(e.code, ErrorCode::BadParams, "{p}: {e}");
        assert!(e.message.contains(needle), "{p}: {e}");
    }
    assert!(
        upgrades
            .until("upgrade", Duration::from_millis(500), |_| true)
            .await
            .is_none()
    );
    for id in ["f1", "f2"] {
        let r = deployment_record(&system.js, id).await.unwrap();
        assert_eq!(r.analyzer.name, "flow-stats", "{id}");
    }
}
