//! The console at scale, in headless Chromium:
//!
//!     cargo bench -p manager --bench console [-- --routers=100 --links=300 --updates=200]
//!
//! A generated topology of `--routers` routers in a ring with chords,
//! `--links` directed links all tapped (six per monitor address), is
//! imported into a real nats-server; `tm-console` serves it to a headless
//! Chromium. Then, as monitors and link-load would, the bench publishes to
//! the real streams, interleaved: `--updates` result windows (a flow-stats
//! window of 25 flows, round robin over the monitors) and a link-load
//! report covering every tapped link after every tenth window. The page
//! measures, with `performance.now()`, each update from its arrival to the
//! next frame painted with it applied; the bench reads those figures and
//! prints the p50/p99/max per kind, with the time the first whole view
//! (map laid out) took. Checks: the map has every router and link, and
//! the last report's bytes are on the page.

use std::time::{Duration, Instant};

use bus_schema::{
    DeploymentStats, LinkCapture, Report, ResultWindow, TopologyRecord, TopologyRow, Value, subject,
};
use harness::browser::Browser;
use serde_json::{Value as Json, json};

use harness::bench_arg as arg;

fn router(i: usize) -> String {
    format!("10.{}.{}.1", 1 + i / 250, i % 250)
}

fn monitor_address(m: usize) -> String {
    format!("10.250.{}.{}", m / 250, m % 250 + 1)
}

