//! `tm-console` in headless Chromium, against the figure-5 network: three
//! real monitors replaying its traffic (one tap also carries a SYN flood),
//! a real `tm-manager` running link-load and dos-trace, dos-detect
//! deployed with tmctl. The page must show the 4 routers and 6 tapped
//! directions, each link's bytes as link-load reports them, a result window
//! within 2 s of its publication, the flood's alert in the event feed and
//! its traced path on the map, the tmctl deployment — unloading it from the
//! page removes it from `tmctl deployments` — and a stopped monitor's
//! directions as down.

mod common;

use std::time::{Duration, Instant};

use bus_schema::store::BlobKind;
use bus_schema::{AppLoadRequest, AppSource, AppStatus, BlobRef, ResultWindow, subject};
use common::{ConsoleProc, ManagerProc, Reports, System, Traffic};
use futures::StreamExt;
use harness::browser::Browser;
use serde_json::Value;

/// The figure-5 traffic of the lifecycle test, and a SYN flood from
/// spoofed sources to a host behind R2 (10.20.0.9:80) on R1→R2 after it.
fn traffic(topology: &manager::topology::Topology) -> Traffic {
    let mut t = common::figure5_traffic(topology);
    let tap = ("10.9.0.1".to_string(), 0);
    let frames = t.frames.get_mut(&tap).unwrap();
    let after = frames.last().unwrap().ts_ns + 1_000_000;
    let mut tl = pcapgen::Timeline::new(after, 1000);
    pcapgen::scenarios::syn_flood(&mut tl, "10.20.0.9:80".parse().unwrap(), 2000, 1000);
    frames.extend(tl.frames);
    t
}

