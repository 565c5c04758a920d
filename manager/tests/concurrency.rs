//! Several managers against one system: racing for deployment ids, a dead
//! owner's deployment adopted by another manager, a monitor that stops
//! answering, and apps that misbehave while others carry on.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bus_schema::store::BlobKind;
use bus_schema::{
    AppList, AppListRequest, AppLoadRequest, AppSource, AppState, AppStatus, BlobRef,
    DeploymentRecord, DesiredState, ErrorCode, Filter, Reply, Value, subject,
};
use common::{ManagerProc, Reports, System, Traffic, deployment_record, monitor_id, params};
use manager::control::{Control, DeploySpec, Targets};

fn small_traffic(topology: &manager::topology::Topology) -> Traffic {
    common::traffic(
        topology,
        &[
            (1, 3, 2, 20, 100),
            (3, 1, 1, 10, 300),
            (1, 4, 1, 15, 80),
            (3, 4, 1, 12, 50),
        ],
    )
}

fn record(id: &str, owner: &str) -> DeploymentRecord {
    DeploymentRecord {
        deployment: id.into(),
        analyzer: BlobRef {
            name: "flow-stats".into(),
            sha256: "0".repeat(64),
        },
        params: Value::Nil,
        filter: Filter::default(),
        targets: vec![],
        owner: owner.into(),
        desired: DesiredState::Running,
        report_every_ms: None,
        created_unix_ms: 0,
        updated_unix_ms: 0,
    }
}

/// Three managers, each on its own connection, race to create the same
/// deployment id 1,000 times: every round exactly one wins, the others are
/// told who did, and the stored record is the winner's.
#[tokio::test]
async fn three_managers_race_for_each_id_and_exactly_one_wins() {
    let nats = harness::NatsServer::start().await.unwrap();
    let mut managers = Vec::new();
    for id in ["mgr-a", "mgr-b", "mgr-c"] {
        managers.push(Control::connect(nats.client().await, id, 1).await.unwrap());
    }
    let mut wins: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..1000 {
        let id = format!("race-{round}");
        let (ra, rb, rc) = (
            record(&id, "mgr-a"),
            record(&id, "mgr-b"),
            record(&id, "mgr-c"),
        );
        let (a, b, c) = tokio::join!(
            managers[0].claim(&ra),
            managers[1].claim(&rb),
            managers[2].claim(&rc),
        );
        let outcomes = [("mgr-a", a), ("mgr-b", b), ("mgr-c", c)];
        let winners: Vec<&str> = outcomes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(m, _)| *m)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let winner = winners[0];
        for (m, r) in &outcomes {
            if let Err(e) = r {
                assert_eq!(e.code, ErrorCode::DeploymentExists, "{m}: {e}");
                assert!(
                    e.message.contains(&format!("owned by \"{winner}\"")),
                    "{m}: {e}"
                );
            }
        }
        let (stored, _) = managers[1].record(&id).await.unwrap().unwrap();
        assert_eq!(stored.owner, winner, "round {round}");
        *wins.entry(winner.to_owned()).or_default() += 1;
    }
    assert_eq!(wins.values().sum::<u32>(), 1000);
    eprintln!("wins per manager over 1000 rounds: {wins:?}");
}

