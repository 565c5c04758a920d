//! `xtask/run demo`: the whole system on one machine, no root.
//!
//! Builds the binaries and guests, starts a nats-server with JetStream in a
//! temp dir, three monitors replaying generated captures as the seed's
//! figure-1 network (the six tapped directions of figure 5), and a manager;
//! runs `link-load` through S1–S8 with `proto-id` beside it, prints the
//! figure-5 table with each link's traffic and the protocol mix, and shuts
//! everything down (also on Ctrl-C).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use manager::topology::Topology;
use pcapgen::network::{self, Flows, Traffic};
use serde_json::Value;

use crate::guests;

const MANAGER: &str = "demo";

fn step(started: Instant, what: &str) {
    eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Child processes, stopped with SIGTERM (then SIGKILL after 10 s) when
/// dropped: on success, on error and on Ctrl-C alike.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &self.0 {
            // SAFETY: kill(2) with a pid we spawned; no memory is touched.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                eprintln!("demo: {name} did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

struct Bins {
    monitor: PathBuf,
    manager: PathBuf,
    tmctl: PathBuf,
}

fn tmctl(bins: &Bins, nats: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(&bins.tmctl)
        .args(["--nats", nats])
        .args(args)
        .output()
        .context("cannot run tmctl")?;
    if !out.status.success() {
        bail!(
            "tmctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The demo's traffic: UDP flows between the routers' hosts on the paths
/// of figure 5 (R4→R1 crosses no tap), and a protocol mix (HTTP, TLS, DNS,
/// SSH, QUIC, …) on R1→R2.
fn traffic(topology: &Topology) -> Traffic {
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C was pressed, so the demo unwinds and stops everything.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: everything was stopped");
    }
    Ok(())
}

/// Sleeps `d` in short steps, failing on Ctrl-C.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    check_interrupt()
}

/// The next value within `d`, failing on Ctrl-C; `None` on timeout.
fn next<T>(rx: &std::sync::mpsc::Receiver<T>, d: Duration) -> Result<Option<T>> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(v) => return Ok(Some(v)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

/// Runs the demo; `root` is the workspace.
pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    step(
        started,
        "building tm-monitor, tm-manager and tmctl (release)",
    );
    crate::run(crate::cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "monitor",
        "-p",
        "manager",
    ]))?;
    step(started, "building the WebAssembly analyzers and apps");
    let wasm = guests::build_all(root, guests::Toolchain::Auto)?;
    let release = root.join("target/release");
    let bins = Bins {
        monitor: release.join("tm-monitor"),
        manager: release.join("tm-manager"),
        tmctl: release.join("tmctl"),
    };
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        eprintln!("\ndemo: interrupted, stopping everything");
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
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
    tmctl(
        bins,
        url,
        &["topology", "import", topology_file.to_str().unwrap()],
    )?;
    for name in ["flow-stats", "proto-id"] {
        tmctl(
            bins,
            url,
            &[
                "analyzer",
                "put",
                wasm.join(format!("{name}.wasm")).to_str().unwrap(),
            ],
        )?;
    }
    tmctl(
        bins,
        url,
        &["apps", "put", wasm.join("link-load.wasm").to_str().unwrap()],
    )?;
    step(
        started,
        "topology (figure 5) imported; flow-stats, proto-id and link-load stored in tm_blobs",
    );

    let mut procs = Procs(Vec::new());
    for address in topology.monitors() {
        let mut config = format!("address = \"{address}\"\nnats_url = \"{url}\"\n");
        for (id, link) in topology.links_of_monitor(address) {
            let file = dir.path().join(format!("{address}-{id}.pcap"));
            let frames = traffic
                .frames
                .get(&(address.to_string(), id))
                .cloned()
                .unwrap_or_default();
            pcapgen::write_pcap(&file, pcapgen::linktype::ETHERNET, &frames)?;
            config += &format!(
                "[[link]]\nid = {id}\npcap = \"{}\"\nreplay_waits_for = 2\nfrom_router = \"{}\"\nto_router = \"{}\"\n",
                file.display(),
                link.from,
                link.to
            );
        }
        let path = dir.path().join(format!("monitor-{address}.toml"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.path().join(format!("monitor-{address}.log")))?;
        let child = Command::new(&bins.monitor)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()?;
        procs.0.push((format!("tm-monitor {address}"), child));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up: Value = serde_json::from_str(&tmctl(bins, url, &["--json", "monitors"])?)?;
        if up.as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the monitors did not come up; logs in {}",
                dir.path().display()
            );
        }
        pause(Duration::from_millis(100))?;
    }
    step(
        started,
        "3 monitors up: 10.9.0.1 (L12 both ways), 10.9.0.2 (L23 both ways), 10.9.0.3 (R3→R4, R1→R4)",
    );
    let log = std::fs::File::create(dir.path().join("manager.log"))?;
    let child = Command::new(&bins.manager)
        .args(["--id", MANAGER, "--nats", url])
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()?;
    procs.0.push(("tm-manager".into(), child));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tmctl(bins, url, &["apps", "list", "--manager", MANAGER]).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the manager did not come up; log in {}",
                dir.path().display()
            );
        }
        pause(Duration::from_millis(100))?;
    }
    step(started, &format!("manager {MANAGER} up"));
    tmctl(bins, url, &["deploy", "proto-id", "--id", "demo-protocols"])?;
    step(
        started,
        "proto-id deployed to every monitor (tmctl deploy); the replays wait for a second analyzer",
    );

    // Reports as they come, through tmctl watch.
    let mut watch = Command::new(&bins.tmctl)
        .args([
            "--nats",
            url,
            "--json",
            "watch",
            "reports",
            "--only",
            "link-load",
            "--idle-s",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut ready = BufReader::new(watch.stderr.take().expect("piped"));
    let mut line = String::new();
    ready.read_line(&mut line)?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<Value>();
    let stdout = watch.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && lines_tx.send(v).is_err()
            {
                return;
            }
        }
    });
    procs.0.push(("tmctl watch".into(), watch));

    let prefixes: Vec<Value> = (1..=4u8)
        .map(|n| serde_json::json!({"prefix": network::prefix(n), "router": network::router(n).to_string()}))
        .collect();
    let params =
        serde_json::json!({"every_ms": 500, "capacity_bps": 10_000_000.0, "prefixes": prefixes});
    tmctl(
        bins,
        url,
        &[
            "apps",
            "load",
            "link-load",
            "--manager",
            MANAGER,
            "--blob",
            "link-load",
            "--params",
            &params.to_string(),
        ],
    )?;
    step(
        started,
        "S1  manager loaded link-load from the object store and started it",
    );
    let record: Value = serde_json::from_str(&tmctl(bins, url, &["--json", "deployments"])?)?;
    let deployment = record
        .as_array()
        .and_then(|a| a.iter().find(|d| d["analyzer"] == "flow-stats"))
        .and_then(|d| d["deployment"].as_str())
        .context("link-load deployed nothing")?
        .to_owned();
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
    tmctl(
        bins,
        url,
        &["apps", "unload", "link-load", "--manager", MANAGER],
    )?;
    let final_report = loop {
        let Some(r) = next(&lines, Duration::from_secs(10))? else {
            bail!("no final link-load report");
        };
        if r["kind"] == "link-load-final" {
            break r;
        }
    };
    step(
        started,
        "S6/S7 link-load's stop unloaded flow-stats on every monitor: final results",
    );
    step(started, "S8  manager unloaded link-load");

    print_links(&topology, &traffic, &final_report["body"]);
    print_matrix(&final_report["body"]);
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