fn tmctl(system: &System, args: &[&str]) -> Value {
    let out = common::tmctl_at(&system.nats.url(), args);
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

fn deployment_ids(system: &System) -> Vec<String> {
    tmctl(system, &["--json", "deployments"])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deployment"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_console_shows_the_network_live_and_acts_for_its_operator() {
    let topology = common::figure5();
    let traffic = traffic(&topology);
    // Replays wait for dos-detect, link-load's flow-stats and dos-trace's
    // dos-detect.
    let system = System::start_waiting(&traffic, 3).await;
    system.put("flow-stats", BlobKind::Analyzer).await;
    system.put("dos-detect", BlobKind::Analyzer).await;
    let app_sha = system.put("link-load", BlobKind::MgmtApp).await;
    system.put("dos-trace", BlobKind::MgmtApp).await;
    let console = ConsoleProc::start(&system.nats.url(), &["--as", "ops"]);
    let browser = Browser::start(1400, 1000).await.unwrap();
    browser.open(&format!("{}/", console.url)).await.unwrap();

    // The map: 4 routers, 6 tapped directions, the 2 untapped ones.
    let map = browser
        .until(
            "return window.tm && tm.cy ? [tm.cy.nodes().length, tm.cy.edges('.tapped').length, tm.cy.edges('.untapped').length] : null",
            Duration::from_secs(20),
            |v| *v == serde_json::json!([4, 6, 2]),
        )
        .await
        .unwrap_or_else(|v| panic!("map: {v}\n{}", console.log()));
    assert_eq!(map, serde_json::json!([4, 6, 2]));

    // dos-detect deployed with tmctl, publishing windows: on the page.
    tmctl(
        &system,
        &[
            "--as",
            "ops",
            "deploy",
            "dos-detect",
            "--id",
            "dd",
            "--report-every-ms",
            "400",
        ],
    );
    browser
        .until(
            "return !!document.querySelector('#deployments tr[data-deployment=\"dd\"]')",
            Duration::from_secs(10),
            |v| *v == Value::Bool(true),
        )
        .await
        .unwrap_or_else(|v| panic!("the tmctl deployment is not on the page: {v}"));

    // dos-trace and link-load on a manager: their deployments start the
    // replays.
    let manager = ManagerProc::start(&system.nats, &system.client, "mgr-a", &[]).await;
    common::load_app(
        &system,
        "mgr-a",
        "dos-trace",
        serde_json::json!({"every_ms": 500, "syn_threshold": 500, "prefixes": common::prefixes()}),
    )
    .await;
    let mut reports = Reports::subscribe(&system.client, "mgr-a", "link-load").await;
    let status: AppStatus = common::request(
        &system.client,
        subject::manager_apps_load("mgr-a"),
        &AppLoadRequest {
            app: "link-load".into(),
            source: AppSource::Object(BlobRef {
                name: "link-load".into(),
                sha256: app_sha,
            }),
            params: common::params(serde_json::json!({
                "every_ms": 300, "capacity_bps": 1_000_000.0, "prefixes": common::prefixes(),
            })),
        },
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));
    assert_eq!(status.state, bus_schema::AppState::Running);

    // Each link's bytes on the page are link-load's, once every replay
    // finished (the figures stop changing).
    let (_, body) = reports
        .until("link-load", Duration::from_secs(60), |b| {
            let links = b["links"].as_array().unwrap();
            links.len() == 6 && links.iter().all(|l| l["capture_state"] == "finished")
        })
        .await
        .unwrap_or_else(|| panic!("no finished link-load report\n{}", manager.log()));
    let want: Vec<(String, String)> = body["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                format!(
                    "{}/{}",
                    l["monitor_address"].as_str().unwrap(),
                    l["link_id"]
                ),
                l["bytes"].to_string(),
            )
        })
        .collect();
    let mut want = want;
    want.sort();
    assert!(want.iter().all(|(_, b)| b != "0"), "{want:?}");
    let shown = browser
        .until(
            "return [...document.querySelectorAll('#links tr[data-link]')].map(r => [r.dataset.link, r.dataset.bytes]).sort()",
            Duration::from_secs(10),
            |v| *v == serde_json::json!(want),
        )
        .await
        .unwrap_or_else(|v| panic!("page bytes {v}, link-load's {want:?}"));
    assert_eq!(shown.as_array().unwrap().len(), 6);

    // The SYN flood's alert in the event feed.
    browser
        .until(
            "return [...document.querySelectorAll('#events li[data-alert=\"syn_flood\"]')].map(li => li.textContent)",
            Duration::from_secs(20),
            |v| {
                v.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|t| t.as_str().is_some_and(|t| t.contains("syn_flood on 10.20.0.9")))
                })
            },
        )
        .await
        .unwrap_or_else(|v| panic!("no SYN flood alert on the page: {v}"));
    // dos-trace's path to the victim's router, drawn on the map.
    browser
        .until(
            "return tm.cy.edges('.path').map(e => e.id()).sort()",
            Duration::from_secs(20),
            |v| *v == serde_json::json!(["10.0.1.1>10.0.2.1"]),
        )
        .await
        .unwrap_or_else(|v| panic!("the traced path on the map: {v}"));

    // A window on the page within 2 s of its publication.
    let mut windows = system
        .client
        .subscribe(subject::results("*", "dd"))
        .await
        .unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), windows.next())
            .await
            .expect("dd publishes windows")
            .unwrap();
        let published = Instant::now();
        let w: ResultWindow = bus_schema::decode(&msg.payload).unwrap();
        let script = format!(
            "const r = document.querySelector('#windows tr[data-window=\"{}/dd\"]'); return r ? Number(r.dataset.seq) : 0",
            w.monitor
        );
        browser
            .until(&script, Duration::from_secs(2), |v| {
                v.as_u64().is_some_and(|s| s >= w.seq)
            })
            .await
            .unwrap_or_else(|v| {
                panic!(
                    "window {} of {} not on the page within 2 s: {v}",
                    w.seq, w.monitor
                )
            });
        worst = worst.max(published.elapsed());
    }
    assert!(worst < Duration::from_secs(2), "{worst:?}");

    // Unloaded from the page: gone from tmctl's list.
    assert!(deployment_ids(&system).contains(&"dd".to_owned()));
    browser
        .js("document.querySelector('button[data-unload=\"dd\"]').click(); return true")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while deployment_ids(&system).contains(&"dd".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "dd still deployed; page error: {}",
            browser
                .js("return document.querySelector('#error').textContent")
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .until(
            "return !!document.querySelector('#deployments tr[data-deployment=\"dd\"]')",
            Duration::from_secs(10),
            |v| *v == Value::Bool(false),
        )
        .await
        .unwrap_or_else(|v| panic!("dd still on the page: {v}"));

    // A monitor stops: its two directions are down on the map and in the
    // links table.
    let gone = system.monitor("10-9-0-3");
    gone.signal("TERM");
    browser
        .until(
            "return [tm.cy.edges('.down').map(e => e.data('key')).sort(), [...document.querySelectorAll('#links tr.down')].map(r => r.dataset.link).sort()]",
            Duration::from_secs(40),
            |v| *v == serde_json::json!([["10.9.0.3/0", "10.9.0.3/1"], ["10.9.0.3/0", "10.9.0.3/1"]]),
        )
        .await
        .unwrap_or_else(|v| panic!("the stopped monitor's directions: {v}"));
    browser.close().await;
}

