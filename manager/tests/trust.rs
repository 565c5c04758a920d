//! Signed blobs end to end: keys made and blobs signed with `tmctl keygen`
//! and `tmctl … put --sign-key`, monitors with `[trust] keys` and a manager
//! with `--trusted-key`. Of an unsigned, a bit-flipped, an untrusted-key, a
//! digest-less and a re-digested blob only the validly signed one loads,
//! each refusal with its own error code, on monitors and managers alike;
//! and a rolling upgrade stopped by the monitor that does not trust the
//! new module's signer.

mod common;

use std::collections::HashMap;

use async_nats::jetstream::object_store;
use bus_schema::store::meta_key;
use bus_schema::{
    AppLoadRequest, AppSource, AppStatus, BlobRef, ErrorCode, Filter, LoadReply, LoadRequest,
    Reply, Value, subject,
};
use common::{ManagerProc, System, Traffic};

fn tmctl(system: &System, args: &[&str]) -> String {
    common::tmctl_at(&system.nats.url(), args)
}

/// `tmctl keygen`: the key file and the public key it printed.
fn keygen(dir: &std::path::Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(public.len(), 64, "{public}");
    // A second keygen never overwrites the key.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    (path.to_str().unwrap().to_owned(), public)
}

/// Stores `bytes` under `name` with `metadata` as given (the tampering).
async fn put_raw(system: &System, name: &str, metadata: HashMap<String, String>, bytes: &[u8]) {
    let objects = bus_schema::nats::open_blobs(&system.js, 1).await.unwrap();
    objects
        .put(
            object_store::ObjectMetadata {
                name: name.into(),
                metadata,
                ..Default::default()
            },
            &mut &bytes[..],
        )
        .await
        .unwrap();
}

async fn metadata_of(system: &System, name: &str) -> HashMap<String, String> {
    let objects = bus_schema::nats::open_blobs(&system.js, 1).await.unwrap();
    objects.info(name).await.unwrap().metadata
}

/// Puts the five bad variants of a signed blob `base` (bytes `bytes`):
/// `{base}-unsigned`, `-flipped`, `-untrusted`, `-nodigest`, `-redigested`.
/// Returns (name, expected code) for each, and the valid one last.
async fn variants(
    system: &System,
    verb: &str,
    base: &str,
    path: &str,
    trusted_key: &str,
    other_key: &str,
) -> Vec<(String, Option<ErrorCode>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = |s: &str| format!("{base}-{s}");
    // `tmctl <verb> put` under `{base}-{variant}`, signed with `key` if any.
    let put = |variant: &str, key: Option<&str>| {
        let name = n(variant);
        let mut args = vec![verb, "put", path, "--name", &name];
        if let Some(key) = key {
            args.extend(["--sign-key", key]);
        }
        tmctl(system, &args);
    };
    put("valid", Some(trusted_key));
    put("unsigned", None);
    put("untrusted", Some(other_key));
    // The signed metadata of a blob stored under the same name, with one
    // bit of the module flipped.
    put("flipped", Some(trusted_key));
    let signed = metadata_of(system, &n("flipped")).await;
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    put_raw(system, &n("flipped"), signed, &flipped).await;
    // Signed, but the digest left out of the metadata.
    put("nodigest", Some(trusted_key));
    let mut nodigest = metadata_of(system, &n("nodigest")).await;
    nodigest.remove(meta_key::SHA256);
    put_raw(system, &n("nodigest"), nodigest, &bytes).await;
    // Flipped bytes with the metadata's digest rewritten to match them: the
    // signature no longer covers what is recorded.
    put("redigested", Some(trusted_key));
    let mut redigested = metadata_of(system, &n("redigested")).await;
    redigested.insert(meta_key::SHA256.into(), wasm_host::sha256_hex(&flipped));
    put_raw(system, &n("redigested"), redigested, &flipped).await;
    vec![
        (n("unsigned"), Some(ErrorCode::UnsignedBlob)),
        (n("flipped"), Some(ErrorCode::DigestMismatch)),
        (n("untrusted"), Some(ErrorCode::UntrustedSigner)),
        (n("nodigest"), Some(ErrorCode::DigestMissing)),
        (n("redigested"), Some(ErrorCode::BadSignature)),
        (n("valid"), None),
    ]
}

