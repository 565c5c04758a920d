//! A live link fanned out over capture threads (`capture_threads`,
//! PACKET_FANOUT by flow hash) analyses exactly what a link read by one
//! thread does: the same replayed traffic, captured on one interface by
//! both kinds of link at once, gives equal counts and equal packet-count
//! and flow-stats results. The traffic is tcpreplay's, between two network
//! namespaces the test creates (harness::wire); the monitor, its
//! nats-server and the test's client run in the capture namespace.

mod common;

use std::path::Path;

use async_nats::jetstream;
use bus_schema::Value;
use common::{MonitorProc, load_on, put_blob, u, wasm};
use harness::NatsServer;
use harness::wire::{self, CAPTURE_DEV, Wire};

/// TCP packets in the replayed capture and the flows they belong to.
const PACKETS: usize = 30_000;
const FLOWS: usize = 600;

#[test]
fn a_fanned_out_link_counts_and_analyses_what_one_thread_does() {
    if let Some(why) = wire::unavailable() {
        // CI installs everything (xtask/setup.sh): there a missing part is
        // a failure, not a skip.
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let wire = Wire::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("flows.pcap");
    // TCP flows in both directions with payloads of 0 to 299 bytes, then
    // UDP and ICMP.
    let payload = [0x5au8; 300];
    let mut frames: Vec<pcapgen::Frame> = (0..PACKETS)
        .map(|i| {
            let f = (i % FLOWS) as u16;
            let client = std::net::Ipv4Addr::new(10, 1, (f >> 8) as u8, f as u8);
            let server = std::net::Ipv4Addr::new(10, 2, 0, 1);
            let len = (i * 7919) % payload.len();
            let data = if (i / FLOWS).is_multiple_of(2) {
                pcapgen::tcp(
                    client,
                    server,
                    20_000 + f,
                    443,
                    i as u32,
                    "A",
                    &payload[..len],
                )
            } else {
                pcapgen::tcp(
                    server,
                    client,
                    443,
                    20_000 + f,
                    i as u32,
                    "A",
                    &payload[..len],
                )
            };
            pcapgen::Frame {
                ts_ns: 1_764_000_000_000_000_000 + i as u64 * 1000,
                data,
                wire_len: None,
            }
        })
        .collect();
    frames.extend(pcapgen::mixed(2_000, 1_764_000_100_000_000_000));
    let total = frames.len() as u64;
    pcapgen::write_pcap(&pcap, pcapgen::linktype::ETHERNET, &frames).unwrap();

    std::thread::scope(|s| {
        s.spawn(|| {
            wire.enter_capture().unwrap();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(fanned_out_vs_one_thread(&wire, &pcap, total));
        });
    });
}

async fn fanned_out_vs_one_thread(wire: &Wire, pcap: &Path, total: u64) {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    // Two links on the same interface: link 0 read by one thread, link 1
    // fanned out over two.
    let mut config = String::from("address = \"10.9.9.1\"\n");
    for (id, threads) in [(0, 1), (1, 2)] {
        config += &format!(
            "[[link]]\nid = {id}\ninterface = \"{CAPTURE_DEV}\"\ncapture_threads = {threads}\nsnaplen = 256\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
        );
    }
    let monitor = MonitorProc::start(&nats, &client, "fan", &config).await;
    let counter = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let flows = put_blob(&js, "flow-stats", &wasm("flow-stats")).await;
    let flow_params = Value::Map(vec![("top_n".into(), 10_000.into())]);
    for link in [0u32, 1] {
        for (name, sha, params) in [
            ("packet-count", &counter, Value::Nil),
            ("flow-stats", &flows, flow_params.clone()),
        ] {
            let deployment = format!("{name}-{link}");
            load_on(&client, "fan", &deployment, (name, sha), params, vec![link]).await;
        }
    }
    let quiet = monitor.status(&client).await;
    for l in &quiet.links {
        assert_eq!(l.packets, 0, "the wire is quiet before the replay: {l:?}");
    }

    let sent = tokio::task::block_in_place(|| wire.replay(pcap, Some(20_000), 1)).unwrap();
    assert_eq!(
        (sent.packets, sent.failed),
        (total, 0),
        "tcpreplay sent every packet"
    );

    let st = monitor
        .wait_status(&client, "every packet captured and analysed", |st| {
            st.links.iter().all(|l| l.packets >= total)
                && st.deployments.iter().all(|d| d.stats.packets_in >= total)
        })
        .await;
    // Exact accounting on both links: captured = sent, nothing dropped.
    for l in &st.links {
        assert_eq!(l.packets, total, "link {}: {l:?}", l.link.id);
        assert_eq!(
            (l.kernel_drops, l.interface_drops),
            (0, 0),
            "link {}",
            l.link.id
        );
    }
    for d in &st.deployments {
        assert_eq!(d.stats.packets_in, total, "{}", d.deployment);
        assert_eq!(d.stats.dropped, 0, "{}", d.deployment);
    }
    let one = &st.links[0];
    let fanned = &st.links[1];
    assert!(one.thread_packets.is_empty(), "{one:?}");
    assert_eq!(fanned.thread_packets.len(), 2, "{fanned:?}");
    assert_eq!(fanned.thread_packets.iter().sum::<u64>(), total);
    // The flow hash spreads 600 flows over both threads: neither gets
    // everything (nor nearly nothing).
    for (i, n) in fanned.thread_packets.iter().enumerate() {
        assert!(
            *n > total / 10,
            "capture thread {i} read {n} of {total} packets: {fanned:?}"
        );
    }

    for name in ["packet-count", "flow-stats"] {
        let a = collect(&client, &format!("{name}-0")).await;
        let b = collect(&client, &format!("{name}-1")).await;
        assert_eq!(u(&a, "packets"), total, "{name}");
        let (a, b) = (comparable(&a, 0), comparable(&b, 1));
        assert!(
            a == b,
            "{name}: the fanned-out link's results differ from one thread's: {}",
            differences(&a, &b)
        );
    }
    if let Some(top) = common::field(&collect(&client, "flow-stats-1").await, "top").as_array() {
        assert!(top.len() >= 2 * FLOWS, "{} flows listed", top.len());
    }
}

async fn collect(client: &async_nats::Client, deployment: &str) -> Value {
    common::collect_from(client, "fan", deployment).await
}

/// Results without what legitimately differs between the two links: the
/// link's id (a key of `links`) and the ticks of wall time.
fn comparable(v: &Value, link: u32) -> Value {
    let Some(map) = v.as_map() else {
        return v.clone();
    };
    let mut out = Vec::new();
    for (k, val) in map {
        match k.as_str() {
            Some("ticks") => {}
            Some("links") => {
                let inner = val
                    .as_map()
                    .unwrap_or_else(|| panic!("links is not a map: {val}"));
                assert_eq!(inner.len(), 1, "one link: {val}");
                let key = &inner[0].0;
                assert!(
                    key.as_u64() == Some(u64::from(link))
                        || key.as_str() == Some(link.to_string().as_str()),
                    "link {link} expected: {val}"
                );
                out.push((k.clone(), inner[0].1.clone()));
            }
            _ => out.push((k.clone(), val.clone())),
        }
    }
    Value::Map(out)
}

/// Where two results differ, for the failure message: fields, or entries
/// of an array, with both values (at most ten).
fn differences(a: &Value, b: &Value) -> String {
    let mut out = Vec::new();
    diff_into("", a, b, &mut out);
    out.truncate(10);
    out.join("\n")
}

fn diff_into(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Map(x), Value::Map(y)) if x.len() == y.len() => {
            for ((ka, va), (_, vb)) in x.iter().zip(y) {
                diff_into(&format!("{path}.{ka}"), va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff_into(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ => out.push(format!("{path}: one thread {a}, fanned out {b}")),
    }
}
