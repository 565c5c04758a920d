//! Helpers for monitor tests: a real tm-monitor process against a harness
//! nats-server, real analyzer modules from target/wasm/, generated pcaps.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::store::{self, BlobKind};
use bus_schema::{
    BlobRef, CollectRequest, Filter, LinkState, LoadReply, LoadRequest, Reply, ResultWindow, Value,
    subject,
};
use harness::NatsServer;
use pcapgen::{Frame, linktype, write_pcap};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A field of a MessagePack map (analyzer results are maps).
pub fn field<'a>(v: &'a bus_schema::Value, key: &str) -> &'a bus_schema::Value {
    v.as_map()
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| panic!("no field {key} in {v}"))
}

/// Polls `key` (every 20 ms, at most 10 s) until `done` holds on its value;
/// returns that value, or `None` if it never did.
pub async fn kv_until(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    done: impl Fn(Option<&[u8]>) -> bool,
) -> Option<Option<bytes::Bytes>> {
    for _ in 0..500 {
        let value = kv.get(key).await.unwrap();
        if done(value.as_deref()) {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A module built by `cargo xtask guests`.
pub fn wasm(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("TM_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the guests first with `cargo xtask guests`",
            path.display()
        )
    })
}

/// Puts an analyzer into tm_blobs with its metadata; returns its SHA-256.
pub async fn put_blob(js: &jetstream::Context, name: &str, bytes: &[u8]) -> String {
    harness::put_module(js, name, BlobKind::Analyzer, bytes, 1).await
}

/// Sends a command and decodes the reply envelope.
pub async fn request<Q: Serialize, R: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    q: &Q,
) -> Reply<R> {
    let payload = bus_schema::encode(q).unwrap();
    request_raw(client, subject, payload).await
}

/// Sends raw bytes as a command and decodes the reply envelope.
pub async fn request_raw<R: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    payload: Vec<u8>,
) -> Reply<R> {
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        client.send_request(
            subject.clone(),
            async_nats::client::Request::new()
                .payload(payload.into())
                .timeout(Some(Duration::from_secs(30))),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} within 30 s"))
    .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    bus_schema::decode(&msg.payload).unwrap_or_else(|e| panic!("reply on {subject}: {e}"))
}

pub use harness::monitor::MonitorProc;

// --- running analyzers on a capture ------------------------------------