/// The same race through the whole deploy: one manager's deployment runs on
/// the monitors, the others are refused before any monitor is touched.
#[tokio::test]
async fn racing_deploys_load_exactly_one_deployment() {
    let topology = common::figure5();
    let system = System::start(&small_traffic(&topology)).await;
    let sha = system.put("flow-stats", BlobKind::Analyzer).await;
    let mut managers = Vec::new();
    for id in ["mgr-a", "mgr-b", "mgr-c"] {
        managers.push(
            Control::connect(system.nats.client().await, id, 1)
                .await
                .unwrap(),
        );
    }
    for round in 0..5 {
        let spec = DeploySpec {
            deployment: format!("flows-{round}"),
            analyzer: "flow-stats".into(),
            sha256: Some(sha.clone()),
            params: Value::Nil,
            filter: Filter::default(),
            targets: Targets::All,
            report_every_ms: None,
        };
        let (a, b, c) = tokio::join!(
            managers[0].deploy(&spec),
            managers[1].deploy(&spec),
            managers[2].deploy(&spec)
        );
        let won: Vec<_> = [a, b, c].into_iter().filter_map(Result::ok).collect();
        assert_eq!(won.len(), 1, "round {round}");
        let winner = won[0].record.owner.clone();
        assert_eq!(won[0].placed.len(), 3);
        for m in &system.monitors {
            let s = m.status(&system.client).await;
            let mine: Vec<_> = s
                .deployments
                .iter()
                .filter(|d| d.deployment == spec.deployment)
                .collect();
            assert_eq!(mine.len(), 1, "{}: {s:#?}", m.id);
            assert_eq!(mine[0].owner, winner);
        }
        let owner = managers.iter().find(|m| m.id() == winner).unwrap();
        let fin = owner.unload(&spec.deployment, false).await.unwrap();
        assert_eq!(fin.results.len(), 3);
        assert!(fin.missing.is_empty());
    }
}

/// The owner manager is killed: its deployment keeps running and can be
/// collected by anyone; adoption is refused while the owner is up, allowed
/// once its heartbeat is stale; the adopter then configures and unloads it
/// on every monitor, and nobody else can.
#[tokio::test]
async fn a_dead_managers_deployment_keeps_running_and_is_adopted() {
    let topology = common::figure5();
    let traffic = small_traffic(&topology);
    let system = System::start(&traffic).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    system.put("link-load", BlobKind::MgmtApp).await;
    let mut owner = ManagerProc::start(
        &system.nats,
        &system.client,
        "mgr-a",
        &["--heartbeat-ms", "500"],
    )
    .await;
    let _: AppStatus = common::request(
        &system.client,
        subject::manager_apps_load("mgr-a"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: String::new(),
            }),
            params: params(serde_json::json!({"every_ms": 200})),
        },
    )
    .await
    .into_result()
    .unwrap();
    let deployment = "link-load-flow-stats-mgr-a-1";
    assert_eq!(
        deployment_record(&system.js, deployment)
            .await
            .unwrap()
            .owner,
        "mgr-a"
    );

    let b = Control::connect(system.nats.client().await, "mgr-b", 1)
        .await
        .unwrap();
    let c = Control::connect(system.nats.client().await, "mgr-c", 1)
        .await
        .unwrap();
    // While mgr-a is up nobody adopts without force, nor unloads.
    let e = b.adopt(deployment, false).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotOwner);
    assert!(e.message.contains("which is up"), "{e}");
    assert_eq!(
        b.unload(deployment, false).await.unwrap_err().code,
        ErrorCode::NotOwner
    );

    owner.kill();
    // Its deployment runs on: every monitor analyzes its whole capture.
    let total: u64 = traffic.taps.values().map(|t| t.packets).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = c.collect(deployment, Duration::from_secs(2)).await.unwrap();
        assert!(got.missing.is_empty(), "{:?}", got.missing);
        if got
            .results
            .iter()
            .map(|r| r.window.stats.packets_in)
            .sum::<u64>()
            == total
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "monitors stopped analyzing after the owner died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &system.monitors {
        let s = m.status(&system.client).await;
        assert_eq!(s.deployments.len(), 1);
        assert_eq!(s.deployments[0].state, bus_schema::DeploymentState::Running);
    }

    // Three missed heartbeats (1.5 s) later mgr-b may adopt it.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(b.adopt(deployment, false).await.unwrap(), "mgr-a");
    assert_eq!(
        deployment_record(&system.js, deployment)
            .await
            .unwrap()
            .owner,
        "mgr-b"
    );
    // mgr-c lost the adoption: it is not the owner now.
    let e = c
        .configure(deployment, params(serde_json::json!({"top_n": 3})), false)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotOwner);
    assert!(e.message.contains("owned by \"mgr-b\""), "{e}");

    // The monitors accept the adopter from the record.
    let conf = b
        .configure(deployment, params(serde_json::json!({"top_n": 3})), false)
        .await
        .unwrap();
    assert_eq!(conf.done.len(), 3, "{:?}", conf.failed);
    for m in &system.monitors {
        assert_eq!(m.status(&system.client).await.deployments[0].owner, "mgr-b");
    }
    let fin = b.unload(deployment, false).await.unwrap();
    assert!(fin.missing.is_empty(), "{:?}", fin.missing);
    assert_eq!(
        fin.results
            .iter()
            .map(|r| r.window.stats.packets_in)
            .sum::<u64>(),
        total
    );
    for r in &fin.results {
        assert!(r.window.last);
        // top_n 3 took effect before the final window.
        assert!(common_top_len(&r.window.results) <= 3);
    }
    for m in &system.monitors {
        assert!(m.status(&system.client).await.deployments.is_empty());
    }
    assert!(deployment_record(&system.js, deployment).await.is_none());
}

