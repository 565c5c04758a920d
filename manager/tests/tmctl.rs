//! `tmctl` against a live system: a real nats-server, real modules from
//! target/wasm/, the shipped figure-5 topology, real monitors and a real
//! tm-manager. Every verb, with its error paths and exit codes.

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

    // 100,000 rows: parsed in linear time, then refused naming the bus's
    // limit (one KV value holds the topology); 5,000 with a bad last row
    // name that row's line.
    let header = "monitor_address,link_id,from_router,to_router\n";
    let rows = |n: u32| -> String {
        (0..n)
            .map(|i| {
                let (a, b, c) = (i / 62_500, i / 250 % 250, i % 250);
                format!("10.{a}.{b}.{c},0,11.{a}.{b}.{c},12.{a}.{b}.{c}\n")
            })
            .collect()
    };
    let big = dir.path().join("big.csv");
    std::fs::write(&big, format!("{header}{}", rows(100_000))).unwrap();
    let (code, msg) = err(&tmctl(
        &nats,
        &["topology", "import", big.to_str().unwrap(), "--replace"],
    ));
    assert_eq!(code, 2);
    assert!(
        msg.contains("100000 rows take") && msg.contains("max payload"),
        "{msg}"
    );
    let late = dir.path().join("late.csv");
    std::fs::write(
        &late,
        format!("{header}{}10.9.0.1,x,1.1.1.1,2.2.2.2\n", rows(5_000)),
    )
    .unwrap();
    let (code, msg) = err(&tmctl(
        &nats,
        &["topology", "import", late.to_str().unwrap(), "--replace"],
    ));
    assert_eq!(code, 2);
    assert!(msg.contains("line 5002"), "{msg}");
}

