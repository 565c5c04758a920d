//! Data path of the monitor alone, side by side with tcpdump on the same
//! file in the same run.
//!
//!     cargo xtask guests
//!     cargo bench -p monitor --bench datapath [-- PACKETS FLOWS RUNS]
//!
//! Replays a generated pcap (default 2,000,000 packets over 10,000 flows,
//! kept in target/bench/) instantly through: (1) `tcpdump -r FILE -w
//! /dev/null`; (2) the monitor's capture + parse + filter path with a filter
//! that matches nothing (no guest calls); (3) the same with the counting
//! guest `packet-count` receiving every packet in batches. Prints the best
//! of RUNS runs as packets/s and ratios to tcpdump, and the guest's cost per
//! batch call. No NATS is involved: this measures the data path only.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bus_schema::Filter;
use common::{BATCH, capture_file, guest, monitor_run};
use wasm_host::{Sandbox, SandboxConfig};

fn best<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn tcpdump(path: &Path) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new("tcpdump")
        .args(["-q", "-r"])
        .arg(path)
        .args(["-w", "/dev/null"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("tcpdump");
    assert!(status.success());
    started.elapsed()
}

fn main() {
    // `cargo bench` passes `--bench`; positional numbers are ours.
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let packets = nums.first().copied().unwrap_or(2_000_000);
    let flows = nums.get(1).copied().unwrap_or(10_000);
    let runs = nums.get(2).copied().unwrap_or(3);
    let path = capture_file(packets, flows);
    let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
    let module = guest(&sandbox, "packet-count");
    let total = packets as u64;

    let t_tcpdump = best(runs, || tcpdump(&path));
    let nothing = Filter {
        protocols: vec![255],
        ..Filter::default()
    };
    let t_parse = best(runs, || {
        monitor_run(
            &path,
            &sandbox,
            &module,
            "packet-count",
            nothing.clone(),
            0,
            total,
        )
        .elapsed
    });
    let mut guest = None;
    let t_guest = best(runs, || {
        let r = monitor_run(
            &path,
            &sandbox,
            &module,
            "packet-count",
            Filter::default(),
            total,
            total,
        );
        assert_eq!(
            r.packets_in, total,
            "the guest must see every packet (no drops) for this figure"
        );
        let e = r.elapsed;
        guest = Some(r);
        e
    });
    let g = guest.unwrap();
    let pps = |d: Duration| total as f64 / d.as_secs_f64();
    let ratio = |d: Duration| t_tcpdump.as_secs_f64() / d.as_secs_f64();
    println!(
        "| loop ({packets} packets, {flows} flows, best of {runs}) | time | packets/s | vs tcpdump |"
    );
    println!("|---|---|---|---|");
    println!(
        "| `tcpdump -r FILE -w /dev/null` | {:.3} s | {:.2} M | 1.00× |",
        t_tcpdump.as_secs_f64(),
        pps(t_tcpdump) / 1e6
    );
    println!(
        "| monitor: capture + parse + filter, no guest | {:.3} s | {:.2} M | {:.2}× |",
        t_parse.as_secs_f64(),
        pps(t_parse) / 1e6,
        ratio(t_parse)
    );
    println!(
        "| monitor: + packet-count guest, {BATCH} packets per call | {:.3} s | {:.2} M | {:.2}× |",
        t_guest.as_secs_f64(),
        pps(t_guest) / 1e6,
        ratio(t_guest)
    );
    let calls = g.guest_calls.max(1);
    println!();
    println!(
        "guest: {} calls, {:.1} µs per batch call ({:.0} ns per packet inside the guest)",
        g.guest_calls,
        g.guest_time.as_secs_f64() * 1e6 / calls as f64,
        g.guest_time.as_secs_f64() * 1e9 / total as f64
    );
}
