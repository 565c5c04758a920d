//! Nothing lost, nothing stuck, nothing hidden: a reused deployment id, a
//! window too large for the bus, a long outage against a small outbox, a
//! stop with the bus gone, a guest failing with commands queued behind it,
//! and timers on a busy link. A real monitor process and nats-server each.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::{
    BlobRef, CollectRequest, ErrorCode, Event, EventKind, Filter, LoadReply, LoadRequest, Reply,
    ResultWindow, UnloadReply, UnloadRequest, Value, subject,
};
use common::{MonitorProc, put_blob, request, wasm, wat_analyzer};
use harness::NatsServer;
use pcapgen::{linktype, write_pcap};

/// A config for monitor `m` at 10.9.9.9 with one link replaying `pcap`
/// as `replay`, plus `extra` at the top level.
fn config(extra: &str, replay: &str) -> String {
    format!(
        "address = \"10.9.9.9\"\n{extra}\n[[link]]\nid = 0\npcap = \"l.pcap\"\nreplay = \"{replay}\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
    )
}

/// A temp dir holding `l.pcap`: `n` packets 10 ms apart.
fn capture(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let frames = pcapgen::paced(n, 1_764_000_000_000_000_000, 10_000_000);
    write_pcap(&dir.path().join("l.pcap"), linktype::ETHERNET, &frames).unwrap();
    dir
}

/// A nats-server, a client, and monitor `m` started with `config` in `dir`.
struct Bed {
    nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    monitor: MonitorProc,
}

impl Bed {
    async fn start(config: &str, dir: tempfile::TempDir) -> Bed {
        Self::on(NatsServer::start().await.unwrap(), config, dir).await
    }

    async fn on(nats: NatsServer, config: &str, dir: tempfile::TempDir) -> Bed {
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        let monitor = MonitorProc::start_in(&nats, &client, "m", config, dir).await;
        Bed {
            nats,
            client,
            js,
            monitor,
        }
    }
}

fn load_req(deployment: &str, name: &str, sha: &str, report_every_ms: Option<u64>) -> LoadRequest {
    LoadRequest {
        deployment: deployment.into(),
        analyzer: BlobRef {
            name: name.into(),
            sha256: sha.into(),
        },
        params: Value::Nil,
        filter: Filter::default(),
        links: vec![0],
        owner: "t".into(),
        report_every_ms,
    }
}

async fn load(client: &async_nats::Client, req: &LoadRequest) -> Reply<LoadReply> {
    request(client, subject::monitor_load("m", "t"), req).await
}

async fn unload(client: &async_nats::Client, deployment: &str) -> Reply<UnloadReply> {
    request(
        client,
        subject::monitor_unload("m", "t"),
        &UnloadRequest {
            deployment: deployment.into(),
            requester: "t".into(),
            force: false,
        },
    )
    .await
}

/// Every event of `deployment` in `TM_EVENTS`.
async fn events_of(js: &jetstream::Context, deployment: &str) -> Vec<Event> {
    let mut stream = js
        .get_stream(bus_schema::store::EVENTS_STREAM)
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(msg) = stream.get_raw_message(seq).await {
            let e: Event = bus_schema::decode(&msg.payload).unwrap();
            if e.deployment == deployment {
                out.push(e);
            }
        }
    }
    out
}

