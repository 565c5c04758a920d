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
use common::{MonitorProc, put_blob, request, request_raw, wasm};
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
    write_pcap(&p0, linktype::ETHERNET, &frames).unwrap();
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

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| panic!("no field {key} in {v}"))
}

async fn collect(s: &Setup, deployment: &str) -> ResultWindow {
    request::<_, ResultWindow>(
        &s.client,
        subject::monitor_collect("m1"),
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
    let reply: LoadReply = request(
        &s.client,
        subject::monitor_load("m1"),
        &load_req("d1", &s.sha, vec![0], tcp_only),
    )
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
    let conf: ConfigureReply = request(
        &s.client,
        subject::monitor_configure("m1"),
        &ConfigureRequest {
            deployment: "d1".into(),
            requester: "mgr-a".into(),
            params: Value::Map(vec![("label".into(), "second".into())]),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap();
    assert_eq!(conf.config_revision, 1);
    let w = collect(&s, "d1").await;
    assert_eq!(field(&w.results, "label").as_str(), Some("second"));
    assert_eq!(field(&w.results, "packets").as_u64(), Some(tcp_packets));

    // Refused params leave the old ones in place.
    let bad = request::<_, ConfigureReply>(
        &s.client,
        subject::monitor_configure("m1"),
        &ConfigureRequest {
            deployment: "d1".into(),
            requester: "mgr-a".into(),
            params: Value::Map(vec![("lable".into(), "typo".into())]),
            force: false,
        },
    )
    .await;
    let e = error_of(bad);
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(e.message.contains("lable"), "{e}");

    // Only the owner unloads.
    let e = error_of(
        request::<_, UnloadReply>(
            &s.client,
            subject::monitor_unload("m1"),
            &UnloadRequest {
                deployment: "d1".into(),
                requester: "mgr-b".into(),
                force: false,
            },
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::NotOwner);

    let unloaded: UnloadReply = request(
        &s.client,
        subject::monitor_unload("m1"),
        &UnloadRequest {
            deployment: "d1".into(),
            requester: "mgr-a".into(),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap();
    let fin = unloaded.final_results;
    assert!(fin.last);
    assert_eq!(fin.seq, 1);
    assert_eq!(field(&fin.results, "packets").as_u64(), Some(tcp_packets));
    assert_eq!(field(&fin.results, "label").as_str(), Some("second"));
    assert!(s.monitor.status(&s.client).await.deployments.is_empty());

    // The final window reached the results stream, once.
    let stream =
        s.js.get_stream(bus_schema::store::RESULTS_STREAM)
            .await
            .unwrap();
    let msg = stream
        .get_last_raw_message_by_subject(&subject::results("m1", "d1"))
        .await
        .unwrap();
    let published: ResultWindow = bus_schema::decode(&msg.payload).unwrap();
    assert_eq!(published, fin);
}

/// Every malformed or impossible request gets a typed error naming the cause.
#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let s = setup("", "instant").await;
    let sub = |c: &str| match c {
        "load" => subject::monitor_load("m1"),
        "collect" => subject::monitor_collect("m1"),
        "unload" => subject::monitor_unload("m1"),
        "configure" => subject::monitor_configure("m1"),
        _ => subject::monitor_status("m1"),
    };
    for command in ["load", "collect", "unload", "configure", "status"] {
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

/// A minimal ABI v1 analyzer in WAT whose `on_packets` body is given.
fn wat_analyzer(abi: u32, on_packets: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (memory (export "memory") 16)
          (global $bump (mut i32) (i32.const 4096))
          (data (i32.const 16) "\c0")
          (func (export "tm_abi_version") (result i32) (i32.const {abi}))
          (func (export "tm_alloc") (param $n i32) (result i32) (local $p i32)
            (local.set $p (global.get $bump))
            (global.set $bump (i32.add (global.get $bump) (local.get $n)))
            (local.get $p))
          (func (export "tm_init") (param i32 i32) (result i32) (i32.const 0))
          (func (export "tm_on_packets") (param i32 i32 i32) (result i32) {on_packets} (i32.const 0))
          (func (export "tm_tick") (param i64) (result i32) (i32.const 0))
          (func (export "tm_configure") (param i32 i32) (result i32) (i32.const 0))
          (func (export "tm_collect") (result i64) (i64.const 0x0000001000000001))
          (func (export "tm_last_error") (result i64) (i64.const 0)))"#
    ))
    .unwrap()
}

/// A guest that traps, one that spins forever and one that speaks another
/// ABI: each is contained, reported, and the other deployment carries on.
#[tokio::test]
async fn traps_and_limits_unload_only_the_guilty_deployment() {
    // Paced (≈1.4 s of traffic), so all three deployments see the replay.
    let s = setup("[limits]\ncall_timeout_ms = 200\n", "recorded-pace").await;
    let mut events = s.client.subscribe(subject::events_all()).await.unwrap();
    s.client.flush().await.unwrap();
    let trap_sha = put_blob(&s.js, "trapper", &wat_analyzer(1, "unreachable")).await;
    let spin_sha = put_blob(&s.js, "spinner", &wat_analyzer(1, "(loop (br 0))")).await;
    let abi2_sha = put_blob(&s.js, "abi2", &wat_analyzer(2, "")).await;
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
    let e = error_of(
        request::<_, LoadReply>(
            &s.client,
            subject::monitor_load("m1"),
            &req("x", "abi2", &abi2_sha),
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::AbiMismatch);
    assert!(e.message.contains("ABI v2"), "{e}");

    // The healthy one first: it starts the replay and sees every packet.
    request::<_, LoadReply>(
        &s.client,
        subject::monitor_load("m1"),
        &load_req("good", &s.sha, vec![0], Filter::default()),
    )
    .await
    .into_result()
    .unwrap();
    for (d, name, sha) in [
        ("trap", "trapper", &trap_sha),
        ("spin", "spinner", &spin_sha),
        ("hog", "hog", &hog_sha),
    ] {
        request::<_, LoadReply>(&s.client, subject::monitor_load("m1"), &req(d, name, sha))
            .await
            .into_result()
            .unwrap();
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

    // Failed events were published for both.
    let mut failed = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while failed.len() < 3 {
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
        failed.contains_key("trap") && failed.contains_key("spin"),
        "{failed:?}"
    );

    // A failed deployment still answers collect (last good results) and unload.
    let w = collect(&s, "trap").await;
    assert_eq!(w.results, Value::Nil);
    let e = error_of(
        request::<_, ConfigureReply>(
            &s.client,
            subject::monitor_configure("m1"),
            &ConfigureRequest {
                deployment: "spin".into(),
                requester: "mgr-a".into(),
                params: Value::Nil,
                force: false,
            },
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::GuestTrap);
    let u: UnloadReply = request(
        &s.client,
        subject::monitor_unload("m1"),
        &UnloadRequest {
            deployment: "trap".into(),
            requester: "mgr-a".into(),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap();
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
    let mut record = None;
    for _ in 0..100 {
        record = kv.get("m1").await.unwrap();
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec: bus_schema::MonitorRecord =
        bus_schema::decode(&record.expect("liveness record")).unwrap();
    assert_eq!((rec.address.as_str(), rec.links.len()), ("10.9.9.9", 2));

    request::<_, LoadReply>(
        &s.client,
        subject::monitor_load("m1"),
        &load_req("d1", &s.sha, vec![1], Filter::default()),
    )
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

/// A deliberately slow analyzer behind a tiny queue: capture never waits,
/// and every packet is either analyzed or counted as dropped.
#[tokio::test]
async fn a_slow_analyzer_drops_and_counts_instead_of_blocking_capture() {
    let s = setup(
        "[limits]\nqueue_batches = 2\nbatch_packets = 4\n",
        "instant",
    )
    .await;
    let slow = wat_analyzer(
        1,
        "(local $i i32) (loop (local.set $i (i32.add (local.get $i) (i32.const 1))) \
         (br_if 0 (i32.lt_u (local.get $i) (i32.const 3000000))))",
    );
    let sha = put_blob(&s.js, "slow", &slow).await;
    let req = LoadRequest {
        analyzer: BlobRef {
            name: "slow".into(),
            sha256: sha.clone(),
        },
        params: Value::Nil,
        ..load_req("slow", &sha, vec![0], Filter::default())
    };
    request::<_, LoadReply>(&s.client, subject::monitor_load("m1"), &req)
        .await
        .into_result()
        .unwrap();
    let (all, _) = count(&s.frames, |_| true);
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