/// Routers in a ring, then chords `i → i + k` until `links` directed links
/// (every line both ways), each tapped: six per monitor address.
fn topology(routers: usize, links: usize) -> TopologyRecord {
    let mut lines = Vec::new();
    let mut k = 1;
    while lines.len() * 2 < links {
        for i in 0..routers {
            if lines.len() * 2 >= links {
                break;
            }
            lines.push((i, (i + k) % routers));
        }
        k += 7;
    }
    let mut rows = Vec::new();
    for (n, (a, b)) in lines
        .iter()
        .flat_map(|&(a, b)| [(a, b), (b, a)])
        .enumerate()
    {
        rows.push(TopologyRow {
            monitor_address: monitor_address(n / 6),
            link_id: (n % 6) as u32,
            from_router: router(a),
            to_router: router(b),
        });
    }
    TopologyRecord {
        rows,
        imported_unix_ms: 0,
        imported_by: "bench".into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn value(j: Json) -> Value {
    rmp_serde::from_slice(&rmp_serde::to_vec_named(&j).unwrap()).unwrap()
}

fn window(monitor: usize, seq: u64) -> ResultWindow {
    let top: Vec<Json> = (0..25)
        .map(|f| {
            json!({"src": format!("10.20.0.{f}"), "dst": "10.30.0.1", "sport": 40000 + f, "dport": 443,
                   "proto": 6, "packets": 1000 - f, "bytes": 100_000 - f * 10, "first_ns": 0, "last_ns": 0, "tcp_flags": 24})
        })
        .collect();
    ResultWindow {
        monitor: format!("m{monitor}"),
        deployment: "flows".into(),
        analyzer: "flow-stats".into(),
        sha256: "0".repeat(64),
        run: "bench".into(),
        seq,
        start_unix_ms: 0,
        end_unix_ms: now_ms(),
        last: false,
        stats: DeploymentStats {
            packets_in: seq * 1000,
            ..DeploymentStats::default()
        },
        capture: (0..6)
            .map(|l| LinkCapture {
                link: l,
                packets: seq * 100,
                bytes: seq * 10_000,
                kernel_drops: 0,
                interface_drops: 0,
            })
            .collect(),
        results: value(json!({"packets": seq * 1000, "active_flows": 25, "top": top})),
    }
}

fn report(record: &TopologyRecord, round: u64) -> Report {
    let links: Vec<Json> = record
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bytes = round * 1000 + i as u64;
            json!({"from_router": r.from_router, "to_router": r.to_router,
                   "monitor_address": r.monitor_address, "link_id": r.link_id,
                   "packets": round * 10, "bytes": bytes, "duration_s": 1.0,
                   "pps": 10.0, "bps": (bytes * 8) as f64, "utilisation": (i % 100) as f64 / 100.0,
                   "capture_state": "running", "capture_drops": 0})
        })
        .collect();
    Report {
        manager: "bench".into(),
        app: "link-load".into(),
        seq: round,
        at_unix_ms: now_ms(),
        kind: "link-load".into(),
        body: value(json!({"round": round, "links": links})),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

#[tokio::main]
async fn main() {
    let routers = arg("routers", 100);
    let links = arg("links", 300);
    let updates = arg("updates", 200);
    let nats = harness::NatsServer::start().await.unwrap();
    let (client, js) = nats.client_with_stores().await;
    let record = topology(routers, links);
    let kv = manager::topology::open_bucket(&js, 1).await.unwrap();
    manager::topology::save(&kv, &record, None).await.unwrap();
    let monitors = record.rows.len().div_ceil(6);

    let mut console = std::process::Command::new(env!("CARGO_BIN_EXE_tm-console"))
        .args(["--nats", &nats.url(), "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(console.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line.trim().strip_prefix("tm-console: ").unwrap().to_owned();
    let browser = Browser::start(1400, 1000).await.unwrap();
    let opened = Instant::now();
    browser.open(&url).await.unwrap();
    let map = browser
        .until(
            "return window.tm && tm.cy ? [tm.cy.nodes().length, tm.cy.edges('.tapped').length] : null",
            Duration::from_secs(60),
            |v| *v == json!([routers, links]),
        )
        .await
        .unwrap_or_else(|v| panic!("map: {v}"));
    let first_view = opened.elapsed();
    assert_eq!(map, json!([routers, links]));

    let mut round = 0;
    for i in 0..updates {
        let w = window(i % monitors, 1 + (i / monitors) as u64);
        client
            .publish(
                subject::results(&w.monitor, &w.deployment),
                bus_schema::encode(&w).unwrap().into(),
            )
            .await
            .unwrap();
        if i % 10 == 9 {
            round += 1;
            let r = report(&record, round);
            client
                .publish(
                    subject::reports(&r.manager, &r.app),
                    bus_schema::encode(&r).unwrap().into(),
                )
                .await
                .unwrap();
        }
        // About what 50 monitors publishing a window a second send.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last report's bytes on the page: every update was applied.
    let last = report(&record, round);
    let want = last.body["links"][0]["bytes"].as_u64().unwrap();
    let key = format!(
        "{}/{}",
        record.rows[0].monitor_address, record.rows[0].link_id
    );
    browser
        .until(
            &format!("return Number(document.querySelector('#links tr[data-link=\"{key}\"]').dataset.bytes)"),
            Duration::from_secs(20),
            |v| v.as_u64() == Some(want),
        )
        .await
        .unwrap_or_else(|v| panic!("the last report is not on the page: {v} != {want}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let times = browser.js("return tm.applyTimes").await.unwrap();
    browser.close().await;
    let _ = console.kill();
    let _ = console.wait();

    let of = |kind: &str| -> Vec<f64> {
        times
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == kind)
            .map(|t| t["ms"].as_f64().unwrap())
            .collect()
    };
    let view = of("view");
    println!(
        "\n{routers} routers, {links} tapped links, {monitors} monitor addresses; {updates} windows, {round} link-load reports\n"
    );
    println!(
        "first whole view: map laid out and every table drawn {:.0} ms after the page opened (the view itself: {:.1} ms to apply)\n",
        first_view.as_secs_f64() * 1000.0,
        view.first().copied().unwrap_or(f64::NAN)
    );
    println!("| update | count | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
    for kind in ["window", "report"] {
        let v = of(kind);
        assert!(!v.is_empty(), "no {kind} update measured");
        let (p50, p99, max) = stats(v.clone());
        println!("| {kind} | {} | {p50:.1} | {p99:.1} | {max:.1} |", v.len());
    }
}
