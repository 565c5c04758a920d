//! The compose lab on a real Docker engine: `docker-compose.yml` as a user
//! runs it (with `examples/compose/offline.yml` for images made here), its
//! six tapped directions measured by link-load against the routers'
//! interface counters, the console serving the lab's view read-only,
//! proto-id deployed from the `tmctl` service, and nothing of the project
//! left after `down -v`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::compose::{self, Engine, Lab, TAPS};
use serde_json::Value;

const PROJECT: &str = "tmlabtest";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Bytes per tapped link in a link-load report, by (monitor address, link).
fn report_bytes(report: &Value) -> BTreeMap<(String, u32), u64> {
    report["body"]["links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                (
                    l["monitor_address"].as_str().unwrap_or_default().to_owned(),
                    l["link_id"].as_u64().unwrap_or(0) as u32,
                ),
                l["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The next link-load report (not the final one), at most `wait` away.
fn next_round(watch: &compose::Watch, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let r = watch.rx.recv_timeout(left).ok()?;
        if r["kind"] == "link-load" {
            return Some(r);
        }
    }
}

fn check(lab: &Lab) {
    let watch = lab.watch_reports("link-load").expect("tmctl watch");
    // Up: a round in which every tapped direction carried traffic.
    let deadline = Instant::now() + Duration::from_secs(240);
    let first = loop {
        let r = next_round(&watch, deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| {
                panic!(
                    "no link-load round with traffic on every tap within 240 s\n{}",
                    lab.logs()
                )
            });
        let bytes = report_bytes(&r);
        if TAPS
            .iter()
            .all(|&(m, l, _, _)| bytes.get(&(m.to_owned(), l)).is_some_and(|b| *b > 0))
        {
            break r;
        }
    };
    drop(first);
    // Two readings 30 s of traffic apart, each taken with the hosts frozen
    // so that link-load's collect and the counters see the same packets.
    let (first, counters_first) = lab.quiet_reading(&watch, Duration::from_secs(20)).unwrap();
    std::thread::sleep(Duration::from_secs(30));
    let (last, counters_last) = lab.quiet_reading(&watch, Duration::from_secs(20)).unwrap();
    let (a, b) = (report_bytes(&first), report_bytes(&last));
    for &(m, l, router, tap) in &TAPS {
        let key = (m.to_owned(), l);
        let seen = b[&key] - a[&key];
        let wire = counters_last[&key].1 - counters_first[&key].1;
        let (dev, hook) = lab.tap_of(router, tap).unwrap();
        eprintln!(
            "{m} link {l} ({hook} of {router} {dev}): link-load {seen} bytes, interface {wire} bytes"
        );
        assert!(
            wire > 100_000,
            "{m}:{l}: only {wire} bytes crossed {router} {dev} in 30 s"
        );
        let diff = (seen as f64 - wire as f64).abs() / wire as f64;
        assert!(
            diff <= 0.01,
            "{m}:{l}: link-load saw {seen} bytes, {router}'s {dev} {hook} counted {wire} ({:.2}% apart)",
            diff * 100.0
        );
    }
    drop(watch);

    // The console, read-only, on the published port: the lab's network
    // and its monitors.
    let get = |path: &str| -> Value {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:8480{path}"))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "console {path}: {out:?}\n{}",
            lab.logs()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let who = get("/api/whoami");
    assert_eq!(
        (who["id"].as_str(), who["read_only"].as_bool()),
        (Some("console"), Some(true)),
        "{who}"
    );
    let view = get("/api/view");
    assert_eq!(
        view["topology"]["routers"].as_array().map(Vec::len),
        Some(4),
        "{view}"
    );
    assert_eq!(
        view["monitors"].as_object().map(|m| m.len()),
        Some(3),
        "{view}"
    );
    assert!(
        view["reports"]
            .as_object()
            .is_some_and(|r| r.keys().any(|k| k.ends_with("/link-load/link-load"))),
        "no link-load report in the console's view"
    );

    // The operator's CLI from the compose file's tmctl service.
    lab.tmctl(&["deploy", "proto-id", "--id", "lab-protocols"])
        .expect("tmctl deploy from the tmctl service");
    std::thread::sleep(Duration::from_secs(25));
    let collected: Value = serde_json::from_str(
        &lab.tmctl(&["--json", "unload", "lab-protocols"])
            .expect("tmctl unload"),
    )
    .unwrap();
    let mut apps: BTreeMap<String, u64> = BTreeMap::new();
    for r in collected["results"].as_array().into_iter().flatten() {
        for (name, t) in r["results"]["app"].as_object().into_iter().flatten() {
            *apps.entry(name.clone()).or_default() += t["packets"].as_u64().unwrap_or(0);
        }
    }
    for want in ["http", "dns", "icmp"] {
        assert!(
            apps.get(want).is_some_and(|p| *p > 0),
            "proto-id saw no {want}: {apps:?}"
        );
    }
}

#[test]
fn the_compose_lab_taps_every_direction_exactly_and_leaves_nothing() {
    if let Some(why) = compose::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let root = root().canonicalize().unwrap();
    let cache = root.join("target/compose-lab");
    let _engine = match Engine::start(&cache) {
        Ok(engine) => engine,
        Err(why) => {
            eprintln!("SKIPPED: no Docker engine can run here: {why}");
            return;
        }
    };
    // The binaries this test run built, and the guests.
    let bin = harness::monitor::monitor_bin();
    let bin_dir = bin
        .parent()
        .and_then(|d| d.strip_prefix(&root).ok())
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{} is not under {}", bin.display(), root.display()));
    let nats = compose::nats_server_executable().unwrap();
    compose::images(&root, &bin_dir, &nats, &cache, &mut |s| {
        eprintln!("images: {s}")
    })
    .expect("the lab's images");
    let mut lab = Lab::up(&root, PROJECT).unwrap_or_else(|e| panic!("compose up: {e}"));
    check(&lab);
    lab.down().expect("docker-compose down -v");
    let left = Lab::leftovers(PROJECT);
    assert!(left.is_empty(), "left after down -v: {left:?}");
}
