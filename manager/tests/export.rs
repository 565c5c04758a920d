//! IPFIX export to a real collector: `flow-records` on a monitor replaying
//! a generated capture at its recorded pace, `tm-export ipfix` sending to
//! `nfcapd` on loopback (stopped and started again mid-stream), and what
//! `nfdump` reads back compared with the capture's ground truth and with
//! `softflowd -r` exporting the same capture to a second `nfcapd`.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bus_schema::store::{self, BlobKind};
use common::{monitor_id, params, put_blob};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use harness::collector::{Nfcapd, terminate};
use manager::control::{Control, DeploySpec, Targets};
use pcapgen::scenarios::Session;
use pcapgen::{Frame, Timeline, linktype};

const START_NS: u64 = 1_767_225_600 * 1_000_000_000;

/// A flow as the capture has it: (src, dst, sport, dport, proto).
type Key = (IpAddr, IpAddr, u16, u16, u8);

/// What a flow's record must say: packets, IP bytes, first and last
/// packet (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Truth {
    packets: u64,
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
}

/// TCP sessions (closed with FIN, one reset), UDP flows, ICMP echoes and
/// an IPv6 UDP flow over about 12 s; no flow pauses 3 s or more.
fn capture() -> Vec<Frame> {
    let mut all = Vec::new();
    for i in 0..6u16 {
        let mut tl = Timeline::new(START_NS + u64::from(i) * 1_500_000_000, 20_000_000);
        let client = SocketAddr::new(Ipv4Addr::new(10, 1, 0, 1 + i as u8).into(), 40_000 + i);
        let server = SocketAddr::new(Ipv4Addr::new(10, 2, 0, 1).into(), 443);
        let mut s = Session::new(client, server);
        s.handshake(&mut tl, 2_000_000, 500_000);
        for k in 0..(5 + usize::from(i) * 3) {
            s.send(&mut tl, 100 + 137 * k);
            s.ack(&mut tl, 64_240);
        }
        if i == 3 {
            s.reset(&mut tl);
        } else {
            s.close(&mut tl);
        }
        all.extend(tl.frames);
    }
    for i in 0..4u8 {
        let mut tl = Timeline::new(
            START_NS + 700_000_000 + u64::from(i) * 2_000_000_000,
            500_000_000,
        );
        for k in 0..6 {
            tl.push(pcapgen::udp(
                Ipv4Addr::new(10, 3, 0, 1 + i),
                Ipv4Addr::new(10, 2, 0, 53),
                5000 + u16::from(i),
                53,
                &vec![k; 40 + 10 * usize::from(i)],
            ));
        }
        all.extend(tl.frames);
    }
    let mut tl = Timeline::new(START_NS + 3_000_000_000, 250_000_000);
    for k in 0..4u16 {
        tl.push(pcapgen::icmp_echo(
            Ipv4Addr::new(10, 4, 0, 1),
            Ipv4Addr::new(10, 2, 0, 9),
            7,
            k,
            &[0; 56],
        ));
    }
    all.extend(tl.frames);
    let mut tl = Timeline::new(START_NS + 5_000_000_000, 300_000_000);
    for k in 0..5u8 {
        tl.push(pcapgen::udp_datagram(
            SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), 6000),
            SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(), 6001),
            &[k; 200],
        ));
    }
    all.extend(tl.frames);
    all.sort_by_key(|f| f.ts_ns);
    all
}

