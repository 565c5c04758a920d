//! Swapping a running deployment's analyzer for another module between two
//! batches, its state carried over (the deployment thread's side of an
//! upgrade): packets fed from memory through a real link and tap into
//! flow-stats, the swap in the middle of the stream.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bus_schema::{BlobRef, Filter, LinkState, LoadRequest, Value};
use monitor::config::{LinkConfig, Replay};
use monitor::deployment::{self, DeploymentInfo, Shared, Timers};
use monitor::filter::CompiledFilter;
use monitor::guest::{Analyzer, InstanceConfig};
use monitor::inbox::{DepMsg, Upgrade, UpgradeError};
use monitor::link::LinkHandle;
use monitor::source::MemorySource;
use monitor::tap::{Tap, guest_batch_bytes};
use wasm_host::Sandbox;

const PACKETS: usize = 100_000;
const FLOWS: usize = 500;
const START_NS: u64 = 1_764_000_000_000_000_000;

fn instance(sandbox: &Sandbox, name: &str) -> (Box<Analyzer>, BlobRef) {
    let bytes = common::wasm(name);
    let sha256 = wasm_host::sha256_hex(&bytes);
    let module = sandbox.module(&sha256, &bytes).unwrap();
    // Every flow in flow-stats' `top`, so that whole tables are compared.
    let params = if name == "flow-stats" {
        bus_schema::encode(&Value::Map(vec![("top_n".into(), (FLOWS as u64).into())])).unwrap()
    } else {
        vec![0xc0]
    };
    let analyzer = Analyzer::new(
        sandbox,
        &module,
        &InstanceConfig {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(2),
            batch_bytes: guest_batch_bytes(65535),
            deployment: "up".into(),
        },
        &params,
        Box::new(|_| {}),
    )
    .unwrap();
    (
        Box::new(analyzer),
        BlobRef {
            name: name.into(),
            sha256,
        },
    )
}

/// What one run gave: the final results, and the upgrade's answer with the
/// packets analysed before it.
struct Run {
    results: Value,
    packets_in: u64,
    upgrade: Option<(Result<(), UpgradeError>, u64)>,
}