#[tokio::test]
async fn only_validly_signed_blobs_load_on_monitors_and_managers() {
    let keys = tempfile::tempdir().unwrap();
    let (ops_key, ops_public) = keygen(keys.path(), "ops.key");
    let (other_key, _) = keygen(keys.path(), "other.key");
    let system =
        System::start_trusting(&Traffic::default(), std::slice::from_ref(&ops_public)).await;
    let monitor = &system.monitors[0];

    // Analyzers on a monitor that trusts the ops key.
    let flow_stats = common::wasm_path("flow-stats");
    let cases = variants(
        &system,
        "analyzer",
        "fs",
        flow_stats.to_str().unwrap(),
        &ops_key,
        &other_key,
    )
    .await;
    let digest = wasm_host::sha256_hex(&std::fs::read(&flow_stats).unwrap());
    for (name, want) in &cases {
        let reply: Reply<LoadReply> = common::request(
            &system.client,
            subject::monitor_load(&monitor.id, "t"),
            &LoadRequest {
                deployment: format!("d-{name}"),
                analyzer: BlobRef {
                    name: name.clone(),
                    sha256: digest.clone(),
                },
                params: Value::Nil,
                filter: Filter::default(),
                links: vec![],
                owner: "t".into(),
                report_every_ms: None,
            },
        )
        .await;
        match (reply.into_result(), want) {
            (Ok(_), None) => {}
            (Err(e), Some(code)) => {
                assert_eq!(e.code, *code, "{name}: {}", e.message);
                assert!(e.message.contains(name.as_str()), "{name}: {}", e.message);
            }
            (got, want) => panic!("{name}: got {got:?}, wanted {want:?}"),
        }
    }
    let st = monitor.status(&system.client).await;
    assert_eq!(
        st.deployments
            .iter()
            .map(|d| d.deployment.as_str())
            .collect::<Vec<_>>(),
        ["d-fs-valid"]
    );

    // Apps on a manager that trusts the ops key. The valid link-load
    // deploys flow-stats, itself signed, to the trusting monitors.
    tmctl(
        &system,
        &[
            "analyzer",
            "put",
            flow_stats.to_str().unwrap(),
            "--sign-key",
            &ops_key,
        ],
    );
    let manager = ManagerProc::start(
        &system.nats,
        &system.client,
        "mgr-t",
        &["--trusted-key", &ops_public],
    )
    .await;
    let link_load = common::wasm_path("link-load");
    let cases = variants(
        &system,
        "apps",
        "ll",
        link_load.to_str().unwrap(),
        &ops_key,
        &other_key,
    )
    .await;
    for (name, want) in &cases {
        let reply: Reply<AppStatus> = common::request(
            &system.client,
            subject::manager_apps_load("mgr-t"),
            &AppLoadRequest {
                app: name.clone(),
                source: AppSource::Object(BlobRef {
                    name: name.clone(),
                    sha256: String::new(),
                }),
                params: common::params(serde_json::json!({"every_ms": 1000})),
            },
        )
        .await;
        match (reply.into_result(), want) {
            (Ok(_), None) => {}
            (Err(e), Some(code)) => {
                assert_eq!(e.code, *code, "{name}: {}", e.message);
            }
            (got, want) => panic!("{name}: got {got:?}, wanted {want:?}\n{}", manager.log()),
        }
    }
    // A file path over the bus is refused where signatures are required.
    let reply: Reply<AppStatus> = common::request(
        &system.client,
        subject::manager_apps_load("mgr-t"),
        &AppLoadRequest {
            app: "from-file".into(),
            source: AppSource::File {
                path: link_load.to_str().unwrap().to_owned(),
            },
            params: Value::Nil,
        },
    )
    .await;
    assert_eq!(
        reply.into_result().unwrap_err().code,
        ErrorCode::UnsignedBlob
    );
    let list = tmctl(&system, &["--json", "apps", "list", "--manager", "mgr-t"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["app"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ll-valid"], "{list:#}");
}

/// `--check-config` names a bad key: the monitor's `trust.keys[0]` and the
/// manager's `--trusted-key`.
#[tokio::test]
async fn bad_trusted_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("m.toml");
    std::fs::write(
        &config,
        "address = \"10.9.0.1\"\n[trust]\nkeys = [\"abcd\"]\n[[link]]\nid = 0\ninterface = \"lo\"\nfrom_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(harness::monitor::monitor_bin())
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trust.keys[0]"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tm-manager"))
        .args(["--check-config", "--trusted-key", "zz"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--trusted-key[0]"), "{err}");
}

/// A rolling upgrade stops at the first monitor that refuses: the second
/// of three does not trust the new module's signer. The first runs the new
/// module with its flows kept, the second and third the old one, and the
/// record still names the old one; tmctl exits 1 naming the refusal.
#[tokio::test]
async fn a_rolling_upgrade_stops_at_the_monitor_that_refuses() {
    let keys = tempfile::tempdir().unwrap();
    let (ops_key, ops_public) = keygen(keys.path(), "ops.key");
    let (new_key, new_public) = keygen(keys.path(), "new.key");
    let topology = common::figure5();
    let monitors = topology.monitors();
    assert_eq!(monitors.len(), 3);
    let refusing = monitors[1];
    let traffic = common::traffic(&topology, &[(1, 3, 2, 10, 100)]);
    let system = common::System::start_each(&traffic, |address| {
        let keys = if address == refusing {
            vec![ops_public.clone()]
        } else {
            vec![ops_public.clone(), new_public.clone()]
        };
        format!("[trust]\nkeys = {keys:?}\n")
    })
    .await;
    let ids: Vec<String> = monitors
        .iter()
        .map(|a| common::monitor_id(&a.to_string()))
        .collect();
    let flow = common::wasm_path("flow-stats");
    let flow = flow.to_str().unwrap();
    tmctl(
        &system,
        &[
            "analyzer",
            "put",
            flow,
            "--name",
            "fs",
            "--sign-key",
            &ops_key,
        ],
    );
    tmctl(
        &system,
        &[
            "analyzer",
            "put",
            flow,
            "--name",
            "fs-2",
            "--sign-key",
            &new_key,
        ],
    );
    let mut deploy = vec!["deploy", "fs", "--id", "f1"];
    for id in &ids {
        deploy.extend(["--monitor", id]);
    }
    tmctl(&system, &deploy);
    for m in &system.monitors {
        m.wait_status(&system.client, "the replays over", |st| {
            !st.deployments.is_empty()
                && st
                    .links
                    .iter()
                    .all(|l| l.state == bus_schema::LinkState::Finished)
        })
        .await;
    }
    let collected = || {
        let c = tmctl(&system, &["--json", "collect", "f1"]);
        let c: serde_json::Value = serde_json::from_str(c.trim()).unwrap();
        let mut packets: Vec<(String, u64)> = c["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let m = r["monitor"].as_str().unwrap().to_owned();
                (m, r["results"]["packets"].as_u64().unwrap())
            })
            .collect();
        packets.sort();
        packets
    };
    let before = collected();
    assert!(before.iter().any(|(_, p)| *p > 0), "{before:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args([
            "--nats",
            &system.nats.url(),
            "--json",
            "upgrade",
            "f1",
            "--blob",
            "fs-2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let u: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let done: Vec<&str> = u["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["monitor"].as_str().unwrap())
        .collect();
    assert_eq!(done, [ids[0].as_str()], "{u}");
    let failed = u["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{u}");
    assert_eq!(failed[0]["monitor"], ids[1].as_str());
    assert_eq!(failed[0]["code"], "untrusted_signer", "{u}");
    assert_eq!(u["skipped"], serde_json::json!([ids[2]]));
    // Who runs what: the first the new module, the others the old one,
    // every one with the packets it counted; the record the old one.
    let fs = wasm_host::sha256_hex(&std::fs::read(flow).unwrap());
    for m in &system.monitors {
        let st = m.status(&system.client).await;
        let d = &st.deployments[0];
        let want = if m.id == ids[0] { "fs-2" } else { "fs" };
        assert_eq!(d.analyzer.name, want, "{}", m.id);
        assert_eq!(d.analyzer.sha256, fs);
    }
    assert_eq!(collected(), before, "no flow lost, upgraded or not");
    let records = tmctl(&system, &["--json", "deployments"]);
    let records: serde_json::Value = serde_json::from_str(records.trim()).unwrap();
    assert_eq!(records[0]["analyzer"], "fs", "{records}");
}