/// Identities enforced: a console with a viewer's seed sees the network
/// but NATS refuses its deploy, and the page shows the refusal; one with
/// an operator's seed deploys as that operator.
#[tokio::test]
async fn a_viewer_console_sees_but_cannot_act_and_an_operator_console_can() {
    let topology = common::figure5();
    let traffic = common::traffic(&topology, &[(1, 3, 2, 10, 100)]);
    let ids = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = topology
        .monitors()
        .iter()
        .flat_map(|a| ["--monitor".to_owned(), a.to_string()])
        .collect();
    args.extend(["--operator", "ops", "--viewer", "wall"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::auth_init(ids.path(), &args);
    let system = System::start_authenticated(&traffic, ids.path(), &["ops"]).await;
    let ops = ids.path().join("operator-ops.nk");
    let flow = common::wasm_path("flow-stats");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["--nats", &system.nats.url(), "--nats-creds"])
        .arg(&ops)
        .args(["analyzer", "put", flow.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deployments = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
            .args(["--nats", &system.nats.url(), "--json", "--nats-creds"])
            .arg(&ops)
            .arg("deployments")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let deploy = |id: &str| {
        format!(
            "const f = document.querySelector('#deploy-form');
             f.elements.deployment.value = '{id}'; f.elements.analyzer.value = 'flow-stats';
             f.requestSubmit(); return true"
        )
    };
    let browser = Browser::start(1400, 1000).await.unwrap();

    let viewer = ids.path().join("viewer-wall.nk");
    let wall = ConsoleProc::start(
        &system.nats.url(),
        &["--nats-creds", viewer.to_str().unwrap()],
    );
    browser.open(&format!("{}/", wall.url)).await.unwrap();
    browser
        .until(
            "return window.tm && tm.cy ? [tm.cy.nodes().length, document.querySelectorAll('#monitors tr[data-monitor]').length, document.querySelector('#who').textContent] : null",
            Duration::from_secs(20),
            |v| v[0] == 4 && v[1] == 3 && v[2].as_str().is_some_and(|w| w.contains("read-only")),
        )
        .await
        .unwrap_or_else(|v| panic!("the viewer's page: {v}\n{}", wall.log()));
    browser.js(&deploy("v1")).await.unwrap();
    let error = browser
        .until(
            "return document.querySelector('#error').textContent",
            Duration::from_secs(30),
            |v| v.as_str().is_some_and(|e| !e.is_empty()),
        )
        .await
        .unwrap_or_else(|v| panic!("no error shown: {v}\n{}", wall.log()));
    let error = error.as_str().unwrap();
    assert!(
        error.contains("unauthorized")
            && error.contains("refused by NATS")
            && error.contains("Permissions Violation"),
        "{error}"
    );
    assert_eq!(deployments(), serde_json::json!([]));
    drop(wall);

    let operator = ConsoleProc::start(&system.nats.url(), &["--nats-creds", ops.to_str().unwrap()]);
    browser.open(&format!("{}/", operator.url)).await.unwrap();
    browser
        .until(
            "return document.querySelector('#who').textContent",
            Duration::from_secs(20),
            |v| v.as_str() == Some("acting as ops"),
        )
        .await
        .unwrap_or_else(|v| panic!("the operator's page: {v}"));
    browser.js(&deploy("o1")).await.unwrap();
    browser
        .until(
            "return !!document.querySelector('#deployments tr[data-deployment=\"o1\"]')",
            Duration::from_secs(20),
            |v| *v == Value::Bool(true),
        )
        .await
        .unwrap_or_else(|v| panic!("o1 not deployed from the page: {v}\n{}", operator.log()));
    let listed = deployments();
    assert_eq!(listed[0]["deployment"], "o1");
    assert_eq!(listed[0]["owner"], "ops");
    browser.close().await;
}
