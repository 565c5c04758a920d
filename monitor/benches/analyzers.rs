//! flow-stats in WebAssembly inside the monitor, side by side with the
//! tools operators use today, on the same generated capture in one run:
//!
//!     cargo xtask guests
//!     cargo bench -p monitor --bench analyzers [-- PACKETS FLOWS MAX_PAYLOAD] [--quick] [--runs=N]
//!
//! Default capture: 2,000,000 TCP packets over 10,000 flows, payloads of 0
//! to 255 bytes (target/bench/flows-2000000-10000-256.pcap). Each tool runs
//! as a child process and is measured with wait4(2): wall time, CPU time
//! (user + system) and peak resident memory. tcpdump, softflowd and the
//! monitor run in `--runs` rounds (3), each round every one of them in
//! turn, and each keeps its run with the least CPU (the table's rows); the
//! pinned monitor's ratio to tcpdump and to softflowd within each round is
//! printed too (median, lowest, highest). pmacctd and tshark run once
//! (`--quick` leaves them out).
//!
//! - `tcpdump -r FILE -w /dev/null` (libpcap's raw read: the floor);
//! - `softflowd -r FILE` (flows exported to 127.0.0.1:9, nobody listens),
//!   as it comes (an 8,192-flow table) and with `-m 1000000`;
//! - `pmacctd` reading the file (`pcap_savefile`) with the print plugin on
//!   the 5-tuple;
//! - `tshark -q -z conv,ip -r FILE`;
//! - the monitor's data path with the flow-stats guest, in a child process
//!   (this binary re-run with `--child`): pinned to one core compiling the
//!   module (a monitor's first deployment of it), then with the module
//!   loaded compiled from `compiled_dir` (every later start) on both cores
//!   and pinned to one.
//!
//! Then the same flow-stats logic natively vs in WebAssembly on the very
//! batches the monitor builds (analysis only, no capture): the native build
//! is `analyzers/flow-stats/examples/native.rs`, a shared library loaded
//! into this process, fed turn about with the WebAssembly build.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus_schema::{Filter, Value};
use common::{BATCH, capture_file_sized, guest, monitor_run, root};
use std::sync::Arc;

use bus_schema::LinkState;
use monitor::config::{LinkConfig, Replay};
use monitor::filter::CompiledFilter;
use monitor::guest::{Analyzer, InstanceConfig};
use monitor::inbox::DepMsg;
use monitor::link::LinkHandle;
use monitor::tap::{Tap, guest_batch_bytes};
use wasm_host::{Sandbox, SandboxConfig};

/// What a child process cost.
struct Cost {
    wall: Duration,
    cpu: Duration,
    max_rss_kb: u64,
    stdout: String,
}

/// Runs `cmd` to completion and measures it with wait4.
// wait4 reaps the child; std's wait would lose its resource usage.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> Cost {
    let out = tempfile::tempfile().unwrap();
    let started = Instant::now();
    let child = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (xtask/setup.sh installs the tools)"));
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed with status {status}"
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let mut out = out;
    let mut stdout = Vec::new();
    use std::io::{Read, Seek};
    out.rewind().unwrap();
    out.read_to_end(&mut stdout).unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    Cost {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kb: usage.ru_maxrss as u64,
        stdout,
    }
}

/// Sum of a whitespace-separated column over lines that have enough of them.
fn column_sum(text: &str, col: usize, min_cols: usize) -> u64 {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|t| t.len() >= min_cols)
        .filter_map(|t| t[col].parse::<u64>().ok())
        .sum()
}

