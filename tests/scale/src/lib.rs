//! The control plane at scale: a fleet of monitors on a 3-node NATS
//! cluster with a remote site behind a leaf node, as the scale benchmark
//! (`cargo bench -p scale --bench control_plane`) and the fleet test
//! (`tests/fleet.rs`) run it.
//!
//! Monitors are in-process: each is the real `tm-monitor` library (service
//! endpoints, liveness record, publisher) with its own NATS connection and
//! one link replaying a paced capture, so a thousand fit on one machine.
//! They share one wasmtime engine and module cache (on real hosts each
//! compiles the analyzer on its own CPU). Hub monitors connect to the
//! cluster nodes in turn (each to all three, its own first, so a node's
//! death moves it to the next); remote-site monitors connect to the leaf
//! server and name the hub's JetStream domain. One more monitor is a real
//! `tm-monitor` process, the one [`Fleet::kill_process`] kills.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::store::BlobKind;
use harness::monitor::MonitorProc;
use harness::site::ClusterSite;
use monitor::config::Config;
use monitor::service::Monitor;
use tokio::task::JoinHandle;

/// Capture start of the replayed links.
pub const START_NS: u64 = 1_764_000_000_000_000_000;
/// Packets per second each replayed link carries (recorded pace).
pub const PACKETS_PER_S: u64 = 2;

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Monitors in all, the process one included.
    pub monitors: usize,
    /// Of them, at the remote site (behind the leaf).
    pub remote: usize,
    /// Analyzers stored in `tm_blobs` (from `$TM_WASM_DIR`).
    pub analyzers: Vec<String>,
}

/// One in-process monitor.
pub struct InProcess {
    /// Its id.
    pub id: String,
    /// At the remote site.
    pub remote: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The running fleet.
pub struct Fleet {
    /// The hub cluster, the leaf and the link.
    pub site: ClusterSite,
    /// In-process monitors, hub ones first.
    pub monitors: Vec<InProcess>,
    /// The process monitor (on the hub), until killed.
    pub process: Option<MonitorProc>,
    /// Digest of each stored analyzer.
    pub digests: BTreeMap<String, String>,
    /// The run's files (the paced capture, configs), removed on drop.
    _dir: tempfile::TempDir,
}

/// Where the guests are: `$TM_WASM_DIR`, else `target/wasm`.
#[must_use]
pub fn wasm_dir() -> std::path::PathBuf {
    std::env::var_os("TM_WASM_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm"),
        std::path::PathBuf::from,
    )
}

/// A client of cluster node `first` that fails over to the others in order.
///
/// # Panics
/// If no node accepts it.
pub async fn node_client(site: &ClusterSite, first: usize) -> async_nats::Client {
    let nodes = &site.cluster.nodes;
    let addrs: Vec<async_nats::ServerAddr> = (0..nodes.len())
        .map(|k| nodes[(first + k) % nodes.len()].url().parse().expect("url"))
        .collect();
    async_nats::ConnectOptions::new()
        .retain_servers_order()
        .connect(addrs)
        .await
        .expect("connect to the cluster")
}

fn link_config(dir: &Path, address: &str, extra: &str) -> String {
    format!(
        "address = \"{address}\"\nreplicas = 3\n{extra}\
         [[link]]\nid = 0\npcap = \"{}\"\nreplay = \"recorded-pace\"\n\
         from_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n",
        dir.join("paced.pcap").display()
    )
}

fn address(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        200 + i / 62_500,
        (i / 250) % 250,
        i % 250 + 1
    )
}

