//! The control plane at scale: N monitors on a 3-node NATS cluster, K of
//! them at a remote site behind a leaf node, two managers at once.
//!
//! ```text
//! cargo bench -p scale --bench control_plane -- --monitors 100 --leaf-site 10
//! cargo bench -p scale --bench control_plane -- --monitors 1000 --leaf-site 100 \
//!     --node-kills 3 --leaf-cut 30
//! ```
//!
//! Measures, with a bare NATS request/reply (echo) interleaved in the same
//! run as the reference: deploying flow-stats to all (cold, then warm), a
//! collect round from all (both managers at once, each its own deployment),
//! unloading from all, how long a manager takes to notice a killed monitor
//! (a real `tm-monitor` process, SIGKILL), and memory per monitor. With
//! `--node-kills K` each cluster node in turn is killed and restarted
//! during collect rounds; with `--leaf-cut S` the leaf link is cut for S
//! seconds. Both check, through a JetStream consumer, that every result
//! window is stored once and in order. Before the collect rounds the
//! machine's idle load (both deployments in place, nothing asked) is
//! measured for `--idle S` seconds (default 5), and each collect phase's
//! machine CPU per monitor answer is reported beyond it, with the time the
//! hypervisor gave other guests meanwhile (a shared machine's figures move
//! with it). Writes
//! `target/bench/control_plane-<N>.md`. The fleet is `scale::Fleet`.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::{ErrorBody, Filter, MonitorStatus, StatusRequest, Value, subject};
use futures::StreamExt;
use manager::control::{Collected, Control, DeploySpec, Targets};
use scale::{Fleet, FleetSpec};

struct Args {
    monitors: usize,
    remote: usize,
    rounds: usize,
    node_kills: usize,
    leaf_cut_s: u64,
    idle_s: u64,
}

fn args() -> Args {
    let mut a = Args {
        monitors: 100,
        remote: 10,
        rounds: 100,
        node_kills: 0,
        leaf_cut_s: 0,
        idle_s: 5,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = |what: &str| -> u64 {
            let v = argv
                .get(i + 1)
                .unwrap_or_else(|| panic!("{} needs a value ({what})", argv[i]));
            v.parse()
                .unwrap_or_else(|_| panic!("{} = {v:?}: want {what}", argv[i]))
        };
        match argv[i].as_str() {
            "--monitors" => a.monitors = value("a count") as usize,
            "--leaf-site" => a.remote = value("a count") as usize,
            "--rounds" => a.rounds = value("a count") as usize,
            "--node-kills" => a.node_kills = value("a count") as usize,
            "--leaf-cut" => a.leaf_cut_s = value("seconds"),
            "--idle" => a.idle_s = value("seconds").max(1),
            "--cluster" => assert_eq!(value("3"), 3, "--cluster: the run's cluster has 3 nodes"),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(
        a.remote < a.monitors,
        "--leaf-site must be below --monitors"
    );
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        max: *v.last().unwrap(),
    }
}

fn row(what: &str, s: &Stats, note: &str) -> String {
    format!(
        "| {what} | {} | {} | {} | {note} |\n",
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    )
}

fn spec(fleet: &Fleet, deployment: &str, analyzer: &str, every: Option<u64>) -> DeploySpec {
    DeploySpec {
        deployment: deployment.into(),
        analyzer: analyzer.into(),
        sha256: Some(fleet.digests[analyzer].clone()),
        params: Value::Nil,
        filter: Filter::default(),
        targets: Targets::All,
        report_every_ms: every,
    }
}

/// An echo responder on its own connection; the bare round trip.
async fn echo(fleet: &Fleet) -> async_nats::Client {
    let responder = scale::node_client(&fleet.site, 2).await;
    let mut sub = responder.subscribe("bench.echo").await.unwrap();
    let r = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = r.publish(reply, m.payload).await;
            }
        }
    });
    responder.flush().await.unwrap();
    scale::node_client(&fleet.site, 0).await
}

async fn bare(requester: &async_nats::Client) -> Duration {
    let t = Instant::now();
    requester
        .request("bench.echo", vec![0u8; 16].into())
        .await
        .unwrap();
    t.elapsed()
}

/// Tallies of commands sent while the cluster loses nodes.
#[derive(Default)]
struct Tally {
    rounds: usize,
    answered: usize,
    missing: usize,
    failed_rounds: usize,
    errors: std::collections::BTreeMap<String, usize>,
}

impl Tally {
    /// Collect rounds of the `windows` deployment, back to back, for `span`.
    async fn collect_for(&mut self, a: &Control, span: Duration) {
        let t = Instant::now();
        while t.elapsed() < span {
            self.add(&a.collect("windows", Duration::from_secs(2)).await);
        }
    }

