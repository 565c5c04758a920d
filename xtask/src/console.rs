//! `cargo xtask console`: the demo's network with the console open on it.
//!
//! Builds, starts nats-server, three monitors replaying the figure-5
//! network's traffic at its recorded pace (with a SYN flood from spoofed
//! sources at a host behind R3 crossing R1→R2 and R2→R3), a manager running
//! link-load and dos-trace, a flow-stats publishing a window a second (the
//! link pages' flows), and `tm-console`; prints the console's URL and
//! runs until Ctrl-C. With `--screenshot DIR` it opens the console in
//! headless Chromium instead, saves `map.png` (the map, the tables and the
//! event feed, once the flood is traced) and `link.png` (R1→R2's page with
//! its chart), and stops everything.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use manager::topology::Topology;
use pcapgen::network;
use serde_json::json;

use crate::demo;
use crate::session::{self, MANAGER, Procs, pause, step, tmctl};

/// Runs the console session; `screenshots`: where to save them and stop.
pub fn run(root: &Path, listen: SocketAddr, screenshots: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let (bins, wasm) = session::build(root, started)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let nats = runtime.block_on(harness::NatsServer::start())?;
    let url = nats.url();
    step(started, &format!("nats-server with JetStream at {url}"));
    let dir = tempfile::tempdir()?;
    let topology_file = root.join("examples/topology/figure5.toml");
    let topology = Topology::from_path(&topology_file)?;
    let mut traffic = demo::traffic(&topology);
    // A SYN flood from spoofed sources at a host behind R3, on the taps
    // of its path from R1: R1→R2 (10.9.0.1:0) and R2→R3 (10.9.0.2:0).
    let start = traffic
        .frames
        .values()
        .flat_map(|f| f.first())
        .map(|f| f.ts_ns)
        .min()
        .unwrap_or(0)
        + 2_000_000_000;
    let mut tl = pcapgen::Timeline::new(start, 1000);
    let target = SocketAddr::new(network::host(3, 9).into(), 80);
    pcapgen::scenarios::syn_flood(&mut tl, target, 3000, 500_000);
    traffic.add(("10.9.0.1", 0), tl.frames.clone());
    traffic.add(("10.9.0.2", 0), tl.frames);
    traffic.finish();
    session::store(
        &bins,
        &url,
        &topology_file,
        &wasm,
        &["flow-stats", "dos-detect"],
        &["link-load", "dos-trace"],
    )?;
    let mut procs = Procs(Vec::new());
    let configs = session::replay_configs(
        &topology,
        &traffic,
        dir.path(),
        "replay = \"recorded-pace\"\nreplay_waits_for = 3\n",
    )?;
    session::start_monitors(&mut procs, &bins, &url, dir.path(), &configs)?;
    session::start_manager(&mut procs, &bins, &url, dir.path())?;
    let page = session::start_console(&mut procs, &bins, &url, dir.path(), &listen.to_string())?;
    println!("console: {page}");
    step(
        started,
        &format!("3 monitors, manager {MANAGER} and the console up"),
    );

    let prefixes: Vec<_> = (1..=4u8)
        .map(|n| json!({"prefix": network::prefix(n), "router": network::router(n).to_string()}))
        .collect();
    for (app, params) in [
        (
            "dos-trace",
            json!({"prefixes": prefixes, "every_ms": 1000, "window_ms": 1000, "syn_threshold": 500}),
        ),
        (
            "link-load",
            json!({"every_ms": 500, "capacity_bps": 2_000_000.0, "prefixes": prefixes}),
        ),
    ] {
        tmctl(
            &bins,
            &url,
            &[
                "apps",
                "load",
                app,
                "--manager",
                MANAGER,
                "--blob",
                app,
                "--params",
                &params.to_string(),
            ],
        )?;
    }
    // Windows for the link pages' flows and protocol mix.
    tmctl(
        &bins,
        &url,
        &[
            "deploy",
            "flow-stats",
            "--id",
            "console-flows",
            "--params",
            r#"{"top_n": 25}"#,
            "--report-every-ms",
            "1000",
        ],
    )?;
    step(
        started,
        "dos-trace, link-load and a flow-stats publishing windows; the replays run at their recorded pace",
    );
    match screenshots {
        Some(out) => {
            std::fs::create_dir_all(out)?;
            runtime.block_on(shoot(&page, out))?;
            step(
                started,
                &format!("screenshots in {}: map.png, link.png", out.display()),
            );
        }
        None => {
            println!("open {page} in a browser; Ctrl-C stops everything");
            loop {
                pause(Duration::from_secs(1))?;
            }
        }
    }
    drop(procs);
    drop(nats);
    Ok(())
}

/// Opens the console headless and saves the map and R1→R2's page.
async fn shoot(page: &str, out: &Path) -> Result<()> {
    let browser = harness::browser::Browser::start(1500, 1100).await?;
    browser.open(page).await?;
    // The flood traced (the path drawn), every tapped direction counted.
    let ready = "return window.tm && tm.cy ? [tm.cy.edges('.path').length, [...document.querySelectorAll('#links tr[data-link]')].filter(r => Number(r.dataset.bytes) > 0).length] : null";
    let state = browser
        .until(ready, Duration::from_secs(60), |v| {
            v[0].as_u64().is_some_and(|n| n > 0) && v[1] == 6
        })
        .await;
    if let Err(v) = state {
        bail!("the console did not show the traced flood and six counted links in 60 s: {v}");
    }
    // A few more rounds for the chart.
    tokio::time::sleep(Duration::from_secs(4)).await;
    browser.screenshot(&out.join("map.png")).await?;
    browser
        .js("document.querySelector('#links tr[data-link=\"10.9.0.1/0\"]').click(); document.querySelector('#link-page').scrollIntoView(); return true")
        .await?;
    let points = browser
        .until(
            "return [(tm.history.get('10.9.0.1/0') || []).length, document.querySelectorAll('#link-flows tbody tr').length]",
            Duration::from_secs(20),
            |v| v[0].as_u64().is_some_and(|n| n >= 5) && v[1].as_u64().is_some_and(|n| n > 0),
        )
        .await;
    if let Err(v) = points {
        bail!("R1→R2's page after 20 s: [chart points, flows] = {v}");
    }
    browser.screenshot(&out.join("link.png")).await?;
    browser.close().await;
    Ok(())
}
