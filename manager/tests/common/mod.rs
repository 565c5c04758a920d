//! A whole system for manager tests: a real nats-server, the figure-5
//! topology in KV, three real `tm-monitor` processes replaying generated
//! pcaps on their six links (the traffic each link carries follows the
//! topology's flow paths), real modules from `target/wasm/`, and `tm-manager`
//! processes.
#![allow(dead_code, unused_imports)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::store::{self, BlobKind};
use bus_schema::{AppList, AppListRequest, Reply, Report, subject};
use harness::NatsServer;
use harness::monitor::MonitorProc;
use manager::topology::{self, Topology};
use pcapgen::{linktype, write_pcap};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A module built by `cargo xtask guests`.
pub fn wasm_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("TM_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{}: build the guests first with `cargo xtask guests`",
        path.display()
    );
    path
}

pub fn figure5() -> Topology {
    Topology::from_path(&root().join("examples/topology/figure5.toml")).unwrap()
}

pub use pcapgen::network::{TapTruth, Traffic, host, router};

/// The `prefixes` param of link-load / congestion-locator / dos-trace.
pub fn prefixes() -> serde_json::Value {
    serde_json::Value::Array(
        (1..=4u8)
            .map(|n| serde_json::json!({"prefix": pcapgen::network::prefix(n), "router": router(n).to_string()}))
            .collect(),
    )
}

/// UDP flows between hosts behind routers, each `(from router, to router,
/// flows, packets per flow, payload)`, laid on the taps of their flow paths.
pub fn traffic(topo: &Topology, flows: &[(u8, u8, u8, u32, usize)]) -> Traffic {
    let flows: Vec<pcapgen::network::Flows> = flows
        .iter()
        .map(
            |&(from, to, count, packets, payload)| pcapgen::network::Flows {
                from,
                to,
                count,
                packets,
                payload,
            },
        )
        .collect();
    pcapgen::network::udp_flows(
        &flows,
        |a, b| taps_on_path(topo, a, b),
        1_764_000_000_000_000_000,
    )
}

/// The taps along the flow path from router `a` to router `b`.
pub fn taps_on_path(topo: &Topology, a: u8, b: u8) -> Vec<(String, u32)> {
    topo.flow_path(IpAddr::V4(router(a)), IpAddr::V4(router(b)))
        .unwrap()
        .iter()
        .flat_map(|l| l.seen_by.iter().map(|t| (t.monitor.to_string(), t.link_id)))
        .collect()
}

/// The monitor id of a monitor address.
pub fn monitor_id(address: &str) -> String {
    bus_schema::id_from_address(address)
}

/// A nats-server with the figure-5 topology stored and one monitor per
/// monitor address of the topology, replaying `traffic` (a link with no
/// traffic replays an empty capture).
pub struct System {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub monitors: Vec<MonitorProc>,
    pub topology: Topology,
}

impl System {
    pub async fn start(traffic: &Traffic) -> System {
        Self::start_trusting(traffic, &[]).await
    }

    /// [`System::start`] with monitors that run only analyzers signed by
    /// one of `keys` (hex public keys; none: signatures not required).
    pub async fn start_trusting(traffic: &Traffic, keys: &[String]) -> System {
        let trust = if keys.is_empty() {
            String::new()
        } else {
            format!("[trust]\nkeys = {keys:?}\n")
        };
        let nats = NatsServer::start().await.unwrap();
        Self::start_with(nats, |address, topology, dir| {
            trust.clone() + &replay_links(traffic, address, topology, dir)
        })
        .await
    }

    /// [`System::start`] with `extra(address)` added to each monitor's
    /// config (before its links).
    pub async fn start_each(traffic: &Traffic, extra: impl Fn(IpAddr) -> String) -> System {
        let nats = NatsServer::start().await.unwrap();
        Self::start_with(nats, |address, topology, dir| {
            extra(address) + &replay_links(traffic, address, topology, dir)
        })
        .await
    }