    fn add(&mut self, r: &Result<Collected, ErrorBody>) {
        self.rounds += 1;
        match r {
            Ok(c) => {
                self.answered += c.results.len();
                self.missing += c.missing.len();
                for m in &c.missing {
                    *self.errors.entry(short(&m.error)).or_default() += 1;
                }
            }
            Err(e) => {
                self.failed_rounds += 1;
                *self.errors.entry(short(e)).or_default() += 1;
            }
        }
    }
}

/// What a phase of collect rounds cost the whole machine.
struct CollectCost {
    /// Cores busy on average during the phase (1.0 = one core).
    load: f64,
    /// Busy time beyond the idle load, per monitor answer.
    per_answer_us: f64,
    /// Cores' worth of time the hypervisor gave other guests.
    stolen: f64,
}

impl CollectCost {
    fn since(
        (busy, steal): (Duration, Duration),
        wall: Instant,
        idle_load: f64,
        answered_before: usize,
        tally: &Tally,
    ) -> CollectCost {
        let wall = wall.elapsed().as_secs_f64();
        let (busy_now, steal_now) = scale::machine_cpu();
        let busy = (busy_now - busy).as_secs_f64();
        let answers = (tally.answered - answered_before).max(1) as f64;
        CollectCost {
            load: busy / wall,
            per_answer_us: (busy - idle_load * wall).max(0.0) / answers * 1e6,
            stolen: (steal_now - steal).as_secs_f64() / wall,
        }
    }
}