fn common_top_len(v: &Value) -> usize {
    manager::archive::to_json(v)["top"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A monitor that stops answering (SIGSTOP) during collect: the others'
/// results come back within the timeout with a flag for the silent one, to
/// a direct collect and to the link-load app alike.
#[tokio::test]
async fn a_monitor_that_stops_answering_is_flagged_not_fatal() {
    let topology = common::figure5();
    let traffic = small_traffic(&topology);
    let system = System::start(&traffic).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    system.put("link-load", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "link-load").await;
    let _: AppStatus = common::request(
        &system.client,
        subject::manager_apps_load("mgr-a"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: String::new(),
            }),
            params: params(serde_json::json!({"every_ms": 300, "collect_timeout_ms": 500})),
        },
    )
    .await
    .into_result()
    .unwrap();
    let deployment = "link-load-flow-stats-mgr-a-1";
    let silent = monitor_id("10.9.0.3");
    // Wait until everything is analyzed, then silence one monitor.
    reports
        .until("link-load", Duration::from_secs(30), |b| {
            b["links"].as_array().is_some_and(|l| {
                l.len() == traffic.taps.len()
                    && l.iter().all(|x| {
                        traffic.taps[&(
                            x["monitor_address"].as_str().unwrap().to_owned(),
                            x["link_id"].as_u64().unwrap() as u32,
                        )]
                            .packets
                            == x["packets"]
                    })
            })
        })
        .await
        .unwrap_or_else(|| panic!("no complete report\n{}", manager.log()));
    system.monitor(&silent).signal("STOP");

    let me = Control::connect(system.nats.client().await, "observer", 1)
        .await
        .unwrap();
    let started = Instant::now();
    let got = me
        .collect(deployment, Duration::from_millis(500))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "collect took {took:?}");
    assert_eq!(got.results.len(), 2);
    assert!(got.results.iter().all(|r| r.window.monitor != silent));
    assert_eq!(got.missing.len(), 1);
    assert_eq!(got.missing[0].monitor, silent);
    assert_eq!(got.missing[0].error.code, ErrorCode::Timeout);

    // The app's next rounds flag it and still lay the others on the topology.
    let (_, body) = reports
        .until("link-load", Duration::from_secs(10), |b| {
            b["missing"].as_array().is_some_and(|m| m.len() == 1)
        })
        .await
        .unwrap_or_else(|| panic!("no report flagging the silent monitor\n{}", manager.log()));
    assert!(
        body["missing"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{silent}: ")),
        "{body:#}"
    );
    let links = body["links"].as_array().unwrap();
    assert!(!links.is_empty());
    assert!(links.iter().all(|l| l["monitor_address"] != "10.9.0.3"));
    system.monitor(&silent).signal("CONT");
}

