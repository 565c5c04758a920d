//! Live capture at rate: tcpdump, softflowd and the monitor capturing the
//! same traffic, sent through a veth at stepped rates, in one run:
//!
//!     cargo xtask guests
//!     cargo build --release -p monitor --bin tm-monitor
//!     cargo bench -p monitor --bench live [-- --seconds=2 --rates=100000,200000,300000,400000,500000,600000,0
//!                                            --sizes=small,mixed --cpu-cap=PCT --tools=LIST]
//!
//! Needs root, `ip netns`, tcpreplay, tcpdump and softflowd (xtask/setup.sh
//! installs them). The bench makes two network namespaces joined by a veth
//! (harness::wire): tcpreplay sends a generated capture from the sender's
//! end (`--pps=RATE`, or `--topspeed` for a rate of 0), and every tool
//! under test captures on the other end, in the capture namespace, one
//! after the other, each on the same steps:
//!
//! - `tcpdump -i lc0 -w /dev/null -B 16384` (libpcap's TPACKET_V3 ring,
//!   16 MiB), and the same with `--immediate-mode` (libpcap then uses a
//!   TPACKET_V2 ring: one slot of the snap length per packet);
//! - `softflowd -i lc0 -B 16777216 -m 1000000` (flows exported to the
//!   capture namespace's loopback, port 9, nobody listens);
//! - the monitor (release `tm-monitor`, with its nats-server in the capture
//!   namespace) with packet-count, with flow-stats (both analysed on the
//!   capture thread, the default for an interface), with flow-stats
//!   analysed on the deployment's own thread
//!   (`analyse_on_capture_thread = false`), and with flow-stats on a link
//!   fanned out over two capture threads; `buffer_mb = 16`.
//!
//! `--tools` picks rows: tcpdump, tcpdump-immediate, softflowd,
//! packet-count, flow-stats, flow-stats-own-thread, flow-stats-2 (default:
//! all).
//!
//! Per step and tool: packets sent (tcpreplay); lost, from the tool's own
//! accounting: kernel and interface drops, the monitor's queue drops, and
//! packets sent that never reached the tool's capture (libpcap's received
//! count; the monitor's captured plus drops); and the tool's CPU time (user
//! and system, all threads) per packet sent. A step is drop-free when
//! nothing is lost. A tool's highest drop-free rate is the highest rate
//! asked for up to which every step was drop-free, counting only steps the
//! sender held (at least 97 % of the rate asked; top speed is the sender's
//! limit, not the tool's). For the monitor the bench also checks its
//! invariant: analysed plus queue drops equals captured.
//!
//! `--cpu-cap=PCT` runs every tool in a cgroup limited to PCT % of one core
//! (the same budget for each, given out every 20 ms), so the tools' own
//! cost, not the sender, sets where they start to drop. Two captures: `small` (TCP, 54–117 B frames)
//! and `mixed` (54–1,453 B, mean about 750 B), 100,000 packets over 2,000
//! flows, sent `--seconds` long at each rate (looped).
//!
//! Results go to stdout and target/bench/live[-capPCT].md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::store::BlobKind;
use bus_schema::{BlobRef, Filter, LoadReply, LoadRequest, Reply, Value, subject};
use harness::NatsServer;
use harness::monitor::MonitorProc;
use harness::wire::{self, CAPTURE_DEV, Wire};

/// Packets in each generated capture (looped to fill a step).
const FILE_PACKETS: usize = 100_000;

/// One tool's result on one step.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    /// What tcpreplay sent, and at what rate.
    sent: u64,
    pps: f64,
    /// What reached the tool's capture: read from its ring, or dropped
    /// there (libpcap's `ps_recv`; the monitor's captured + drops).
    received: u64,
    /// Kernel + interface drops as the tool reports them.
    capture_drops: u64,
    /// Packets the monitor's deployment queue dropped.
    queue_drops: u64,
    /// CPU time the tool spent over the step.
    cpu: Duration,
}

impl Step {
    /// Dropped by the capture or the monitor's queue, or sent and never
    /// seen by the tool.
    fn lost(&self) -> u64 {
        self.capture_drops + self.queue_drops + self.sent.saturating_sub(self.received)
    }

    fn drop_free(&self) -> bool {
        self.lost() == 0
    }

    fn cpu_ns_per_packet(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.sent.max(1) as f64
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned))
}