/// Feeds the capture to flow-stats; once packets flow, asks for an upgrade
/// to a fresh instance of `to` (if given); waits for the end and unloads.
fn run(frames: &[Vec<u8>], to: Option<&str>) -> Run {
    let sandbox = Sandbox::new(&wasm_host::SandboxConfig::default()).unwrap();
    let (analyzer, blob) = instance(&sandbox, "flow-stats");
    let request = LoadRequest {
        deployment: "up".into(),
        analyzer: blob.clone(),
        params: Value::Nil,
        filter: Filter::default(),
        links: vec![0],
        owner: "test".into(),
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
    let snap_len = analyzer.snap_len();
    // A short queue: the lossless source waits for the analyzer, so the
    // stream is still running when the upgrade is asked for.
    let (tx, rx) = flume::bounded(4);
    let thread = {
        let shared = shared.clone();
        let timers = Timers {
            tick: Duration::from_secs(1),
            report: None,
            snapshot: Duration::from_secs(3600),
        };
        std::thread::spawn(move || deployment::run(*analyzer, rx, shared, timers))
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
        64,
        snap_len,
    );
    let mut tap = Some(tap);
    link.attach(|| tap.take().expect("one capture thread"));
    let counters = shared.counters.clone();
    let upgrade = to.map(|name| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while counters.packets_in.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (new, blob) = instance(&sandbox, name);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let to = Upgrade {
            analyzer: new,
            blob,
            params: None,
        };
        tx.send(DepMsg::Upgrade(Box::new(to), reply)).unwrap();
        let answer = answer.blocking_recv().unwrap().map(|_held| ());
        (answer, counters.packets_in.load(Ordering::Relaxed))
    });
    assert_eq!(
        link.shared.wait_stopped(Duration::from_secs(120)),
        LinkState::Finished
    );
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(DepMsg::Unload(reply)).unwrap();
    let window = answer.blocking_recv().unwrap();
    drop(tx);
    thread.join().unwrap();
    Run {
        results: window.results,
        packets_in: window.stats.packets_in,
        upgrade,
    }
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn an_upgrade_mid_stream_keeps_one_table_and_every_packet() {
    let frames: Vec<Vec<u8>> = pcapgen::flows(PACKETS, FLOWS, START_NS)
        .into_iter()
        .map(|f| f.data)
        .collect();
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let plain = run(&frames, None);
    let mut swapped = run(&frames, Some("flow-stats"));
    let (answer, at) = swapped.upgrade.take().unwrap();
    answer.expect("the upgrade is accepted");
    assert!(
        at > 0 && at < PACKETS as u64,
        "the swap fell mid-stream ({at} of {PACKETS} packets before it)"
    );
    for run in [&plain, &swapped] {
        assert_eq!(run.packets_in, PACKETS as u64);
        assert_eq!(
            field(&run.results, "packets").as_u64(),
            Some(PACKETS as u64)
        );
        assert_eq!(field(&run.results, "bytes").as_u64(), Some(bytes));
        assert_eq!(
            field(&run.results, "active_flows").as_u64(),
            Some(FLOWS as u64)
        );
    }
    // One table across the swap: every flow with the same figures.
    let top = field(&plain.results, "top").as_array().unwrap();
    assert_eq!(top.len(), FLOWS);
    assert_eq!(field(&swapped.results, "top"), field(&plain.results, "top"));
}

#[test]
fn a_refused_upgrade_leaves_the_running_analyzer_counting() {
    let frames: Vec<Vec<u8>> = pcapgen::flows(PACKETS / 4, FLOWS, START_NS)
        .into_iter()
        .map(|f| f.data)
        .collect();
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    // packet-count reads whole packets, flow-stats' taps keep headers only;
    // dos-detect reads headers but takes no flow-stats state.
    for (to, refused) in [
        ("packet-count", "SnapLen"),
        ("dos-detect", "RestoreRefused"),
    ] {
        let mut r = run(&frames, Some(to));
        let (answer, _) = r.upgrade.take().unwrap();
        let e = answer.expect_err("refused");
        assert!(format!("{e:?}").starts_with(refused), "{to}: {e:?} ({e})");
        assert_eq!(r.packets_in, frames.len() as u64, "{to}");
        assert_eq!(field(&r.results, "bytes").as_u64(), Some(bytes), "{to}");
        assert_eq!(
            field(&r.results, "active_flows").as_u64(),
            Some(FLOWS as u64),
            "{to}: flow-stats still counting"
        );
    }
}

/// The `upgrade` command on a real monitor and nats-server, mid-way
/// through a paced replay: refused for a non-owner and for every module
/// that cannot take over, each with its own code, the running analyzer
/// counting on; accepted for the next build of flow-stats (state version
/// 2, converting version 1), after which the old build is refused the
/// newer state. The final results count the capture exactly, its flows
/// kept from before the swap; the windows run 1, 2, 3… with the digest
/// changing once; a monitor killed afterwards comes back running the new
/// module.
#[tokio::test]
async fn the_upgrade_command_swaps_mid_replay_refuses_cleanly_and_survives_a_crash() {
    use bus_schema::{
        DeploymentSnapshot, ErrorCode, LinkState, Reply, StatusRequest, UnloadReply, UnloadRequest,
        UpgradeReply, UpgradeRequest, store, subject,
    };
    use common::{MonitorProc, put_blob, request};

    let dir = tempfile::tempdir().unwrap();
    // 800 packets 10 ms apart: an 8 s paced replay of three flows.
    let frames = pcapgen::paced(800, START_NS, 10_000_000);
    let bytes: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
    pcapgen::write_pcap(
        &dir.path().join("l.pcap"),
        pcapgen::linktype::ETHERNET,
        &frames,
    )
    .unwrap();
    // Snapshots only when the deployment changes (the upgrade's), so the
    // one read before the crash is the one the monitor comes back from.
    let config = "address = \"10.9.9.9\"\n[limits]\nsnapshot_ms = 3600000\n[[link]]\nid = 0\npcap = \"l.pcap\"\nreplay = \"recorded-pace\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n";
    let nats = harness::NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut monitor = MonitorProc::start_in(&nats, &client, "a", config, dir).await;
    let sha = put_blob(&js, "flow-stats", &common::wasm("flow-stats")).await;
    let next = put_blob(&js, "flow-stats-next", &common::wasm("flow-stats-next")).await;
    let modules = [
        ("pc", common::wasm("packet-count")),
        ("dd", common::wasm("dos-detect")),
        ("trap", common::wasm("flow-stats-trap-restore")),
        ("abi2", common::wat_analyzer(2, "")),
    ];
    let mut shas = std::collections::HashMap::new();
    for (name, bytes) in &modules {
        shas.insert(*name, put_blob(&js, name, bytes).await);
    }
    let load: Reply<bus_schema::LoadReply> = request(
        &client,
        subject::monitor_load("a", "t"),
        &LoadRequest {
            deployment: "d".into(),
            analyzer: BlobRef {
                name: "flow-stats".into(),
                sha256: sha.clone(),
            },
            params: Value::Nil,
            filter: Filter::default(),
            links: vec![0],
            owner: "t".into(),
            report_every_ms: Some(250),
        },
    )
    .await;
    assert!(matches!(load, Reply::Ok(_)), "{load:?}");
    let upgrade = |who: &'static str, name: &'static str, sha256: String| {
        let client = client.clone();
        async move {
            request::<_, UpgradeReply>(
                &client,
                subject::monitor_upgrade("a", who),
                &UpgradeRequest {
                    deployment: "d".into(),
                    requester: who.into(),
                    analyzer: BlobRef {
                        name: name.into(),
                        sha256,
                    },
                    params: None,
                    force: false,
                },
            )
            .await
        }
    };
    let code = |r: Reply<UpgradeReply>| match r {
        Reply::Err(e) => (e.code, e.message),
        Reply::Ok(ok) => panic!("accepted: {ok:?}"),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        code(upgrade("x", "flow-stats-next", next.clone()).await).0,
        ErrorCode::NotOwner
    );
    for (name, want) in [
        ("pc", ErrorCode::BadModule),
        ("dd", ErrorCode::RestoreRefused),
        ("trap", ErrorCode::GuestTrap),
        ("abi2", ErrorCode::AbiMismatch),
    ] {
        let (got, message) = code(upgrade("t", name, shas[name].clone()).await);
        assert_eq!(got, want, "{name}: {message}");
    }
    let status = |client: async_nats::Client| async move {
        match request::<_, bus_schema::MonitorStatus>(
            &client,
            subject::monitor_status("a", "t"),
            &StatusRequest::default(),
        )
        .await
        {
            Reply::Ok(s) => s,
            Reply::Err(e) => panic!("status: {e}"),
        }
    };
    let before = status(client.clone()).await;
    assert_eq!(
        before.links[0].state,
        LinkState::Running,
        "the swap falls mid-replay"
    );
    assert_eq!(before.deployments[0].analyzer.sha256, sha);
    match upgrade("t", "flow-stats-next", next.clone()).await {
        Reply::Ok(r) => {
            assert_eq!(
                (r.previous.name.as_str(), r.previous.sha256.as_str()),
                ("flow-stats", sha.as_str())
            );
            assert_eq!(
                (r.analyzer.name.as_str(), r.analyzer.sha256.as_str()),
                ("flow-stats-next", next.as_str())
            );
        }
        Reply::Err(e) => panic!("upgrade refused: {e}"),
    }
    // Back to the first build: it does not take version 2 states.
    let (got, message) = code(upgrade("t", "flow-stats", sha.clone()).await);
    assert_eq!(got, ErrorCode::StateVersion, "{message}");
    assert!(message.contains("version 2"), "{message}");
    let after = status(client.clone()).await;
    assert_eq!(after.deployments[0].analyzer.sha256, next);
    assert_eq!(
        after.links[0].state,
        LinkState::Running,
        "every upgrade fell mid-replay"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(client.clone()).await.links[0].state == LinkState::Running {
        assert!(Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let collect = || async {
        match request::<_, bus_schema::ResultWindow>(
            &client,
            subject::monitor_collect("a", "t"),
            &bus_schema::CollectRequest {
                deployment: "d".into(),
            },
        )
        .await
        {
            Reply::Ok(w) => w,
            Reply::Err(e) => panic!("collect: {e}"),
        }
    };
    let w = collect().await;
    let results = &w.results;
    assert_eq!(field(results, "packets").as_u64(), Some(800));
    assert_eq!(field(results, "bytes").as_u64(), Some(bytes));
    assert_eq!(field(results, "generation").as_u64(), Some(2));
    // One table: the three flows, each first seen at the start of the
    // capture (before the swap), with every packet.
    let top = field(results, "top").as_array().unwrap();
    assert_eq!(top.len(), 3, "{results}");
    let firsts: Vec<u64> = frames[..4].iter().map(|f| f.ts_ns).collect();
    for flow in top {
        let first = field(flow, "first_ns").as_u64().unwrap();
        assert!(firsts.contains(&first), "{flow}");
    }
    let in_top: u64 = top
        .iter()
        .map(|f| field(f, "packets").as_u64().unwrap())
        .sum();
    assert_eq!(in_top, 800);
    // The windows: seq 1, 2, 3… of one run; the first build's digest, then
    // the next's, changing once.
    let windows: Vec<bus_schema::ResultWindow> = harness::stream_windows(&js, "d")
        .await
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert!(windows.len() >= 8, "{} windows", windows.len());
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w.seq, i as u64 + 1, "windows in order, none missing");
        assert_eq!(w.run, windows[0].run);
    }
    let digests: Vec<&str> = windows.iter().map(|w| w.sha256.as_str()).collect();
    let swap = digests
        .iter()
        .position(|d| *d == next)
        .expect("a window of the next build");
    assert!(swap > 0, "a window of the first build: {digests:?}");
    assert!(digests[..swap].iter().all(|d| *d == sha), "{digests:?}");
    assert!(digests[swap..].iter().all(|d| *d == next), "{digests:?}");
    let packets = |w: &bus_schema::ResultWindow| field(&w.results, "packets").as_u64().unwrap();
    assert!(packets(&windows[swap - 1]) <= packets(&windows[swap]));
    assert!(packets(&windows[swap - 1]) > 0);
    let events = common::stream_events(&client, "d").await;
    let upgraded: Vec<_> = events
        .iter()
        .filter(|e| e.kind == bus_schema::EventKind::Upgraded)
        .collect();
    assert_eq!(upgraded.len(), 1, "{events:?}");
    assert!(
        upgraded[0].message.contains(&next),
        "{}",
        upgraded[0].message
    );

    // Killed after the upgrade: it comes back with the new module, from
    // the snapshot taken at the swap (the state the new module took there:
    // version 1, which it converts again), the replay counted again.
    let kv = js.get_key_value(store::SNAPSHOTS_BUCKET).await.unwrap();
    let key = store::snapshot_key("a", "d");
    common::kv_until(&kv, &key, |v| {
        v.map(|v| bus_schema::decode::<DeploymentSnapshot>(v).unwrap())
            .is_some_and(|s| s.request.analyzer.sha256 == next)
    })
    .await
    .expect("a snapshot naming the new module");
    let saved = kv.get(&key).await.unwrap().unwrap();
    let saved = bus_schema::decode::<DeploymentSnapshot>(&saved).unwrap();
    assert_eq!(saved.request.analyzer.sha256, next);
    let saved_state = saved.state.to_value().unwrap();
    assert_eq!(field(&saved_state, "tm_state_version").as_u64(), Some(1));
    let totals = field(field(&saved_state, "state"), "totals");
    let saved_packets = field(totals, "packets").as_u64().unwrap();
    assert!(saved_packets > 0 && saved_packets < 800, "{saved_packets}");
    monitor.crash_and_restart(&client).await;
    let st = monitor
        .wait_status(&client, "the deployment recovered and fed again", |st| {
            st.links[0].state == LinkState::Finished
                && st.deployments.iter().any(|d| d.stats.packets_in >= 800)
        })
        .await;
    assert_eq!(st.deployments[0].analyzer.sha256, next, "{}", monitor.log());
    let w = collect().await;
    assert_eq!(w.sha256, next);
    assert_eq!(field(&w.results, "generation").as_u64(), Some(2));
    assert_eq!(
        field(&w.results, "packets").as_u64(),
        Some(saved_packets + 800)
    );
    let unload: Reply<UnloadReply> = request(
        &client,
        subject::monitor_unload("a", "t"),
        &UnloadRequest {
            deployment: "d".into(),
            requester: "t".into(),
            force: false,
        },
    )
    .await;
    let Reply::Ok(unload) = unload else {
        panic!("unload: {unload:?}")
    };
    assert_eq!(unload.final_results.analyzer, "flow-stats-next");
}
