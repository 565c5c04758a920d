//! The manager's Prometheus endpoint: parsed by the reference OpenMetrics
//! parser; app states equal `apps.list`, and the histograms count the
//! commands the manager answered and sent.

mod common;

use std::time::Duration;

use bus_schema::store::BlobKind;
use bus_schema::{AppList, AppListRequest, AppLoadRequest, AppSource, AppStatus, BlobRef, subject};
use common::{ManagerProc, Reports, System, Traffic};
use harness::metrics::{self, value};

#[tokio::test]
async fn manager_metrics_parse_and_match_the_apps() {
    let system = System::start(&Traffic::default()).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    system.put("link-load", BlobKind::MgmtApp).await;
    let addr = metrics::free_addr();
    let manager = ManagerProc::start(
        &system.nats,
        &system.client,
        "mgr-m",
        &["--metrics-listen", &addr.to_string()],
    )
    .await;
    let mut reports = Reports::subscribe(&system.client, "mgr-m", "link-load").await;
    let _: AppStatus = common::request(
        &system.client,
        subject::manager_apps_load("mgr-m"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: String::new(),
            }),
            params: common::params(serde_json::json!({"every_ms": 200})),
        },
    )
    .await
    .into_result()
    .unwrap();
    // Two rounds: each collects from the three monitors.
    for _ in 0..2 {
        reports
            .until("link-load", Duration::from_secs(20), |_| true)
            .await
            .unwrap_or_else(|| panic!("no round\n{}", manager.log()));
    }
    let list: AppList = common::request(
        &system.client,
        subject::manager_apps_list("mgr-m"),
        &AppListRequest {},
    )
    .await
    .into_result()
    .unwrap();
    let samples = tokio::task::spawn_blocking(move || metrics::scrape(addr))
        .await
        .unwrap()
        .unwrap();
    let running = list
        .apps
        .iter()
        .filter(|a| a.state == bus_schema::AppState::Running)
        .count();
    assert_eq!(running, 1);
    assert_eq!(
        value(&samples, "tm_manager_apps", &[("state", "running")]),
        Some(running as f64)
    );
    assert_eq!(
        value(&samples, "tm_manager_apps", &[("state", "failed")]),
        Some(0.0)
    );
    let count = |name: &str, command: &str| {
        value(&samples, &format!("{name}_count"), &[("command", command)]).unwrap_or(0.0)
    };
    assert_eq!(
        count("tm_manager_command_duration_seconds", "apps.load"),
        1.0
    );
    assert!(count("tm_manager_command_duration_seconds", "apps.list") >= 2.0);
    // link-load deployed flow-stats on three monitors and collected from
    // each at least twice.
    assert_eq!(
        count("tm_manager_monitor_request_duration_seconds", "load"),
        3.0
    );
    assert!(count("tm_manager_monitor_request_duration_seconds", "collect") >= 6.0);
    // The histogram's buckets are cumulative and end with +Inf = count.
    let inf = value(
        &samples,
        "tm_manager_monitor_request_duration_seconds_bucket",
        &[("command", "load"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(3.0));
    assert_eq!(value(&samples, "tm_nats_reconnects_total", &[]), Some(0.0));
}