fn main() {
    if let Some(why) = wire::unavailable() {
        panic!("{why}");
    }
    for tool in ["tcpdump", "softflowd", "softflowctl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is not installed (xtask/setup.sh installs it)"
        );
    }
    let seconds = harness::bench_arg("seconds", 2) as u64;
    let rates: Vec<u64> = arg("rates")
        .unwrap_or_else(|| "100000,200000,300000,400000,500000,600000,0".into())
        .split(',')
        .map(|r| {
            r.parse().unwrap_or_else(|_| {
                panic!("--rates: {r:?} is not a rate (packets/s, 0: top speed)")
            })
        })
        .collect();
    let sizes = arg("sizes").unwrap_or_else(|| "small,mixed".into());
    let tools = arg("tools");
    let wanted = |name: &str| {
        tools
            .as_deref()
            .is_none_or(|t| t.split(',').any(|x| x == name))
    };
    let cap = arg("cpu-cap").map(|p| {
        let p: u32 = p
            .parse()
            .unwrap_or_else(|_| panic!("--cpu-cap={p}: a percentage of one core"));
        assert!((5..=100).contains(&p), "--cpu-cap={p}: 5 to 100");
        p
    });

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&root).unwrap();
    let mut captures = Vec::new();
    for size in sizes.split(',') {
        let max_payload = match size {
            "small" => 64,
            "mixed" => 1400,
            other => panic!("--sizes: {other:?} is not small or mixed"),
        };
        let path = root.join(format!("live-{size}.pcap"));
        if !path.exists() {
            let frames =
                pcapgen::flows_sized(FILE_PACKETS, 2_000, max_payload, 1_764_000_000_000_000_000);
            pcapgen::write_pcap(&path, pcapgen::linktype::ETHERNET, &frames).unwrap();
        }
        captures.push((size.to_owned(), path));
    }

    let wire = Wire::create().unwrap();
    // From here on this process (the only thread so far) and everything it
    // starts are in the capture namespace.
    wire.enter_capture().unwrap();
    let cgroup = cap.map(CpuCap::new);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut report = String::new();
    report += &format!(
        "Live capture, {} s per step{}; tcpreplay from a veth in another namespace.\n\n",
        seconds,
        cap.map_or(String::new(), |p| format!(
            ", every tool limited to {p} % of one core"
        ))
    );
    for (size, pcap) in &captures {
        eprintln!("== {size} packets");
        let mut rows: Vec<(String, Vec<Step>)> = Vec::new();
        let plan = |rate: u64| -> (Option<u64>, u32) {
            // Top speed here is about 1 Mpps: size the loops for that.
            let per_s = if rate == 0 { 1_000_000 } else { rate };
            let loops = (per_s * seconds).div_ceil(FILE_PACKETS as u64).max(1) as u32;
            ((rate > 0).then_some(rate), loops)
        };

        for (name, label, immediate) in [
            ("tcpdump", "`tcpdump -w /dev/null`", false),
            (
                "tcpdump-immediate",
                "`tcpdump -w /dev/null --immediate-mode`",
                true,
            ),
        ] {
            if !wanted(name) {
                continue;
            }
            let mut steps = Vec::new();
            for &rate in &rates {
                let (pps, loops) = plan(rate);
                let step = tcpdump_step(
                    &wire,
                    pcap,
                    pps,
                    loops,
                    dir.path(),
                    immediate,
                    cgroup.as_ref(),
                );
                eprintln!("{label} {rate:>8}: {step:?}");
                steps.push(step);
            }
            rows.push((label.into(), steps));
        }

        let mut steps = Vec::new();
        for &rate in rates.iter().filter(|_| wanted("softflowd")) {
            let (pps, loops) = plan(rate);
            steps.push(softflowd_step(
                &wire,
                pcap,
                pps,
                loops,
                dir.path(),
                cgroup.as_ref(),
            ));
            eprintln!("softflowd {rate:>8}: {:?}", steps.last().unwrap());
        }
        if wanted("softflowd") {
            rows.push(("`softflowd -i`".into(), steps));
        }

        for (name, label, analyzer, threads, here) in [
            (
                "packet-count",
                "monitor + packet-count",
                "packet-count",
                1,
                true,
            ),
            ("flow-stats", "monitor + flow-stats", "flow-stats", 1, true),
            (
                "flow-stats-own-thread",
                "monitor + flow-stats, analysed on its own thread",
                "flow-stats",
                1,
                false,
            ),
            (
                "flow-stats-2",
                "monitor + flow-stats, 2 capture threads",
                "flow-stats",
                2,
                true,
            ),
        ] {
            if !wanted(name) {
                continue;
            }
            let steps = rt.block_on(async {
                let m = LiveMonitor::start(analyzer, threads, here, cgroup.as_ref()).await;
                let mut steps = Vec::new();
                for &rate in &rates {
                    let (pps, loops) = plan(rate);
                    steps.push(m.step(&wire, pcap, pps, loops).await);
                    eprintln!("{label} {rate:>8}: {:?}", steps.last().unwrap());
                }
                steps
            });
            rows.push((label.into(), steps));
        }
        report += &table(size, pcap, &rates, &rows);
    }
    println!("{report}");
    let name = cap.map_or("live.md".to_owned(), |p| format!("live-cap{p}.md"));
    std::fs::write(root.join(&name), &report).unwrap();
    eprintln!("written to target/bench/{name}");
}