/// Each flow's figures, read from the frames themselves.
fn ground_truth(frames: &[Frame]) -> BTreeMap<Key, Truth> {
    let mut flows: BTreeMap<Key, Truth> = BTreeMap::new();
    for f in frames {
        let p = SlicedPacket::from_ethernet(&f.data).expect("a frame of ours");
        let (src, dst, bytes) = match &p.net {
            Some(NetSlice::Ipv4(v4)) => (
                IpAddr::from(v4.header().source_addr()),
                IpAddr::from(v4.header().destination_addr()),
                u64::from(v4.header().total_len()),
            ),
            Some(NetSlice::Ipv6(v6)) => (
                IpAddr::from(v6.header().source_addr()),
                IpAddr::from(v6.header().destination_addr()),
                40 + u64::from(v6.header().payload_length()),
            ),
            _ => panic!("not IP"),
        };
        let (sport, dport, proto) = match &p.transport {
            Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port(), 6),
            Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), 17),
            Some(TransportSlice::Icmpv4(i)) => {
                (0, u16::from_be_bytes([i.type_u8(), i.code_u8()]), 1)
            }
            other => panic!("transport {other:?}"),
        };
        let ms = f.ts_ns / 1_000_000;
        let t = flows
            .entry((src, dst, sport, dport, proto))
            .or_insert(Truth {
                first_ms: ms,
                ..Truth::default()
            });
        t.packets += 1;
        t.bytes += bytes;
        t.last_ms = ms;
    }
    flows
}

/// The flows nfdump read (`Nfcapd::records`), by key: packets, bytes,
/// first and last (Unix ms), ingress interface; and how many records.
fn nfdump(records: &[serde_json::Value]) -> (BTreeMap<Key, (Truth, u64)>, usize) {
    let mut flows = BTreeMap::new();
    for r in records {
        let addr = |v4: &str, v6: &str| -> IpAddr {
            r[v4]
                .as_str()
                .or(r[v6].as_str())
                .unwrap_or_else(|| panic!("no address in {r}"))
                .parse()
                .unwrap()
        };
        let proto = r["proto"].as_u64().unwrap() as u8;
        let (sport, dport) = if proto == 1 || proto == 58 {
            let t = r["icmp_type"].as_u64().unwrap_or(0) as u16;
            let c = r["icmp_code"].as_u64().unwrap_or(0) as u16;
            (0, t << 8 | c)
        } else {
            (
                r["src_port"].as_u64().unwrap() as u16,
                r["dst_port"].as_u64().unwrap() as u16,
            )
        };
        let key = (
            addr("src4_addr", "src6_addr"),
            addr("dst4_addr", "dst6_addr"),
            sport,
            dport,
            proto,
        );
        let truth = Truth {
            packets: r["in_packets"].as_u64().unwrap(),
            bytes: r["in_bytes"].as_u64().unwrap(),
            first_ms: unix_ms(r["first"].as_str().unwrap()),
            last_ms: unix_ms(r["last"].as_str().unwrap()),
        };
        let link = r["input_snmp"].as_u64().unwrap_or(0);
        assert!(
            flows.insert(key, (truth, link)).is_none(),
            "{key:?} twice: {r}"
        );
    }
    (flows, records.len())
}

/// `2026-01-01T00:00:01.234` (UTC) as Unix ms.
fn unix_ms(text: &str) -> u64 {
    let (date, time) = text.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    (secs * 1000 + ms.parse::<i64>().unwrap()) as u64
}

fn tm_export(nats: &str, port: u16) -> Child {
    tm_export_as(nats, None, port)
}

