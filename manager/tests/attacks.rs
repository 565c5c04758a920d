//! The attacks a hostile tester made with the generated `auth.conf` and
//! each role's own seed, replayed against real processes on a real
//! nats-server: each is refused with its error, nothing leaks, and the
//! system works afterwards.
//!
//! * A subscriber cannot create the results stream to capture commands;
//!   a stream made with other settings (where nothing stops it: no
//!   identities) makes monitors and tmctl refuse to run, naming how.
//! * A monitor cannot pose as the monitor at another address.
//! * A load's owner and an unload's requester are the identity the
//!   subject proves, not what the body says.
//! * A manager reads app files only under its `--apps-dir`, capped.
//! * Blob fetches leave no consumer behind (2,000 loads in 30 s); loads
//!   past a monitor's deployment and memory caps are refused.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Event, ServerError};
use bus_schema::store::{self, BlobKind};
use bus_schema::{
    AppLoadRequest, AppSource, AppStatus, BlobRef, ErrorCode, Filter, LoadReply, LoadRequest,
    MonitorRecord, Reply, ResultWindow, UnloadReply, UnloadRequest, Value, subject,
};
use common::ManagerProc;
use futures::StreamExt;
use harness::NatsServer;
use harness::monitor::{MonitorProc, monitor_bin};

const REAL: &str = "10.9.0.6";
const OTHER: &str = "10.9.0.5";

/// An auth directory (`tmctl auth init`) with monitors at [`REAL`] and
/// [`OTHER`], manager `mgr-1`, operator `ops` and subscriber `s1`, and a
/// server enforcing it (nothing created yet).
struct Secured {
    ids: tempfile::TempDir,
    nats: NatsServer,
}

impl Secured {
    async fn start() -> Secured {
        let ids = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tmctl"))
            .args(["auth", "init", "--out"])
            .arg(ids.path())
            .args(["--monitor", REAL, "--monitor", OTHER])
            .args([
                "--manager",
                "mgr-1",
                "--operator",
                "ops",
                "--subscriber",
                "s1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let nats = NatsServer::start_with_auth(
            &ids.path().join("auth.conf"),
            &ids.path().join("operator-ops.nk"),
        )
        .await
        .unwrap();
        Secured { ids, nats }
    }

    fn seed(&self, role: &str, id: &str) -> PathBuf {
        self.ids.path().join(format!("{role}-{id}.nk"))
    }

    /// `tmctl setup` as the admin.
    fn setup(&self) {
        let out = self.tmctl(&self.seed("admin", "admin"), &["setup"]);
        assert!(out.status.success(), "{out:?}");
    }

    fn tmctl(&self, creds: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tmctl"))
            .args(["--nats", &self.nats.url()])
            .arg("--nats-creds")
            .arg(creds)
            .args(args)
            .env_remove("TMCTL_AS")
            .output()
            .unwrap()
    }

    /// A client with the seed of `role` `id`, and the permission
    /// violations the server reports to it.
    async fn connect(&self, role: &str, id: &str) -> (async_nats::Client, Violations) {
        let violations: Violations = Arc::default();
        let seen = violations.clone();
        let options = async_nats::ConnectOptions::new().event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(ServerError::Other(message)) = event
                    && message.to_lowercase().contains("violation")
                {
                    seen.lock().unwrap().push(message);
                }
            }
        });
        let client = bus_schema::nats::with_credentials(options, &self.seed(role, id))
            .await
            .unwrap()
            .connect(self.nats.url())
            .await
            .unwrap();
        (client, violations)
    }

    /// A monitor at `address` with its own seed, one replayed link of
    /// [`packets`] and `extra` config lines.
    async fn monitor(&self, address: &str, extra: &str) -> MonitorProc {
        let dir = tempfile::tempdir().unwrap();
        pcapgen::write_pcap(
            &dir.path().join("l0.pcap"),
            pcapgen::linktype::ETHERNET,
            &packets(),
        )
        .unwrap();
        let id = bus_schema::id_from_address(address);
        let config = format!(
            "address = \"{address}\"\nnats_credentials = {:?}\n{extra}\n\
             [[link]]\nid = 0\npcap = \"l0.pcap\"\nfrom_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n",
            self.seed("monitor", &id).display().to_string()
        );
        let client = self.nats.client().await;
        MonitorProc::start_in(&self.nats, &client, &id, &config, dir).await
    }

    async fn put(&self, name: &str, kind: BlobKind) -> String {
        common::put_blob(&self.nats.jetstream().await, name, kind, 1).await
    }
}

type Violations = Arc<Mutex<Vec<String>>>;