/// The tables for one capture: loss and CPU per packet at each step, each
/// tool's highest drop-free rate, and the monitor's ratios to the others.
fn table(size: &str, pcap: &Path, rates: &[u64], rows: &[(String, Vec<Step>)]) -> String {
    let bytes = std::fs::metadata(pcap).unwrap().len() - 24 - 16 * FILE_PACKETS as u64;
    let mut out = format!(
        "### {size} packets (mean frame {} B)\n\n| tool |",
        bytes / FILE_PACKETS as u64
    );
    let rate_name = |r: u64| {
        if r == 0 {
            "top speed".to_owned()
        } else {
            format!("{} kpps", r / 1000)
        }
    };
    for &r in rates {
        out += &format!(" {} |", rate_name(r));
    }
    out += " highest drop-free rate asked |\n|---|";
    out += &"---|".repeat(rates.len() + 1);
    out += "\n";
    // The highest requested rate up to which every step was drop-free;
    // a step where the sender fell short of its rate (below 97 %) proves
    // nothing about that rate, and top speed is the sender's, not the
    // tool's: neither is credited.
    let highest = |steps: &[Step]| -> u64 {
        steps
            .iter()
            .zip(rates)
            .take_while(|(s, _)| s.drop_free())
            .filter(|(s, r)| **r > 0 && s.pps >= 0.97 * **r as f64)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    };
    for (label, steps) in rows {
        out += &format!("| {label} |");
        for s in steps {
            let lost = if s.drop_free() {
                "no loss".to_owned()
            } else {
                format!(
                    "{:.2} % lost ({} capture drops, {} queue drops, {} unseen)",
                    100.0 * s.lost() as f64 / s.sent.max(1) as f64,
                    s.capture_drops,
                    s.queue_drops,
                    s.sent.saturating_sub(s.received)
                )
            };
            out += &format!(
                " {:.0} kpps sent: {lost}, {:.2} µs CPU/packet |",
                s.pps / 1000.0,
                s.cpu_ns_per_packet() / 1000.0
            );
        }
        out += &format!(" {} kpps |\n", highest(steps) / 1000);
    }
    // Ratios of the monitor with flow-stats to tcpdump and softflowd.
    let find = |label: &str| rows.iter().find(|(l, _)| l == label).map(|r| &r.1);
    if let (Some(mon), Some(td), Some(sf)) = (
        find("monitor + flow-stats"),
        find("`tcpdump -w /dev/null`"),
        find("`softflowd -i`"),
    ) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        out += &format!(
            "\nmonitor + flow-stats, highest drop-free rate: {:.2}× tcpdump's, {:.2}× softflowd's.\n",
            ratio(highest(mon) as f64, highest(td) as f64),
            ratio(highest(mon) as f64, highest(sf) as f64),
        );
        out += "CPU per packet, monitor + flow-stats ÷ tool, by step:";
        for (i, &r) in rates.iter().enumerate() {
            out += &format!(
                " {}: {:.2} (tcpdump), {:.2} (softflowd);",
                rate_name(r),
                ratio(mon[i].cpu_ns_per_packet(), td[i].cpu_ns_per_packet()),
                ratio(mon[i].cpu_ns_per_packet(), sf[i].cpu_ns_per_packet()),
            );
        }
        out.pop();
        out += ".\n\n";
    }
    out
}