/// The child: the monitor's data path with flow-stats, optionally pinned
/// to CPU 0; prints `packets bytes flows`.
fn child(path: &Path, pin: bool, total: u64, compiled_dir: Option<PathBuf>) {
    if pin {
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }
    let sandbox = Sandbox::new(&SandboxConfig {
        compiled_dir,
        ..SandboxConfig::default()
    })
    .unwrap();
    let module = guest(&sandbox, "flow-stats");
    let r = monitor_run(
        path,
        &sandbox,
        &module,
        "flow-stats",
        Filter::default(),
        total,
        total,
    );
    assert_eq!(r.packets_in, total, "the guest must see every packet");
    let u = |k: &str| field(&r.results, k).as_u64().unwrap();
    println!(
        "{} {} {} {} {}",
        u("packets"),
        u("bytes"),
        u("active_flows"),
        r.elapsed.as_nanos(),
        r.guest_time.as_nanos()
    );
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The batches the monitor's link and tap build for a deployment matching
/// all, for an analyzer reading `snap_len` bytes of each packet: the file
/// replayed through a link (its packet source) into one tap.
fn batches(path: &Path, snap_len: usize) -> Vec<(u32, Vec<u8>)> {
    let mut config = LinkConfig::replay(0, path.to_owned(), Replay::Lossless, "a", "b");
    config.snaplen = 65535;
    let link = LinkHandle::start(config).unwrap();
    // Room for every batch (a record takes at least a pcap record header's
    // 16 bytes of the file): this collects them all before analysing any.
    let most = std::fs::metadata(path).unwrap().len() / 16;
    let (tx, rx) = flume::unbounded();
    let tap = Tap::new(
        "bench".into(),
        Arc::new(CompiledFilter::new(&Filter::default()).unwrap()),
        None,
        tx,
        Arc::default(),
        BATCH,
        snap_len,
    )
    .with_queue_budget(most);
    let mut tap = Some(tap);
    link.attach(|| tap.take().expect("one capture thread"));
    let state = link.shared.wait_stopped(Duration::from_secs(600));
    assert_eq!(state, LinkState::Finished, "{:?}", link.shared.status());
    let mut out = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let DepMsg::Batch(mut b) = msg {
            out.push((b.count, std::mem::take(&mut b.buf)));
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let path = PathBuf::from(&args[i + 1]);
        child(
            &path,
            args[i + 2] == "pin",
            args[i + 3].parse().unwrap(),
            args.get(i + 4).map(PathBuf::from),
        );
        return;
    }
    let nums: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let packets = nums.first().copied().unwrap_or(2_000_000);
    let flows = nums.get(1).copied().unwrap_or(10_000);
    let max_payload = nums.get(2).copied().unwrap_or(256);
    let path = capture_file_sized(packets, flows, max_payload);
    let size = std::fs::metadata(&path).unwrap().len();
    let total = packets as u64;
    let dir = tempfile::tempdir().unwrap();
    eprintln!("capture: {} ({} MB)", path.display(), size / 1_000_000);

    // Children start from this process's memory (posix_spawn shares it
    // until exec), and their peak RSS would include ours: reset our peak.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset peak RSS");

    // `--analysis-only`: just the native-vs-WebAssembly table.
    if !args.iter().any(|a| a == "--analysis-only") {
        tools(&path, total, &dir, &args, packets, flows, max_payload, size);
    }

    // Native vs WebAssembly on the same batches.
    eprintln!("native vs WebAssembly ...");
    let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
    let module = guest(&sandbox, "flow-stats");
    let instance = || {
        Analyzer::new(
            &sandbox,
            &module,
            &InstanceConfig {
                memory_bytes: 256 << 20,
                call_timeout: Duration::from_secs(10),
                batch_bytes: guest_batch_bytes(65535),
                deployment: "bench".into(),
            },
            &[0xc0],
            Box::new(|_| {}),
        )
        .unwrap()
    };
    // Cut to what flow-stats reads, as the monitor's tap does.
    let batches = batches(&path, instance().snap_len());
    let native = NativeFlowStats::build_and_load();
    // Each round feeds every batch to a fresh native and a fresh
    // WebAssembly flow-stats, turn about, CHUNK batches at a time (about
    // 8,000 packets, a millisecond or so), the order swapping every turn:
    // this machine's speed moves from one second to the next, and so both
    // builds see the same machine.
    const ROUNDS: usize = 5;
    const CHUNK: usize = 32;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let n = native.instance();
        let mut a = instance();
        let (mut native_t, mut wasm_t) = (Duration::ZERO, Duration::ZERO);
        for (turn, chunk) in batches.chunks(CHUNK).enumerate() {
            let mut run_native = || {
                let started = Instant::now();
                for (count, buf) in chunk {
                    n.on_packets(buf, *count);
                }
                native_t += started.elapsed();
            };
            let mut run_wasm = || {
                let started = Instant::now();
                for (count, buf) in chunk {
                    a.on_packets(buf, *count).unwrap();
                }
                wasm_t += started.elapsed();
            };
            if turn % 2 == 0 {
                run_native();
                run_wasm();
            } else {
                run_wasm();
                run_native();
            }
        }
        let (packets, flows) = n.packets_and_flows();
        let r = a.collect().unwrap();
        assert_eq!(packets, total);
        assert_eq!(field(&r, "packets").as_u64(), Some(total));
        assert_eq!(field(&r, "active_flows").as_u64(), Some(flows));
        rounds.push((native_t, wasm_t));
    }
    let native_best = rounds.iter().map(|r| r.0).min().unwrap();
    let wasm_best = rounds.iter().map(|r| r.1).min().unwrap();
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|(n, w)| w.as_secs_f64() / n.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!();
    println!(
        "| flow-stats, analysis only ({} batches, best of {ROUNDS}) | time | Mpps | ns/packet |",
        batches.len()
    );
    println!("|---|---|---|---|");
    for (name, d) in [
        ("native (x86_64, same crate)", native_best),
        (
            "WebAssembly (wasmtime, in the monitor's sandbox)",
            wasm_best,
        ),
    ] {
        println!(
            "| {name} | {:.3} s | {:.2} | {:.0} |",
            d.as_secs_f64(),
            total as f64 / d.as_secs_f64() / 1e6,
            d.as_secs_f64() * 1e9 / total as f64
        );
    }
    println!(
        "\nWebAssembly / native time, per round (same batches, turn about): {}; median {:.2}× ({} flows)",
        ratios
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", "),
        median(&ratios),
        flows
    );
}