/// Waits (bounded) until `check` holds on the windows of `deployment`.
async fn windows_until(
    js: &jetstream::Context,
    deployment: &str,
    what: &str,
    check: impl Fn(&[ResultWindow]) -> bool,
) -> Vec<ResultWindow> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let held: Vec<ResultWindow> = harness::stream_windows(js, deployment)
            .await
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        if check(&held) {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} windows of {deployment}",
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Load, unload and load again with the same id, seconds apart (well
/// inside the results stream's duplicate window): the two runs differ, and
/// every window of both is stored.
#[tokio::test]
async fn a_reloaded_deployment_id_loses_no_window_of_either_run() {
    let Bed {
        nats: _nats,
        client,
        js,
        monitor,
    } = Bed::start(&config("", "recorded-pace"), capture(3000)).await;
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let req = load_req("pc", "packet-count", &sha, Some(200));
    let mut runs = Vec::new();
    for round in 0..2 {
        let reply = load(&client, &req).await.into_result().unwrap();
        assert!(!reply.run.is_empty());
        let run = reply.run.clone();
        windows_until(&js, "pc", "three periodic windows", |ws| {
            ws.iter().filter(|w| w.run == run && !w.last).count() >= 3
        })
        .await;
        let fin = unload(&client, "pc").await.into_result().unwrap();
        assert_eq!(fin.final_results.run, run, "round {round}");
        runs.push((run, fin.final_results.seq));
    }
    assert_ne!(runs[0].0, runs[1].0, "two loads of one id share a run");
    let held = windows_until(&js, "pc", "both final windows", |ws| {
        ws.iter().filter(|w| w.last).count() == 2
    })
    .await;
    for (run, last_seq) in &runs {
        let seqs: Vec<u64> = held
            .iter()
            .filter(|w| &w.run == run)
            .map(|w| w.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=*last_seq).collect::<Vec<_>>(),
            "run {run}: every window once, in order\n{}",
            monitor.log()
        );
    }
    // Events carry the run too: each run has its own `loaded`.
    let events = events_of(&js, "pc").await;
    for (run, _) in &runs {
        assert_eq!(
            events
                .iter()
                .filter(|e| &e.run == run && e.kind == EventKind::Loaded)
                .count(),
            1
        );
    }
}

/// An analyzer whose results are a 2 MiB MessagePack binary: more than the
/// bus's max payload (1 MiB).
fn oversized_analyzer() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (memory (export "memory") 64)
          (global $bump (mut i32) (i32.const 4096))
          (data (i32.const 65536) "\c6\00\20\00\00")
          (func (export "tm_abi_version") (result i32) (i32.const 1))
          (func (export "tm_alloc") (param $n i32) (result i32) (local $p i32)
            (local.set $p (global.get $bump))
            (global.set $bump (i32.add (global.get $bump) (local.get $n)))
            (local.get $p))
          (func (export "tm_init") (param i32 i32) (result i32) (i32.const 0))
          (func (export "tm_on_packets") (param i32 i32 i32) (result i32) (i32.const 0))
          (func (export "tm_tick") (param i64) (result i32) (i32.const 0))
          (func (export "tm_configure") (param i32 i32) (result i32) (i32.const 0))
          (func (export "tm_collect") (result i64) (i64.const 0x0001000000200005))
          (func (export "tm_last_error") (result i64) (i64.const 0)))"#,
    )
    .unwrap()
}