/// `tm-export ipfix` for deployment `flows`, with `creds` if given.
fn tm_export_as(nats: &str, creds: Option<&Path>, port: u16) -> Child {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tm-export");
    let mut cmd = Command::new(bin);
    if let Some(creds) = creds {
        cmd.arg("--nats-creds").arg(creds);
    }
    cmd.args(["--nats", nats, "ipfix", "--collector"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--deployment", "flows", "--template-refresh-s", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tm-export (cargo build --bins)")
}

/// Stops the exporter and reads its summary line.
fn stop_export(mut child: Child) -> serde_json::Value {
    terminate(&mut child);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "tm-export summary: {e}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn nfdump_reads_every_flow_once_with_the_captures_figures_across_an_exporter_restart() {
    let frames = capture();
    let truth = ground_truth(&frames);
    let span_ms = (frames.last().unwrap().ts_ns - frames[0].ts_ns) / 1_000_000;

    let nats = harness::NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let dir = tempfile::tempdir().unwrap();
    pcapgen::write_pcap(&dir.path().join("l1.pcap"), linktype::ETHERNET, &frames).unwrap();
    let config = "address = \"10.9.0.1\"\n[[link]]\nid = 1\npcap = \"l1.pcap\"\n\
                  replay = \"recorded-pace\"\nreplay_waits_for = 1\n\
                  from_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n";
    let _monitor = harness::monitor::MonitorProc::start_in(
        &nats,
        &client,
        &monitor_id("10.9.0.1"),
        config,
        dir,
    )
    .await;
    put_blob(&js, "flow-records", BlobKind::Analyzer, 1).await;
    let control = Control::connect(client.clone(), "mgr", 1).await.unwrap();

    let ours = tempfile::tempdir().unwrap();
    let collector = Nfcapd::start(ours.path());
    let port = collector.port;
    let first = tm_export(&nats.url(), port);
    let deployed = control
        .deploy(&DeploySpec {
            deployment: "flows".into(),
            analyzer: "flow-records".into(),
            sha256: None,
            params: params(serde_json::json!({"idle_timeout_s": 3, "closed_timeout_s": 1})),
            filter: Default::default(),
            targets: Targets::All,
            report_every_ms: Some(300),
        })
        .await
        .unwrap();
    assert_eq!(deployed.placed.len(), 1, "{:?}", deployed.failed);
    let began = Instant::now();

    // Stopped mid-stream: it has sent some flows and more are to come.
    tokio::time::sleep(Duration::from_millis(span_ms / 2)).await;
    let before = stop_export(first);
    assert!(before["records"].as_u64().unwrap() > 0, "{before}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = tm_export(&nats.url(), port);

    // After the replay, the unload ends the flows still open.
    tokio::time::sleep(Duration::from_millis(span_ms + 1000).saturating_sub(began.elapsed())).await;
    control.unload("flows", false).await.unwrap();
    caught_up(&js, Duration::from_secs(20)).await;
    let after = stop_export(second);

    let sent = before["records"].as_u64().unwrap() + after["records"].as_u64().unwrap();
    assert_eq!(sent, truth.len() as u64, "{before} {after}");
    assert_eq!(after["gaps"], 0, "{after}");
    let (got, records) = nfdump(&collector.records());
    assert_eq!(records, truth.len(), "each flow exactly once");
    for (key, want) in &truth {
        let (have, link) = got
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} missing from nfdump"));
        assert_eq!(have, want, "{key:?}");
        assert_eq!(*link, 1, "{key:?}: ingress interface is the link id");
    }

    // softflowd exporting the same capture to its own collector: the same
    // flows with the same packets and bytes. It tracks both directions of
    // a connection as one flow and exports each direction as a record of
    // its own, with the connection's first and last packet as both
    // records' times; here each direction has its own.
    let theirs = tempfile::tempdir().unwrap();
    let collector = Nfcapd::start(theirs.path());
    let pcap = tempfile::NamedTempFile::new().unwrap();
    pcapgen::write_pcap(pcap.path(), linktype::ETHERNET, &frames).unwrap();
    collector.softflowd(pcap.path(), 8192, true);
    std::thread::sleep(Duration::from_millis(300));
    let (soft, records) = nfdump(&collector.records());
    assert_eq!(records, truth.len());
    for (key, want) in &truth {
        let (have, _) = soft
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} missing from softflowd's"));
        let (src, dst, sport, dport, proto) = *key;
        let both = truth
            .get(&(dst, src, dport, sport, proto))
            .map_or(*want, |back| Truth {
                first_ms: want.first_ms.min(back.first_ms),
                last_ms: want.last_ms.max(back.last_ms),
                ..*want
            });
        assert_eq!(*have, both, "softflowd: {key:?}");
        let ours = got[key].0;
        assert_eq!(
            (ours.packets, ours.bytes),
            (have.packets, have.bytes),
            "{key:?}"
        );
    }
}