impl Fleet {
    /// Starts the cluster and the site, stores the analyzers, starts the
    /// monitors and waits until every one is registered.
    ///
    /// # Panics
    /// On any failure to start: the run cannot go on.
    pub async fn start(spec: &FleetSpec) -> Fleet {
        assert!(
            spec.monitors > spec.remote,
            "one monitor must be on the hub"
        );
        let site = ClusterSite::start().await.expect("cluster and leaf");
        let dir = tempfile::tempdir().unwrap();
        // Ten minutes of packets at recorded pace: the links outlast a run.
        let frames = pcapgen::paced(
            (PACKETS_PER_S * 600) as usize,
            START_NS,
            1_000_000_000 / PACKETS_PER_S,
        );
        pcapgen::write_pcap(
            &dir.path().join("paced.pcap"),
            pcapgen::linktype::ETHERNET,
            &frames,
        )
        .unwrap();
        let admin = node_client(&site, 0).await;
        let js = jetstream::new(admin.clone());
        bus_schema::nats::ensure_stores(&js, 3, bus_schema::Role::Operator)
            .await
            .expect("streams and buckets");
        let mut digests = BTreeMap::new();
        for name in &spec.analyzers {
            let bytes = std::fs::read(wasm_dir().join(format!("{name}.wasm")))
                .unwrap_or_else(|e| panic!("{name}.wasm ({e}): run cargo xtask guests"));
            let sha = harness::put_module(&js, name, BlobKind::Analyzer, &bytes, 3).await;
            digests.insert(name.clone(), sha);
        }

        let sandbox = wasm_host::Sandbox::new(&wasm_host::SandboxConfig::default()).unwrap();
        let mut monitors = Vec::new();
        let in_process = spec.monitors - 1;
        for i in 0..in_process {
            let remote = i >= in_process - spec.remote;
            let id = if remote {
                format!("site-{:04}", i - (in_process - spec.remote))
            } else {
                format!("hub-{i:04}")
            };
            let extra = if remote {
                format!("jetstream_domain = \"{}\"\n", harness::site::DOMAIN)
            } else {
                String::new()
            };
            let path = dir.path().join(format!("{id}.toml"));
            std::fs::write(
                &path,
                format!(
                    "id = \"{id}\"\n{}",
                    link_config(dir.path(), &address(i), &extra)
                ),
            )
            .unwrap();
            let config = Config::load(&path).unwrap();
            let (client, js) = if remote {
                let client = site.leaf.client().await;
                let js = jetstream::with_domain(client.clone(), harness::site::DOMAIN);
                (client, js)
            } else {
                let client = node_client(&site, i % 3).await;
                (client.clone(), jetstream::new(client))
            };
            let (m, outbox) = Monitor::start_with(config, js.clone(), sandbox.clone())
                .await
                .unwrap_or_else(|e| panic!("monitor {id}: {e:#}"));
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let mut tasks = vec![
                tokio::spawn(async move {
                    monitor::outbox::publisher(js, outbox, stop).await;
                    drop(stop_tx);
                }),
                tokio::spawn(m.clone().heartbeat()),
            ];
            let serving = m.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serving.serve(client).await {
                    eprintln!("monitor stopped serving: {e}");
                }
            }));
            monitors.push(InProcess { id, remote, tasks });
        }
        let process_dir = tempfile::tempdir().unwrap();
        let process = MonitorProc::start_at(
            &site.cluster.urls(),
            &admin,
            "proc-0000",
            &link_config(dir.path(), &address(in_process), ""),
            process_dir,
        )
        .await;
        let fleet = Fleet {
            site,
            monitors,
            process: Some(process),
            digests,
            _dir: dir,
        };
        fleet.wait_registered(spec.monitors).await;
        fleet
    }

    /// Waits until `n` liveness records are in the bucket.
    async fn wait_registered(&self, n: usize) {
        let js = jetstream::new(node_client(&self.site, 0).await);
        let kv = js
            .get_key_value(bus_schema::store::MONITORS_BUCKET)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + n as u64 / 10);
        loop {
            use futures::TryStreamExt;
            let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
            if keys.len() >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} monitors registered",
                keys.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every monitor's id, the process one included.
    #[must_use]
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.monitors.iter().map(|m| m.id.clone()).collect();
        ids.extend(self.process.as_ref().map(|p| p.id.clone()));
        ids
    }

    /// The remote site's monitors.
    #[must_use]
    pub fn remote_ids(&self) -> Vec<String> {
        self.monitors
            .iter()
            .filter(|m| m.remote)
            .map(|m| m.id.clone())
            .collect()
    }

    /// Kills the process monitor with SIGKILL; its id.
    ///
    /// # Panics
    /// If it was killed already.
    pub fn kill_process(&mut self) -> String {
        let mut p = self.process.take().expect("the process monitor runs");
        let _ = p.child.kill();
        let _ = p.child.wait();
        p.id.clone()
    }
}

/// Every result window of `deployment` in `TM_RESULTS`, read through an
/// ordered JetStream consumer: each monitor's window seqs in stream order.
///
/// # Panics
/// If the stream cannot be read within a minute.
pub async fn windows_by_monitor(
    js: &jetstream::Context,
    deployment: &str,
) -> BTreeMap<String, Vec<u64>> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match js.get_stream(bus_schema::store::RESULTS_STREAM).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "TM_RESULTS: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("tm.v1.results.*.{deployment}"),
            ..Default::default()
        })
        .await
        .expect("an ordered consumer on TM_RESULTS");
    let mut messages = consumer.messages().await.expect("consumer messages");
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(msg)) = next else { break };
        let msg = msg.expect("a message from TM_RESULTS");
        let w: bus_schema::ResultWindow =
            bus_schema::decode(&msg.payload).expect("a ResultWindow in TM_RESULTS");
        out.entry(w.monitor).or_default().push(w.seq);
        if msg.info().is_ok_and(|i| i.pending == 0) {
            break;
        }
    }
    out
}

/// Each monitor's windows, checked: seqs 1..=n each once, in order.
/// Returns the monitors whose seqs are not, with theirs.
#[must_use]
pub fn out_of_order(windows: &BTreeMap<String, Vec<u64>>) -> Vec<(String, Vec<u64>)> {
    windows
        .iter()
        .filter(|(_, seqs)| {
            let want: Vec<u64> = (1..=seqs.len() as u64).collect();
            **seqs != want
        })
        .map(|(m, s)| (m.clone(), s.clone()))
        .collect()
}

/// `status` of each of `ids`, asked over `client` (at the monitors' own
/// site: a leaf server's client reaches the remote ones during a cut).
///
/// # Panics
/// If one does not answer.
pub async fn statuses(
    client: &async_nats::Client,
    ids: &[String],
) -> Vec<bus_schema::MonitorStatus> {
    let mut out = Vec::new();
    for id in ids {
        let q = bus_schema::encode(&bus_schema::StatusRequest::default()).unwrap();
        let msg = client
            .request(bus_schema::subject::monitor_status(id, "t"), q.into())
            .await
            .unwrap_or_else(|e| panic!("status of {id}: {e}"));
        out.push(
            bus_schema::decode::<bus_schema::Reply<bus_schema::MonitorStatus>>(&msg.payload)
                .unwrap()
                .into_result()
                .unwrap_or_else(|e| panic!("status of {id}: {e}")),
        );
    }
    out
}

/// Resident memory in bytes (`VmRSS`) of process `pid` (`"self"`: this one).
#[must_use]
pub fn rss_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU time the whole machine has spent since boot, busy (user, nice,
/// system, irq and softirq of every core) and stolen (by the hypervisor,
/// for other guests), from `/proc/stat`: the difference over a phase is
/// what the phase cost, servers and monitors together, and how much of the
/// machine it did not get.
#[must_use]
pub fn machine_cpu() -> (Duration, Duration) {
    let fields: Vec<u64> = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    let steal = fields.get(7).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    (time(busy), time(steal))
}