/// One deployment's windows too large for the bus: refused with a typed
/// error and a `too_large` event, while another deployment's windows keep
/// flowing; params too large to publish are refused at load.
#[tokio::test]
async fn an_oversized_window_holds_no_other_deployment() {
    let Bed {
        nats: _nats,
        client,
        js,
        monitor,
    } = Bed::start(&config("", "recorded-pace"), capture(3000)).await;
    let pc = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let big = put_blob(&js, "big", &oversized_analyzer()).await;

    // A 1 MB label could never be published with the deployment's
    // snapshots and windows: refused at load, naming the sizes.
    let mut huge = load_req("huge", "packet-count", &pc, Some(200));
    huge.params = Value::Map(vec![("label".into(), "x".repeat(1_000_000).into())]);
    let e = match load(&client, &huge).await {
        Reply::Err(e) => e,
        Reply::Ok(r) => panic!("a 1 MB label loaded: {r:?}"),
    };
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(e.message.contains("params take"), "{e}");

    load(&client, &load_req("big", "big", &big, Some(200)))
        .await
        .into_result()
        .unwrap();
    load(&client, &load_req("pc", "packet-count", &pc, Some(200)))
        .await
        .into_result()
        .unwrap();
    // packet-count's windows keep coming while every window of `big` is
    // refused.
    windows_until(&js, "pc", "ten windows of pc", |ws| ws.len() >= 10).await;
    let st = monitor
        .wait_status(&client, "windows of big refused", |st| {
            st.outbox.too_large >= 3
        })
        .await;
    assert!(st.outbox.queued < 50, "the outbox holds {:?}", st.outbox);
    // A collect of `big` answers at once with a typed error.
    let started = Instant::now();
    let reply: Reply<ResultWindow> = request(
        &client,
        subject::monitor_collect("m", "t"),
        &CollectRequest {
            deployment: "big".into(),
        },
    )
    .await;
    match reply {
        Reply::Err(e) => {
            assert_eq!(e.code, ErrorCode::ResourceLimit);
            assert!(e.message.contains("max payload"), "{e}");
        }
        Reply::Ok(_) => panic!("a 2 MiB collect reply went through"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let events = events_of(&js, "big").await;
    let too_large: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::TooLarge)
        .collect();
    assert!(!too_large.is_empty(), "no too_large event: {events:?}");
    assert!(too_large[0].message.contains("max payload"));
    // Both unload (big's reply without its results), and pc's final
    // window is stored.
    let _ = unload(&client, "big").await;
    let fin = unload(&client, "pc").await.into_result().unwrap();
    windows_until(&js, "pc", "pc's final window", |ws| {
        ws.iter().any(|w| w.last && w.seq == fin.final_results.seq)
    })
    .await;
    assert!(harness::stream_windows(&js, "big").await.is_empty());
}

/// nats-server frozen for 5 s against a 1 MiB outbox while windows of
/// ~100 KB are made every 100 ms: the oldest periodic windows are shed
/// and counted (in the windows, status, and a `shed` event), the outbox
/// stays within its bound, and the final window is stored.
#[tokio::test]
async fn a_long_outage_sheds_periodic_windows_and_keeps_the_final_one() {
    let Bed {
        nats,
        client,
        js,
        monitor,
    } = Bed::start(
        &config("[limits]\noutbox_mb = 1", "recorded-pace"),
        capture(3000),
    )
    .await;
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let mut req = load_req("pc", "packet-count", &sha, Some(100));
    // by_label repeats the label: ~100 KB a window.
    req.params = Value::Map(vec![("label".into(), "x".repeat(50_000).into())]);
    load(&client, &req).await.into_result().unwrap();
    windows_until(&js, "pc", "a first window", |ws| !ws.is_empty()).await;
    nats.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.resume();
    let st = monitor
        .wait_status(&client, "the outbox drained after shedding", |st| {
            st.outbox.queued == 0 && st.outbox.shed_windows > 0
        })
        .await;
    assert_eq!(st.outbox.limit_bytes, 1 << 20);
    assert!(st.deployments[0].stats.shed_windows > 0);
    let fin = unload(&client, "pc").await.into_result().unwrap();
    let held = windows_until(&js, "pc", "the final window", |ws| {
        ws.iter().any(|w| w.last)
    })
    .await;
    let last = held.iter().find(|w| w.last).unwrap();
    assert_eq!(last.seq, fin.final_results.seq);
    assert!(last.stats.shed_windows > 0);
    // What was stored plus what was shed is every window made.
    assert_eq!(
        held.len() as u64 + last.stats.shed_windows,
        last.seq,
        "stored + shed = made\n{}",
        monitor.log()
    );
    let seqs: Vec<u64> = held.iter().map(|w| w.seq).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "in order: {seqs:?}");
    let events = events_of(&js, "pc").await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Shed),
        "no shed event: {events:?}"
    );
    assert!(monitor.log().contains("outbox full: shed"));
}