/// Waits until the exporter's durable consumer has acknowledged every
/// window of the stream.
async fn caught_up(js: &async_nats::jetstream::Context, within: Duration) {
    let stream = js.get_stream(store::RESULTS_STREAM).await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("tm-export-ipfix").await.unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the exporter did not catch up: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A collector that is not there yet (its port answers "unreachable"): the
/// exporter keeps the windows, sends them again each second, and once
/// nfcapd listens on that port every flow arrives, once. Identities are
/// enforced: the windows come from a monitor's identity, the exporter runs
/// with a subscriber's.
#[tokio::test]
async fn windows_wait_for_a_refusing_collector_and_then_arrive_once() {
    let ids = tempfile::tempdir().unwrap();
    common::auth_init(
        ids.path(),
        &["--monitor", "10.9.0.1", "--subscriber", "exporter"],
    );
    let m1 = monitor_id("10.9.0.1");
    let nats = harness::NatsServer::start_with_auth(
        &ids.path().join("auth.conf"),
        &ids.path().join(format!("monitor-{m1}.nk")),
    )
    .await
    .unwrap();
    nats.setup_as(&ids.path().join("admin-admin.nk")).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut want = BTreeMap::new();
    for w in 1..=3u64 {
        let records: Vec<serde_json::Value> = (0..10u64)
            .map(|i| {
                let n = (w - 1) * 10 + i;
                let src = IpAddr::from(Ipv4Addr::new(10, 7, 0, 1 + n as u8));
                let start = START_NS / 1_000_000 + n * 100;
                want.insert(
                    (src, IpAddr::from(Ipv4Addr::new(10, 8, 0, 1)), 4000, 80, 6),
                    Truth { packets: 1 + n, bytes: 40 * (1 + n), first_ms: start, last_ms: start + 50 },
                );
                serde_json::json!({"seq": n + 1, "src": src.to_string(), "dst": "10.8.0.1",
                    "sport": 4000, "dport": 80, "proto": 6, "packets": 1 + n, "octets": 40 * (1 + n),
                    "start_ns": start * 1_000_000, "end_ns": (start + 50) * 1_000_000,
                    "tcp_flags": 0x12, "link": 2, "reason": 1})
            })
            .collect();
        let window = bus_schema::ResultWindow {
            monitor: m1.clone(),
            deployment: "flows".into(),
            analyzer: "flow-records".into(),
            sha256: "0".repeat(64),
            run: "r1".into(),
            seq: w,
            start_unix_ms: 0,
            end_unix_ms: 0,
            last: w == 3,
            stats: Default::default(),
            capture: vec![],
            results: params(serde_json::json!({"records": records})),
        };
        js.publish(
            bus_schema::subject::results(&m1, "flows"),
            bus_schema::encode(&window).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let port = harness::collector::free_udp_port();
    let subscriber = ids.path().join("subscriber-exporter.nk");
    let exporter = tm_export_as(&nats.url(), Some(&subscriber), port);
    // The test reads the exporter's consumer as the subscriber too.
    let reader = async_nats::jetstream::new(
        bus_schema::nats::with_credentials(async_nats::ConnectOptions::new(), &subscriber)
            .await
            .unwrap()
            .connect(nats.url())
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stream = reader.get_stream(store::RESULTS_STREAM).await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("tm-export-ipfix").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "nothing acknowledged while refused: {info:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let collector = Nfcapd::start_on(dir.path(), port);
    caught_up(&reader, Duration::from_secs(15)).await;
    let summary = stop_export(exporter);
    assert!(summary["refused"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["records"], 30, "{summary}");
    let (got, records) = nfdump(&collector.records());
    assert_eq!(records, 30, "each flow once");
    for (key, truth) in &want {
        assert_eq!(got.get(key).map(|g| g.0), Some(*truth), "{key:?}");
        assert_eq!(got[key].1, 2, "{key:?}: the link id");
    }
}
