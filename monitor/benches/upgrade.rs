//! How long a hot upgrade holds a deployment's packets:
//!
//!     cargo xtask guests
//!     cargo bench -p monitor --bench upgrade [-- --flows=10000 --upgrades=100]
//!
//! A flow-stats deployment (the monitor's deployment thread, fed through a
//! real link and tap from memory) first sees 20 packets of each of
//! `--flows` flows, so its table holds them all. Then, `--upgrades` times,
//! a fresh flow-stats instance is made off the packet path (timed: what an
//! operator waits for before the swap) and handed over with
//! `DepMsg::Upgrade`; the deployment thread answers with how long it held
//! its batches (snapshot of the running guest, restore into the new one,
//! switch, recovery snapshot): the figure packets wait. Interleaved with
//! each upgrade, a `collect` of the same deployment is timed end to end
//! (send to reply): the pause every periodic window already costs, the
//! reference for the swap's. After the last upgrade the results must
//! still hold every flow and packet, or the run fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bus_schema::{BlobRef, Filter, LinkState, LoadRequest, Value};
use common::guest;
use monitor::config::{LinkConfig, Replay};
use monitor::deployment::{self, DeploymentInfo, Shared, Timers};
use monitor::filter::CompiledFilter;
use monitor::guest::{Analyzer, InstanceConfig};
use monitor::inbox::{DepMsg, Upgrade};
use monitor::link::LinkHandle;
use monitor::source::MemorySource;
use monitor::tap::{Tap, guest_batch_bytes};
use wasm_host::Sandbox;

const START_NS: u64 = 1_764_000_000_000_000_000;

use harness::bench_arg as arg;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let flows = arg("flows", 10_000);
    let upgrades = arg("upgrades", 100);
    let packets = flows * 20;
    let frames: Vec<Vec<u8>> = pcapgen::flows_sized(packets, flows, 64, START_NS)
        .into_iter()
        .map(|f| f.data)
        .collect();

    let sandbox = Sandbox::new(&wasm_host::SandboxConfig::default()).unwrap();
    let module = guest(&sandbox, "flow-stats");
    let bytes = std::fs::read(common::root().join("target/wasm/flow-stats.wasm")).unwrap();
    let blob = BlobRef {
        name: "flow-stats".into(),
        sha256: wasm_host::sha256_hex(&bytes),
    };
    // `top` as large as the table, so the results prove it whole.
    let params =
        bus_schema::encode(&Value::Map(vec![("top_n".into(), (flows as u64).into())])).unwrap();
    let instance = || {
        Analyzer::new(
            &sandbox,
            &module,
            &InstanceConfig {
                memory_bytes: 256 << 20,
                call_timeout: Duration::from_secs(5),
                batch_bytes: guest_batch_bytes(65535),
                deployment: "up".into(),
            },
            &params,
            Box::new(|_| {}),
        )
        .unwrap()
    };
    let request = LoadRequest {
        deployment: "up".into(),
        analyzer: blob.clone(),
        params: Value::Nil,
        filter: Filter::default(),
        links: vec![0],
        owner: "bench".into(),
        report_every_ms: None,
    };
    let outbox = monitor::outbox::Outbox::new(64 << 20, 1 << 20, None);
    let shared = Shared::new(
        DeploymentInfo {
            monitor: "m".into(),
            deployment: "up".into(),
            links: vec![0],
            link_stats: vec![],
            started_unix_ms: 0,
            run: "r".into(),
        },
        request,
        outbox,
    );
    let first = instance();
    let snap_len = first.snap_len();
    let (tx, rx) = flume::bounded(64);
    let thread = {
        let shared = shared.clone();
        let timers = Timers {
            tick: Duration::from_secs(3600),
            report: None,
            snapshot: Duration::from_secs(3600),
        };
        std::thread::spawn(move || deployment::run(first, rx, shared, timers))
    };
    let source = MemorySource::frames(1, START_NS, frames.iter().cloned());
    let mut config = LinkConfig::replay(0, Default::default(), Replay::Lossless, "a", "b");
    config.snaplen = 65535;
    let link = LinkHandle::start_with(config, Box::new(source)).unwrap();
    let tap = Tap::new(
        "up".into(),
        Arc::new(CompiledFilter::new(&Filter::default()).unwrap()),
        None,
        tx.clone(),
        shared.counters.clone(),
        256,
        snap_len,
    );
    let mut tap = Some(tap);
    link.attach(|| tap.take().expect("one capture thread"));
    assert_eq!(
        link.shared.wait_stopped(Duration::from_secs(300)),
        LinkState::Finished
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.counters.packets_in.load(Ordering::Acquire) < packets as u64 {
        assert!(Instant::now() < deadline, "the table was not filled");
        std::thread::sleep(Duration::from_millis(5));
    }

    let collect = || {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let began = Instant::now();
        tx.send(DepMsg::Collect(reply)).unwrap();
        let window = answer.blocking_recv().unwrap().unwrap();
        (began.elapsed(), window)
    };
    let (_, window) = collect();
    let state_bytes = bus_schema::encode(&window.results).unwrap().len();
    eprintln!("upgrade bench: {flows} flows, {packets} packets in the table; {upgrades} upgrades");
    let (mut held, mut made, mut collects) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..upgrades {
        let began = Instant::now();
        let new = instance();
        made.push(began.elapsed());
        let (reply, answer) = tokio::sync::oneshot::channel();
        let to = Upgrade {
            analyzer: Box::new(new),
            blob: blob.clone(),
            params: None,
        };
        tx.send(DepMsg::Upgrade(Box::new(to), reply)).unwrap();
        held.push(answer.blocking_recv().unwrap().expect("upgrade accepted"));
        collects.push(collect().0);
    }
    let (_, window) = collect();
    let field = |k: &str| window.results[k].as_u64().unwrap();
    assert_eq!(field("packets"), packets as u64, "every packet kept");
    assert_eq!(field("active_flows"), flows as u64, "every flow kept");
    assert_eq!(
        window.results["top"].as_array().unwrap().len(),
        flows,
        "the whole table in the results"
    );
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(DepMsg::Unload(reply)).unwrap();
    answer.blocking_recv().unwrap();
    drop(tx);
    thread.join().unwrap();

    for v in [&mut held, &mut made, &mut collects] {
        v.sort();
    }
    let row = |what: &str, v: &[Duration]| {
        println!(
            "| {what} | {:.0} | {:.0} | {:.0} |",
            us(percentile(v, 0.5)),
            us(percentile(v, 0.99)),
            us(*v.last().unwrap())
        );
    };
    println!("\n{flows} flows ({state_bytes} bytes of results), {upgrades} upgrades, µs:\n");
    println!("| | p50 | p99 | max |\n|---|---:|---:|---:|");
    row("packets held by the swap", &held);
    row("collect of the same table (reference)", &collects);
    row("new instance, off the packet path", &made);
    println!(
        "\nswap / collect: p50 {:.2}×, p99 {:.2}×",
        us(percentile(&held, 0.5)) / us(percentile(&collects, 0.5)),
        us(percentile(&held, 0.99)) / us(percentile(&collects, 0.99))
    );
}
