//! `xtask/run demo`: the whole system on one machine, no root.
//!
//! Builds the binaries and guests, starts a nats-server with JetStream in a
//! temp dir, three monitors replaying generated captures as the
//! reference network (the six tapped directions of its link table, docs/lab.md), and a manager;
//! runs `link-load` through S1–S8 with `proto-id` beside it, prints the
//! figure-5 table with each link's traffic and the protocol mix, and shuts
//! everything down (also on Ctrl-C).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use manager::topology::Topology;
use pcapgen::network::{self, Flows, Traffic};
use serde_json::Value;

use crate::session::{
    self, Bins, MANAGER, Procs, next, print_matrix, print_protocols, step, tmctl,
};

/// The demo's traffic: UDP flows between the routers' hosts on the paths
/// of figure 5 (R4→R1 crosses no tap), and a protocol mix (HTTP, TLS, DNS,
/// SSH, QUIC, …) on R1→R2.
pub(crate) fn traffic(topology: &Topology) -> Traffic {
    let flows = [
        Flows {
            from: 1,
            to: 3,
            count: 6,
            packets: 400,
            payload: 800,
        },
        Flows {
            from: 3,
            to: 1,
            count: 4,
            packets: 300,
            payload: 1200,
        },
        Flows {
            from: 1,
            to: 4,
            count: 3,
            packets: 500,
            payload: 400,
        },
        Flows {
            from: 3,
            to: 4,
            count: 2,
            packets: 600,
            payload: 200,
        },
        Flows {
            from: 2,
            to: 3,
            count: 5,
            packets: 200,
            payload: 1000,
        },
        Flows {
            from: 2,
            to: 1,
            count: 2,
            packets: 250,
            payload: 600,
        },
        Flows {
            from: 4,
            to: 1,
            count: 2,
            packets: 100,
            payload: 300,
        },
    ];
    let start = 1_764_000_000_000_000_000;
    let mut t = network::udp_flows(
        &flows,
        |a, b| {
            topology
                .flow_path(
                    IpAddr::V4(network::router(a)),
                    IpAddr::V4(network::router(b)),
                )
                .map(|links| {
                    links
                        .iter()
                        .flat_map(|l| l.seen_by.iter().map(|t| (t.monitor.to_string(), t.link_id)))
                        .collect()
                })
                .unwrap_or_default()
        },
        start,
    );
    let (mix, _) = pcapgen::apps::mix(start + 5_000_000);
    t.add(("10.9.0.1", 0), mix);
    t.finish();
    t
}

/// Runs the demo; `root` is the workspace.
pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    let (bins, wasm) = session::build(root, started)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let nats = runtime.block_on(harness::NatsServer::start())?;
    let outcome = demo(root, &bins, &wasm, &nats.url(), started);
    drop(nats);
    step(started, "nats-server stopped, temp files removed");
    outcome
}

