//! IPFIX export rate, side by side with softflowd:
//!
//!     cargo bench -p manager --bench export [-- --flows=200000 --per-window=2000]
//!
//! A capture of `--flows` two-packet UDP flows is generated. For
//! `tm-export`, the flows' records are published to the real results
//! stream as `flow-records` windows of `--per-window` records (what a
//! monitor publishes: the same fields, one record per flow, as its tests
//! show it makes them from such a capture); then `tm-export ipfix
//! --until-caught-up` (release build) is timed from start to exit,
//! exporting every record to `nfcapd` on loopback. For softflowd, `softflowd
//! -r` on the capture, exporting IPFIX to a second `nfcapd`, is timed from
//! start to exit: its figure includes reading the capture and tracking the
//! flows, which the monitor does before the exporter. Both collectors are
//! then read back with `nfdump` to count what arrived. Writes the table to
//! `target/bench/export.md` and prints it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus_schema::{DeploymentStats, ResultWindow, Value, subject};
use harness::collector::Nfcapd;
use pcapgen::{Frame, linktype};
use serde_json::{Value as Json, json};

use harness::bench_arg as arg;

const START_NS: u64 = 1_767_225_600 * 1_000_000_000;

/// Flow `i`'s addresses and ports.
fn endpoints(i: usize) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let i = i as u32;
    (
        Ipv4Addr::from(0x0a00_0000 | (i >> 4)),
        Ipv4Addr::new(10, 200, 0, 1),
        10_000 + (i & 0xf) as u16,
        53,
    )
}

/// Two packets a flow, 1 ms apart, flows started 10 µs apart.
fn capture(flows: usize) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(flows * 2);
    for i in 0..flows {
        let (src, dst, sport, dport) = endpoints(i);
        for k in 0..2u64 {
            frames.push(Frame {
                ts_ns: START_NS + i as u64 * 10_000 + k * 1_000_000,
                data: pcapgen::udp(src, dst, sport, dport, &[0; 64]),
                wire_len: None,
            });
        }
    }
    frames.sort_by_key(|f| f.ts_ns);
    frames
}

fn value(j: &Json) -> Value {
    rmp_serde::from_slice(&rmp_serde::to_vec_named(j).unwrap()).unwrap()
}

/// Window `seq` of flows `from..to`, as `flow-records` publishes it.
fn window(seq: u64, from: usize, to: usize) -> ResultWindow {
    let records: Vec<Json> = (from..to)
        .map(|i| {
            let (src, dst, sport, dport) = endpoints(i);
            let start = START_NS + i as u64 * 10_000;
            json!({"seq": i + 1, "src": src.to_string(), "dst": dst.to_string(), "sport": sport,
                   "dport": dport, "proto": 17, "packets": 2, "octets": 2 * 92,
                   "start_ns": start, "end_ns": start + 1_000_000, "tcp_flags": 0, "link": 1, "reason": 1})
        })
        .collect();
    ResultWindow {
        monitor: "bench-monitor".into(),
        deployment: "flows".into(),
        analyzer: "flow-records".into(),
        sha256: "0".repeat(64),
        run: "bench".into(),
        seq,
        start_unix_ms: 0,
        end_unix_ms: 0,
        last: false,
        stats: DeploymentStats::default(),
        capture: vec![],
        results: value(
            &json!({"packets": to * 2, "non_ip_packets": 0, "active_flows": 0,
            "records_total": to, "records_dropped": 0, "clock_ns": 0, "records": records}),
        ),
    }
}

/// Stops nfcapd and counts the flow records it got.
fn received(collector: Nfcapd) -> u64 {
    std::thread::sleep(Duration::from_millis(500));
    collector.records().len() as u64
}

/// CPU seconds (user + system) of the waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

struct Row {
    tool: &'static str,
    what: &'static str,
    records: u64,
    received: u64,
    wall: Duration,
    cpu_s: f64,
}

#[tokio::main]
async fn main() {
    let flows = arg("flows", 200_000);
    let per_window = arg("per-window", 2000).clamp(1, 4000);
    let frames = capture(flows);
    let work = tempfile::tempdir().unwrap();
    let pcap = work.path().join("flows.pcap");
    pcapgen::write_pcap(&pcap, linktype::ETHERNET, &frames).unwrap();

    let nats = harness::NatsServer::start().await.unwrap();
    let (_, js) = nats.client_with_stores().await;
    let mut seq = 0;
    for from in (0..flows).step_by(per_window) {
        seq += 1;
        let w = window(seq, from, (from + per_window).min(flows));
        js.publish(
            subject::results(&w.monitor, &w.deployment),
            bus_schema::encode(&w).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    eprintln!("{flows} records in {seq} windows published");

    let ours = work.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    let collector = Nfcapd::start(&ours);
    let port = collector.port;
    let cpu = children_cpu();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tm-export"))
        .args(["--nats", &nats.url(), "ipfix", "--until-caught-up"])
        .args(["--collector", &format!("127.0.0.1:{port}")])
        .args(["--deployment", "flows"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let wall = t.elapsed();
    let cpu_s = children_cpu() - cpu;
    assert!(out.status.success());
    let summary: Json = serde_json::from_slice(&out.stdout).unwrap();
    let ours_row = Row {
        tool: "tm-export ipfix",
        what: "results stream → IPFIX/UDP",
        records: summary["records"].as_u64().unwrap(),
        received: received(collector),
        wall,
        cpu_s,
    };

    let theirs = work.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let collector = Nfcapd::start(&theirs);
    let cpu = children_cpu();
    let t = Instant::now();
    collector.softflowd(&pcap, flows * 2, false);
    let wall = t.elapsed();
    let cpu_s = children_cpu() - cpu;
    let soft_received = received(collector);
    let soft = Row {
        tool: "softflowd -r",
        what: "capture → flows → IPFIX/UDP",
        records: flows as u64,
        received: soft_received,
        wall,
        cpu_s,
    };

    let rate = |r: &Row| r.records as f64 / r.wall.as_secs_f64();
    let mut md = format!(
        "IPFIX export of {flows} flows (two-packet UDP flows), to nfcapd on loopback; {} cores\n\n\
         | tool | does | records | received by nfcapd | wall s | records/s sent | received/s | CPU µs/record | sent rate vs softflowd |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in [&ours_row, &soft] {
        md += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2}× |\n",
            r.tool,
            r.what,
            r.records,
            r.received,
            r.wall.as_secs_f64(),
            rate(r),
            r.received as f64 / r.wall.as_secs_f64(),
            r.cpu_s * 1e6 / r.records as f64,
            rate(r) / rate(&soft),
        );
    }
    md += &format!(
        "\n{per_window} records per window; `cargo bench -p manager --bench export -- --flows={flows} --per-window={per_window}`\n"
    );
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("export.md"), md).unwrap();
}
