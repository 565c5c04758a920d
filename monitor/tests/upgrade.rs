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
use monitor::inbox::{DepMsg, UpgradeError};
use monitor::link::{LinkCtl, LinkHandle};
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
    let (tx, rx) = crossbeam_channel::bounded(4);
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
    link.ctl.send(LinkCtl::Attach(Box::new(tap))).unwrap();
    let counters = shared.counters.clone();
    let upgrade = to.map(|name| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while counters.packets_in.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (new, blob) = instance(&sandbox, name);
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.send(DepMsg::Upgrade(new, blob, reply)).unwrap();
        let answer = answer.blocking_recv().unwrap();
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

/// The `upgrade` command on a real monitor and nats-server: refused for a
/// non-owner and for modules that cannot take over (each with its own
/// code, the running analyzer counting on), accepted mid-replay for
/// another blob of flow-stats, whose final results count every packet of
/// the capture; an `upgraded` event names both modules.
#[tokio::test]
async fn the_upgrade_command_swaps_mid_replay_and_refuses_cleanly() {
    use bus_schema::{
        ErrorCode, LinkState, MonitorStatus, Reply, StatusRequest, UnloadReply, UnloadRequest,
        UpgradeReply, UpgradeRequest, subject,
    };
    use common::{MonitorProc, put_blob, request};

    let dir = tempfile::tempdir().unwrap();
    // 400 packets 10 ms apart: a 4 s paced replay.
    let frames = pcapgen::paced(400, START_NS, 10_000_000);
    let bytes: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
    pcapgen::write_pcap(
        &dir.path().join("l.pcap"),
        pcapgen::linktype::ETHERNET,
        &frames,
    )
    .unwrap();
    let config = "address = \"10.9.9.9\"\n[[link]]\nid = 0\npcap = \"l.pcap\"\nreplay = \"recorded-pace\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n";
    let nats = harness::NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let _monitor = MonitorProc::start_in(&nats, &client, "a", config, dir).await;
    let flow_stats = common::wasm("flow-stats");
    let sha = put_blob(&js, "flow-stats", &flow_stats).await;
    let sha2 = put_blob(&js, "flow-stats-2", &flow_stats).await;
    let pc = put_blob(&js, "pc", &common::wasm("packet-count")).await;
    let dd = put_blob(&js, "dd", &common::wasm("dos-detect")).await;
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
            report_every_ms: None,
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
                    force: false,
                },
            )
            .await
        }
    };
    let code = |r: Reply<UpgradeReply>| match r {
        Reply::Err(e) => e.code,
        Reply::Ok(ok) => panic!("accepted: {ok:?}"),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        code(upgrade("x", "flow-stats-2", sha2.clone()).await),
        ErrorCode::NotOwner
    );
    assert_eq!(code(upgrade("t", "pc", pc).await), ErrorCode::BadModule);
    assert_eq!(
        code(upgrade("t", "dd", dd).await),
        ErrorCode::RestoreRefused
    );
    let status = |client: async_nats::Client| async move {
        match request::<_, MonitorStatus>(
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
    assert_eq!(
        status(client.clone()).await.links[0].state,
        LinkState::Running,
        "the swap falls mid-replay"
    );
    match upgrade("t", "flow-stats-2", sha2.clone()).await {
        Reply::Ok(r) => {
            assert_eq!(
                (r.previous.name.as_str(), r.previous.sha256.as_str()),
                ("flow-stats", sha.as_str())
            );
            assert_eq!(
                (r.analyzer.name.as_str(), r.analyzer.sha256.as_str()),
                ("flow-stats-2", sha2.as_str())
            );
        }
        Reply::Err(e) => panic!("upgrade refused: {e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(client.clone()).await.links[0].state == LinkState::Running {
        assert!(Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let results = &unload.final_results.results;
    assert_eq!(field(results, "packets").as_u64(), Some(400));
    assert_eq!(field(results, "bytes").as_u64(), Some(bytes));
    assert_eq!(unload.final_results.analyzer, "flow-stats-2");
    let events = common::stream_events(&client, "d").await;
    let upgraded: Vec<_> = events
        .iter()
        .filter(|e| e.kind == bus_schema::EventKind::Upgraded)
        .collect();
    assert_eq!(upgraded.len(), 1, "{events:?}");
    assert!(
        upgraded[0].message.contains(&sha2),
        "{}",
        upgraded[0].message
    );
}