/// Apps that trap or overrun are unloaded and reported; link-load beside
/// them carries on. Broken modules are refused at load, naming why.
#[tokio::test]
async fn misbehaving_apps_are_unloaded_and_others_carry_on() {
    let topology = common::figure5();
    let system = System::start(&small_traffic(&topology)).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProc::start(
        &system.nats,
        &system.client,
        "mgr-a",
        &[
            "--app-call-timeout-ms",
            "500",
            "--apps-dir",
            dir.path().to_str().unwrap(),
        ],
    )
    .await;
    // Modules in the text format are assembled: managers compile binary
    // modules only.
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        let bytes = if name.ends_with(".wat") {
            wat::parse_str(text).unwrap()
        } else {
            text.as_bytes().to_vec()
        };
        std::fs::write(&p, bytes).unwrap();
        AppSource::File {
            path: p.to_string_lossy().into_owned(),
        }
    };
    let load = |app: &str, source: AppSource, p: serde_json::Value| {
        let client = system.client.clone();
        let app = app.to_owned();
        async move {
            common::request::<_, AppStatus>(
                &client,
                subject::manager_apps_load("mgr-a"),
                &AppLoadRequest {
                    app,
                    source,
                    params: params(p),
                },
            )
            .await
        }
    };
    let mut good_reports = Reports::subscribe(&system.client, "mgr-a", "good").await;
    let mut spin_reports = Reports::subscribe(&system.client, "mgr-a", "spin").await;
    load(
        "good",
        AppSource::File {
            path: common::wasm_path("link-load")
                .to_string_lossy()
                .into_owned(),
        },
        serde_json::json!({"every_ms": 200}),
    )
    .await
    .into_result()
    .unwrap();

    // An app whose timer never returns.
    let spin = r#"(module
      (import "tm" "call" (func $call (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "set_timer")
      (data (i32.const 64) "\82\a5timer\01\a8every_ms\32")
      (func (export "tm_app_abi_version") (result i32) (i32.const 1))
      (func (export "tm_alloc") (param i32) (result i32) (i32.const 4096))
      (func (export "tm_app_start") (param i32 i32) (result i32)
        (drop (call $call (i32.const 16) (i32.const 9) (i32.const 64) (i32.const 18)))
        (i32.const 0))
      (func (export "tm_app_timer") (param i32 i64) (result i32) (loop (br 0)) (i32.const 0))
      (func (export "tm_last_error") (result i64) (i64.const 0)))"#;
    let status = load("spin", file("spin.wat", spin), serde_json::Value::Null)
        .await
        .into_result()
        .unwrap();
    assert_eq!(status.state, AppState::Running);
    let (report, body) = spin_reports
        .until("app-failed", Duration::from_secs(10), |_| true)
        .await
        .unwrap_or_else(|| panic!("no app-failed report\n{}", manager.log()));
    assert_eq!(report.app, "spin");
    assert!(
        body.as_str().unwrap().contains("ran longer than 500 ms"),
        "{body}"
    );
    let list: AppList = common::request(
        &system.client,
        subject::manager_apps_list("mgr-a"),
        &AppListRequest {},
    )
    .await
    .into_result()
    .unwrap();
    let by_name: BTreeMap<_, _> = list.apps.iter().map(|a| (a.app.as_str(), a)).collect();
    assert_eq!(by_name["spin"].state, AppState::Failed);
    assert!(
        by_name["spin"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("tm_app_timer ran longer than 500 ms")
    );
    assert_eq!(by_name["good"].state, AppState::Running);
    // link-load keeps reporting after the other app died: the reports
    // queued while the spinning timer held the runtime come first, then
    // one made after the failure.
    let after = report.at_unix_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (r, _) = good_reports
            .until("link-load", within, |_| true)
            .await
            .unwrap_or_else(|| panic!("no link-load report after the failure at {after}"));
        if r.at_unix_ms > after {
            break;
        }
    }

    // Refused at load, naming why.
    let trap = r#"(module (memory (export "memory") 1)
      (func (export "tm_app_abi_version") (result i32) (i32.const 1))
      (func (export "tm_alloc") (param i32) (result i32) (i32.const 4096))
      (func (export "tm_app_start") (param i32 i32) (result i32) unreachable)
      (func (export "tm_last_error") (result i64) (i64.const 0)))"#;
    let e = load("trap", file("trap.wat", trap), serde_json::Value::Null)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::GuestTrap, "{e}");
    assert!(e.message.contains("tm_app_start trapped"), "{e}");
    let v2 = r#"(module (memory (export "memory") 1)
      (func (export "tm_app_abi_version") (result i32) (i32.const 2)))"#;
    let e = load("v2", file("v2.wat", v2), serde_json::Value::Null)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AbiMismatch);
    assert!(e.message.contains("ABI 2"), "{e}");
    let e = load(
        "junk",
        file("junk.wasm", "\0asm junk"),
        serde_json::Value::Null,
    )
    .await
    .into_result()
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadModule);
    let e = load(
        "missing",
        AppSource::File {
            path: dir.path().join("app.wasm").to_string_lossy().into_owned(),
        },
        serde_json::Value::Null,
    )
    .await
    .into_result()
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BlobNotFound);
    assert!(e.message.contains("app.wasm"), "{e}");
    // Outside the manager's --apps-dir nothing is read.
    let e = load(
        "elsewhere",
        AppSource::File {
            path: "/nonexistent/app.wasm".into(),
        },
        serde_json::Value::Null,
    )
    .await
    .into_result()
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
    assert!(e.message.contains("--apps-dir"), "{e}");
    // The app's own parameter check reaches the operator.
    let e = load(
        "bad-params",
        AppSource::File {
            path: common::wasm_path("link-load")
                .to_string_lossy()
                .into_owned(),
        },
        serde_json::json!({"every_ms": 5}),
    )
    .await
    .into_result()
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(e.message.contains("every_ms = 5"), "{e}");
    let bad: Reply<AppStatus> = load(
        "no/slash",
        file("x.wat", "(module)"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(bad.into_result().unwrap_err().code, ErrorCode::BadRequest);
}

/// A manager running the records watch sees a monitor record written,
/// changed and deleted without reading the bucket again: with a freshness
/// of an hour, a read copy would not change at all.
#[tokio::test]
async fn the_watched_monitor_records_follow_the_bucket() {
    use async_nats::jetstream;
    use bus_schema::store;

    let nats = harness::NatsServer::start().await.unwrap();
    let control = Control::connect(nats.client().await, "mgr-a", 1)
        .await
        .unwrap();
    let hour = Duration::from_secs(3600);
    assert!(control.records_within(hour).await.unwrap().is_empty());
    tokio::spawn(control.clone().watch_records());
    let kv = jetstream::new(nats.client().await)
        .get_key_value(store::MONITORS_BUCKET)
        .await
        .unwrap();
    let put = |address: &str| {
        let record = bus_schema::MonitorRecord {
            monitor: "10.0.0.1".into(),
            address: address.into(),
            version: "0.0.0".into(),
            protocol: bus_schema::PROTOCOL_VERSION,
            links: vec![],
            started_unix_ms: manager::control::now_ms(),
            heartbeat_unix_ms: manager::control::now_ms(),
        };
        let kv = kv.clone();
        async move {
            kv.put("10.0.0.1", bus_schema::encode(&record).unwrap().into())
                .await
                .unwrap();
        }
    };
    let address_within_5s = |want: Option<&'static str>| {
        let control = control.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let records = control.records_within(hour).await.unwrap();
                let got = records.get("10.0.0.1").map(|r| r.address.clone());
                if got.as_deref() == want {
                    return;
                }
                assert!(Instant::now() < deadline, "wanted {want:?}, have {got:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    put("10.0.0.1").await;
    address_within_5s(Some("10.0.0.1")).await;
    put("10.0.0.9").await;
    address_within_5s(Some("10.0.0.9")).await;
    kv.delete("10.0.0.1").await.unwrap();
    address_within_5s(None).await;
}
