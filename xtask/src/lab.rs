//! `xtask/run lab`: the reference network (four routers in a ring, docs/lab.md) in network namespaces
//! (root), with real traffic.
//!
//! Builds the binaries and guests, creates the lab (`harness::lab`: four
//! router and four host namespaces, veth lines, tc mirred taps per
//! direction), starts a nats-server, three monitors capturing the six taps
//! live and a manager, runs `link-load` through S1–S8 with `proto-id` beside
//! it while iperf3, ping, DNS and HTTP cross the lab, prints each link's
//! figures next to its veth's own counters, the traffic matrix and the
//! protocol mix, and tears everything down (also on error and Ctrl-C).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use harness::lab::{self, Lab};
use serde_json::Value;

use crate::session::{
    self, Bins, MANAGER, Procs, check_interrupt, next, print_matrix, print_protocols, step, tmctl,
};

type Counters = BTreeMap<(String, u32), (u64, u64)>;

fn counters(lab: &Lab) -> Result<Counters> {
    lab.taps
        .iter()
        .map(|t| {
            let c = lab.counters(t).map_err(|e| anyhow!(e))?;
            Ok(((t.monitor_address.to_owned(), t.link_id), c))
        })
        .collect()
}

/// Runs the lab; `root` is the workspace.
pub fn run(root: &Path) -> Result<()> {
    if let Some(why) = lab::unavailable() {
        bail!("the lab cannot run here: {why} (it needs root and network namespaces)");
    }
    let started = Instant::now();
    let (bins, wasm) = session::build(root, started)?;
    step(
        started,
        "creating the lab: R1..R4 and H1..H4 namespaces, lines L12 L23 L34 L14, six taps",
    );
    let lab = Lab::create().map_err(|e| anyhow!("creating the lab: {e}"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let nats = runtime.block_on(harness::NatsServer::start())?;
    let outcome = run_lab(root, &bins, &wasm, &nats.url(), lab, started);
    drop(nats);
    step(
        started,
        "nats-server stopped, lab namespaces and temp files removed",
    );
    outcome
}

fn run_lab(
    root: &Path,
    bins: &Bins,
    wasm: &Path,
    url: &str,
    lab: Lab,
    started: Instant,
) -> Result<()> {
    step(started, &format!("nats-server with JetStream at {url}"));
    let dir = tempfile::tempdir()?;
    let topology_file = root.join("examples/topology/figure5.toml");
    session::store(
        bins,
        url,
        &topology_file,
        wasm,
        &["flow-stats", "proto-id"],
        &["link-load"],
    )?;
    step(
        started,
        "topology (figure 5, the lab's addresses) imported; flow-stats, proto-id, link-load stored",
    );
    let mut procs = Procs(Vec::new());
    let configs: Vec<(String, String)> = ["10.9.0.1", "10.9.0.2", "10.9.0.3"]
        .iter()
        .map(|a| {
            (
                a.to_string(),
                format!("address = \"{a}\"\n{}", lab.monitor_links(a)),
            )
        })
        .collect();
    session::start_monitors(&mut procs, bins, url, dir.path(), &configs)?;
    for t in &lab.taps {
        step(
            started,
            &format!(
                "monitor {} link {} captures {} (R{}→R{}: {} of {} in {})",
                t.monitor_address, t.link_id, t.interface, t.from, t.to, t.hook, t.dev, t.ns
            ),
        );
    }
    session::start_manager(&mut procs, bins, url, dir.path())?;
    step(started, &format!("manager {MANAGER} up"));
    let console = session::start_console(&mut procs, bins, url, dir.path(), "127.0.0.1:0")?;
    step(
        started,
        &format!("console at {console} (open it while the lab runs)"),
    );
    tmctl(bins, url, &["deploy", "proto-id", "--id", "lab-protocols"])?;
    step(started, "proto-id deployed to every monitor (tmctl deploy)");
    let reports = session::watch_reports(&mut procs, bins, url, "link-load")?;
    let prefixes: Vec<Value> = (1..=4u8)
        .map(|n| {
            serde_json::json!({"prefix": format!("10.{}.0.0/16", n * 10), "router": lab::router(n).to_string()})
        })
        .collect();
    let params =
        serde_json::json!({"every_ms": 500, "capacity_bps": 1_000_000_000.0, "prefixes": prefixes});
    let deployment = session::load_link_load(bins, url, &params)?;
    step(
        started,
        &format!("S1–S3 link-load loaded; flow-stats deployed as {deployment} on every monitor"),
    );
    let Some(_) = next(&reports, Duration::from_secs(30))? else {
        bail!(
            "no link-load round within 30 s; logs in {}",
            dir.path().display()
        );
    };

    let before = counters(&lab)?;
    let www = tempfile::tempdir()?;
    let www_path = www.path().to_owned();
    let (progress_tx, progress) = std::sync::mpsc::channel::<String>();
    let traffic = std::thread::spawn(move || {
        let mut lab = lab;
        let outcome = lab.workload(&www_path, &mut |s| {
            let _ = progress_tx.send(s.to_owned());
        });
        std::thread::sleep(Duration::from_millis(500));
        (lab, outcome)
    });
    while let Some(s) = next(&progress, Duration::from_secs(60))? {
        step(started, &format!("traffic: {s}"));
    }
    let (lab, outcome) = traffic
        .join()
        .map_err(|_| anyhow!("the traffic thread panicked"))?;
    outcome.map_err(|e| anyhow!("traffic: {e}"))?;
    let after = counters(&lab)?;
    let delta: Counters = after
        .iter()
        .map(|(k, &(p, b))| (k.clone(), (p - before[k].0, b - before[k].1)))
        .collect();
    step(
        started,
        "traffic done; waiting for link-load to catch up with the counters",
    );

    // S4/S5: rounds until every link reaches its veth's bytes (or 20 s);
    // the rounds reported while the traffic ran are behind it.
    while reports.try_recv().is_ok() {}
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        check_interrupt()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(r) = next(&reports, left)? else {
            step(started, "link-load did not reach every counter within 20 s");
            break;
        };
        let links = r["body"]["links"].as_array().cloned().unwrap_or_default();
        let caught_up = links.iter().filter(|l| {
            let key = (
                l["monitor_address"].as_str().unwrap_or("").to_owned(),
                l["link_id"].as_u64().unwrap_or(0) as u32,
            );
            delta
                .get(&key)
                .is_some_and(|d| l["bytes"].as_u64().unwrap_or(0) >= d.1)
        });
        let n = caught_up.count();
        step(
            started,
            &format!(
                "S4/S5 round {}: {n} of {} links at their counters",
                r["body"]["round"],
                delta.len()
            ),
        );
        if n == delta.len() {
            break;
        }
    }
    let final_report = session::unload_link_load(bins, url, &reports)?;
    step(
        started,
        "S6–S8 link-load unloaded flow-stats everywhere and was unloaded",
    );
    print_links(&lab, &final_report["body"], &delta);
    print_matrix(&final_report["body"]);
    let protocols: Value =
        serde_json::from_str(&tmctl(bins, url, &["--json", "unload", "lab-protocols"])?)?;
    print_protocols(&protocols);
    drop(procs);
    step(started, "monitors and manager stopped");
    drop(lab);
    Ok(())
}

fn print_links(lab: &Lab, body: &Value, delta: &Counters) {
    let links = body["links"].as_array().cloned().unwrap_or_default();
    println!("\nPer link: link-load's figures next to the tapped veth's own counters\n");
    println!(
        "{:<9} {:>4}  {:<9} {:<9} {:>8} {:>10} {:>8} {:>10} {:>8} {:>7}",
        "monitor",
        "link",
        "from",
        "to",
        "packets",
        "bytes",
        "veth pk",
        "veth bytes",
        "diff %",
        "drops",
    );
    for t in &lab.taps {
        let key = (t.monitor_address.to_owned(), t.link_id);
        let (vp, vb) = delta.get(&key).copied().unwrap_or_default();
        let l = links
            .iter()
            .find(|l| l["monitor_address"] == t.monitor_address && l["link_id"] == t.link_id);
        let (p, b, drops) = l.map_or((0, 0, 0), |l| {
            (
                l["packets"].as_u64().unwrap_or(0),
                l["bytes"].as_u64().unwrap_or(0),
                l["capture_drops"].as_u64().unwrap_or(0),
            )
        });
        let diff = if vb == 0 {
            0.0
        } else {
            (b as f64 - vb as f64) * 100.0 / vb as f64
        };
        println!(
            "{:<9} {:>4}  {:<9} {:<9} {:>8} {:>10} {:>8} {:>10} {:>+8.3} {:>7}",
            t.monitor_address,
            t.link_id,
            lab::router(t.from).to_string(),
            lab::router(t.to).to_string(),
            p,
            b,
            vp,
            vb,
            diff,
            drops
        );
    }
}
