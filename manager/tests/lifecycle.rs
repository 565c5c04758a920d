//! The lifecycle S1–S8 (ARCHITECTURE.md) driven by the `link-load` mgmt app in a real
//! `tm-manager`, against three real monitors replaying the figure-5
//! network's traffic; every per-link figure and the traffic matrix are
//! checked against the generated captures.

mod common;

use std::time::Duration;

use bus_schema::store::BlobKind;
use bus_schema::{
    AppList, AppListRequest, AppLoadRequest, AppSource, AppState, AppStatus, AppUnloadRequest,
    BlobRef, ErrorCode, Reply, Value, subject,
};
use common::{ManagerProc, Reports, System, deployment_record, params};

#[tokio::test]
async fn link_load_runs_s1_to_s8_with_per_link_truth() {
    let topology = common::figure5();
    let traffic = common::figure5_traffic(&topology);
    let system = System::start(&traffic).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    let app_sha = system.put("link-load", BlobKind::MgmtApp).await;
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "link-load").await;

    // S1: the manager loads the app from the object store and starts it; its
    // start deploys flow-stats to every monitor (S2), which fetch, verify and
    // start it (S3).
    let status: AppStatus = common::request(
        &system.client,
        subject::manager_apps_load("mgr-a"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: app_sha.clone(),
            }),
            params: params(serde_json::json!({
                "every_ms": 300, "capacity_bps": 1_000_000.0, "prefixes": common::prefixes(),
                "archive": true,
            })),
        },
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));
    assert_eq!(status.state, AppState::Running);
    assert_eq!(status.sha256, app_sha);

    // The deployment is desired state in KV, owned by the manager.
    let deployment = "link-load-flow-stats-mgr-a-1";
    let record = deployment_record(&system.js, deployment)
        .await
        .expect("deployment recorded");
    assert_eq!(record.owner, "mgr-a");
    assert_eq!(record.targets.len(), 3);
    for m in &system.monitors {
        let s = m.status(&system.client).await;
        assert_eq!(s.deployments.len(), 1, "{s:#?}");
        assert_eq!(s.deployments[0].deployment, deployment);
        assert_eq!(s.deployments[0].owner, "mgr-a");
    }

    // S4/S5: the app collects on its timer and lays each round on the
    // topology; once the replays are analyzed, every link is exact.
    let (report, body) = reports
        .until("link-load", Duration::from_secs(60), |b| {
            common::links_match(b, &traffic.taps)
        })
        .await
        .unwrap_or_else(|| panic!("no exact link-load report\n{}", manager.log()));
    assert_eq!(report.manager, "mgr-a");
    assert_eq!(body["deployment"], deployment);
    assert_eq!(body["missing"], serde_json::json!([]));
    assert_eq!(body["unknown_taps"], serde_json::json!([]));
    // The two directions nobody taps.
    assert_eq!(
        common::router_pairs(&body["unmonitored"]),
        common::pairs(&[("10.0.4.1", "10.0.1.1"), ("10.0.4.1", "10.0.3.1")])
    );
    // Rates over each link's packet-time span, utilisation against 1 Mbit/s.
    for l in body["links"].as_array().unwrap() {
        let t = traffic.taps[&(
            l["monitor_address"].as_str().unwrap().to_owned(),
            l["link_id"].as_u64().unwrap() as u32,
        )];
        let span = (t.last_ns - t.first_ns) as f64 / 1e9;
        let bps = t.bytes as f64 * 8.0 / span;
        assert!((l["pps"].as_f64().unwrap() - t.packets as f64 / span).abs() < 1e-6);
        assert!((l["bps"].as_f64().unwrap() - bps).abs() < 1e-6);
        assert!((l["utilisation"].as_f64().unwrap() - bps / 1e6).abs() < 1e-9);
        // From the monitors' status: each replay ran to its end, losing nothing.
        assert_eq!(l["capture_state"], "finished", "{l:#}");
        assert_eq!(l["capture_drops"], 0);
    }
    // The traffic matrix: each flow once, however many taps saw it; R4→R1
    // traffic crosses no tap and is absent.
    let matrix: std::collections::BTreeMap<(String, String), (u64, u64, u64)> = body["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["from_router"].as_str().unwrap().into(),
                    c["to_router"].as_str().unwrap().into(),
                ),
                (
                    c["flows"].as_u64().unwrap(),
                    c["packets"].as_u64().unwrap(),
                    c["bytes"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(matrix, traffic.matrix);
    assert!(!matrix.contains_key(&("10.0.4.1".to_string(), "10.0.1.1".to_string())));

    // The round's results were archived as JSON lines per deployment/monitor.
    let archived = walk(&manager.archive());
    for m in &system.monitors {
        let part = format!("deployment={deployment}/monitor={}/", m.id);
        assert!(
            archived
                .iter()
                .any(|p| p.contains(&part) && p.ends_with(".jsonl")),
            "nothing archived under {part}: {archived:?}"
        );
    }

    // The app is listed as running.
    let list: AppList = common::request(
        &system.client,
        subject::manager_apps_list("mgr-a"),
        &AppListRequest {},
    )
    .await
    .into_result()
    .unwrap();
    assert_eq!(list.apps.len(), 1);
    assert_eq!(list.apps[0].state, AppState::Running);

    // A second load under the same name is refused.
    let again: Reply<AppStatus> = common::request(
        &system.client,
        subject::manager_apps_load("mgr-a"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: String::new(),
            }),
            params: Value::Nil,
        },
    )
    .await;
    assert_eq!(again.into_result().unwrap_err().code, ErrorCode::AppExists);

    // S8: unloading the app runs its stop, which unloads flow-stats on every
    // monitor (S6/S7) and reports the final results, exact per link.
    let stopped: AppStatus = common::request(
        &system.client,
        subject::manager_apps_unload("mgr-a"),
        &AppUnloadRequest {
            app: "link-load".into(),
        },
    )
    .await
    .into_result()
    .unwrap();
    assert_eq!(stopped.state, AppState::Stopped);
    assert_eq!(stopped.last_error, None);
    let (_, last) = reports
        .until("link-load-final", Duration::from_secs(10), |_| true)
        .await
        .unwrap_or_else(|| panic!("no final report\n{}", manager.log()));
    assert!(common::links_match(&last, &traffic.taps), "{last:#}");
    for m in &system.monitors {
        let s = m.status(&system.client).await;
        assert!(
            s.deployments.is_empty(),
            "{} still runs {:?}",
            m.id,
            s.deployments
        );
    }
    assert!(deployment_record(&system.js, deployment).await.is_none());
    let list: AppList = common::request(
        &system.client,
        subject::manager_apps_list("mgr-a"),
        &AppListRequest {},
    )
    .await
    .into_result()
    .unwrap();
    assert!(list.apps.is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}