/// A numeric field of a results map.
pub fn u(v: &Value, key: &str) -> u64 {
    field(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// A nats-server and a monitor that has analyzed a capture.
pub struct Run {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub monitor: MonitorProc,
}

/// Runs analyzers on one capture: a monitor "a" with one link per analyzer, each replaying `frames` (a
/// replay starts when its first deployment attaches), and analyzer `i`
/// loaded on link `i` as a deployment of the same name; returns once every
/// replay is analyzed.
pub async fn run(frames: &[Frame], analyzers: &[(&str, Value)]) -> Run {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let dir = tempfile::tempdir().unwrap();
    write_pcap(&dir.path().join("l0.pcap"), linktype::ETHERNET, frames).unwrap();
    let mut config = String::from("address = \"10.9.9.1\"\n");
    for i in 0..analyzers.len() {
        config += &format!(
            "[[link]]\nid = {i}\npcap = \"l0.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
        );
    }
    let monitor = MonitorProc::start_in(&nats, &client, "a", &config, dir).await;
    for (i, (name, params)) in analyzers.iter().enumerate() {
        let sha = put_blob(&js, name, &wasm(name)).await;
        let _: LoadReply = request(
            &client,
            subject::monitor_load("a", "t"),
            &LoadRequest {
                deployment: (*name).into(),
                analyzer: BlobRef {
                    name: (*name).into(),
                    sha256: sha,
                },
                params: params.clone(),
                filter: Filter::default(),
                links: vec![i as u32],
                owner: "t".into(),
                report_every_ms: None,
            },
        )
        .await
        .into_result()
        .unwrap();
    }
    let total = frames.len() as u64;
    monitor
        .wait_status(&client, "replay analyzed", |st| {
            st.links.iter().all(|l| l.state == LinkState::Finished)
                && st.deployments.iter().all(|d| d.stats.packets_in == total)
        })
        .await;
    Run {
        nats,
        client,
        monitor,
    }
}

/// Collects a deployment's results from monitor "a".
pub async fn collect(r: &Run, deployment: &str) -> Value {
    collect_from(&r.client, "a", deployment).await
}

/// Collects a deployment's results from `monitor`, as requester "t".
pub async fn collect_from(client: &async_nats::Client, monitor: &str, deployment: &str) -> Value {
    let w: ResultWindow = request(
        client,
        subject::monitor_collect(monitor, "t"),
        &CollectRequest {
            deployment: deployment.into(),
        },
    )
    .await
    .into_result()
    .unwrap();
    w.results
}

/// Loads the analyzer `name` (its blob's digest `sha256`) on `monitor` as
/// deployment `deployment` on `links`, owned by "t", every packet.
pub async fn load_on(
    client: &async_nats::Client,
    monitor: &str,
    deployment: &str,
    (name, sha256): (&str, &str),
    params: Value,
    links: Vec<u32>,
) -> LoadReply {
    request(
        client,
        subject::monitor_load(monitor, "t"),
        &LoadRequest {
            deployment: deployment.into(),
            analyzer: BlobRef {
                name: name.into(),
                sha256: sha256.into(),
            },
            params,
            filter: Filter::default(),
            links,
            owner: "t".into(),
            report_every_ms: None,
        },
    )
    .await
    .into_result()
    .unwrap()
}

/// Every event of `deployment` on monitor "a" in the events stream, read
/// until none arrives for a second.
pub async fn stream_events(
    client: &async_nats::Client,
    deployment: &str,
) -> Vec<bus_schema::Event> {
    use futures::StreamExt;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(store::EVENTS_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject::events("a", deployment),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
        out.push(bus_schema::decode(&msg.unwrap().payload).unwrap());
    }
    out
}

/// A minimal ABI v1 analyzer in WAT whose `on_packets` body is given.
pub fn wat_analyzer(abi: u32, on_packets: &str) -> Vec<u8> {
    wat_module(abi, on_packets, "(i64.const 0x0000001000000001)", true)
}

/// A hand-written analyzer: it imports the host's `log` and `emit`, has a
/// recursive `$deep`, and its `tm_collect` returns `collect`; with
/// `with_collect` false the export is missing.
pub fn wat_module(abi: u32, on_packets: &str, collect: &str, with_collect: bool) -> Vec<u8> {
    let collect_fn = if with_collect {
        format!(r#"(func (export "tm_collect") (result i64) {collect})"#)
    } else {
        String::new()
    };
    wat::parse_str(format!(
        r#"(module
          (import "tm" "log" (func $log (param i32 i32 i32)))
          (import "tm" "emit" (func $emit (param i32 i32) (result i32)))
          (memory (export "memory") 16)
          (global $bump (mut i32) (i32.const 4096))
          (data (i32.const 16) "\c0")
          (data (i32.const 31) "\92\7f\7f")
          (func $deep (param i32) (result i32) (i32.add (call $deep (local.get 0)) (i32.const 1)))
          (func (export "tm_abi_version") (result i32) (i32.const {abi}))
          (func (export "tm_alloc") (param $n i32) (result i32) (local $p i32)
            (local.set $p (global.get $bump))
            (global.set $bump (i32.add (global.get $bump) (local.get $n)))
            (local.get $p))
          (func (export "tm_init") (param i32 i32) (result i32) (i32.const 0))
          (func (export "tm_on_packets") (param i32 i32 i32) (result i32) {on_packets} (i32.const 0))
          (func (export "tm_tick") (param i64) (result i32) (i32.const 0))
          (func (export "tm_configure") (param i32 i32) (result i32) (i32.const 0))
          {collect_fn}
          (func (export "tm_last_error") (result i64) (i64.const 0)))"#
    ))
    .unwrap()
}
