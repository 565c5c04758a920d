//! Shared by the benches: generated captures and the monitor's data path
//! (link thread → filter → batches → deployment thread → guest) run
//! in-process, without NATS.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bus_schema::{BlobRef, Filter, LinkState, LoadRequest, Value};
use monitor::config::{LinkConfig, Replay};
use monitor::deployment::{self, DeploymentInfo, Shared, Timers};
use monitor::filter::CompiledFilter;
use monitor::guest::{Analyzer, InstanceConfig};
use monitor::inbox::DepMsg;
use monitor::link::LinkHandle;
use monitor::tap::{Tap, guest_batch_bytes};
use wasm_host::Sandbox;

/// Packets per guest call.
pub const BATCH: u32 = 256;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/bench/flows-P-F.pcap` (payloads 0–1399 bytes), generated once.
pub fn capture_file(packets: usize, flows: usize) -> PathBuf {
    capture_file_sized(packets, flows, 1400)
}

/// Like [`capture_file`] with payloads of 0 to `max_payload - 1` bytes.
/// The file is left in the page cache as reading it from disk leaves it
/// ([`cache_as_read`]), whether it was generated just now or long ago.
pub fn capture_file_sized(packets: usize, flows: usize, max_payload: usize) -> PathBuf {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let name = if max_payload == 1400 {
        format!("flows-{packets}-{flows}.pcap")
    } else {
        format!("flows-{packets}-{flows}-{max_payload}.pcap")
    };
    let path = dir.join(name);
    if !path.exists() {
        eprintln!("generating {} ...", path.display());
        let frames = pcapgen::flows_sized(packets, flows, max_payload, 1_764_000_000_000_000_000);
        pcapgen::write_pcap(&path, pcapgen::linktype::ETHERNET, &frames).unwrap();
    }
    cache_as_read(&path);
    path
}

/// Drops `path`'s pages from the page cache and reads the file back, so
/// every tool then reads it from memory, in the pages a read from disk
/// fills (on Linux 6.x ext4, mostly large folios of hundreds of KB).
/// Without this the cache holds whatever made the file last: a file the
/// generator has just written sits in 4 KB pages, and every tool's
/// `read(2)` of it takes more kernel time (one page-cache lookup and copy
/// step per 4 KB) than the same tool's read after a reboot — the result
/// would depend on the file's history (BENCHMARKS.md, flow-stats section).
pub fn cache_as_read(path: &Path) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut file = std::fs::File::open(path).unwrap();
    // Only clean pages can be dropped.
    file.sync_data().unwrap();
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise({}): {rc}", path.display());
    let mut buf = vec![0u8; 1 << 20];
    while file.read(&mut buf).unwrap() > 0 {}
    eprintln!(
        "page cache: {} dropped and read back, as from disk",
        path.display()
    );
}

/// A compiled guest module from target/wasm/.
pub fn guest(sandbox: &Sandbox, name: &str) -> wasmtime::Module {
    let wasm = root().join(format!("target/wasm/{name}.wasm"));
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask guests`", wasm.display()));
    sandbox
        .module(&wasm_host::sha256_hex(&bytes), &bytes)
        .unwrap()
}

/// What one replay through the data path did.
pub struct Run {
    /// Attach to the results of the last packet.
    pub elapsed: Duration,
    /// Calls into the guest.
    pub guest_calls: u64,
    /// Time spent in them.
    pub guest_time: Duration,
    /// Packets the guest received.
    pub packets_in: u64,
    /// The guest's results at the end.
    pub results: Value,
}

/// Replays `path` through one deployment of `module` (named `name`);
/// `filter` decides what reaches it. Waits for the replay's end and the
/// guest's results; checks that the link read all `total` packets and that
/// `expect_in` were delivered (or dropped).
pub fn monitor_run(
    path: &Path,
    sandbox: &Sandbox,
    module: &wasmtime::Module,
    name: &str,
    filter: Filter,
    expect_in: u64,
    total: u64,
) -> Run {
    // Every packet to the guest: the figure is the whole path's.
    let link = LinkHandle::start(LinkConfig::replay(
        0,
        path.to_owned(),
        Replay::Lossless,
        "a",
        "b",
    ))
    .unwrap();
    let outbox = monitor::outbox::Outbox::new(64 << 20, 1 << 20, None);
    let request = LoadRequest {
        deployment: "bench".into(),
        analyzer: BlobRef {
            name: name.into(),
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
            links: vec![0],
            link_stats: vec![],
            started_unix_ms: 0,
            run: String::new(),
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
    let snap_len = analyzer.snap_len();
    let (tx, rx) = flume::bounded(64);
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
        snap_len,
    );
    let started = Instant::now();
    let mut tap = Some(tap);
    link.attach(|| tap.take().expect("one capture thread"));
    // Block until the replay's end, then ask for the results: the link
    // thread sent every batch before it finished, so the answer comes after
    // the last one is analyzed. No polling: a harness thread waking on the
    // pinned core takes it from the data path it measures (polling every
    // 200 µs cost the run 11–20% more CPU, every 1 ms about 5%).
    let state = link.shared.wait_stopped(Duration::from_secs(600));
    assert_eq!(state, LinkState::Finished, "{:?}", link.shared.status());
    assert_eq!(link.shared.status().packets, total);
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(DepMsg::Collect(reply)).unwrap();
    let results = answer
        .blocking_recv()
        .unwrap()
        .expect("the guest's results")
        .results;
    let elapsed = started.elapsed();
    let c = &shared.counters;
    assert!(
        c.packets_in.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed) >= expect_in,
        "the deployment got fewer packets than expected"
    );
    let stats = shared.counters.stats();
    drop(tx);
    drop(link);
    thread.join().unwrap();
    Run {
        elapsed,
        guest_calls: stats.guest_calls,
        guest_time: Duration::from_micros(stats.guest_time_us),
        packets_in: stats.packets_in,
        results,
    }
}