    /// [`System::start`] whose replays start once `waits_for` deployments
    /// are attached to each link (so that all of them see every packet).
    pub async fn start_waiting(traffic: &Traffic, waits_for: u32) -> System {
        let nats = NatsServer::start().await.unwrap();
        Self::start_with(nats, |address, topology, dir| {
            replay_links(traffic, address, topology, dir).replace(
                "[[link]]\n",
                &format!("[[link]]\nreplay_waits_for = {waits_for}\n"),
            )
        })
        .await
    }

    /// [`System::start`] on a server enforcing the identities of `ids`
    /// (a `tmctl auth init` directory holding `operator-ops.nk`, the
    /// harness's and the test's identity, and `monitor-<id>.nk` for every
    /// monitor): each monitor connects with its own seed and accepts only
    /// deployments owned by one of `owners`.
    pub async fn start_authenticated(traffic: &Traffic, ids: &Path, owners: &[&str]) -> System {
        let nats =
            NatsServer::start_with_auth(&ids.join("auth.conf"), &ids.join("operator-ops.nk"))
                .await
                .unwrap();
        nats.setup_as(&ids.join("admin-admin.nk")).await;
        Self::start_with(nats, |address, topology, dir| {
            let seed = ids.join(format!("monitor-{}.nk", monitor_id(&address.to_string())));
            format!(
                "nats_credentials = {:?}\n[trust]\nowners = {owners:?}\n{}",
                seed.display().to_string(),
                replay_links(traffic, address, topology, dir)
            )
        })
        .await
    }

    /// The same with each monitor capturing live on the lab's taps.
    pub async fn start_live(lab: &harness::lab::Lab) -> System {
        let nats = NatsServer::start().await.unwrap();
        Self::start_with(nats, |address, _, _| {
            lab.monitor_links(&address.to_string())
        })
        .await
    }

    /// The figure-5 topology stored on `nats` and one monitor per monitor
    /// address, the rest of whose config (after `address`)
    /// `config(address, topology, dir)` writes.
    async fn start_with(
        nats: NatsServer,
        mut config: impl FnMut(IpAddr, &Topology, &Path) -> String,
    ) -> System {
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        let topology = figure5();
        let kv = topology::open_bucket(&js, 1).await.unwrap();
        topology::save(&kv, &topology.to_record("test", 1), None)
            .await
            .unwrap();
        let mut monitors = Vec::new();
        for address in topology.monitors() {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "address = \"{address}\"\n{}",
                config(address, &topology, dir.path())
            );
            let id = monitor_id(&address.to_string());
            monitors.push(MonitorProc::start_in(&nats, &client, &id, &config, dir).await);
        }
        System {
            nats,
            client,
            js,
            monitors,
            topology,
        }
    }

    /// Stores a module in `tm_blobs`; returns its SHA-256.
    pub async fn put(&self, name: &str, kind: BlobKind) -> String {
        put_blob(&self.js, name, kind, 1).await
    }

    pub fn monitor(&self, id: &str) -> &MonitorProc {
        self.monitors.iter().find(|m| m.id == id).unwrap()
    }
}

/// The `[[link]]` entries of the monitor at `address`: each link replays a
/// pcap of its share of `traffic` (written into `dir`; empty if none).
fn replay_links(traffic: &Traffic, address: IpAddr, topology: &Topology, dir: &Path) -> String {
    let mut config = String::new();
    for (id, link) in topology.links_of_monitor(address) {
        let frames = traffic
            .frames
            .get(&(address.to_string(), id))
            .cloned()
            .unwrap_or_default();
        let file = format!("l{id}.pcap");
        write_pcap(&dir.join(&file), linktype::ETHERNET, &frames).unwrap();
        config += &format!(
            "[[link]]\nid = {id}\npcap = \"{file}\"\nfrom_router = \"{}\"\nto_router = \"{}\"\n",
            link.from, link.to
        );
    }
    config
}