#[tokio::test]
async fn monitors_lists_liveness_records_and_bad_nats_is_named() {
    let nats = NatsServer::start().await.unwrap();
    let out = tmctl(&nats, &["monitors"]);
    assert!(ok(&out).lines().count() == 1, "only the header");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no monitor is up"));

    // A monitor's liveness record, as tm-monitor writes it.
    let js = nats.jetstream().await;
    let kv = bus_schema::nats::open_kv(&js, MONITORS_BUCKET, 1)
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

mod common;

use common::{ManagerProc, System};

fn json_out(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// deploy, deployments, collect (with archive), configure, status, adopt,
/// unload against three live monitors, with their error paths.
#[tokio::test]
async fn deployments_from_the_command_line() {
    let topology = common::figure5();
    let traffic = common::traffic(&topology, &[(1, 3, 3, 20, 100), (3, 1, 1, 10, 300)]);
    let system = System::start(&traffic).await;
    let nats = &system.nats;
    let flow = wasm("flow-stats");
    let flow = flow.to_str().unwrap();
    ok(&tmctl(nats, &["analyzer", "put", flow]));

    let d = json_out(&tmctl(
        nats,
        &[
            "--json",
            "deploy",
            "flow-stats",
            "--id",
            "f1",
            "--link",
            "10.9.0.1:0",
            "--link",
            "10.9.0.2:0",
            "--params",
            r#"{"top_n": 5}"#,
        ],
    ));
    assert_eq!(d["owner"], "tmctl");
    assert_eq!(d["placed"].as_array().unwrap().len(), 2);
    for p in d["placed"].as_array().unwrap() {
        assert_eq!(p["links"], serde_json::json!([0]));
    }

    // Refusals, each with its exit code and cause.
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["deploy", "flow-stats", "--id", "f1"],
            1,
            "already exists, owned by \"tmctl\"",
        ),
        (&["deploy", "nosuch", "--id", "f2"], 3, "no such blob"),
        (
            &["deploy", "flow-stats", "--id", "f2", "--link", "10.9.0.1"],
            2,
            "expected MONITOR_ADDRESS:LINK_ID",
        ),
        (
            &["deploy", "flow-stats", "--id", "f2", "--link", "10.9.0.1:7"],
            2,
            "has no link 7",
        ),
        (
            &["deploy", "flow-stats", "--id", "f2", "--link", "10.9.9.9:0"],
            2,
            "no monitor with that address",
        ),
        (
            &["deploy", "flow-stats", "--id", "f2", "--params", "{top_n"],
            2,
            "--params",
        ),
        (
            &[
                "deploy",
                "flow-stats",
                "--id",
                "f2",
                "--params",
                r#"{"top_n": 99999}"#,
            ],
            2,
            "top_n",
        ),
        (
            &["deploy", "flow-stats", "--id", "f2", "--sha256", "00"],
            1,
            "stored with digest",
        ),
        (
            &["deploy", "flow-stats", "--id", "a.b"],
            2,
            "'a.b' for '--id",
        ),
        (&["unload", "*"], 2, "'*' for '<DEPLOYMENT>'"),
        (&["collect", "a.b"], 2, "'a.b' for '<DEPLOYMENT>'"),
        (&["adopt", ">"], 2, "'>' for '<DEPLOYMENT>'"),
        (&["status", "a.b"], 2, "'a.b' for '[MONITORS]"),
        (&["watch", "--only", "a.*"], 2, "'a.*' for '--only"),
        (
            &[
                "deploy",
                "flow-stats",
                "--id",
                "f2",
                "--link",
                "133.256.10.1:0",
            ],
            2,
            "\"133.256.10.1\" is not an IP address",
        ),
        (
            &[
                "deploy",
                "flow-stats",
                "--id",
                "f2",
                "--params",
                "@/nonexistent.json",
            ],
            2,
            "--params @/nonexistent.json: cannot read",
        ),
        (
            &["deploy", "flow-stats", "--id", "f2", "--dport", "9-1"],
            2,
            "--dport \"9-1\"",
        ),
        (&["collect", "nosuch"], 3, "no such deployment"),
        (
            &[
                "configure",
                "f1",
                "--params",
                r#"{"top_n": 1}"#,
                "--as",
                "other",
            ],
            1,
            "owned by \"tmctl\"",
        ),
        (&["status", "nosuch"], 3, "no such monitor"),
    ];
    for (args, code, needle) in cases {
        let (c, msg) = err(&tmctl(nats, args));
        assert_eq!(c, *code, "{args:?}: {msg}");
        assert!(msg.contains(needle), "{args:?}: {msg}");
    }
    // The refused deploys left nothing behind.
    let list = json_out(&tmctl(nats, &["--json", "deployments"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["deployment"], "f1");
    assert_eq!(list[0]["owner_up"], false);

    // Collect until both taps' captures are analyzed; archive the results.
    let want = traffic.taps[&("10.9.0.1".to_string(), 0)].packets
        + traffic.taps[&("10.9.0.2".to_string(), 0)].packets;
    let archive = tempfile::tempdir().unwrap();
    let mut got = serde_json::Value::Null;
    for _ in 0..100 {
        got = json_out(&tmctl(
            nats,
            &[
                "--json",
                "collect",
                "f1",
                "--archive",
                archive.path().to_str().unwrap(),
            ],
        ));
        let sum: u64 = got["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["stats"]["packets_in"].as_u64().unwrap())
            .sum();
        if sum == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let results = got["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        results
            .iter()
            .map(|r| r["stats"]["packets_in"].as_u64().unwrap())
            .sum::<u64>(),
        want
    );
    assert_eq!(results[0]["address"], "10.9.0.1");
    assert_eq!(
        results[0]["results"]["links"]["0"]["packets"],
        traffic.taps[&("10.9.0.1".to_string(), 0)].packets
    );
    let files: Vec<_> = std::fs::read_dir(archive.path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "one date partition");
    let table = ok(&tmctl(nats, &["collect", "f1"]));
    assert!(table.starts_with("MONITOR"), "{table}");
    assert!(
        table.contains("10-9-0-2") && table.contains("\"top\""),
        "{table}"
    );

    // Configure as the owner, params from a file; the next collect shows it.
    let params = archive.path().join("params.json");
    std::fs::write(&params, r#"{"top_n": 1}"#).unwrap();
    let at_file = format!("@{}", params.display());
    ok(&tmctl(nats, &["configure", "f1", "--params", &at_file]));
    let got = json_out(&tmctl(nats, &["--json", "collect", "f1"]));
    for r in got["results"].as_array().unwrap() {
        assert!(r["results"]["top"].as_array().unwrap().len() <= 1);
    }

    // Status of every monitor, and of one.
    let st = json_out(&tmctl(nats, &["--json", "status"]));
    assert_eq!(st.as_array().unwrap().len(), 3);
    let text = ok(&tmctl(nats, &["status", "10-9-0-1"]));
    assert!(
        text.contains("deployment f1 (flow-stats) owner tmctl"),
        "{text}"
    );

    // Upgrade to another blob of flow-stats: every monitor swaps, keeping
    // its flows; the record and status name the new module.
    let (code, msg) = err(&tmctl(nats, &["upgrade", "f1", "--blob", "nope"]));
    assert_eq!(code, 3, "{msg}");
    let flow = wasm("flow-stats");
    ok(&tmctl(
        nats,
        &[
            "analyzer",
            "put",
            flow.to_str().unwrap(),
            "--name",
            "flow-stats-2",
        ],
    ));
    let before = json_out(&tmctl(nats, &["--json", "collect", "f1"]));
    let u = json_out(&tmctl(
        nats,
        &["--json", "upgrade", "f1", "--blob", "flow-stats-2"],
    ));
    assert_eq!(u["analyzer"]["name"], "flow-stats-2");
    assert_eq!(u["done"].as_array().unwrap().len(), 2, "{u}");
    assert!(
        u["done"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["previous"]["name"] == "flow-stats")
    );
    let after = json_out(&tmctl(nats, &["--json", "collect", "f1"]));
    for (b, a) in before["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["results"].as_array().unwrap())
    {
        assert_eq!(a["monitor"], b["monitor"]);
        assert!(
            a["results"]["packets"].as_u64() >= b["results"]["packets"].as_u64()
                && b["results"]["packets"].as_u64() > Some(0),
            "the flows counted before the upgrade stay: {b} then {a}"
        );
    }
    let text = ok(&tmctl(nats, &["status", "10-9-0-1"]));
    assert!(text.contains("deployment f1 (flow-stats-2)"), "{text}");
    let records = json_out(&tmctl(nats, &["--json", "deployments"]));
    assert!(records.to_string().contains("flow-stats-2"), "{records}");

    // tmctl as such is no manager, so its deployments may be adopted.
    let a = json_out(&tmctl(nats, &["--json", "--as", "ops", "adopt", "f1"]));
    assert_eq!(a["previous_owner"], "tmctl");
    let (c, msg) = err(&tmctl(nats, &["unload", "f1"]));
    assert_eq!(c, 1);
    assert!(msg.contains("owned by \"ops\""), "{msg}");
    let fin = json_out(&tmctl(nats, &["--json", "--as", "ops", "unload", "f1"]));
    assert_eq!(fin["results"].as_array().unwrap().len(), 2);
    assert!(
        fin["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["last"] == true)
    );
    let (c, _) = err(&tmctl(nats, &["--as", "ops", "unload", "f1"]));
    assert_eq!(c, 3);
    assert_eq!(
        json_out(&tmctl(nats, &["--json", "deployments"])),
        serde_json::json!([])
    );
}

/// apps put/load/list/unload on a live tm-manager, and watch on the
/// streams, with their error paths.
#[tokio::test]
async fn apps_and_watch_from_the_command_line() {
    let topology = common::figure5();
    let traffic = common::traffic(&topology, &[(1, 3, 2, 10, 100)]);
    let system = System::start(&traffic).await;
    let nats = &system.nats;
    let _manager = ManagerProc::start(nats, &system.client, "mgr-a", &[]).await;
    ok(&tmctl(
        nats,
        &["analyzer", "put", wasm("flow-stats").to_str().unwrap()],
    ));
    let put = json_out(&tmctl(
        nats,
        &["--json", "apps", "put", wasm("link-load").to_str().unwrap()],
    ));
    assert_eq!(put["name"], "link-load");
    let list = json_out(&tmctl(nats, &["--json", "analyzer", "list"]));
    let kinds: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("link-load".into(), "mgmt-app".into())),
        "{kinds:?}"
    );

    let loaded = json_out(&tmctl(
        nats,
        &[
            "--json",
            "apps",
            "load",
            "link-load",
            "--manager",
            "mgr-a",
            "--blob",
            "link-load",
            "--params",
            r#"{"every_ms": 200}"#,
        ],
    ));
    assert_eq!(loaded[0]["state"], "running");
    let all = json_out(&tmctl(nats, &["--json", "apps", "list"]));
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["manager"], "mgr-a");
    assert!(ok(&tmctl(nats, &["apps", "list", "--manager", "mgr-a"])).contains("link-load"));

    // Reports as they are stored, as JSON lines.
    let out = tmctl(
        nats,
        &[
            "--json",
            "watch",
            "reports",
            "--from-start",
            "--count",
            "2",
            "--idle-s",
            "20",
        ],
    );
    let lines: Vec<serde_json::Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines
            .iter()
            .all(|l| l["type"] == "report" && l["kind"] == "link-load" && l["manager"] == "mgr-a")
    );
    // The monitors' lifecycle events for the app's deployment (with the
    // replays' `link_finished` among them): everything stored so far.
    let d = "link-load-flow-stats-mgr-a-1";
    let out = tmctl(
        nats,
        &[
            "watch",
            "events",
            "--only",
            d,
            "--from-start",
            "--idle-s",
            "3",
        ],
    );
    let text = ok(&out);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("event ") && l.contains(d) && l.contains("Loaded"))
            .count(),
        3,
        "{text}"
    );

    // Unloading the app unloads its analyzer; the final windows reach TM_RESULTS.
    let stopped = json_out(&tmctl(
        nats,
        &[
            "--json",
            "apps",
            "unload",
            "link-load",
            "--manager",
            "mgr-a",
        ],
    ));
    assert_eq!(stopped[0]["state"], "stopped");
    let out = tmctl(
        nats,
        &[
            "--json",
            "watch",
            "results",
            "--only",
            d,
            "--from-start",
            "--count",
            "3",
            "--idle-s",
            "20",
        ],
    );
    let windows: Vec<serde_json::Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(windows.len(), 3);
    assert!(windows.iter().all(|w| w["window"]["last"] == true));
    // Nothing more arrives: watch ends after its idle time with what it got.
    let out = tmctl(nats, &["watch", "results", "--only", d, "--idle-s", "1"]);
    assert_eq!(ok(&out), "");

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &[
                "apps",
                "load",
                "x",
                "--manager",
                "nobody",
                "--blob",
                "link-load",
            ],
            3,
            "is the manager up?",
        ),
        (
            &["apps", "unload", "nosuch", "--manager", "mgr-a"],
            3,
            "no such app",
        ),
        (
            &[
                "apps",
                "load",
                "x",
                "--manager",
                "mgr-a",
                "--blob",
                "nosuch",
            ],
            3,
            "no such blob",
        ),
        (
            &[
                "apps",
                "load",
                "x",
                "--manager",
                "mgr-a",
                "--blob",
                "flow-stats",
            ],
            1,
            "not a mgmt app",
        ),
        (
            &[
                "apps",
                "load",
                "x",
                "--manager",
                "mgr-a",
                "--file",
                "/nonexistent.wasm",
            ],
            2,
            "/nonexistent.wasm",
        ),
        (
            &[
                "apps",
                "load",
                "x",
                "--manager",
                "mgr-a",
                "--blob",
                "link-load",
                "--params",
                r#"{"every_ms": 1}"#,
            ],
            2,
            "every_ms = 1",
        ),
        (
            &[
                "apps",
                "load",
                "x",
                "--manager",
                "mgr-a",
                "--blob",
                "link-load",
                "--sha256",
                "ab",
            ],
            1,
            "digest",
        ),
        (&["watch", "results", "--only", "a.b"], 2, "--only"),
        (&["apps", "put", "/nonexistent.wasm"], 2, "cannot read"),
    ];
    for (args, code, needle) in cases {
        let (c, msg) = err(&tmctl(nats, args));
        assert_eq!(c, *code, "{args:?}: {msg}");
        assert!(msg.contains(needle), "{args:?}: {msg}");
    }
}
