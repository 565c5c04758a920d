//! What the demo and the lab share: building the release binaries and the
//! guests, child processes stopped on drop, Ctrl-C handling, tmctl calls,
//! starting monitors and a manager, following reports, and printing the
//! traffic matrix and the protocol mix.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::guests;

/// The manager id the demo and the lab run.
pub(crate) const MANAGER: &str = "demo";

pub(crate) fn step(started: Instant, what: &str) {
    eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
}

/// Child processes, stopped with SIGTERM (then SIGKILL after 10 s) when
/// dropped: on success, on error and on Ctrl-C alike.
pub(crate) struct Procs(pub Vec<(String, Child)>);

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
                eprintln!("xtask: {name} did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(crate) struct Bins {
    pub monitor: PathBuf,
    pub manager: PathBuf,
    pub tmctl: PathBuf,
    pub console: PathBuf,
}

pub(crate) fn tmctl(bins: &Bins, nats: &str, args: &[&str]) -> Result<String> {
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C was pressed, so the demo unwinds and stops everything.
pub(crate) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: everything was stopped");
    }
    Ok(())
}

/// Sleeps `d` in short steps, failing on Ctrl-C.
pub(crate) fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    check_interrupt()
}

/// The next value within `d`, failing on Ctrl-C; `None` on timeout.
pub(crate) fn next<T>(rx: &std::sync::mpsc::Receiver<T>, d: Duration) -> Result<Option<T>> {
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

pub(crate) fn print_matrix(body: &Value) {
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
}

pub(crate) fn print_protocols(collected: &Value) {
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

/// Builds tm-monitor, tm-manager, tmctl and tm-console (release) and every guest; the
/// binaries and the guests' directory. Installs the Ctrl-C handler.
pub(crate) fn build(root: &Path, started: Instant) -> Result<(Bins, PathBuf)> {
    step(
        started,
        "building tm-monitor, tm-manager, tmctl and tm-console (release)",
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
        eprintln!("\ninterrupted: stopping everything");
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    Ok((
        Bins {
            monitor: release.join("tm-monitor"),
            manager: release.join("tm-manager"),
            tmctl: release.join("tmctl"),
            console: release.join("tm-console"),
        },
        wasm,
    ))
}

/// Imports the figure-5 topology and stores analyzers and apps in tm_blobs.
pub(crate) fn store(
    bins: &Bins,
    url: &str,
    topology_file: &Path,
    wasm: &Path,
    analyzers: &[&str],
    apps: &[&str],
) -> Result<()> {
    tmctl(
        bins,
        url,
        &["topology", "import", topology_file.to_str().unwrap()],
    )?;
    for (verb, names) in [("analyzer", analyzers), ("apps", apps)] {
        for name in names {
            let path = wasm.join(format!("{name}.wasm"));
            tmctl(bins, url, &[verb, "put", path.to_str().unwrap()])?;
        }
    }
    Ok(())
}

/// Each monitor's config (without `nats_url`) for `topology`: its links
/// replaying `traffic`'s captures of them, written into `dir`, each link
/// with `link_extra` (TOML lines) added.
pub(crate) fn replay_configs(
    topology: &manager::topology::Topology,
    traffic: &pcapgen::network::Traffic,
    dir: &Path,
    link_extra: &str,
) -> Result<Vec<(String, String)>> {
    let mut configs = Vec::new();
    for address in topology.monitors() {
        let mut config = format!("address = \"{address}\"\n");
        for (id, link) in topology.links_of_monitor(address) {
            let file = dir.join(format!("{address}-{id}.pcap"));
            let frames = traffic
                .frames
                .get(&(address.to_string(), id))
                .cloned()
                .unwrap_or_default();
            pcapgen::write_pcap(&file, pcapgen::linktype::ETHERNET, &frames)?;
            config += &format!(
                "[[link]]\nid = {id}\npcap = \"{}\"\n{link_extra}from_router = \"{}\"\nto_router = \"{}\"\n",
                file.display(),
                link.from,
                link.to
            );
        }
        configs.push((address.to_string(), config));
    }
    Ok(configs)
}

/// Starts one tm-monitor per `(address, config)` (configs without
/// `nats_url`, written to `dir` with their logs) and waits until all are up.
pub(crate) fn start_monitors(
    procs: &mut Procs,
    bins: &Bins,
    url: &str,
    dir: &Path,
    configs: &[(String, String)],
) -> Result<()> {
    for (address, config) in configs {
        let path = dir.join(format!("monitor-{address}.toml"));
        std::fs::write(&path, format!("nats_url = \"{url}\"\n{config}"))?;
        let log = std::fs::File::create(dir.join(format!("monitor-{address}.log")))?;
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
        if up.as_array().map_or(0, Vec::len) == configs.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the monitors did not come up; logs in {}", dir.display());
        }
        pause(Duration::from_millis(100))?;
    }
}

/// Starts tm-manager [`MANAGER`] (log in `dir`) and waits until it answers.
pub(crate) fn start_manager(procs: &mut Procs, bins: &Bins, url: &str, dir: &Path) -> Result<()> {
    let log = std::fs::File::create(dir.join("manager.log"))?;
    let child = Command::new(&bins.manager)
        .args(["--id", MANAGER, "--nats", url])
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()?;
    procs.0.push(("tm-manager".into(), child));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tmctl(bins, url, &["apps", "list", "--manager", MANAGER]).is_err() {
        if Instant::now() > deadline {
            bail!("the manager did not come up; log in {}", dir.display());
        }
        pause(Duration::from_millis(100))?;
    }
    Ok(())
}

/// Starts tm-console on `listen` (log in `dir`); the page's URL.
pub(crate) fn start_console(
    procs: &mut Procs,
    bins: &Bins,
    url: &str,
    dir: &Path,
    listen: &str,
) -> Result<String> {
    let log = std::fs::File::create(dir.join("console.log"))?;
    let mut console = Command::new(&bins.console)
        .args(["--nats", url, "--listen", listen])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start tm-console")?;
    let mut line = String::new();
    BufReader::new(console.stdout.take().expect("piped")).read_line(&mut line)?;
    procs.0.push(("tm-console".into(), console));
    Ok(line
        .trim()
        .strip_prefix("tm-console: ")
        .with_context(|| {
            format!(
                "tm-console said {line:?}; log in {}",
                dir.join("console.log").display()
            )
        })?
        .to_owned())
}

/// Follows an app's reports through `tmctl watch` (a child in `procs`);
/// each report as JSON on the receiver.
pub(crate) fn watch_reports(
    procs: &mut Procs,
    bins: &Bins,
    url: &str,
    app: &str,
) -> Result<std::sync::mpsc::Receiver<Value>> {
    let mut watch = Command::new(&bins.tmctl)
        .args(["--nats", url, "--json", "watch", "reports", "--only", app])
        .args(["--idle-s", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // tmctl says on stderr when its consumer is in place.
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
    Ok(lines)
}

/// Loads link-load from the object store on [`MANAGER`]; the id of the
/// flow-stats deployment it made.
pub(crate) fn load_link_load(bins: &Bins, url: &str, params: &Value) -> Result<String> {
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
    let record: Value = serde_json::from_str(&tmctl(bins, url, &["--json", "deployments"])?)?;
    Ok(record
        .as_array()
        .and_then(|a| a.iter().find(|d| d["analyzer"] == "flow-stats"))
        .and_then(|d| d["deployment"].as_str())
        .context("link-load deployed nothing")?
        .to_owned())
}

/// Unloads link-load; its final report.
pub(crate) fn unload_link_load(
    bins: &Bins,
    url: &str,
    reports: &std::sync::mpsc::Receiver<Value>,
) -> Result<Value> {
    tmctl(
        bins,
        url,
        &["apps", "unload", "link-load", "--manager", MANAGER],
    )?;
    loop {
        let Some(r) = next(reports, Duration::from_secs(10))? else {
            bail!("no final link-load report");
        };
        if r["kind"] == "link-load-final" {
            return Ok(r);
        }
    }
}