/// Each link of a link-load report equals what its tap carried.
pub fn links_match(
    body: &serde_json::Value,
    truth: &std::collections::BTreeMap<(String, u32), TapTruth>,
) -> bool {
    let Some(links) = body["links"].as_array() else {
        return false;
    };
    links.len() == truth.len()
        && links.iter().all(|l| {
            let key = (
                l["monitor_address"].as_str().unwrap().to_owned(),
                l["link_id"].as_u64().unwrap() as u32,
            );
            truth.get(&key).is_some_and(|t| {
                l["packets"] == t.packets
                    && l["bytes"] == t.bytes
                    && l["duration_s"].as_f64().unwrap() == (t.last_ns - t.first_ns) as f64 / 1e9
            })
        })
}

/// JSON params as the MessagePack value a request carries.
pub fn params(json: serde_json::Value) -> bus_schema::Value {
    rmp_serde::from_slice(&rmp_serde::to_vec_named(&json).unwrap()).unwrap()
}

/// Sends a command and decodes the reply envelope.
pub async fn request<Q: Serialize, R: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    q: &Q,
) -> Reply<R> {
    let payload = bus_schema::encode(q).unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(60),
        client.send_request(
            subject.clone(),
            async_nats::client::Request::new()
                .payload(payload.into())
                .timeout(Some(Duration::from_secs(60))),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} within 60 s"))
    .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    bus_schema::decode(&msg.payload).unwrap_or_else(|e| panic!("reply on {subject}: {e}"))
}

