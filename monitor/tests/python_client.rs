//! A client written from the docs alone: `examples/client.py` (nats-py and
//! msgpack) puts packet-count, loads it on a real monitor replaying a
//! generated capture, waits for the replay, collects, configures, reads
//! status, unloads and reads the events; its figures must be the capture's.

mod common;

use std::path::Path;

use common::MonitorProc;
use harness::NatsServer;
use pcapgen::{linktype, write_pcap};

#[tokio::test]
async fn the_python_client_runs_a_whole_deployment_from_the_docs() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let dir = tempfile::tempdir().unwrap();
    let frames = pcapgen::mixed(200, 1_764_000_000_000_000_000);
    write_pcap(&dir.path().join("l.pcap"), linktype::ETHERNET, &frames).unwrap();
    let (packets, bytes) = pcapgen::count(&frames, |_| true);
    let _monitor = MonitorProc::start_in(
        &nats,
        &client,
        "py-m",
        "address = \"10.9.9.1\"\n[[link]]\nid = 0\npcap = \"l.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
        dir,
    )
    .await;
    // The object store exists on a set-up bus (tmctl setup, or a first put).
    bus_schema::nats::open_blobs(&nats.jetstream().await, 1)
        .await
        .unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::env::var_os("TM_WASM_DIR")
        .map_or_else(|| root.join("target/wasm"), Into::into)
        .join("packet-count.wasm");
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(root.join("examples/client.py"))
            .args(["--nats", &url, "--monitor", "py-m", "--wasm"])
            .arg(&wasm)
            .args([
                "--deployment",
                "py-1",
                "--requester",
                "py",
                "--params",
                r#"{"label": "first"}"#,
                "--configure",
                r#"{"label": "second"}"#,
            ])
            .output()
            .expect("python3 (xtask/setup.sh installs nats-py and msgpack)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in\n{stdout}"))
            .clone()
    };
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "put",
            "load",
            "replayed",
            "collect",
            "configure",
            "status",
            "unload",
            "events"
        ]
    );
    assert_eq!(step("replayed")["packets"], packets);
    let collect = step("collect");
    assert_eq!(collect["results"]["packets"], packets);
    assert_eq!(collect["results"]["bytes"], bytes);
    assert_eq!(collect["results"]["label"], "first");
    assert_eq!(collect["stats"]["packets_in"], packets);
    assert_eq!(step("configure")["config_revision"], 1);
    assert_eq!(step("status")["state"], "running");
    assert_eq!(step("status")["config_revision"], 1);
    let fin = step("unload");
    assert_eq!(fin["last"], true);
    assert_eq!(fin["results"]["label"], "second");
    assert_eq!(fin["results"]["packets"], packets);
    let kinds = step("events")["kinds"].clone();
    for kind in ["loaded", "link_finished", "configured"] {
        assert!(
            kinds.as_array().unwrap().iter().any(|k| k == kind),
            "no {kind} event: {kinds}"
        );
    }
}
