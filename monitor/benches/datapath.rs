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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bus_schema::{BlobRef, Filter, LinkState, LoadRequest, Value};
use monitor::capture::{LinkCtl, LinkHandle, Tap, guest_batch_bytes};
use monitor::config::{LinkConfig, Replay};
use monitor::deployment::{self, DeploymentInfo, Shared, Timers};
use monitor::filter::CompiledFilter;
use monitor::guest::{Analyzer, InstanceConfig};
use wasm_host::{Sandbox, SandboxConfig};

const BATCH: u32 = 256;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn capture_file(packets: usize, flows: usize) -> PathBuf {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("flows-{packets}-{flows}.pcap"));
    if !path.exists() {
        eprintln!("generating {} ...", path.display());
        let frames = pcapgen::flows(packets, flows, 1_764_000_000_000_000_000);
        pcapgen::write_pcap(&path, pcapgen::linktype::ETHERNET, &frames).unwrap();
    }
    path
}

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

struct Run {
    elapsed: Duration,
    guest_calls: u64,
    guest_time: Duration,
    packets_in: u64,
}

/// Replays `path` through one deployment; `filter` decides what reaches it.
fn monitor_run(
    path: &Path,
    sandbox: &Sandbox,
    module: &wasmtime::Module,
    filter: Filter,
    expect_in: u64,
    total: u64,
) -> Run {
    let link = LinkHandle::start(LinkConfig {
        id: 0,
        interface: None,
        pcap: Some(path.to_owned()),
        replay: Replay::Instant,
        snaplen: 65535,
        buffer_mb: 16,
        from_router: "a".into(),
        to_router: "b".into(),
    })
    .unwrap();
    let (outbox, _events) = tokio::sync::mpsc::unbounded_channel();
    let request = LoadRequest {
        deployment: "bench".into(),
        analyzer: BlobRef {
            name: "packet-count".into(),
            sha256: String::new(),
        },
        params: Value::Nil,
        filter: filter.clone(),
        links: vec![0],
        owner: "bench".into(),
        report_every_ms: None,
    };
    let shared = Shared::new(
        DeploymentInfo {
            monitor: "bench".into(),
            deployment: "bench".into(),
            analyzer: request.analyzer.clone(),
            owner: "bench".into(),
            links: vec![0],
            started_unix_ms: 0,
        },
        request,
        outbox,
    );
    let analyzer = Analyzer::new(
        sandbox,
        module,
        &InstanceConfig {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(1),
            batch_bytes: guest_batch_bytes(65535),
            deployment: "bench".into(),
        },
        &[0xc0],
        Box::new(|_| {}),
    )
    .unwrap();
    let (tx, rx) = crossbeam_channel::bounded(64);
    let thread = {
        let shared = shared.clone();
        let timers = Timers {
            tick: Duration::from_secs(1),
            report: None,
            snapshot: Duration::from_secs(3600),
        };
        std::thread::spawn(move || deployment::run(analyzer, rx, shared, timers))
    };
    let tap = Tap::new(
        "bench".into(),
        Arc::new(CompiledFilter::new(&filter).unwrap()),
        None,
        tx.clone(),
        shared.counters.clone(),
        BATCH,
    );
    let started = Instant::now();
    link.ctl.send(LinkCtl::Attach(Box::new(tap))).unwrap();
    loop {
        let st = link.shared.status();
        let c = &shared.counters;
        if st.state == LinkState::Finished
            && c.packets_in.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed) >= expect_in
        {
            assert_eq!(st.packets, total);
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    let stats = shared.counters.stats();
    drop(tx);
    drop(link);
    thread.join().unwrap();
    Run {
        elapsed,
        guest_calls: stats.guest_calls,
        guest_time: Duration::from_micros(stats.guest_time_us),
        packets_in: stats.packets_in,
    }
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
    let wasm = root().join("target/wasm/packet-count.wasm");
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask guests`", wasm.display()));
    let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
    let module = sandbox
        .module(&wasm_host::sha256_hex(&bytes), &bytes)
        .unwrap();
    let total = packets as u64;

    let t_tcpdump = best(runs, || tcpdump(&path));
    let nothing = Filter {
        protocols: vec![255],
        ..Filter::default()
    };
    let t_parse = best(runs, || {
        monitor_run(&path, &sandbox, &module, nothing.clone(), 0, total).elapsed
    });
    let mut guest = None;
    let t_guest = best(runs, || {
        let r = monitor_run(&path, &sandbox, &module, Filter::default(), total, total);
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