/// The CPU cap's accounting period: the budget is given out every 20 ms,
/// so a capped tool is held back for tens of ms at most (a longer period
/// measures the ring's size against the pause more than the tool's CPU
/// cost). The kernel's smallest quota is 1 ms: 5 % is the lowest cap.
const PERIOD_US: u32 = 20_000;

/// A cgroup limiting its processes to a share of one core.
struct CpuCap {
    dir: PathBuf,
}

impl CpuCap {
    fn new(percent: u32) -> CpuCap {
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let name = format!("tm-live-{}", std::process::id());
        let dir = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string()).unwrap();
            std::fs::write(
                dir.join("cpu.cfs_quota_us"),
                (percent * PERIOD_US / 100).to_string(),
            )
            .unwrap();
            dir
        } else {
            let root = Path::new("/sys/fs/cgroup");
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("cpu.max"),
                format!("{} {PERIOD_US}", percent * PERIOD_US / 100),
            )
            .unwrap_or_else(|e| panic!("{}: {e} (no cpu controller?)", dir.display()));
            dir
        };
        CpuCap { dir }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// CPU time a running process's threads have used (the scheduler's ns
/// accounting, `/proc/PID/task/*/schedstat`, finer than clock ticks).
fn cpu_of(pid: u32) -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Waits for `child` and returns its CPU time (wait4's resource usage).
// wait4 reaps the child; std's wait would lose its resource usage.
#[allow(clippy::zombie_processes)]
fn reap(child: Child) -> Duration {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: our own child's pid, valid out-parameters.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not ready in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn number_after(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
}

fn tcpdump_step(
    wire: &Wire,
    pcap: &Path,
    pps: Option<u64>,
    loops: u32,
    dir: &Path,
    immediate: bool,
    cap: Option<&CpuCap>,
) -> Step {
    let err = dir.join("tcpdump.err");
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-i", CAPTURE_DEV, "-w", "/dev/null", "-B", "16384", "-n"]);
    if immediate {
        cmd.arg("--immediate-mode");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    if let Some(c) = cap {
        c.add(child.id());
    }
    wait_for("tcpdump", || {
        std::fs::read_to_string(&err).is_ok_and(|t| t.contains("listening on"))
    });
    let sent = wire.replay(pcap, pps, loops).unwrap();
    // tcpdump's ring hands a block over when full or after its 1 s timeout.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let cpu = reap(child);
    let text = std::fs::read_to_string(&err).unwrap();
    // "N packets captured", "N packets received by filter", "N packets
    // dropped by kernel" (and on some systems "by interface").
    let line = |suffix: &str| -> u64 {
        text.lines()
            .find(|l| l.ends_with(suffix))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Step {
        sent: sent.packets,
        pps: sent.pps,
        received: line("packets received by filter"),
        capture_drops: line("dropped by kernel") + line("dropped by interface"),
        queue_drops: 0,
        cpu,
    }
}

fn softflowd_step(
    wire: &Wire,
    pcap: &Path,
    pps: Option<u64>,
    loops: u32,
    dir: &Path,
    cap: Option<&CpuCap>,
) -> Step {
    let ctl = dir.join("softflowd.ctl");
    let _ = std::fs::remove_file(&ctl);
    let child = Command::new("softflowd")
        .args([
            "-i",
            CAPTURE_DEV,
            "-d",
            "-n",
            "127.0.0.1:9",
            "-B",
            "16777216",
        ])
        .args(["-m", "1000000", "-c"])
        .arg(&ctl)
        .arg("-p")
        .arg(dir.join("softflowd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(c) = cap {
        c.add(child.id());
    }
    wait_for("softflowd", || ctl.exists());
    std::thread::sleep(Duration::from_millis(200));
    let sent = wire.replay(pcap, pps, loops).unwrap();
    let stats = |ctl: &Path| -> String {
        let out = Command::new("softflowctl")
            .arg("-c")
            .arg(ctl)
            .arg("statistics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // softflowd reads its ring when it is woken by more packets: the
    // last partly filled block can wait there (received, not yet
    // processed) until the next traffic. Received counts, as for tcpdump.
    std::thread::sleep(Duration::from_millis(1500));
    let text = stats(&ctl);
    let _ = Command::new("softflowctl")
        .arg("-c")
        .arg(&ctl)
        .arg("shutdown")
        .output();
    let cpu = reap(child);
    Step {
        sent: sent.packets,
        pps: sent.pps,
        received: number_after(&text, "Packets received by libpcap:"),
        capture_drops: number_after(&text, "Packets dropped by libpcap:")
            + number_after(&text, "Packets dropped by interface:"),
        queue_drops: 0,
        cpu,
    }
}

/// A release tm-monitor on the capture end with one analyzer deployed.
struct LiveMonitor {
    _nats: NatsServer,
    client: async_nats::Client,
    monitor: MonitorProc,
}

impl LiveMonitor {
    /// A monitor whose link has `threads` capture threads, analysing on
    /// them if `here` (`analyse_on_capture_thread`).
    async fn start(analyzer: &str, threads: u32, here: bool, cap: Option<&CpuCap>) -> LiveMonitor {
        let nats = NatsServer::start().await.unwrap();
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        let config = format!(
            "address = \"10.9.9.1\"\n[[link]]\nid = 0\ninterface = \"{CAPTURE_DEV}\"\ncapture_threads = {threads}\nanalyse_on_capture_thread = {here}\nbuffer_mb = 16\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
        );
        let monitor = MonitorProc::start(&nats, &client, "live", &config).await;
        let dir = std::env::var_os("TM_WASM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm"));
        let bytes = std::fs::read(dir.join(format!("{analyzer}.wasm")))
            .unwrap_or_else(|e| panic!("{analyzer}.wasm: {e}; run `cargo xtask guests`"));
        let sha = harness::put_module(&js, analyzer, BlobKind::Analyzer, &bytes, 1).await;
        let payload = bus_schema::encode(&LoadRequest {
            deployment: "live".into(),
            analyzer: BlobRef {
                name: analyzer.into(),
                sha256: sha,
            },
            params: Value::Nil,
            filter: Filter::default(),
            links: vec![0],
            owner: "bench".into(),
            report_every_ms: None,
        })
        .unwrap();
        let msg = client
            .request(subject::monitor_load("live", "bench"), payload.into())
            .await
            .unwrap();
        let reply: Reply<LoadReply> = bus_schema::decode(&msg.payload).unwrap();
        reply.into_result().unwrap();
        // Capped once the analyzer is compiled and running: what is
        // measured is capture and analysis, not the load.
        if let Some(c) = cap {
            c.add(monitor.child.id());
        }
        LiveMonitor {
            _nats: nats,
            client,
            monitor,
        }
    }

    /// (captured, capture drops, analysed, queue drops) so far.
    async fn counts(&self) -> (u64, u64, u64, u64) {
        let st = self.monitor.status(&self.client).await;
        let l = &st.links[0];
        let d = &st.deployments[0];
        (
            l.packets,
            l.kernel_drops + l.interface_drops,
            d.stats.packets_in,
            d.stats.dropped,
        )
    }

    async fn step(&self, wire: &Wire, pcap: &Path, pps: Option<u64>, loops: u32) -> Step {
        let pid = self.monitor.child.id();
        let before = self.counts().await;
        let cpu_before = cpu_of(pid);
        let sent = tokio::task::block_in_place(|| wire.replay(pcap, pps, loops)).unwrap();
        let sent_at = Instant::now();
        // Until every captured packet is analysed or dropped and the
        // capture's drop counters (read once a second) are current.
        let mut now = self.counts().await;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let next = self.counts().await;
            let settled = next == now
                && next.2 + next.3 - before.2 - before.3 >= next.0 - before.0
                && sent_at.elapsed() > Duration::from_millis(1500);
            now = next;
            if settled || sent_at.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        let cpu = cpu_of(pid) - cpu_before;
        let (captured, analysed) = (now.0 - before.0, now.2 - before.2);
        let queue_drops = now.3 - before.3;
        // The monitor's own accounting: every packet captured is analysed
        // or counted as a queue drop.
        assert_eq!(analysed + queue_drops, captured, "{now:?} after {before:?}");
        Step {
            sent: sent.packets,
            pps: sent.pps,
            received: captured + now.1 - before.1,
            capture_drops: now.1 - before.1,
            queue_drops,
            cpu,
        }
    }
}