fn demo(root: &Path, bins: &Bins, wasm: &Path, url: &str, started: Instant) -> Result<()> {
    step(started, &format!("nats-server with JetStream at {url}"));
    let dir = tempfile::tempdir()?;
    let topology_file = root.join("examples/topology/figure5.toml");
    let topology = Topology::from_path(&topology_file)?;
    let traffic = traffic(&topology);
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
        "topology (figure 5) imported; flow-stats, proto-id and link-load stored in tm_blobs",
    );

    let mut procs = Procs(Vec::new());
    let configs =
        session::replay_configs(&topology, &traffic, dir.path(), "replay_waits_for = 2\n")?;
    session::start_monitors(&mut procs, bins, url, dir.path(), &configs)?;
    step(
        started,
        "3 monitors up: 10.9.0.1 (L12 both ways), 10.9.0.2 (L23 both ways), 10.9.0.3 (R3→R4, R1→R4)",
    );
    session::start_manager(&mut procs, bins, url, dir.path())?;
    step(started, &format!("manager {MANAGER} up"));
    let console = session::start_console(&mut procs, bins, url, dir.path(), "127.0.0.1:0")?;
    step(
        started,
        &format!(
            "console at {console} (open it while the demo runs; `xtask/run console` keeps one up)"
        ),
    );
    tmctl(bins, url, &["deploy", "proto-id", "--id", "demo-protocols"])?;
    step(
        started,
        "proto-id deployed to every monitor (tmctl deploy); the replays wait for a second analyzer",
    );
    let lines = session::watch_reports(&mut procs, bins, url, "link-load")?;

    let prefixes: Vec<Value> = (1..=4u8)
        .map(|n| serde_json::json!({"prefix": network::prefix(n), "router": network::router(n).to_string()}))
        .collect();
    let params =
        serde_json::json!({"every_ms": 500, "capacity_bps": 10_000_000.0, "prefixes": prefixes});
    let deployment = session::load_link_load(bins, url, &params)?;
    step(
        started,
        "S1  manager loaded link-load from the object store and started it",
    );
    step(
        started,
        &format!(
            "S2  link-load deployed flow-stats as {deployment} (desired state in tm_deployments)"
        ),
    );
    step(
        started,
        "S3  each monitor fetched it, checked its SHA-256, started it; the replays run",
    );
    let total: u64 = traffic.taps.values().map(|t| t.packets).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut shown = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(report) = next(&lines, remaining)? else {
            bail!(
                "no complete link-load report within 60 s; logs in {}",
                dir.path().display()
            );
        };
        let body = &report["body"];
        let links = body["links"].as_array().cloned().unwrap_or_default();
        let seen: u64 = links.iter().filter_map(|l| l["packets"].as_u64()).sum();
        let finished = links
            .iter()
            .filter(|l| l["capture_state"] == "finished")
            .count();
        if shown == Some((seen, finished)) {
            continue;
        }
        shown = Some((seen, finished));
        step(
            started,
            &format!(
                "S4/S5 round {}: {seen} of {total} packets on {} links, {finished} replays finished",
                body["round"],
                links.len()
            ),
        );
        if seen == total && finished == traffic.taps.len() {
            break;
        }
    }
    let final_report = session::unload_link_load(bins, url, &lines)?;
    step(
        started,
        "S6/S7 link-load's stop unloaded flow-stats on every monitor: final results",
    );
    step(started, "S8  manager unloaded link-load");

    print_links(&topology, &traffic, &final_report["body"]);
    print_matrix(&final_report["body"]);
    println!("(traffic from R4 to R1 crosses no tap, so it is not in the matrix)");
    let protocols: Value =
        serde_json::from_str(&tmctl(bins, url, &["--json", "unload", "demo-protocols"])?)?;
    print_protocols(&protocols);
    step(started, "proto-id unloaded; stopping monitors and manager");
    drop(procs);
    step(started, "monitors and manager stopped");
    Ok(())
}

fn print_links(topology: &Topology, traffic: &Traffic, body: &Value) {
    let links = body["links"].as_array().cloned().unwrap_or_default();
    println!(
        "\nPer link (the figure-5 table with what each tap saw; rates over its packet-time span):\n"
    );
    println!(
        "{:<15} {:>4}  {:<10} {:<10} {:>8} {:>11} {:>9} {:>9} {:>7}  matches capture",
        "monitor", "link", "from", "to", "packets", "bytes", "pps", "Mbit/s", "util%",
    );
    for row in topology.rows() {
        let l = links.iter().find(|l| {
            l["monitor_address"] == row.monitor_address.as_str() && l["link_id"] == row.link_id
        });
        let truth = traffic
            .taps
            .get(&(row.monitor_address.clone(), row.link_id));
        match l {
            Some(l) => {
                let exact =
                    truth.is_some_and(|t| l["packets"] == t.packets && l["bytes"] == t.bytes);
                println!(
                    "{:<15} {:>4}  {:<10} {:<10} {:>8} {:>11} {:>9.1} {:>9.3} {:>7.3}  {}",
                    row.monitor_address,
                    row.link_id,
                    row.from_router,
                    row.to_router,
                    l["packets"].as_u64().unwrap_or(0),
                    l["bytes"].as_u64().unwrap_or(0),
                    l["pps"].as_f64().unwrap_or(0.0),
                    l["bps"].as_f64().unwrap_or(0.0) / 1e6,
                    l["utilisation"].as_f64().unwrap_or(0.0) * 100.0,
                    if exact { "yes" } else { "NO" }
                );
            }
            None => println!(
                "{:<15} {:>4}  {:<10} {:<10} {:>8}",
                row.monitor_address, row.link_id, row.from_router, row.to_router, "-"
            ),
        }
    }
    for u in body["unmonitored"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<15} {:>4}  {:<10} {:<10}   (nobody taps this direction)",
            "-",
            "-",
            u["from_router"].as_str().unwrap_or(""),
            u["to_router"].as_str().unwrap_or("")
        );
    }
}