/// flow-stats built natively as a shared library
/// (`analyzers/flow-stats/examples/native.rs`), loaded into this process.
struct NativeFlowStats {
    lib: libloading::Library,
}

/// One native flow-stats.
struct NativeInstance<'l> {
    ptr: *mut std::ffi::c_void,
    on_packets:
        libloading::Symbol<'l, unsafe extern "C" fn(*mut std::ffi::c_void, *const u8, usize, u32)>,
    packets: libloading::Symbol<'l, unsafe extern "C" fn(*mut std::ffi::c_void, *mut u64) -> u64>,
    free: libloading::Symbol<'l, unsafe extern "C" fn(*mut std::ffi::c_void)>,
}

impl NativeFlowStats {
    fn build_and_load() -> Self {
        let analyzers = root().join("analyzers");
        let status = Command::new("cargo")
            .current_dir(&analyzers)
            .args([
                "build",
                "--quiet",
                "--release",
                "--example",
                "native",
                "-p",
                "flow-stats",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building flow-stats' native example");
        let path = analyzers.join("target/release/examples/libnative.so");
        // SAFETY: our own library, whose initialisers do nothing.
        let lib = unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        NativeFlowStats { lib }
    }

    fn instance(&self) -> NativeInstance<'_> {
        // SAFETY: the signatures are those of examples/native.rs.
        unsafe {
            let new: libloading::Symbol<unsafe extern "C" fn() -> *mut std::ffi::c_void> =
                self.lib.get(b"native_new").unwrap();
            NativeInstance {
                ptr: new(),
                on_packets: self.lib.get(b"native_on_packets").unwrap(),
                packets: self.lib.get(b"native_packets").unwrap(),
                free: self.lib.get(b"native_free").unwrap(),
            }
        }
    }
}

impl NativeInstance<'_> {
    fn on_packets(&self, buf: &[u8], count: u32) {
        // SAFETY: `ptr` is live until drop; `buf` is readable.
        unsafe { (self.on_packets)(self.ptr, buf.as_ptr(), buf.len(), count) }
    }

    fn packets_and_flows(&self) -> (u64, u64) {
        let mut flows = 0;
        // SAFETY: `ptr` is live until drop.
        let packets = unsafe { (self.packets)(self.ptr, &mut flows) };
        (packets, flows)
    }
}

impl Drop for NativeInstance<'_> {
    fn drop(&mut self) {
        // SAFETY: made by native_new, freed once.
        unsafe { (self.free)(self.ptr) }
    }
}

/// softflowd's totals: "tcp (6):   OCTETS   PACKETS ..." (octets are IP
/// bytes) and "Flows expired: 380960 (372768 forced)".
fn softflowd_totals(c: &Cost, _total: u64) -> String {
    let line = c
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("tcp (6):"))
        .unwrap_or_else(|| panic!("no per-protocol line in softflowd's output:\n{}", c.stdout));
    let t: Vec<&str> = line.split_whitespace().collect();
    let expired = c
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Flows expired: "))
        .unwrap_or("?");
    format!(
        "{} packets, {} IP bytes, {expired} flow records",
        t[3], t[2]
    )
}

/// The monitor child's totals: "PACKETS BYTES FLOWS DATA_PATH_NS GUEST_NS".
fn monitor_totals(c: &Cost, total: u64) -> String {
    let t: Vec<u64> = c
        .stdout
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(t[0], total);
    format!(
        "{} packets, {} IP bytes, {} flows; data path alone {:.2} Mpps",
        t[0],
        t[1] - 14 * t[0],
        t[2],
        t[0] as f64 / (t[3] as f64 / 1e9) / 1e6
    )
}

