//! tm-monitor end to end: a real process, a real nats-server, real analyzer
//! modules and generated pcaps.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::{
    BlobRef, CollectRequest, ConfigureReply, ConfigureRequest, DeploymentState, ErrorCode, Event,
    EventKind, Filter, LinkState, LoadReply, LoadRequest, PortRange, Reply, ResultWindow,
    UnloadReply, UnloadRequest, Value, subject,
};
use common::{
    MonitorProc, field, kv_until, put_blob, request, request_raw, wasm, wat_analyzer, wat_module,
};
use futures::StreamExt;
use harness::NatsServer;
use pcapgen::{Frame, count, ip_proto, linktype, mixed, write_pcap};

const ROUNDS: usize = 400;

fn link_config(id: u32, pcap: &std::path::Path, replay: &str) -> String {
    format!(
        "[[link]]\nid = {id}\npcap = \"{}\"\nreplay = \"{replay}\"\nfrom_router = \"10.0.{id}.1\"\nto_router = \"10.0.{id}.2\"\n",
        pcap.display()
    )
}

struct Setup {
    nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    monitor: MonitorProc,
    frames: Vec<Frame>,
    sha: String,
}

/// A monitor "m1" with two replayed links (0 and 1) holding the same mix,
/// and the packet-count analyzer in the object store. Link 0 is replayed
/// with `replay0`, link 1 instantly.
async fn setup(extra: &str, replay0: &str) -> Setup {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let dir = tempfile::tempdir().unwrap();
    let frames = mixed(ROUNDS, 1_764_000_000_000_000_000);
    let (p0, p1) = (dir.path().join("l0.pcap"), dir.path().join("l1.pcap"));
    // Link 0's copy is spaced 3 ms apart: paced, it lasts ≈2.7 s, long
    // enough for the tests that act while it runs, even on a busy machine.
    let spaced: Vec<Frame> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Frame {
            ts_ns: frames[0].ts_ns + i as u64 * 3_000_000,
            ..f.clone()
        })
        .collect();
    write_pcap(&p0, linktype::ETHERNET, &spaced).unwrap();
    write_pcap(&p1, linktype::ETHERNET, &frames).unwrap();
    let config = format!(
        "address = \"10.9.9.9\"\n{extra}\n{}{}",
        link_config(0, &p0, replay0),
        link_config(1, &p1, "instant")
    );
    let monitor = MonitorProc::start_in(&nats, &client, "m1", &config, dir).await;
    Setup {
        nats,
        client,
        js,
        monitor,
        frames,
        sha,
    }
}

impl Setup {
    async fn load(&self, req: &LoadRequest) -> Reply<LoadReply> {
        request(&self.client, subject::monitor_load("m1", &req.owner), req).await
    }

    async fn configure(
        &self,
        deployment: &str,
        requester: &str,
        params: Value,
    ) -> Reply<ConfigureReply> {
        let req = ConfigureRequest {
            deployment: deployment.into(),
            requester: requester.into(),
            params,
            force: false,
        };
        request(
            &self.client,
            subject::monitor_configure("m1", requester),
            &req,
        )
        .await
    }

    /// Puts a module in the object store and returns a request loading it
    /// as `deployment` on link 0, without params.
    async fn module_request(&self, deployment: &str, name: &str, module: &[u8]) -> LoadRequest {
        let sha = put_blob(&self.js, name, module).await;
        LoadRequest {
            analyzer: BlobRef {
                name: name.into(),
                sha256: sha.clone(),
            },
            params: Value::Nil,
            ..load_req(deployment, &sha, vec![0], Filter::default())
        }
    }

    async fn unload(&self, deployment: &str, requester: &str) -> Reply<UnloadReply> {
        let req = UnloadRequest {
            deployment: deployment.into(),
            requester: requester.into(),
            force: false,
        };
        request(&self.client, subject::monitor_unload("m1", requester), &req).await
    }
}

fn load_req(deployment: &str, sha: &str, links: Vec<u32>, filter: Filter) -> LoadRequest {
    LoadRequest {
        deployment: deployment.into(),
        analyzer: BlobRef {
            name: "packet-count".into(),
            sha256: sha.into(),
        },
        params: Value::Map(vec![("label".into(), "first".into())]),
        filter,
        links,
        owner: "mgr-a".into(),
        report_every_ms: None,
    }
}