fn short(e: &ErrorBody) -> String {
    // The code and the message without the monitor's id, so alike errors count together.
    let msg: String = e
        .message
        .split_whitespace()
        .map(|w| {
            if w.contains("hub-") || w.contains("site-") {
                "<monitor>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{:?}: {}",
        e.code,
        msg.chars().take(120).collect::<String>()
    )
}

#[tokio::main]
async fn main() {
    let args = args();
    let n = args.monitors;
    let rss_before = scale::rss_bytes("self");
    let started = Instant::now();
    let mut fleet = Fleet::start(&FleetSpec {
        monitors: n,
        remote: args.remote,
        analyzers: vec!["flow-stats".into(), "packet-count".into()],
    })
    .await;
    let rss_up = scale::rss_bytes("self");
    eprintln!(
        "{n} monitors ({} at the remote site) up in {:.1} s",
        args.remote,
        started.elapsed().as_secs_f64()
    );
    let a = Control::connect(scale::node_client(&fleet.site, 0).await, "mgr-a", 3)
        .await
        .unwrap();
    let b = Control::connect(scale::node_client(&fleet.site, 1).await, "mgr-b", 3)
        .await
        .unwrap();
    tokio::spawn(a.clone().watch_monitors());
    tokio::spawn(b.clone().watch_monitors());
    let requester = echo(&fleet).await;
    let mut bare_t = Vec::new();

    // One command's round trip, interleaved with the bare one.
    let first = fleet.ids()[0].clone();
    let mut command = Vec::new();
    for i in 0..120 {
        let bt = bare(&requester).await;
        let t = Instant::now();
        let _: MonitorStatus = a
            .request(
                subject::monitor_status(&first, "mgr-a"),
                &StatusRequest::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        if i >= 20 {
            bare_t.push(bt);
            command.push(t.elapsed());
        }
    }

    // Deploy to all: cold (one compilation), then warm, by both managers.
    let mut deploys = Vec::new();
    let mut unloads = Vec::new();
    for k in 0..6 {
        let control = if k % 2 == 0 { &a } else { &b };
        bare_t.push(bare(&requester).await);
        let t = Instant::now();
        let d = control
            .deploy(&spec(&fleet, &format!("warm-{k}"), "flow-stats", None))
            .await
            .unwrap();
        deploys.push(t.elapsed());
        assert_eq!(d.placed.len(), n, "{:?}", d.failed);
        let t = Instant::now();
        control.unload(&format!("warm-{k}"), false).await.unwrap();
        unloads.push(t.elapsed());
    }
    let cold = deploys[0];

    // Two managers' deployments, collected at once.
    for (control, id) in [(&a, "flows-a"), (&b, "flows-b")] {
        let d = control
            .deploy(&spec(&fleet, id, "flow-stats", None))
            .await
            .unwrap();
        assert_eq!(d.placed.len(), n, "{:?}", d.failed);
    }
    let rss_deployed = scale::rss_bytes("self");
    // The machine's load with nothing asked: paced links, ticks, liveness.
    let (idle_busy, idle_wall) = (scale::machine_cpu().0, Instant::now());
    eprintln!("idle for {} s (--idle)", args.idle_s);
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let idle_load =
        (scale::machine_cpu().0 - idle_busy).as_secs_f64() / idle_wall.elapsed().as_secs_f64();
    let (at_once_busy, at_once_wall, at_once_answered) =
        (scale::machine_cpu(), Instant::now(), 0usize);
    let mut collect_a = Vec::new();
    let mut collect_b = Vec::new();
    let mut collected = Tally::default();
    for _ in 0..args.rounds {
        bare_t.push(bare(&requester).await);
        let (ra, rb) = tokio::join!(
            async {
                let t = Instant::now();
                let r = a.collect("flows-a", Duration::from_secs(5)).await;
                (t.elapsed(), r)
            },
            async {
                let t = Instant::now();
                let r = b.collect("flows-b", Duration::from_secs(5)).await;
                (t.elapsed(), r)
            }
        );
        for ((took, r), into) in [(ra, &mut collect_a), (rb, &mut collect_b)] {
            collected.add(&r);
            into.push(took);
        }
    }
    let at_once = CollectCost::since(
        at_once_busy,
        at_once_wall,
        idle_load,
        at_once_answered,
        &collected,
    );
    // One manager alone, for comparison.
    let (alone_busy, alone_wall, alone_answered) =
        (scale::machine_cpu(), Instant::now(), collected.answered);
    let mut collect_alone = Vec::new();
    for _ in 0..args.rounds {
        bare_t.push(bare(&requester).await);
        let t = Instant::now();
        let r = a.collect("flows-a", Duration::from_secs(5)).await;
        collect_alone.push(t.elapsed());
        collected.add(&r);
    }
    let alone = CollectCost::since(
        alone_busy,
        alone_wall,
        idle_load,
        alone_answered,
        &collected,
    );
    let process_rss = fleet
        .process
        .as_ref()
        .map_or(0, |p| scale::rss_bytes(&p.child.id().to_string()));

    // A killed monitor: how long until a manager no longer counts it.
    let killed = fleet.kill_process();
    let t = Instant::now();
    let notice = loop {
        if !a.monitors().await.unwrap().contains_key(&killed) {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{killed} still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alive = n - 1;

    // Unload all (both managers at once).
    let t = Instant::now();
    let (ua, ub) = tokio::join!(a.unload("flows-a", false), b.unload("flows-b", false));
    ua.unwrap();
    ub.unwrap();
    let unload_both = t.elapsed();

    let mut report = format!(
        "Control plane: {n} monitors ({alive} after the kill), {r} behind a leaf node, \
         3-node cluster, two managers, analyzer flow-stats, {rounds} collect rounds; \
         2 cores\n\n| measure | p50 ms | p99 ms | max ms | note |\n|---|---|---|---|---|\n",
        r = args.remote,
        rounds = args.rounds,
    );
    let bare_s = stats(bare_t.clone());
    let command_s = stats(command);
    report += &row("bare NATS request/reply (echo)", &bare_s, "");
    report += &row(
        "one command round trip (`status`)",
        &command_s,
        &format!(
            "{:.2}× bare p50",
            command_s.p50.as_secs_f64() / bare_s.p50.as_secs_f64()
        ),
    );
    report += &row(
        &format!("deploy to all {n}, warm (5 runs)"),
        &stats(deploys[1..].to_vec()),
        "",
    );
    report += &format!(
        "| deploy to all {n}, cold (with the compile) | {} | | | |\n",
        ms(cold)
    );
    report += &row(
        &format!("collect round from all {n}, manager A"),
        &stats(collect_a),
        "B collecting at once",
    );
    report += &row(
        &format!("collect round from all {n}, manager B"),
        &stats(collect_b),
        "A collecting at once",
    );
    report += &row(
        &format!("collect round from all {n}, manager A alone"),
        &stats(collect_alone),
        "",
    );
    report += &format!(
        "| machine CPU per monitor answer, both managers at once / A alone (µs; the \
         machine's idle load, {:.0} % of a core, taken off) | {:.0} / {:.0} | | | {:.0} % / {:.0} % of a core busy, {:.0} % / {:.0} % stolen by the hypervisor |\n",
        idle_load * 100.0,
        at_once.per_answer_us,
        alone.per_answer_us,
        at_once.load * 100.0,
        alone.load * 100.0,
        at_once.stolen * 100.0,
        alone.stolen * 100.0,
    );
    report += &row(
        &format!("unload from all {n} (6 runs)"),
        &stats(unloads),
        "",
    );
    report += &format!(
        "| both managers unload their deployment from all {alive} at once | {} | | | |\n",
        ms(unload_both)
    );
    report += &format!(
        "| manager notices a killed monitor (SIGKILL) | {} | | | |\n",
        ms(notice)
    );
    report += &format!(
        "\nMemory: {:.2} MiB per in-process monitor idle, {:.2} MiB with two flow-stats \
         deployments (process RSS growth / {}); a tm-monitor process with the same two: {:.1} MiB RSS.\n",
        (rss_up.saturating_sub(rss_before)) as f64 / (n - 1) as f64 / 1048576.0,
        (rss_deployed.saturating_sub(rss_before)) as f64 / (n - 1) as f64 / 1048576.0,
        n - 1,
        process_rss as f64 / 1048576.0,
    );

    report += &format!(
        "\nCollect rounds above (timeout 5 s per monitor): {} rounds, {} monitor answers, \
         {} missing, {} rounds failed whole; errors: {:?}\n",
        collected.rounds,
        collected.answered,
        collected.missing,
        collected.failed_rounds,
        collected.errors
    );
    if args.node_kills > 0 || args.leaf_cut_s > 0 {
        report += &faults(&mut fleet, &a, &args).await;
    }
    println!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(format!("control_plane-{n}.md")), &report).unwrap();
    drop(fleet);
}

/// Packets the remote site's monitors analysed for `deployment`, asked
/// at their own site (over the leaf server).
async fn remote_packets(leaf: &async_nats::Client, ids: &[String], deployment: &str) -> u64 {
    scale::statuses(leaf, ids)
        .await
        .iter()
        .flat_map(|s| &s.deployments)
        .filter(|d| d.deployment == deployment)
        .map(|d| d.stats.packets_in)
        .sum()
}

/// Node kills and the leaf cut, with a windowed deployment running; then
/// every window checked through a JetStream consumer.
async fn faults(fleet: &mut Fleet, a: &Control, args: &Args) -> String {
    let mut out = String::from("\n");
    let alive = fleet.ids().len();
    let d = a
        .deploy(&spec(fleet, "windows", "packet-count", Some(2000)))
        .await
        .unwrap();
    assert_eq!(d.placed.len(), alive, "{:?}", d.failed);
    if args.node_kills > 0 {
        let mut tally = Tally::default();
        for k in 0..args.node_kills {
            fleet.site.cluster.nodes[k % 3].kill();
            tally.collect_for(a, Duration::from_secs(10)).await;
            fleet.site.cluster.nodes[k % 3]
                .restart()
                .await
                .expect("the node restarts");
            tally.collect_for(a, Duration::from_secs(10)).await;
        }
        out += &format!(
            "Node kills: {} (each node in turn down 10 s, then 10 s back), {} collect rounds \
             from {alive} meanwhile: {} answers, {} missing, {} rounds failed whole; errors: {:?}\n",
            args.node_kills,
            tally.rounds,
            tally.answered,
            tally.missing,
            tally.failed_rounds,
            tally.errors
        );
    }
    if args.leaf_cut_s > 0 {
        let remote = fleet.remote_ids();
        let leaf = fleet.site.leaf.client().await;
        let before = remote_packets(&leaf, &remote, "windows").await;
        fleet.site.link.cut();
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        let during = a.status(&remote, Duration::from_secs(5)).await.unwrap();
        let refused_in = t.elapsed();
        let mut codes = std::collections::BTreeMap::new();
        for (_, r) in &during {
            let code = r
                .as_ref()
                .map_or_else(|e| format!("{:?}", e.code), |_| "answered".into());
            *codes.entry(code).or_insert(0usize) += 1;
        }
        tokio::time::sleep(Duration::from_secs(args.leaf_cut_s).saturating_sub(cut.elapsed()))
            .await;
        let analysed = remote_packets(&leaf, &remote, "windows").await - before;
        fleet.site.link.restore();
        let t = Instant::now();
        fleet
            .site
            .wait_joined(Duration::from_secs(30))
            .await
            .expect("the leaf joins again");
        let back = loop {
            let s = a.status(&remote, Duration::from_secs(2)).await.unwrap();
            if s.iter().all(|(_, r)| r.is_ok()) {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "remote monitors unreachable"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        out += &format!(
            "Leaf cut: {} s; status to the {} remote monitors during it: {codes:?} in {} ms \
             (all at once); they analysed {analysed} packets during the cut; all answer again {} ms \
             after the link returned\n",
            args.leaf_cut_s,
            remote.len(),
            ms(refused_in),
            ms(back)
        );
    }
    // The final windows, then every window read back through a consumer.
    a.unload("windows", false).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let js = jetstream::new(scale::node_client(&fleet.site, 0).await);
    let windows = scale::windows_by_monitor(&js, "windows").await;
    let total: usize = windows.values().map(Vec::len).sum();
    let bad = scale::out_of_order(&windows);
    assert!(bad.is_empty(), "windows not once and in order: {bad:?}");
    assert_eq!(windows.len(), alive, "monitors with windows");
    out += &format!(
        "Windows: {total} from {} monitors read back through a JetStream consumer, \
         each monitor's seqs 1..n once and in order\n",
        windows.len()
    );
    out
}