/// A `tm-console` process, killed on drop.
pub struct ConsoleProc {
    pub child: Child,
    /// Where it serves the page, without the trailing slash.
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl ConsoleProc {
    /// Starts `tm-console` on a free port with `args`; returns once it
    /// printed its URL.
    pub fn start(nats_url: &str, args: &[&str]) -> ConsoleProc {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tm-console"))
            .args(["--nats", nats_url, "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("tm-console: ")
            .unwrap_or_else(|| {
                panic!(
                    "tm-console printed {line:?}:\n{}",
                    std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default()
                )
            })
            .trim_end_matches('/')
            .to_owned();
        ConsoleProc { child, url, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }
}

impl Drop for ConsoleProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tm-manager` process, killed on drop.
pub struct ManagerProc {
    pub id: String,
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl ManagerProc {
    /// Starts `tm-manager --id id` with an archive in its temp dir; returns
    /// once it answers `apps.list`.
    pub async fn start(
        nats: &NatsServer,
        client: &async_nats::Client,
        id: &str,
        extra: &[&str],
    ) -> ManagerProc {
        Self::start_at(&nats.url(), client, id, extra).await
    }

    /// [`ManagerProc::start`] against NATS at `urls` (comma-separated: a
    /// cluster's nodes).
    pub async fn start_at(
        urls: &str,
        client: &async_nats::Client,
        id: &str,
        extra: &[&str],
    ) -> ManagerProc {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("manager.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tm-manager"))
            .args(["--id", id, "--nats", urls, "--log", "info,manager=debug"])
            .arg("--archive")
            .arg(dir.path().join("archive"))
            // The built apps may be named by path in `apps.load`.
            .arg("--apps-dir")
            .arg(wasm_path("link-load").parent().unwrap())
            .args(extra)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut m = ManagerProc {
            id: id.into(),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("tm-manager exited with {status}:\n{}", m.log());
            }
            let q = bus_schema::encode(&AppListRequest {}).unwrap();
            if let Ok(Ok(msg)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.request(subject::manager_apps_list(id), q.into()),
            )
            .await
                && bus_schema::decode::<Reply<AppList>>(&msg.payload).is_ok()
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "tm-manager {id} did not answer in 30 s:\n{}",
                m.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    pub fn archive(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// SIGKILL: the manager dies without unloading anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reports of one app, as JSON, as they arrive.
pub struct Reports {
    sub: async_nats::Subscriber,
}

impl Reports {
    pub async fn subscribe(client: &async_nats::Client, manager: &str, app: &str) -> Reports {
        let sub = client
            .subscribe(subject::reports(manager, app))
            .await
            .unwrap();
        client.flush().await.unwrap();
        Reports { sub }
    }

    /// The next report of `kind` whose body satisfies `done` (others are
    /// skipped), within `within`.
    pub async fn until(
        &mut self,
        kind: &str,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<(Report, serde_json::Value)> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.sub.next())
                .await
                .ok()??;
            let report: Report = bus_schema::decode(&msg.payload).unwrap();
            let body = manager::archive::to_json(&report.body);
            if report.kind == kind && done(&body) {
                return Some((report, body));
            }
        }
    }
}

/// The KV record of a deployment, if any.
pub async fn deployment_record(
    js: &jetstream::Context,
    id: &str,
) -> Option<bus_schema::DeploymentRecord> {
    let kv = js.get_key_value(store::DEPLOYMENTS_BUCKET).await.ok()?;
    let bytes = kv.get(id).await.ok()??;
    Some(bus_schema::decode(&bytes).unwrap())
}

/// `(from_router, to_router)` of each element of a JSON array (a path, a
/// matrix, the unmonitored links of a report).
pub fn router_pairs(list: &serde_json::Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|e| {
            (
                e["from_router"].as_str().unwrap().to_owned(),
                e["to_router"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Router-address pairs as owned strings, for comparing with
/// [`router_pairs`].
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Runs `tmctl --nats url args…`; its stdout (panics on failure).
pub fn tmctl_at(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["--nats", url])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tmctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stores a module from `target/wasm/` in `tm_blobs` (created with
/// `replicas` if missing); returns its SHA-256.
pub async fn put_blob(
    js: &jetstream::Context,
    name: &str,
    kind: BlobKind,
    replicas: usize,
) -> String {
    let bytes = std::fs::read(wasm_path(name)).unwrap();
    harness::put_module(js, name, kind, &bytes, replicas).await
}

/// Loads `app` from the object store on `manager` with JSON params.
pub async fn load_app(
    system: &System,
    manager: &str,
    app: &str,
    p: serde_json::Value,
) -> bus_schema::AppStatus {
    request(
        &system.client,
        subject::manager_apps_load(manager),
        &bus_schema::AppLoadRequest {
            app: app.into(),
            source: bus_schema::AppSource::Object(bus_schema::BlobRef {
                name: app.into(),
                sha256: String::new(),
            }),
            params: params(p),
        },
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("loading {app} on {manager}: {e}"))
}

/// Unloads `app` from `manager`.
pub async fn unload_app(system: &System, manager: &str, app: &str) -> bus_schema::AppStatus {
    request(
        &system.client,
        subject::manager_apps_unload(manager),
        &bus_schema::AppUnloadRequest { app: app.into() },
    )
    .await
    .into_result()
    .unwrap_or_else(|e| panic!("unloading {app} on {manager}: {e}"))
}

/// `tmctl --json auth init --out dir args…`: the identities it lists.
pub fn auth_init(dir: &Path, args: &[&str]) -> Vec<(bus_schema::Role, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_tmctl"))
        .args(["--json", "auth", "init", "--out"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                bus_schema::auth::role_from_str(i["role"].as_str().unwrap()).unwrap(),
                i["id"].as_str().unwrap().to_owned(),
                i["public_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The figure-5 network's traffic: every tapped direction carries some,
/// R4→R1 carries traffic nobody sees.
pub fn figure5_traffic(s_topology: &Topology) -> Traffic {
    traffic(
        s_topology,
        &[
            // R1→R3 crosses R1→R2 and R2→R3.
            (1, 3, 3, 40, 200),
            // R3→R1 crosses R3→R2 and R2→R1.
            (3, 1, 2, 25, 900),
            (1, 4, 2, 30, 120),
            (3, 4, 1, 50, 60),
            (2, 3, 2, 10, 400),
            // R4→R1: an unmonitored direction.
            (4, 1, 1, 20, 100),
        ],
    )
}