async fn collect(s: &Setup, deployment: &str) -> ResultWindow {
    request::<_, ResultWindow>(
        &s.client,
        subject::monitor_collect("m1", "mgr-a"),
        &CollectRequest {
            deployment: deployment.into(),
        },
    )
    .await
    .into_result()
    .unwrap()
}

fn error_of<T: std::fmt::Debug>(reply: Reply<T>) -> bus_schema::ErrorBody {
    match reply {
        Reply::Err(e) => e,
        Reply::Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// S2–S7 on one monitor: load with a filter, the replay's exact figures,
/// configure without losing counts, collect, unload with final results.
#[tokio::test]
async fn load_collect_configure_unload_give_exact_figures() {
    let s = setup("", "instant").await;
    let tcp_only = Filter {
        protocols: vec![6],
        dst_ports: vec![PortRange { from: 80, to: 80 }],
        ..Filter::default()
    };
    let reply: LoadReply = s
        .load(&load_req("d1", &s.sha, vec![0], tcp_only))
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        (
            reply.monitor.as_str(),
            reply.links.as_slice(),
            reply.abi_version
        ),
        ("m1", &[0u32][..], 1)
    );

    let (tcp_packets, tcp_bytes) = count(&s.frames, |f| ip_proto(f) == 6);
    let status = s
        .monitor
        .wait_status(&s.client, "link 0 replayed and d1 fed", |st| {
            st.links
                .iter()
                .any(|l| l.link.id == 0 && l.state == LinkState::Finished)
                && st
                    .deployments
                    .iter()
                    .any(|d| d.stats.packets_in == tcp_packets)
        })
        .await;
    let link0 = status.links.iter().find(|l| l.link.id == 0).unwrap();
    let (all_packets, all_bytes) = count(&s.frames, |_| true);
    assert_eq!(
        (link0.packets, link0.bytes, link0.parse_errors),
        (all_packets, all_bytes, 0)
    );
    assert_eq!(
        link0.link.source,
        format!("pcap:{}", s.monitor.dir.path().join("l0.pcap").display())
    );
    // Link 1 has no deployment, so its replay has not started.
    let link1 = status.links.iter().find(|l| l.link.id == 1).unwrap();
    assert_eq!((link1.packets, link1.state), (0, LinkState::Running));

    let w = collect(&s, "d1").await;
    assert_eq!(field(&w.results, "packets").as_u64(), Some(tcp_packets));
    assert_eq!(field(&w.results, "bytes").as_u64(), Some(tcp_bytes));
    assert_eq!(field(&w.results, "label").as_str(), Some("first"));
    assert_eq!(
        (w.stats.packets_in, w.stats.bytes_in, w.stats.dropped),
        (tcp_packets, tcp_bytes, 0)
    );
    assert!(w.stats.guest_calls > 0);

    // configure: new label, counts kept.
    let conf: ConfigureReply = s
        .configure(
            "d1",
            "mgr-a",
            Value::Map(vec![("label".into(), "second".into())]),
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(conf.config_revision, 1);
    let w = collect(&s, "d1").await;
    assert_eq!(field(&w.results, "label").as_str(), Some("second"));
    assert_eq!(field(&w.results, "packets").as_u64(), Some(tcp_packets));

    // Refused params leave the old ones in place.
    let bad = s
        .configure(
            "d1",
            "mgr-a",
            Value::Map(vec![("lable".into(), "typo".into())]),
        )
        .await;
    let e = error_of(bad);
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(e.message.contains("lable"), "{e}");

    // Only the owner unloads.
    let e = error_of(s.unload("d1", "mgr-b").await);
    assert_eq!(e.code, ErrorCode::NotOwner);

    let unloaded: UnloadReply = s.unload("d1", "mgr-a").await.into_result().unwrap();
    let fin = unloaded.final_results;
    assert!(fin.last);
    assert_eq!(fin.seq, 1);
    assert_eq!(field(&fin.results, "packets").as_u64(), Some(tcp_packets));
    assert_eq!(field(&fin.results, "label").as_str(), Some("second"));
    assert!(s.monitor.status(&s.client).await.deployments.is_empty());

    // The final window reached the results stream, once (the outbox
    // publishes it beside the reply, not before it: wait, bounded).
    let stream =
        s.js.get_stream(bus_schema::store::RESULTS_STREAM)
            .await
            .unwrap();
    let mut last = None;
    for _ in 0..200 {
        match stream
            .get_last_raw_message_by_subject(&subject::results("m1", "d1"))
            .await
        {
            Ok(msg) => {
                last = Some(msg);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let msg = last.expect("the final window in the results stream within 10 s");
    let published: ResultWindow = bus_schema::decode(&msg.payload).unwrap();
    assert_eq!(published, fin);
}

/// Every malformed or impossible request gets a typed error naming the cause;
/// the monitor is discoverable through the NATS service API.
#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let s = setup("", "instant").await;
    let info = s
        .client
        .request("$SRV.INFO.tm-monitor", "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["name"], "tm-monitor");
    assert_eq!(info["metadata"]["monitor"], "m1");
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(
        subjects.contains(&subject::monitor_load("m1", "*").as_str()),
        "{subjects:?}"
    );
    assert_eq!(subjects.len(), 6);
    let sub = |c: &str| match c {
        "load" => subject::monitor_load("m1", "mgr-a"),
        "collect" => subject::monitor_collect("m1", "mgr-a"),
        "unload" => subject::monitor_unload("m1", "mgr-a"),
        "configure" => subject::monitor_configure("m1", "mgr-a"),
        "upgrade" => subject::monitor_upgrade("m1", "mgr-a"),
        _ => subject::monitor_status("m1", "mgr-a"),
    };
    for command in [
        "load",
        "collect",
        "unload",
        "configure",
        "upgrade",
        "status",
    ] {
        let e =
            error_of(request_raw::<Value>(&s.client, sub(command), vec![0xc1, 0xff, 0x00]).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{command}: {e}");
        assert!(e.message.contains("cannot decode"), "{command}: {e}");
    }
    let e = error_of(
        request::<_, ResultWindow>(
            &s.client,
            sub("collect"),
            &CollectRequest {
                deployment: "nope".into(),
            },
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::UnknownDeployment);
    assert!(e.message.contains("\"nope\""), "{e}");

    let cases: Vec<(LoadRequest, ErrorCode, &str)> = vec![
        (
            load_req("d2", &"0".repeat(64), vec![0], Filter::default()),
            ErrorCode::DigestMismatch,
            "asked for 0000",
        ),
        (
            LoadRequest {
                analyzer: BlobRef {
                    name: "missing".into(),
                    sha256: s.sha.clone(),
                },
                ..load_req("d2", &s.sha, vec![0], Filter::default())
            },
            ErrorCode::BlobNotFound,
            "\"missing\"",
        ),
        (
            load_req("d2", &s.sha, vec![7], Filter::default()),
            ErrorCode::UnknownLink,
            "links[0] = 7",
        ),
        (
            load_req(
                "d2",
                &s.sha,
                vec![0],
                Filter {
                    src: vec!["10.0.0.0/33".into()],
                    ..Filter::default()
                },
            ),
            ErrorCode::BadFilter,
            "filter.src[0]",
        ),
        (
            load_req(
                "d2",
                &s.sha,
                vec![0],
                Filter {
                    bpf: Some("tcp port".into()),
                    ..Filter::default()
                },
            ),
            ErrorCode::BadFilter,
            "filter.bpf",
        ),
        (
            load_req("bad.id", &s.sha, vec![0], Filter::default()),
            ErrorCode::BadRequest,
            "deployment = \"bad.id\"",
        ),
        (
            LoadRequest {
                params: Value::Map(vec![("label".into(), Value::from(5))]),
                ..load_req("d2", &s.sha, vec![0], Filter::default())
            },
            ErrorCode::BadParams,
            "bad params",
        ),
    ];
    for (req, code, needle) in cases {
        let e = error_of(request::<_, LoadReply>(&s.client, sub("load"), &req).await);
        assert_eq!(e.code, code, "{req:?}: {e}");
        assert!(e.message.contains(needle), "expected {needle:?} in {e}");
    }

    // A duplicate id is refused; the first keeps running.
    let ok: Reply<LoadReply> = request(
        &s.client,
        sub("load"),
        &load_req("d3", &s.sha, vec![1], Filter::default()),
    )
    .await;
    ok.into_result().unwrap();
    let e = error_of(
        request::<_, LoadReply>(
            &s.client,
            sub("load"),
            &load_req("d3", &s.sha, vec![1], Filter::default()),
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::DeploymentExists);
    let st = s.monitor.status(&s.client).await;
    assert_eq!(st.deployments.len(), 1);
    assert_eq!(st.deployments[0].state, DeploymentState::Running);
}

/// Host imports called with out-of-bounds pointers and huge lengths answer
/// with error codes (the guest reports them in its results); a missing
/// export is refused at load; the guest keeps running.
#[tokio::test]
async fn hostile_import_calls_get_error_codes_and_missing_exports_are_refused() {
    let s = setup("", "instant").await;
    // Stores emit's return codes for a pointer past memory, a huge length
    // and a value with a byte after it (nil, then 0) at 32, 33 and 34,
    // behind an array marker at 31; collect returns [c1, c2, c3].
    let prober = wat_module(
        1,
        "(i32.store8 (i32.const 31) (i32.const 0x93)) \
         (i32.store8 (i32.const 32) (call $emit (i32.const -16) (i32.const 100))) \
         (i32.store8 (i32.const 33) (call $emit (i32.const 16) (i32.const 0x7fffffff))) \
         (i32.store8 (i32.const 34) (call $emit (i32.const 16) (i32.const 2))) \
         (call $log (i32.const 0) (i32.const -16) (i32.const 100)) \
         (call $log (i32.const 0) (i32.const 16) (i32.const 0x7fffffff))",
        "(i64.const 0x0000001f00000004)",
        true,
    );
    let req = s.module_request("probe", "prober", &prober).await;
    s.load(&req).await.into_result().unwrap();
    let (all, _) = count(&s.frames, |_| true);
    let st = s
        .monitor
        .wait_status(&s.client, "prober fed", |st| {
            st.deployments[0].stats.packets_in == all
        })
        .await;
    assert_eq!(st.deployments[0].state, DeploymentState::Running);
    let w = collect(&s, "probe").await;
    assert_eq!(
        w.results,
        Value::Array(vec![Value::from(2), Value::from(2), Value::from(2)]),
        "emit refuses what collect would refuse"
    );

    let no_collect = wat_module(1, "", "", false);
    let req = s.module_request("x", "incomplete", &no_collect).await;
    let e = error_of(s.load(&req).await);
    assert_eq!(e.code, ErrorCode::BadModule);
    assert!(e.message.contains("lacks the export tm_collect"), "{e}");
    let req = s
        .module_request("y", "garbage", b"\0asm\x01\0\0\0garbage")
        .await;
    let e = error_of(s.load(&req).await);
    assert_eq!(e.code, ErrorCode::BadModule);
    assert!(e.message.contains("not a valid WebAssembly module"), "{e}");
}

/// A guest that traps, one that spins forever and one that speaks another
/// ABI: each is contained, reported, and the other deployment carries on.
#[tokio::test]
async fn traps_and_limits_unload_only_the_guilty_deployment() {
    // Paced (≈2.7 s of traffic), so every deployment sees the replay.
    let s = setup("[limits]\ncall_timeout_ms = 200\n", "recorded-pace").await;
    let mut events = s.client.subscribe(subject::events_all()).await.unwrap();
    s.client.flush().await.unwrap();
    let trap_sha = put_blob(&s.js, "trapper", &wat_analyzer(1, "unreachable")).await;
    let spin_sha = put_blob(&s.js, "spinner", &wat_analyzer(1, "(loop (br 0))")).await;
    let abi2_sha = put_blob(&s.js, "abi2", &wat_analyzer(2, "")).await;
    let deep_sha = put_blob(
        &s.js,
        "deep",
        &wat_analyzer(1, "(drop (call $deep (i32.const 0)))"),
    )
    .await;
    // Grows memory far past the 64 MiB cap, then traps when refused.
    let hog_sha = put_blob(
        &s.js,
        "hog",
        &wat_analyzer(
            1,
            "(if (i32.lt_s (memory.grow (i32.const 2000)) (i32.const 0)) (then unreachable))",
        ),
    )
    .await;

    let req = |d: &str, name: &str, sha: &str| LoadRequest {
        analyzer: BlobRef {
            name: name.into(),
            sha256: sha.into(),
        },
        params: Value::Nil,
        ..load_req(d, sha, vec![0], Filter::default())
    };
    let e = error_of(s.load(&req("x", "abi2", &abi2_sha)).await);
    assert_eq!(e.code, ErrorCode::AbiMismatch);
    assert!(e.message.contains("ABI v2"), "{e}");

    // The healthy one first: it starts the replay and sees every packet.
    s.load(&load_req("good", &s.sha, vec![0], Filter::default()))
        .await
        .into_result()
        .unwrap();
    for (d, name, sha) in [
        ("trap", "trapper", &trap_sha),
        ("spin", "spinner", &spin_sha),
        ("hog", "hog", &hog_sha),
        ("deep", "deep", &deep_sha),
    ] {
        s.load(&req(d, name, sha)).await.into_result().unwrap();
    }
    let (all, _) = count(&s.frames, |_| true);
    let st = s
        .monitor
        .wait_status(&s.client, "both bad guests failed, good one fed", |st| {
            let state = |id: &str| {
                st.deployments
                    .iter()
                    .find(|d| d.deployment == id)
                    .map(|d| d.state)
            };
            state("trap") == Some(DeploymentState::Failed)
                && state("spin") == Some(DeploymentState::Failed)
                && state("hog") == Some(DeploymentState::Failed)
                && state("deep") == Some(DeploymentState::Failed)
                && st
                    .deployments
                    .iter()
                    .any(|d| d.deployment == "good" && d.stats.packets_in == all)
        })
        .await;
    let err_of = |id: &str| {
        st.deployments
            .iter()
            .find(|d| d.deployment == id)
            .unwrap()
            .last_error
            .clone()
            .unwrap()
    };
    assert!(
        err_of("trap").contains("tm_on_packets trapped"),
        "{}",
        err_of("trap")
    );
    assert!(
        err_of("spin").contains("longer than 200 ms"),
        "{}",
        err_of("spin")
    );
    let hog = err_of("hog");
    assert!(hog.contains("memory limit of 67108864 bytes"), "{hog}");
    let deep = err_of("deep");
    assert!(deep.contains("call stack exhausted"), "{deep}");

    // Failed events were published for each.
    let mut failed = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while failed.len() < 4 {
        let msg = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("failed events")
            .unwrap();
        let ev: Event = bus_schema::decode(&msg.payload).unwrap();
        if ev.kind == EventKind::Failed {
            failed.insert(ev.deployment.clone(), ev.message);
        }
    }
    assert!(
        ["trap", "spin", "hog", "deep"]
            .iter()
            .all(|d| failed.contains_key(*d)),
        "{failed:?}"
    );

    // A failed deployment still answers collect (last good results) and unload.
    let w = collect(&s, "trap").await;
    assert_eq!(w.results, Value::Nil);
    let e = error_of(s.configure("spin", "mgr-a", Value::Nil).await);
    assert_eq!(e.code, ErrorCode::GuestTrap);
    let u: UnloadReply = s.unload("trap", "mgr-a").await.into_result().unwrap();
    assert!(u.final_results.last);
    let w = collect(&s, "good").await;
    assert_eq!(field(&w.results, "packets").as_u64(), Some(all));
}

/// SIGTERM unloads every deployment, publishes its final results and
/// removes the liveness record.
#[tokio::test]
async fn sigterm_publishes_final_results_and_leaves() {
    let mut s = setup("", "instant").await;
    let kv =
        s.js.get_key_value(bus_schema::store::MONITORS_BUCKET)
            .await
            .unwrap();
    // The liveness record is there.
    let record = kv_until(&kv, "m1", |v| v.is_some()).await.flatten();
    let rec: bus_schema::MonitorRecord =
        bus_schema::decode(&record.expect("liveness record")).unwrap();
    assert_eq!((rec.address.as_str(), rec.links.len()), ("10.9.9.9", 2));

    s.load(&load_req("d1", &s.sha, vec![1], Filter::default()))
        .await
        .into_result()
        .unwrap();
    let (all, _) = count(&s.frames, |_| true);
    s.monitor
        .wait_status(&s.client, "replay done", |st| {
            st.deployments.iter().any(|d| d.stats.packets_in == all)
        })
        .await;
    s.monitor.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let st = s.monitor.child.wait().unwrap();
        (st, s.monitor)
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}\n{}",
        status.0,
        status.1.log()
    );
    let stream =
        s.js.get_stream(bus_schema::store::RESULTS_STREAM)
            .await
            .unwrap();
    let msg = stream
        .get_last_raw_message_by_subject(&subject::results("m1", "d1"))
        .await
        .unwrap();
    let w: ResultWindow = bus_schema::decode(&msg.payload).unwrap();
    assert!(w.last);
    assert_eq!(field(&w.results, "packets").as_u64(), Some(all));
    assert!(
        kv.get("m1").await.unwrap().is_none(),
        "liveness record left behind"
    );
    drop(s.nats);
}

/// A deliberately slow analyzer (3M loop iterations per call) loaded
/// behind a two-batch queue of four-packet batches on link 0, replayed as
/// `replay`; returns the setup and how many packets the capture holds.
async fn slow_analyzer_behind_a_tiny_queue(replay: &str) -> (Setup, u64) {
    let s = setup("[limits]\nqueue_batches = 2\nbatch_packets = 4\n", replay).await;
    let slow = wat_analyzer(
        1,
        "(local $i i32) (loop (local.set $i (i32.add (local.get $i) (i32.const 1))) \
         (br_if 0 (i32.lt_u (local.get $i) (i32.const 3000000))))",
    );
    let req = s.module_request("slow", "slow", &slow).await;
    s.load(&req).await.into_result().unwrap();
    let (all, _) = count(&s.frames, |_| true);
    (s, all)
}

/// A lossless replay waits for the slow analyzer: it sees every packet.
#[tokio::test]
async fn a_lossless_replay_waits_for_a_slow_analyzer() {
    let (s, all) = slow_analyzer_behind_a_tiny_queue("lossless").await;
    let st = s
        .monitor
        .wait_status(&s.client, "every packet analyzed", |st| {
            st.links[0].state == LinkState::Finished && st.deployments[0].stats.packets_in == all
        })
        .await;
    assert_eq!(st.deployments[0].stats.dropped, 0, "{st:#?}");
    assert_eq!(st.links[0].packets, all);
}

/// An instant replay (like live capture) never waits for it: every packet
/// is either analyzed or counted as dropped.
#[tokio::test]
async fn a_slow_analyzer_drops_and_counts_instead_of_blocking_capture() {
    let (s, all) = slow_analyzer_behind_a_tiny_queue("instant").await;
    let st = s
        .monitor
        .wait_status(&s.client, "every packet analyzed or dropped", |st| {
            let d = &st.deployments[0].stats;
            st.links[0].state == LinkState::Finished && d.packets_in + d.dropped == all
        })
        .await;
    let d = &st.deployments[0].stats;
    assert!(d.dropped > 0, "nothing dropped: {d:?}");
    assert!(d.packets_in > 0, "nothing analyzed: {d:?}");
    assert_eq!(st.links[0].packets, all, "capture must see every packet");
}

/// Packet and byte counts of a pcap as capinfos and tcpdump report them.
fn reference_counts(path: &std::path::Path) -> (u64, u64, u64) {
    let out = std::process::Command::new("capinfos")
        .args(["-T", "-r", "-M", "-c", "-d"])
        .arg(path)
        .output()
        .expect("capinfos (wireshark-common) is installed by xtask/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let cols: Vec<&str> = text.trim().split('\t').collect();
    let tcpdump = std::process::Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(path)
        .output()
        .expect("tcpdump is installed by xtask/setup.sh");
    let lines = String::from_utf8_lossy(&tcpdump.stdout).lines().count() as u64;
    (cols[1].parse().unwrap(), cols[2].parse().unwrap(), lines)
}

/// A replay through the counting guest gives exactly what capinfos and
/// tcpdump report for the same file; configure mid-run (paced replay)
/// switches the label without losing a packet: before + after = total.
#[tokio::test]
async fn replay_matches_reference_tools_and_configure_loses_nothing() {
    let s = setup("", "recorded-pace").await;
    let load = |d: &str, link| LoadRequest {
        params: Value::Map(vec![("label".into(), "before".into())]),
        ..load_req(d, &s.sha, vec![link], Filter::default())
    };
    for (d, link) in [("paced", 0), ("instant", 1)] {
        s.load(&load(d, link)).await.into_result().unwrap();
    }
    let (packets, bytes, lines) = reference_counts(&s.monitor.dir.path().join("l1.pcap"));
    assert_eq!(packets, lines);
    // Once the paced replay (≈2.7 s) is under way, switch the label.
    let st = s
        .monitor
        .wait_status(&s.client, "paced replay under way", |st| {
            st.deployments
                .iter()
                .any(|d| d.deployment == "paced" && d.stats.packets_in > 50)
        })
        .await;
    assert_eq!(
        st.links[0].state,
        LinkState::Running,
        "the paced replay ended too soon"
    );
    s.configure(
        "paced",
        "mgr-a",
        Value::Map(vec![("label".into(), "after".into())]),
    )
    .await
    .into_result()
    .unwrap();
    s.monitor
        .wait_status(&s.client, "both replays done", |st| {
            st.links.iter().all(|l| l.state == LinkState::Finished)
                && st.deployments.iter().all(|d| d.stats.packets_in == packets)
        })
        .await;
    let w = collect(&s, "instant").await;
    assert_eq!(field(&w.results, "packets").as_u64(), Some(packets));
    assert_eq!(field(&w.results, "bytes").as_u64(), Some(bytes));
    let w = collect(&s, "paced").await;
    let by_label = field(&w.results, "by_label");
    let before = field(by_label, "before").as_u64().unwrap();
    let after = field(by_label, "after").as_u64().unwrap();
    assert!(
        before > 0 && after > 0,
        "configure did not land mid-run: {before} + {after}"
    );
    assert_eq!(before + after, packets);
    assert_eq!(field(&w.results, "bytes").as_u64(), Some(bytes));
}

/// kill -9 mid-run and a restart: the deployment comes back by itself, and
/// its results include what was snapshotted before the kill.
#[tokio::test]
async fn a_crashed_monitor_recovers_its_deployments_from_snapshots() {
    let mut s = setup("[limits]\nsnapshot_ms = 100\n", "recorded-pace").await;
    let kv =
        s.js.get_key_value(bus_schema::store::SNAPSHOTS_BUCKET)
            .await
            .unwrap();
    let key = bus_schema::store::snapshot_key("m1", "d1");
    let load = LoadRequest {
        params: Value::Map(vec![("label".into(), "first".into())]),
        ..load_req("d1", &s.sha, vec![0], Filter::default())
    };
    s.load(&load).await.into_result().unwrap();
    // A configure before the crash must survive it too.
    s.configure(
        "d1",
        "mgr-a",
        Value::Map(vec![("label".into(), "second".into())]),
    )
    .await
    .into_result()
    .unwrap();
    // Wait for a snapshot taken mid-replay.
    let (all, all_bytes) = count(&s.frames, |_| true);
    let decode = |v: &[u8]| bus_schema::decode::<bus_schema::DeploymentSnapshot>(v).unwrap();
    let mid_run = |v: Option<&[u8]>| {
        v.map(decode)
            .is_some_and(|s| s.stats.packets_in > 100 && !s.state.is_nil())
    };
    let saved = kv_until(&kv, &key, mid_run)
        .await
        .flatten()
        .map(|v| decode(&v))
        .expect("a snapshot with packets");
    assert!(
        saved.stats.packets_in < all,
        "the replay ended before the crash"
    );
    // The SDK saves `{"tm_state_version": 1, "state": the analyzer's}`.
    let saved_state = saved.state.to_value().unwrap();
    assert_eq!(field(&saved_state, "tm_state_version").as_u64(), Some(1));
    let state = field(&saved_state, "state");
    let saved_packets = field(state, "packets").as_u64().unwrap();
    assert_eq!(saved.config_revision, 1);

    s.monitor.crash_and_restart(&s.client).await;

    // Back by itself; the replay starts over, so the count ends at the saved
    // packets plus one whole replay.
    let st = s
        .monitor
        .wait_status(&s.client, "recovered deployment fed again", |st| {
            st.links[0].state == LinkState::Finished
                && st
                    .deployments
                    .iter()
                    .any(|d| d.deployment == "d1" && d.stats.packets_in >= all)
        })
        .await;
    let d = st
        .deployments
        .iter()
        .find(|d| d.deployment == "d1")
        .unwrap();
    assert_eq!(
        (d.state, d.owner.as_str(), d.config_revision),
        (DeploymentState::Running, "mgr-a", 1)
    );
    let w = collect(&s, "d1").await;
    assert_eq!(
        field(&w.results, "packets").as_u64(),
        Some(saved_packets + all),
        "{}",
        s.monitor.log()
    );
    assert_eq!(field(&w.results, "label").as_str(), Some("second"));
    let saved_bytes = field(state, "bytes").as_u64().unwrap();
    assert_eq!(
        field(&w.results, "bytes").as_u64(),
        Some(saved_bytes + all_bytes)
    );

    // Unload removes the snapshot, so a later restart brings nothing back.
    s.unload("d1", "mgr-a").await.into_result().unwrap();
    let gone = kv_until(&kv, &key, |v| v.is_none()).await;
    assert!(gone.is_some(), "snapshot left after unload");
    s.monitor.crash_and_restart(&s.client).await;
    assert!(s.monitor.status(&s.client).await.deployments.is_empty());
}

/// A recovered deployment numbers its windows on from the last one the
/// results stream holds, not from its snapshot: the windows published
/// after the snapshot was saved keep their seqs, and those after the
/// restart are stored, none dropped as a duplicate of an earlier one.
#[tokio::test]
async fn a_recovered_deployment_numbers_its_windows_past_the_stored_ones() {
    // One snapshot (at the load), then windows every 100 ms.
    let mut s = setup("[limits]\nsnapshot_ms = 600000\n", "recorded-pace").await;
    let load = LoadRequest {
        report_every_ms: Some(100),
        ..load_req("d1", &s.sha, vec![0], Filter::default())
    };
    s.load(&load).await.into_result().unwrap();
    let stream =
        s.js.get_stream(bus_schema::store::RESULTS_STREAM)
            .await
            .unwrap();
    let last_stored = || async {
        stream
            .get_last_raw_message_by_subject(&subject::results("m1", "d1"))
            .await
            .ok()
            .map(|m| bus_schema::decode::<ResultWindow>(&m.payload).unwrap())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        match last_stored().await {
            Some(w) if w.seq >= 5 => break w,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no 5 windows in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    s.monitor.crash_and_restart(&s.client).await;
    s.monitor
        .wait_status(&s.client, "d1 recovered", |st| {
            st.deployments.iter().any(|d| d.deployment == "d1")
        })
        .await;
    // The recovered deployment's numbering starts past every stored window.
    let w = collect(&s, "d1").await;
    assert_eq!(w.run, before.run);
    assert!(w.seq >= before.seq, "{} after {} stored", w.seq, before.seq);
    // And the windows it publishes are stored: the stream's last moves on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = last_stored().await.unwrap();
        if last.seq > w.seq {
            assert_eq!(last.run, before.run);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window stored after the restart (last {}, collect said {})",
            last.seq,
            w.seq
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `replay_waits_for = 2`: the replay holds until the second deployment is
/// attached, so two analyzers loaded one after the other both see the whole
/// file.
#[tokio::test]
async fn a_replay_waits_for_its_deployments() {
    replay_waits_for_two("instant").await;
}

/// The same with a lossless replay, which waits for full queues.
#[tokio::test]
async fn a_lossless_replay_waits_for_its_deployments() {
    replay_waits_for_two("lossless").await;
}

async fn replay_waits_for_two(replay: &str) {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let dir = tempfile::tempdir().unwrap();
    let frames = mixed(ROUNDS, 1_764_000_000_000_000_000);
    let pcap = dir.path().join("l0.pcap");
    write_pcap(&pcap, linktype::ETHERNET, &frames).unwrap();
    let config = format!(
        "address = \"10.9.9.9\"\n{}replay_waits_for = 2\n",
        link_config(0, &pcap, replay)
    );
    let monitor = MonitorProc::start_in(&nats, &client, "m1", &config, dir).await;
    // The same link twice is refused: it would count every packet twice
    // (and could pass for two of the deployments the replay waits for).
    let twice = request::<_, LoadReply>(
        &client,
        subject::monitor_load("m1", "mgr-a"),
        &load_req("twice", &sha, vec![0, 0], Filter::default()),
    )
    .await;
    let e = error_of(twice);
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("links[1] = 0"), "{e}");
    let load = |d: &'static str| {
        let client = client.clone();
        let req = load_req(d, &sha, vec![0], Filter::default());
        async move { request::<_, LoadReply>(&client, subject::monitor_load("m1", "mgr-a"), &req).await }
    };
    load("first").await.into_result().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = monitor.status(&client).await;
    assert_eq!(
        s.links[0].packets, 0,
        "the replay started with one deployment"
    );
    assert_eq!(s.links[0].state, LinkState::Running);
    load("second").await.into_result().unwrap();
    let total = frames.len() as u64;
    let s = monitor
        .wait_status(&client, "both deployments saw the whole file", |s| {
            s.links[0].state == LinkState::Finished
                && s.deployments.len() == 2
                && s.deployments.iter().all(|d| d.stats.packets_in == total)
        })
        .await;
    assert_eq!(s.links[0].packets, total);
}
