//! `tmctl` against a live system: a real nats-server, real modules from
//! target/wasm/, the shipped figure-5 topology. Every verb it has so far,
//! with its error paths and exit codes.

use std::path::{Path, PathBuf};
use std::process::Output;

use bus_schema::store::MONITORS_BUCKET;
use bus_schema::{LinkInfo, MonitorRecord};
use harness::NatsServer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("TM_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{}: build the guests first with `cargo xtask guests`",
        path.display()
    );
    path
}

/// Runs tmctl against `nats`.
fn tmctl(nats: &NatsServer, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .arg("--nats")
        .arg(nats.url())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "tmctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// (exit code, stderr) of a failed run.
fn err(out: &Output) -> (i32, String) {
    assert!(!out.status.success(), "tmctl should have failed");
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn analyzer_put_list_rm() {
    let nats = NatsServer::start().await.unwrap();
    let module = wasm("packet-count");
    let bytes = std::fs::read(&module).unwrap();
    let digest = wasm_host_digest(&bytes);

    let out = ok(&tmctl(
        &nats,
        &[
            "analyzer",
            "put",
            module.to_str().unwrap(),
            "--description",
            "counts packets",
        ],
    ));
    assert!(
        out.contains("packet-count") && out.contains(&digest),
        "{out}"
    );

    // The object is really there, with the metadata monitors check.
    let js = nats.jetstream().await;
    let objects = js.get_object_store("tm_blobs").await.unwrap();
    let info = objects.info("packet-count").await.unwrap();
    assert_eq!(info.size, bytes.len());
    assert_eq!(info.metadata.get("tm-sha256"), Some(&digest));

    let list = ok(&tmctl(&nats, &["analyzer", "list"]));
    let line = list
        .lines()
        .find(|l| l.starts_with("packet-count"))
        .unwrap_or_else(|| panic!("not listed: {list}"));
    assert!(
        line.contains(&digest) && line.contains("counts packets"),
        "{line}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&tmctl(&nats, &["--json", "analyzer", "list"]))).unwrap();
    assert_eq!(json[0]["name"], "packet-count");
    assert_eq!(json[0]["sha256"], digest.as_str());
    assert_eq!(json[0]["size"], bytes.len());

    // A file that is not WebAssembly, a missing file, a bad name.
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let (code, msg) = err(&tmctl(&nats, &["analyzer", "put", text.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(
        msg.contains("notes.wasm") && msg.contains("not a WebAssembly module"),
        "{msg}"
    );
    let (code, msg) = err(&tmctl(&nats, &["analyzer", "put", "/nonexistent/x.wasm"]));
    assert_eq!(code, 2);
    assert!(msg.contains("/nonexistent/x.wasm"), "{msg}");
    let (code, msg) = err(&tmctl(
        &nats,
        &["analyzer", "put", module.to_str().unwrap(), "--name", "a b"],
    ));
    assert_eq!(code, 2);
    assert!(msg.contains("name"), "{msg}");

    ok(&tmctl(&nats, &["analyzer", "rm", "packet-count"]));
    let list = ok(&tmctl(&nats, &["analyzer", "list"]));
    assert!(!list.contains("packet-count"), "{list}");
    let (code, msg) = err(&tmctl(&nats, &["analyzer", "rm", "packet-count"]));
    assert_eq!(code, 3);
    assert!(msg.contains("no module named \"packet-count\""), "{msg}");
}

fn wasm_host_digest(bytes: &[u8]) -> String {
    wasm_host::sha256_hex(bytes)
}

#[tokio::test]
async fn topology_import_show_and_errors() {
    let nats = NatsServer::start().await.unwrap();
    let (code, msg) = err(&tmctl(&nats, &["topology", "show"]));
    assert_eq!(code, 3);
    assert!(msg.contains("no topology stored"), "{msg}");

    let toml = root().join("examples/topology/figure5.toml");
    let out = ok(&tmctl(
        &nats,
        &["topology", "import", toml.to_str().unwrap()],
    ));
    assert!(
        out.contains("imported 6 rows: 4 routers, 8 directed links (2 unmonitored)"),
        "{out}"
    );

    // The table: a header, the six monitored rows, the two unmonitored links.
    let table = ok(&tmctl(&nats, &["topology", "show"]));
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("10.0.")).collect();
    assert_eq!(rows.len(), 8, "{table}");
    assert_eq!(
        rows.iter().filter(|l| l.contains("10.9.0.")).count(),
        6,
        "{table}"
    );
    let dot = ok(&tmctl(&nats, &["topology", "show", "--dot"]));
    assert!(dot.trim_start().starts_with("digraph"), "{dot}");
    assert_eq!(dot.matches("->").count(), 8, "{dot}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&tmctl(&nats, &["--json", "topology", "show"]))).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 6);

    // A second import must say --replace; with it the revision moves on.
    let (code, msg) = err(&tmctl(
        &nats,
        &["topology", "import", toml.to_str().unwrap()],
    ));
    assert_eq!(code, 1);
    assert!(msg.contains("--replace"), "{msg}");
    let csv = root().join("examples/topology/figure5.csv");
    let json: serde_json::Value = serde_json::from_str(&ok(&tmctl(
        &nats,
        &[
            "--json",
            "topology",
            "import",
            csv.to_str().unwrap(),
            "--replace",
        ],
    )))
    .unwrap();
    assert_eq!(json["rows"], 6);

    // A malformed file is refused naming its line; nothing is stored.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "monitor_address,link_id,from_router,to_router\n10.9.0.1,0,10.0.1.1,10.0.2.1\n10.9.0.1,x,10.0.2.1,10.0.1.1\n",
    )
    .unwrap();
    let (code, msg) = err(&tmctl(
        &nats,
        &["topology", "import", bad.to_str().unwrap(), "--replace"],
    ));
    assert_eq!(code, 2);
    assert!(msg.contains("line 3") && msg.contains("link_id"), "{msg}");
    let table = ok(&tmctl(&nats, &["topology", "show"]));
    assert_eq!(table.lines().filter(|l| l.contains("10.9.0.")).count(), 6);
}

#[tokio::test]
async fn monitors_lists_liveness_records_and_bad_nats_is_named() {
    let nats = NatsServer::start().await.unwrap();
    let out = tmctl(&nats, &["monitors"]);
    assert!(ok(&out).lines().count() == 1, "only the header");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no monitor is up"));

    // A monitor's liveness record, as tm-monitor writes it.
    let js = nats.jetstream().await;
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: MONITORS_BUCKET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = MonitorRecord {
        monitor: "m1".into(),
        address: "10.9.0.1".into(),
        version: "0.1.0".into(),
        protocol: bus_schema::PROTOCOL_VERSION,
        links: vec![LinkInfo {
            id: 0,
            from_router: "10.0.1.1".into(),
            to_router: "10.0.2.1".into(),
            source: "pcap:l0.pcap".into(),
        }],
        started_unix_ms: now - 5_000,
        heartbeat_unix_ms: now - 1_000,
    };
    kv.put("m1", bus_schema::encode(&record).unwrap().into())
        .await
        .unwrap();
    let out = ok(&tmctl(&nats, &["monitors"]));
    let line = out
        .lines()
        .find(|l| l.starts_with("m1"))
        .expect("m1 listed");
    assert!(
        line.contains("10.9.0.1") && line.contains("0:10.0.1.1->10.0.2.1"),
        "{line}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&tmctl(&nats, &["--json", "monitors"]))).unwrap();
    assert_eq!(json[0]["monitor"], "m1");
    assert_eq!(json[0]["links"][0]["to_router"], "10.0.2.1");

    // NATS that is not there: exit 1, naming the URL.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["--nats", "nats://127.0.0.1:1", "monitors"])
        .output()
        .unwrap();
    let (code, msg) = err(&out);
    assert_eq!(code, 1);
    assert!(msg.contains("nats://127.0.0.1:1"), "{msg}");
}