/// What every monitor's link replays.
fn packets() -> Vec<pcapgen::Frame> {
    pcapgen::mixed(200, 0)
}

/// Waits (bounded) until `violations` holds one naming `subject`.
async fn violation_on(violations: &Violations, subject: &str) -> bool {
    for _ in 0..100 {
        if violations
            .lock()
            .unwrap()
            .iter()
            .any(|v| v.contains(subject))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn load_request(deployment: &str, sha256: &str, owner: &str) -> LoadRequest {
    LoadRequest {
        deployment: deployment.into(),
        analyzer: BlobRef {
            name: "packet-count".into(),
            sha256: sha256.into(),
        },
        params: Value::Nil,
        filter: Filter::default(),
        links: vec![0],
        owner: owner.into(),
        report_every_ms: None,
    }
}

/// A request that must get no reply (its publication is refused).
async fn unanswered(client: &async_nats::Client, subject: String, payload: Vec<u8>) -> bool {
    let sent = client.send_request(
        subject,
        async_nats::client::Request::new()
            .payload(payload.into())
            .timeout(Some(Duration::from_secs(2))),
    );
    !matches!(
        tokio::time::timeout(Duration::from_secs(5), sent).await,
        Ok(Ok(_))
    )
}

/// Before any stream exists, the subscriber's attempt to create the
/// results stream capturing the command subjects is refused by the server;
/// monitors will not start until the admin made the stores; a stream with
/// other settings (made where identities are not enforced) stops monitors,
/// managers' control plane and `tmctl setup`, each naming the difference.
#[tokio::test]
async fn a_subscriber_cannot_take_over_the_control_plane() {
    let s = Secured::start().await;
    let (subscriber, violations) = s.connect("subscriber", "s1").await;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(subscriber.clone());
    let taken = js
        .create_stream(jetstream::stream::Config {
            name: store::RESULTS_STREAM.into(),
            subjects: vec![
                "tm.v1.results.>".into(),
                "tm.v1.mon.>".into(),
                "tm.v1.mgr.>".into(),
            ],
            ..Default::default()
        })
        .await;
    assert!(taken.is_err(), "the subscriber created TM_RESULTS");
    assert!(
        violation_on(
            &violations,
            &format!("$JS.API.STREAM.CREATE.{}", store::RESULTS_STREAM)
        )
        .await,
        "{violations:?}"
    );
    // Nor may it listen to commands directly.
    let mut commands = subscriber.subscribe("tm.v1.mon.>").await.unwrap();
    assert!(violation_on(&violations, "tm.v1.mon.>").await);

    // A monitor does not create stores where identities are enforced: it
    // says who does.
    let dir = tempfile::tempdir().unwrap();
    pcapgen::write_pcap(
        &dir.path().join("l0.pcap"),
        pcapgen::linktype::ETHERNET,
        &[],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        format!(
            "address = \"{REAL}\"\nnats_url = \"{}\"\nnats_credentials = {:?}\n\
             [[link]]\nid = 0\npcap = \"l0.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
            s.nats.url(),
            s.seed("monitor", &bus_schema::id_from_address(REAL))
                .display()
                .to_string()
        ),
    )
    .unwrap();
    let early = Command::new(monitor_bin())
        .arg("--config")
        .arg(dir.path().join("m.toml"))
        .output()
        .unwrap();
    assert!(!early.status.success());
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(
        stderr.contains("missing") && stderr.contains("tmctl setup"),
        "{stderr}"
    );

    // The admin makes them; then the system works: a deployment's packets
    // are counted, and its reply is a reply, not a stream's ack.
    s.setup();
    let _monitor = s.monitor(REAL, "").await;
    s.put("packet-count", BlobKind::Analyzer).await;
    let ops = s.seed("operator", "ops");
    let out = s.tmctl(
        &ops,
        &[
            "deploy",
            "packet-count",
            "--id",
            "d1",
            "--link",
            &format!("{REAL}:0"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = s.tmctl(&ops, &["--json", "collect", "d1"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["results"][0]["stats"]["packets_in"],
        packets().len(),
        "{json:#}"
    );
    // The subscriber heard none of those commands.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), commands.next())
            .await
            .is_err()
    );

    // Where nothing enforces identities, anyone may make a stream: one
    // that captures more than the contract says is refused by everyone.
    let open = NatsServer::start().await.unwrap();
    jetstream::new(open.client().await)
        .create_stream(jetstream::stream::Config {
            name: store::RESULTS_STREAM.into(),
            subjects: vec!["tm.v1.results.>".into(), "tm.v1.mon.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("open.toml"),
        format!(
            "address = \"{REAL}\"\nnats_url = \"{}\"\n\
             [[link]]\nid = 0\npcap = \"l0.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
            open.url()
        ),
    )
    .unwrap();
    let refused = Command::new(monitor_bin())
        .arg("--config")
        .arg(dir.path().join("open.toml"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("TM_RESULTS") && stderr.contains("tm.v1.mon.>"),
        "{stderr}"
    );
    for args in [&["deployments"][..], &["setup"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_tmctl"))
            .args(["--nats", &open.url()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("subjects are"),
            "{args:?}: {out:?}"
        );
    }
}

/// A monitor with its own seed cannot take another's address: its own
/// process refuses to start so, the liveness record it may write under its
/// own id is ignored by tmctl and managers, it may not write the other's,
/// and deployments to that address reach the real monitor every time.
#[tokio::test]
async fn a_monitor_cannot_pose_as_another() {
    let s = Secured::start().await;
    s.setup();
    let real = s.monitor(REAL, "").await;
    s.put("packet-count", BlobKind::Analyzer).await;
    let other = bus_schema::id_from_address(OTHER);

    // The honest binary refuses an id that is not its address's.
    let dir = tempfile::tempdir().unwrap();
    pcapgen::write_pcap(
        &dir.path().join("l0.pcap"),
        pcapgen::linktype::ETHERNET,
        &[],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        format!(
            "id = \"{other}\"\naddress = \"{REAL}\"\nnats_url = \"{}\"\nnats_credentials = {:?}\n\
             [[link]]\nid = 0\npcap = \"l0.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n",
            s.nats.url(),
            s.seed("monitor", &other).display().to_string()
        ),
    )
    .unwrap();
    let posing = Command::new(monitor_bin())
        .arg("--config")
        .arg(dir.path().join("m.toml"))
        .output()
        .unwrap();
    assert!(!posing.status.success());
    let stderr = String::from_utf8_lossy(&posing.stderr);
    assert!(
        stderr.contains(&format!("id = \"{other}\"")) && stderr.contains(REAL),
        "{stderr}"
    );

    // A modified one writes what it may: its own record, claiming the
    // address; the real monitor's record it may not touch.
    let (impostor, violations) = s.connect("monitor", &other).await;
    let record = MonitorRecord {
        monitor: other.clone(),
        address: REAL.into(),
        version: "0.0.0".into(),
        protocol: bus_schema::PROTOCOL_VERSION,
        links: vec![bus_schema::LinkInfo {
            id: 0,
            from_router: "10.0.1.1".into(),
            to_router: "10.0.2.1".into(),
            source: "pcap:fake".into(),
        }],
        started_unix_ms: manager::control::now_ms(),
        heartbeat_unix_ms: manager::control::now_ms(),
    };
    let ijs = jetstream::new(impostor.clone());
    ijs.publish(
        format!("$KV.{}.{other}", store::MONITORS_BUCKET),
        bus_schema::encode(&record).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let denied = format!("$KV.{}.{}", store::MONITORS_BUCKET, real.id);
    impostor
        .publish(denied.clone(), bus_schema::encode(&record).unwrap().into())
        .await
        .unwrap();
    assert!(violation_on(&violations, &denied).await, "{violations:?}");
    let mut heard = impostor
        .subscribe(format!("tm.v1.mon.{other}.>"))
        .await
        .unwrap();

    let ops = s.seed("operator", "ops");
    let listed = s.tmctl(&ops, &["--json", "monitors"]);
    assert!(listed.status.success(), "{listed:?}");
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["monitor"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [real.id.as_str()], "{json:#}");
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains(&format!("{other:?} claiming address")),
        "{listed:?}"
    );
    for i in 0..6 {
        let id = format!("d{i}");
        let out = s.tmctl(
            &ops,
            &[
                "--json",
                "deploy",
                "packet-count",
                "--id",
                &id,
                "--link",
                &format!("{REAL}:0"),
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["placed"][0]["monitor"], real.id, "{json:#}");
        assert_eq!(json["placed"].as_array().unwrap().len(), 1, "{json:#}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), heard.next())
            .await
            .is_err(),
        "a command reached the impostor"
    );
}

/// With `[trust] owners = ["ops", "mgr-1"]`, the operator cannot load as
/// `mgr-1` by writing it in the body, nor send on `mgr-1`'s subject; the
/// manager cannot unload the operator's deployment by naming it as
/// requester. Each is refused; the operator's own load and unload work.
#[tokio::test]
async fn owners_and_requesters_are_the_proven_identity() {
    let s = Secured::start().await;
    s.setup();
    let monitor = s
        .monitor(REAL, "[trust]\nowners = [\"ops\", \"mgr-1\"]")
        .await;
    let sha = s.put("packet-count", BlobKind::Analyzer).await;
    let (ops, ops_violations) = s.connect("operator", "ops").await;

    let spoofed: Reply<LoadReply> = common::request(
        &ops,
        subject::monitor_load(&monitor.id, "ops"),
        &load_request("spoof", &sha, "mgr-1"),
    )
    .await;
    let e = spoofed.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
    assert!(
        e.message.contains("owner = \"mgr-1\"") && e.message.contains("\"ops\""),
        "{e}"
    );
    let other_subject = subject::monitor_load(&monitor.id, "mgr-1");
    assert!(
        unanswered(
            &ops,
            other_subject.clone(),
            bus_schema::encode(&load_request("spoof", &sha, "mgr-1")).unwrap()
        )
        .await
    );
    assert!(violation_on(&ops_violations, &other_subject).await);

    // The operator's own load works and counts the link's packets.
    let own: Reply<LoadReply> = common::request(
        &ops,
        subject::monitor_load(&monitor.id, "ops"),
        &load_request("mine", &sha, "ops"),
    )
    .await;
    own.into_result().unwrap();

    // The manager names the operator as requester: refused.
    let (mgr, _) = s.connect("manager", "mgr-1").await;
    let unload = |requester: &str| UnloadRequest {
        deployment: "mine".into(),
        requester: requester.into(),
        force: true,
    };
    let spoofed: Reply<UnloadReply> = common::request(
        &mgr,
        subject::monitor_unload(&monitor.id, "mgr-1"),
        &unload("ops"),
    )
    .await;
    let e = spoofed.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
    assert!(e.message.contains("requester = \"ops\""), "{e}");
    assert_eq!(
        monitor
            .status(&s.nats.client().await)
            .await
            .deployments
            .len(),
        1
    );

    let done: Reply<UnloadReply> = common::request(
        &ops,
        subject::monitor_unload(&monitor.id, "ops"),
        &unload("ops"),
    )
    .await;
    let window: ResultWindow = done.into_result().unwrap().final_results;
    assert_eq!(window.stats.packets_in, packets().len() as u64);
}

/// A manager reads no file a request over the bus names outside its
/// `--apps-dir` (not /etc/shadow, not /dev/zero, not through a symbolic
/// link), reads none larger than the blob cap, and never echoes a file's
/// bytes; it refuses absurd limits at start. Apps in its directory load.
#[tokio::test]
async fn a_manager_reads_app_files_only_from_its_apps_dir() {
    let s = Secured::start().await;
    s.setup();
    let apps = tempfile::tempdir().unwrap();
    let mgr_seed = s.seed("manager", "mgr-1");
    let client = s.nats.client().await;
    let _manager = ManagerProc::start(
        &s.nats,
        &client,
        "mgr-1",
        &[
            "--nats-creds",
            mgr_seed.to_str().unwrap(),
            "--apps-dir",
            apps.path().to_str().unwrap(),
        ],
    )
    .await;
    let load = |app: &str, path: &Path| {
        let client = client.clone();
        let req = AppLoadRequest {
            app: app.into(),
            source: AppSource::File {
                path: path.to_string_lossy().into_owned(),
            },
            params: Value::Nil,
        };
        async move {
            common::request::<_, AppStatus>(&client, subject::manager_apps_load("mgr-1"), &req)
                .await
                .into_result()
        }
    };
    let shadow_line = std::fs::read_to_string("/etc/shadow")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned));
    std::os::unix::fs::symlink("/etc/shadow", apps.path().join("shadow.wasm")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", apps.path().join("zero.wasm")).unwrap();
    let big = std::fs::File::create(apps.path().join("big.wasm")).unwrap();
    big.set_len(65 << 20).unwrap();
    for (path, code, says) in [
        (
            PathBuf::from("/etc/shadow"),
            ErrorCode::Unauthorized,
            "--apps-dir",
        ),
        (
            PathBuf::from("/dev/zero"),
            ErrorCode::Unauthorized,
            "--apps-dir",
        ),
        (
            apps.path().join("../../etc/shadow"),
            ErrorCode::Unauthorized,
            "without `..`",
        ),
        (
            apps.path().join("shadow.wasm"),
            ErrorCode::Unauthorized,
            "symbolic link",
        ),
        (
            apps.path().join("zero.wasm"),
            ErrorCode::Unauthorized,
            "symbolic link",
        ),
        (
            apps.path().join("big.wasm"),
            ErrorCode::BadModule,
            "more than",
        ),
    ] {
        let e = load("x", &path).await.unwrap_err();
        assert_eq!(e.code, code, "{}: {e}", path.display());
        assert!(e.message.contains(says), "{}: {e}", path.display());
        if let Some(line) = &shadow_line {
            assert!(!e.message.contains(line.as_str()), "{e}");
        }
    }
    // A text file in the directory is refused without being quoted.
    std::fs::write(apps.path().join("text.wasm"), "secret words\n").unwrap();
    let e = load("x", &apps.path().join("text.wasm")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadModule, "{e}");
    assert!(!e.message.contains("secret"), "{e}");

    // What the directory serves loads (link-load deploys flow-stats).
    let _monitor = s.monitor(REAL, "").await;
    s.put("flow-stats", BlobKind::Analyzer).await;
    let app = apps.path().join("link-load.wasm");
    std::fs::copy(common::wasm_path("link-load"), &app).unwrap();
    let status = load("ll", &app).await.unwrap();
    assert_eq!(status.state, bus_schema::AppState::Running);

    // Limits a manager could not honour are refused at start, naming the flag.
    for (flag, value) in [
        ("--app-memory-mb", "0"),
        ("--app-memory-mb", "99999999"),
        ("--app-call-timeout-ms", "0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tm-manager"))
            .args([flag, value, "--check-config"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{out:?}"
        );
    }
}

/// 2,000 loads within 30 s each fetch the blob and are refused (a wrong
/// digest): no consumer is left on the blob stream, and a real load works
/// right after. A monitor capped at 300 deployments takes 300 and refuses
/// the 301st; one whose memory budget holds two refuses a third; both
/// take a load again once one is unloaded.
#[tokio::test]
async fn loads_leave_nothing_behind_and_stop_at_the_caps() {
    let s = Secured::start().await;
    s.setup();
    let many = s
        .monitor(
            REAL,
            "[limits]\nmax_deployments = 300\nmemory_mb = 4\nqueue_batches = 2",
        )
        .await;
    let small = s
        .monitor(OTHER, "[limits]\nmemory_mb = 4\ntotal_memory_mb = 8")
        .await;
    let sha = s.put("packet-count", BlobKind::Analyzer).await;
    let (ops, _) = s.connect("operator", "ops").await;
    let load = |monitor: &str, req: LoadRequest| {
        let ops = ops.clone();
        let subject = subject::monitor_load(monitor, "ops");
        async move {
            common::request::<_, LoadReply>(&ops, subject, &req)
                .await
                .into_result()
        }
    };

    let wrong = "0".repeat(64);
    let started = std::time::Instant::now();
    for chunk in 0..20 {
        let replies = futures::future::join_all((0..100).map(|i| {
            load(
                &many.id,
                load_request(&format!("w{chunk}-{i}"), &wrong, "ops"),
            )
        }))
        .await;
        for r in replies {
            assert_eq!(r.unwrap_err().code, ErrorCode::DigestMismatch);
        }
    }
    eprintln!("2,000 loads refused in {:?}", started.elapsed());
    let blobs = jetstream::new(s.nats.client().await)
        .get_stream(format!("OBJ_{}", store::BLOBS_BUCKET))
        .await
        .unwrap();
    assert_eq!(blobs.cached_info().state.consumer_count, 0);

    for chunk in 0..30 {
        let replies = futures::future::join_all((0..10).map(|i| {
            load(
                &many.id,
                load_request(&format!("d{}", chunk * 10 + i), &sha, "ops"),
            )
        }))
        .await;
        for r in replies {
            r.unwrap();
        }
    }
    let e = load(&many.id, load_request("d300", &sha, "ops"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ResourceLimit, "{e}");
    assert!(e.message.contains("limits.max_deployments"), "{e}");
    let client = s.nats.client().await;
    assert_eq!(many.status(&client).await.deployments.len(), 300);

    load(&small.id, load_request("s1", &sha, "ops"))
        .await
        .unwrap();
    load(&small.id, load_request("s2", &sha, "ops"))
        .await
        .unwrap();
    let e = load(&small.id, load_request("s3", &sha, "ops"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ResourceLimit, "{e}");
    assert!(e.message.contains("limits.total_memory_mb = 8"), "{e}");

    // Room again once one goes.
    for (monitor, gone, next) in [(&many.id, "d0", "d300"), (&small.id, "s1", "s3")] {
        let r: Reply<UnloadReply> = common::request(
            &ops,
            subject::monitor_unload(monitor, "ops"),
            &UnloadRequest {
                deployment: gone.into(),
                requester: "ops".into(),
                force: false,
            },
        )
        .await;
        r.into_result().unwrap();
        load(monitor, load_request(next, &sha, "ops"))
            .await
            .unwrap();
    }
}
