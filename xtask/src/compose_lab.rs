//! `xtask/run compose-lab` (root): the compose lab on this machine's
//! Docker engine, images made here without a registry.
//!
//! Builds the release binaries and guests, makes the images
//! (`harness::compose::images`), brings `docker-compose.yml` up, waits for
//! link-load rounds with traffic on every tap, then prints each tapped
//! direction's bytes from link-load next to the router interface's own
//! counters between two readings 30 s of traffic apart (each with the
//! hosts frozen, so both sides saw the same packets), the traffic matrix and the protocol mix
//! (proto-id deployed from the compose file's `tmctl` service), and takes
//! everything down with `down -v` (also on an error or Ctrl-C).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use harness::compose::{self, Engine, Lab, TAPS};
use serde_json::Value;

use crate::session::{self, check_interrupt, print_matrix, print_protocols, step};

const PROJECT: &str = "tm-lab";

fn bytes(report: &Value, monitor: &str, link: u32) -> u64 {
    report["body"]["links"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["monitor_address"] == monitor && l["link_id"] == link)
        .and_then(|l| l["bytes"].as_u64())
        .unwrap_or(0)
}

fn next_round(watch: &compose::Watch, wait: Duration) -> Result<Option<Value>> {
    let deadline = Instant::now() + wait;
    loop {
        check_interrupt()?;
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Ok(None);
        };
        match watch.rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(r) if r["kind"] == "link-load" => return Ok(Some(r)),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// Runs the compose lab; `root` is the workspace.
pub fn run(root: &Path) -> Result<()> {
    if let Some(why) = compose::unavailable() {
        bail!("the compose lab cannot run here: {why}");
    }
    let started = Instant::now();
    session::build(root, started)?;
    let cache = root.join("target/compose-lab");
    let _engine = Engine::start(&cache).map_err(|e| anyhow!(e))?;
    step(started, "Docker engine up");
    let nats = compose::nats_server_executable().map_err(|e| anyhow!(e))?;
    compose::images(root, "target/release", &nats, &cache, &mut |s| {
        step(started, &format!("images: {s}"));
    })
    .map_err(|e| anyhow!(e))?;
    step(started, "docker-compose up -d (project tm-lab)");
    let lab = Lab::up(root, PROJECT).map_err(|e| anyhow!(e))?;
    for &(m, l, r, t) in &TAPS {
        if let Some((dev, hook)) = lab.tap_of(r, t) {
            step(
                started,
                &format!("monitor {m} link {l} captures {r}'s {t}m ({hook} of {dev})"),
            );
        }
    }
    let outcome = run_lab(&lab, started);
    if outcome.is_err() {
        eprintln!("{}", lab.logs());
    }
    drop(lab);
    let left = Lab::leftovers(PROJECT);
    step(
        started,
        &format!(
            "docker-compose down -v: {}",
            if left.is_empty() {
                "nothing of the lab is left".to_owned()
            } else {
                format!("left: {left:?}")
            }
        ),
    );
    outcome
}

fn run_lab(lab: &Lab, started: Instant) -> Result<()> {
    let watch = lab.watch_reports("link-load").map_err(|e| anyhow!(e))?;
    let first = loop {
        let Some(r) = next_round(&watch, Duration::from_secs(240))? else {
            bail!("no link-load round with traffic on every tap within 240 s");
        };
        let with_traffic = TAPS.iter().filter(|t| bytes(&r, t.0, t.1) > 0).count();
        step(
            started,
            &format!(
                "link-load round {}: {with_traffic} of {} taps carry traffic",
                r["body"]["round"],
                TAPS.len()
            ),
        );
        if with_traffic == TAPS.len() {
            break r;
        }
    };
    drop(first);
    step(
        started,
        "hosts frozen; a link-load round of the quiet lab and the routers' interface counters",
    );
    let (first, c0) = lab
        .quiet_reading(&watch, Duration::from_secs(20))
        .map_err(|e| anyhow!(e))?;
    step(started, "hosts thawed: 30 s of traffic");
    for _ in 0..30 {
        check_interrupt()?;
        std::thread::sleep(Duration::from_secs(1));
    }
    step(started, "hosts frozen again; the second reading");
    let (last, c1) = lab
        .quiet_reading(&watch, Duration::from_secs(20))
        .map_err(|e| anyhow!(e))?;
    drop(watch);
    println!(
        "\nPer tapped direction, between two quiet readings: link-load next to the router interface\n"
    );
    println!(
        "{:<9} {:>4}  {:<9} {:<9} {:<24} {:>11} {:>11} {:>8}",
        "monitor", "link", "from", "to", "tapped at", "link-load B", "interface B", "diff %"
    );
    for &(m, l, r, t) in &TAPS {
        let key = (m.to_owned(), l);
        let seen = bytes(&last, m, l) - bytes(&first, m, l);
        let wire = c1[&key].1 - c0[&key].1;
        let (dev, hook) = lab.tap_of(r, t).cloned().unwrap_or_default();
        let link = last["body"]["links"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["monitor_address"] == m && x["link_id"] == l)
            .cloned()
            .unwrap_or_default();
        let diff = if wire == 0 {
            0.0
        } else {
            (seen as f64 - wire as f64) * 100.0 / wire as f64
        };
        println!(
            "{:<9} {:>4}  {:<9} {:<9} {:<24} {:>11} {:>11} {:>+8.3}",
            m,
            l,
            link["from_router"].as_str().unwrap_or(""),
            link["to_router"].as_str().unwrap_or(""),
            format!("{r} {dev} {hook}"),
            seen,
            wire,
            diff
        );
    }
    print_matrix(&last["body"]);
    step(started, "tmctl service: deploy proto-id --id lab-protocols");
    lab.tmctl(&["deploy", "proto-id", "--id", "lab-protocols"])
        .map_err(|e| anyhow!(e))?;
    for _ in 0..25 {
        check_interrupt()?;
        std::thread::sleep(Duration::from_secs(1));
    }
    let collected: Value = serde_json::from_str(
        &lab.tmctl(&["--json", "unload", "lab-protocols"])
            .map_err(|e| anyhow!(e))?,
    )?;
    print_protocols(&collected);
    Ok(())
}