/// SIGTERM with nats-server gone: the monitor stops within its
/// `stop_timeout_ms`, spools the final window, and the next start
/// publishes it (and does not bring back the unloaded deployment).
#[tokio::test]
async fn a_stop_with_the_bus_gone_ends_on_time_and_spools() {
    let dir = capture(300);
    std::fs::create_dir(dir.path().join("spool")).unwrap();
    let Bed {
        mut nats,
        client,
        js,
        mut monitor,
    } = Bed::start(
        &config("spool_dir = \"spool\"\nstop_timeout_ms = 2000", "instant"),
        dir,
    )
    .await;
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    load(&client, &load_req("pc", "packet-count", &sha, None))
        .await
        .into_result()
        .unwrap();
    monitor
        .wait_status(&client, "the replay analysed", |st| {
            st.deployments[0].stats.packets_in == 300
        })
        .await;
    nats.kill();
    let stopping = Instant::now();
    monitor.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = monitor.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM with stop_timeout_ms = 2000:\n{}",
            monitor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}\n{}", monitor.log());
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let spool = monitor.dir.path().join("spool/outbox.spool");
    assert!(spool.is_file(), "no spool:\n{}", monitor.log());
    assert!(monitor.log().contains("spooled for the next start"));

    nats.restart().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    monitor.start_again(&client).await;
    let held = windows_until(&js, "pc", "the spooled final window", |ws| {
        ws.iter().any(|w| w.last)
    })
    .await;
    let last = held.iter().find(|w| w.last).unwrap();
    assert_eq!(common::u(&last.results, "packets"), 300);
    let events = events_of(&js, "pc").await;
    assert!(events.iter().any(|e| e.kind == EventKind::Unloaded));
    let st = monitor.status(&client).await;
    assert!(
        st.deployments.is_empty(),
        "the unloaded deployment came back: {:?}",
        st.deployments
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool.exists() {
        assert!(
            Instant::now() < deadline,
            "spool not removed once delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A guest that runs into its deadline with a collect and an unload
/// queued behind its batches: both are answered at once, from the last
/// good results, not after the 30 s a command waits for a deployment.
#[tokio::test]
async fn a_failing_guest_answers_the_commands_queued_behind_it() {
    let Bed {
        nats: _nats,
        client,
        js,
        monitor,
    } = Bed::start(
        &config(
            "[limits]\ncall_timeout_ms = 3000\nqueue_batches = 1000\nbatch_packets = 1",
            "recorded-pace",
        ),
        capture(3000),
    )
    .await;
    let spin = put_blob(&js, "spinner", &wat_analyzer(1, "(loop (br 0))")).await;
    load(&client, &load_req("spin", "spinner", &spin, None))
        .await
        .into_result()
        .unwrap();
    // The first batch is spinning; these queue behind it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let collect = {
        let client = client.clone();
        tokio::spawn(async move {
            request::<_, ResultWindow>(
                &client,
                subject::monitor_collect("m", "t"),
                &CollectRequest {
                    deployment: "spin".into(),
                },
            )
            .await
        })
    };
    let unload = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            unload(&client, "spin").await
        })
    };
    let collected = collect.await.unwrap().into_result().unwrap();
    let unloaded = unload.await.unwrap().into_result().unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "answered after {took:?}\n{}",
        monitor.log()
    );
    assert_eq!(collected.deployment, "spin");
    assert!(unloaded.final_results.last);
    let st = monitor.status(&client).await;
    assert!(st.deployments.is_empty());
}

/// Periodic windows keep their pace on a link replayed in a loop to an
/// analyzer slower than the replay (its queue is never empty, and drops):
/// at 200 ms, at least half of the windows due in 4 s are made.
#[tokio::test]
async fn timers_fire_on_a_busy_link() {
    let Bed {
        nats: _nats,
        client,
        js,
        monitor: _monitor,
    } = Bed::start(&config("", "loop"), capture(2000)).await;
    let busy = wat_analyzer(
        1,
        "(i32.store (i32.const 8) (i32.const 3000000))
         (block $done (loop $again
           (br_if $done (i32.eqz (i32.load (i32.const 8))))
           (i32.store (i32.const 8) (i32.sub (i32.load (i32.const 8)) (i32.const 1)))
           (br $again)))",
    );
    let sha = put_blob(&js, "busy", &busy).await;
    load(&client, &load_req("busy", "busy", &sha, Some(200)))
        .await
        .into_result()
        .unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fin = unload(&client, "busy").await.into_result().unwrap();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let due = elapsed_ms / 200;
    let stats = &fin.final_results.stats;
    assert!(stats.packets_in > 2000, "the loop ran: {stats:?}");
    assert!(
        fin.final_results.seq * 2 >= due,
        "{} windows in {elapsed_ms} ms (due: {due})",
        fin.final_results.seq
    );
}