/// Every tool and the monitor on `path`, measured and printed as a table.
#[allow(clippy::too_many_arguments)]
fn tools(
    path: &Path,
    total: u64,
    dir: &tempfile::TempDir,
    args: &[String],
    packets: usize,
    flows: usize,
    max_payload: usize,
    size: u64,
) {
    let path = path.to_path_buf();
    let runs: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--runs="))
        .map_or(3, |n| n.parse().expect("--runs=N: a number of rounds"));
    assert!(runs >= 1, "--runs={runs}: at least one round");
    let me = std::env::current_exe().unwrap();
    // The first monitor row compiles flow-stats and keeps it in
    // `compiled_dir`, as a monitor does on its first deployment; the others
    // load it from there, as every later start of a monitor does.
    let compiled = dir.path().join("compiled");
    let pidfile = dir.path().join("softflowd.pid");

    // The quick tools: a label, one run, and the totals its output reports.
    type Run<'a> = Box<dyn Fn() -> Cost + 'a>;
    type Totals = fn(&Cost, u64) -> String;
    let mut quick_tools: Vec<(String, Run, Totals)> = vec![(
        "`tcpdump -r FILE -w /dev/null`".into(),
        Box::new(|| {
            measure(
                Command::new("tcpdump")
                    .arg("-r")
                    .arg(&path)
                    .args(["-w", "/dev/null"]),
            )
        }),
        |_, _| "(reads only)".into(),
    )];
    // softflowd as it comes (its table holds 8,192 flows: with 10,000 the
    // oldest are expired early and start again, which is what softflowd
    // costs as deployed), then with a table that holds every flow.
    for (label, table) in [
        ("`softflowd -r FILE` (default 8,192-flow table)", None),
        (
            "`softflowd -r FILE -m 1000000` (every flow fits)",
            Some("1000000"),
        ),
    ] {
        let (path, pidfile) = (&path, &pidfile);
        quick_tools.push((
            label.into(),
            Box::new(move || {
                let mut cmd = Command::new("softflowd");
                cmd.arg("-r").arg(path).args(["-n", "127.0.0.1:9", "-d"]);
                if let Some(m) = table {
                    cmd.args(["-m", m]);
                }
                // No control socket: with -r, softflowd 1.1.0 polls it with
                // uninitialised poll flags and can block in accept() for ever.
                cmd.args(["-c", "none", "-p"]).arg(pidfile);
                measure(&mut cmd)
            }),
            softflowd_totals,
        ));
    }
    // tcpdump and softflowd come first in the table, the monitor last.
    let other_tools = quick_tools.len();
    for (label, pin, compile) in [
        ("pinned to 1 core, compiling the module", "pin", true),
        ("2 cores", "free", false),
        ("pinned to 1 core", "pin", false),
    ] {
        let (me, path, compiled) = (&me, &path, &compiled);
        quick_tools.push((
            format!("monitor + flow-stats (WebAssembly), {label}"),
            Box::new(move || {
                if compile {
                    let _ = std::fs::remove_dir_all(compiled);
                }
                measure(
                    Command::new(me)
                        .arg("--child")
                        .arg(path)
                        .arg(pin)
                        .arg(total.to_string())
                        .arg(compiled),
                )
            }),
            monitor_totals,
        ));
    }

    // Rounds of every quick tool in turn, so that the VM's changing speed
    // falls on all of them alike; each keeps its run with the least CPU.
    let mut best: Vec<Option<Cost>> = quick_tools.iter().map(|_| None).collect();
    // Every round's CPU seconds per tool, for the per-round ratios.
    let mut cpu_by_round: Vec<Vec<f64>> = quick_tools.iter().map(|_| Vec::new()).collect();
    for round in 1..=runs {
        for (i, (label, run, _)) in quick_tools.iter().enumerate() {
            eprintln!("[{round}/{runs}] {label} ...");
            let c = run();
            cpu_by_round[i].push(c.cpu.as_secs_f64());
            if best[i].as_ref().is_none_or(|b| c.cpu < b.cpu) {
                best[i] = Some(c);
            }
        }
    }
    let mut rows: Vec<(String, Cost, String)> = Vec::new();
    let mut quick_rows = quick_tools
        .into_iter()
        .zip(best)
        .map(|((label, _, totals), c)| {
            let c = c.expect("at least one round");
            let totals = totals(&c, total);
            (label, c, totals)
        });
    rows.extend(quick_rows.by_ref().take(other_tools));
    let other_labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();

    // `--quick`: only tcpdump, softflowd and the monitor (for iterating).
    // pmacctd and tshark run once: their rates are ten and a hundred times
    // lower than the monitor's, far beyond the VM's swings.
    let quick = args.iter().any(|a| a == "--quick");
    if !quick {
        eprintln!("pmacctd ...");
        // Large plugin buffers: with the defaults, pmacctd's core outruns its
        // print plugin on a savefile and silently loses half the packets (it
        // still may: its totals are printed as it reports them). One purge
        // at the end, so rows are not printed twice.
        let conf = dir.path().join("pmacctd.conf");
        std::fs::write(
            &conf,
            format!(
                "pcap_savefile: {}\naggregate: src_host,dst_host,src_port,dst_port,proto\n\
                 plugins: print\nplugin_pipe_size: 1024000000\nplugin_buffer_size: 10240000\n\
                 print_output: formatted\nprint_refresh_time: 86400\n",
                path.display()
            ),
        )
        .unwrap();
        let c = measure(Command::new("pmacctd").arg("-f").arg(&conf));
        // Rows: SRC DST SPORT DPORT PROTO PACKETS BYTES.
        let pm_rows = c
            .stdout
            .lines()
            .filter(|l| l.split_whitespace().count() == 7 && !l.starts_with("SRC"))
            .count();
        let totals = format!(
            "{} packets, {} IP bytes, {} flows",
            column_sum(&c.stdout, 5, 7),
            column_sum(&c.stdout, 6, 7),
            pm_rows
        );
        rows.push((
            "`pmacctd` (savefile, print plugin, 5-tuple)".into(),
            c,
            totals,
        ));

        eprintln!("tshark (slow) ...");
        let c = measure(
            Command::new("tshark")
                .args(["-n", "-q", "-z", "conv,ip", "-r"])
                .arg(&path),
        );
        // "A <-> B  f bytes unit  f bytes unit  TOTAL_FRAMES ..."
        let conv: Vec<Vec<&str>> = c
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|t| t.len() > 9 && t[1] == "<->")
            .collect();
        let frames: u64 = conv.iter().map(|t| t[9].parse::<u64>().unwrap()).sum();
        let totals = format!("{frames} packets, {} address pairs", conv.len());
        rows.push(("`tshark -q -z conv,ip -r FILE`".into(), c, totals));
    }
    rows.extend(quick_rows);

    println!(
        "\ncapture: {packets} packets, {flows} flows, payloads 0–{} bytes, {} MB\n",
        max_payload - 1,
        size / 1_000_000
    );
    println!(
        "| tool | wall | Mpps (wall) | CPU | Mpps (CPU) | peak RSS | pinned monitor's CPU rate vs it | totals |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // The reference: the monitor pinned to one core, module already compiled.
    let ours = rows
        .last()
        .map(|r| total as f64 / r.1.cpu.as_secs_f64())
        .unwrap();
    for (name, c, totals) in &rows {
        let cpu_rate = total as f64 / c.cpu.as_secs_f64();
        println!(
            "| {name} | {:.2} s | {:.2} | {:.2} s | {:.2} | {} MB | {:.2}× | {totals} |",
            c.wall.as_secs_f64(),
            total as f64 / c.wall.as_secs_f64() / 1e6,
            c.cpu.as_secs_f64(),
            cpu_rate / 1e6,
            c.max_rss_kb / 1024,
            ours / cpu_rate,
        );
    }

    // The same comparison round by round: within a round the tools run one
    // after another, seconds apart, so a ratio there is less moved by the
    // VM's phases than the ratio of two bests taken from different rounds.
    if runs > 1 {
        let pinned = cpu_by_round.last().expect("the monitor rows");
        println!(
            "\n| pinned monitor's CPU rate vs it, per round ({runs} rounds) | median | lowest | highest |"
        );
        println!("|---|---|---|---|");
        for (label, cpus) in other_labels.iter().zip(&cpu_by_round) {
            let mut r: Vec<f64> = cpus.iter().zip(pinned).map(|(t, m)| t / m).collect();
            r.sort_by(f64::total_cmp);
            println!(
                "| {label} | {:.2}× | {:.2}× | {:.2}× |",
                median(&r),
                r[0],
                r[r.len() - 1]
            );
        }
    }
}

/// The median of `sorted` (ascending, not empty).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}