fn print_matrix(body: &Value) {
    println!("\nTraffic matrix (hosts behind each router, each flow counted once):\n");
    println!(
        "{:<10} {:<10} {:>6} {:>8} {:>11}",
        "from", "to", "flows", "packets", "bytes"
    );
    for c in body["matrix"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<10} {:<10} {:>6} {:>8} {:>11}",
            c["from_router"].as_str().unwrap_or(""),
            c["to_router"].as_str().unwrap_or(""),
            c["flows"].as_u64().unwrap_or(0),
            c["packets"].as_u64().unwrap_or(0),
            c["bytes"].as_u64().unwrap_or(0)
        );
    }
    println!("(traffic from R4 to R1 crosses no tap, so it is not in the matrix)");
}

fn print_protocols(collected: &Value) {
    let mut apps: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in collected["results"].as_array().cloned().unwrap_or_default() {
        if let Some(map) = r["results"]["app"].as_object() {
            for (name, t) in map {
                let e = apps.entry(name.clone()).or_default();
                e.0 += t["packets"].as_u64().unwrap_or(0);
                e.1 += t["bytes"].as_u64().unwrap_or(0);
            }
        }
    }
    println!("\nProtocol mix (proto-id on every link, summed):\n");
    println!("{:<10} {:>9} {:>12}", "protocol", "packets", "bytes");
    let mut rows: Vec<_> = apps.into_iter().filter(|(_, (p, _))| *p > 0).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.1));
    for (name, (p, b)) in rows {
        println!("{name:<10} {p:>9} {b:>12}");
    }
    println!();
}