/// A capture that turns corrupt half way: the link fails, and says so in
/// an event to its deployment, in status, in the metrics (state `failed`,
/// not just down) and in the next load's reply.
#[tokio::test]
async fn a_link_that_fails_says_so_where_operators_look() {
    let dir = capture(100);
    // A record header claiming 4 GB follows the 100 good packets.
    let mut bytes = std::fs::read(dir.path().join("l.pcap")).unwrap();
    bytes.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0xff, 0xff, 0xff, 0xf0, 0xff, 0xff, 0xff,
    ]);
    std::fs::write(dir.path().join("l.pcap"), bytes).unwrap();
    let addr = harness::metrics::free_addr();
    let Bed {
        nats: _nats,
        client,
        js,
        monitor,
    } = Bed::start(
        &config(&format!("metrics_listen = \"{addr}\""), "recorded-pace"),
        dir,
    )
    .await;
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let first = load(&client, &load_req("pc", "packet-count", &sha, None))
        .await
        .into_result()
        .unwrap();
    assert!(first.not_capturing.is_empty(), "{first:?}");
    let st = monitor
        .wait_status(&client, "the link failed", |st| {
            st.links[0].state == bus_schema::LinkState::Failed
        })
        .await;
    let error = st.links[0].last_error.clone().expect("the link's error");
    assert_eq!(st.deployments[0].stats.packets_in, 100);
    // The event, to the deployment on the link.
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let events = events_of(&js, "pc").await;
        if let Some(e) = events.into_iter().find(|e| e.kind == EventKind::LinkFailed) {
            break e;
        }
        assert!(Instant::now() < deadline, "no link_failed event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(common::u(&event.data, "link"), 0);
    assert!(
        event.message.contains(&error),
        "{} vs {error}",
        event.message
    );
    // The metrics tell failed from finished.
    let (code, body) = tokio::task::spawn_blocking(move || harness::metrics::get(addr, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("tm_monitor_link_state{link=\"0\",state=\"failed\"} 1"),
        "{body}"
    );
    assert!(body.contains("tm_monitor_link_state{link=\"0\",state=\"finished\"} 0"));
    // A later load is told its link is not capturing, and why.
    let second = load(&client, &load_req("pc2", "packet-count", &sha, None))
        .await
        .into_result()
        .unwrap();
    assert_eq!(second.not_capturing.len(), 1);
    assert_eq!(second.not_capturing[0].state, bus_schema::LinkState::Failed);
    assert_eq!(
        second.not_capturing[0].error.as_deref(),
        Some(error.as_str())
    );
    assert!(monitor.log().contains("link failed"));
}

/// The blob's `tm-kind` and `tm-abi` are checked at load: an app is not
/// run as an analyzer, nor a module declared for another ABI; the digest
/// in the request may be given in either case.
#[tokio::test]
async fn blob_kind_and_abi_are_checked_at_load() {
    let Bed {
        nats: _nats,
        client,
        js,
        monitor: _monitor,
    } = Bed::start(&config("", "instant"), capture(10)).await;
    let bytes = wasm("packet-count");
    let app = harness::put_module(
        &js,
        "as-app",
        bus_schema::store::BlobKind::MgmtApp,
        &bytes,
        1,
    )
    .await;
    let e = match load(&client, &load_req("a", "as-app", &app, None)).await {
        Reply::Err(e) => e,
        Reply::Ok(r) => panic!("a mgmt-app blob loaded as an analyzer: {r:?}"),
    };
    assert_eq!(e.code, ErrorCode::BadModule);
    assert!(e.message.contains("tm-kind \"mgmt-app\""), "{e}");

    // The same module declared for ABI 2.
    let sha = put_blob(&js, "abi2", &bytes).await;
    // The metadata rewritten as a client without an object-metadata API
    // does it (docs/bus.md): the info, as JSON, published again on its
    // subject with a rollup. ("YWJpMg==" is "abi2" in base64url.)
    let objects = bus_schema::nats::open_blobs(&js, 1).await.unwrap();
    let mut info = objects.info("abi2").await.unwrap();
    info.metadata
        .insert(bus_schema::store::meta_key::ABI.into(), "2".into());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    js.publish_with_headers(
        "$O.tm_blobs.M.YWJpMg==",
        headers,
        serde_json::to_vec(&info).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(objects.info("abi2").await.unwrap().metadata["tm-abi"], "2");
    let e = match load(&client, &load_req("b", "abi2", &sha, None)).await {
        Reply::Err(e) => e,
        Reply::Ok(r) => panic!("a blob declared for ABI 2 loaded: {r:?}"),
    };
    assert_eq!(e.code, ErrorCode::AbiMismatch);
    assert!(e.message.contains("tm-abi = \"2\""), "{e}");

    let pc = put_blob(&js, "packet-count", &bytes).await;
    load(
        &client,
        &load_req("c", "packet-count", &pc.to_ascii_uppercase(), None),
    )
    .await
    .into_result()
    .unwrap();
}

/// JetStream's store full (a 4 MiB store): commands still answer, the
/// outbox stays within its 1 MiB by shedding, and the store's refusal
/// shows in status, in the metrics and in the log.
#[tokio::test]
async fn a_full_jetstream_store_is_bounded_and_visible() {
    let nats = NatsServer::start_with_conf("jetstream {\n  max_file_store: 4MB\n}\n")
        .await
        .unwrap();
    let addr = harness::metrics::free_addr();
    let Bed {
        nats: _nats,
        client,
        js,
        monitor,
    } = Bed::on(
        nats,
        &config(
            &format!("metrics_listen = \"{addr}\"\n[limits]\noutbox_mb = 1"),
            "recorded-pace",
        ),
        capture(6000),
    )
    .await;
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let mut req = load_req("pc", "packet-count", &sha, Some(100));
    req.params = Value::Map(vec![("label".into(), "x".repeat(50_000).into())]);
    load(&client, &req).await.into_result().unwrap();
    let st = monitor
        .wait_status(
            &client,
            "the store refusing and the outbox shedding",
            |st| st.outbox.last_error.is_some() && st.outbox.shed_windows > 0,
        )
        .await;
    assert!(
        st.outbox.queued_bytes <= st.outbox.limit_bytes,
        "{:?}",
        st.outbox
    );
    assert!(st.outbox.last_error_unix_ms > 0);
    let refusal = st.outbox.last_error.clone().unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || harness::metrics::get(addr, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("tm_monitor_outbox_refused 1"), "{body}");
    assert!(
        body.contains("tm_monitor_outbox_shed_windows_total"),
        "{body}"
    );
    assert!(
        monitor.log().contains("the bus refuses messages"),
        "{refusal}\n{}",
        monitor.log()
    );
    // Commands keep answering: the deployment unloads with its figures.
    let fin = unload(&client, "pc").await.into_result().unwrap();
    assert!(fin.final_results.stats.shed_windows > 0);
}

/// 200 links replayed instantly into five light analyzers: the queues see
/// a small batch from every link at once, which must not count as a full
/// queue — nothing is dropped when the analyzers keep up.
#[tokio::test]
async fn two_hundred_instant_links_drop_nothing_into_idle_analyzers() {
    let dir = tempfile::tempdir().unwrap();
    let frames = pcapgen::mixed(3, 1_764_000_000_000_000_000);
    write_pcap(&dir.path().join("l.pcap"), linktype::ETHERNET, &frames).unwrap();
    let mut config = String::from("address = \"10.9.9.9\"\n");
    for id in 0..200 {
        config.push_str(&format!(
            "[[link]]\nid = {id}\npcap = \"l.pcap\"\nreplay = \"instant\"\nreplay_waits_for = 5\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
        ));
    }
    let Bed {
        nats: _nats,
        client,
        js,
        monitor,
    } = Bed::start(&config, dir).await;
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    for d in 0..5 {
        let mut req = load_req(&format!("pc{d}"), "packet-count", &sha, None);
        req.links = vec![];
        load(&client, &req).await.into_result().unwrap();
    }
    let total = frames.len() as u64 * 200;
    let st = monitor
        .wait_status(&client, "every replay over", |st| {
            st.links
                .iter()
                .all(|l| l.state == bus_schema::LinkState::Finished)
                && st
                    .deployments
                    .iter()
                    .all(|d| d.stats.packets_in + d.stats.dropped == total)
        })
        .await;
    for d in &st.deployments {
        assert_eq!(
            (d.stats.packets_in, d.stats.dropped),
            (total, 0),
            "{}",
            d.deployment
        );
    }
}
