//! The shipped analyzers run by the real monitor on generated captures:
//! exact expected figures, configure taking effect at once, and corrupted
//! captures analyzed without a trap.

mod common;

use std::time::Duration;

use bus_schema::{ConfigureReply, ConfigureRequest, DeploymentState, Value, subject};
use common::{collect, field, request, run, u};
use pcapgen::{count, mixed};

/// flow-stats gives each flow of the mix exactly, ranks by bytes, and a
/// configure of top_n shows in the very next collect.
#[tokio::test]
async fn flow_stats_gives_exact_flows_and_configure_changes_top_n() {
    let frames = mixed(400, 1_764_000_000_000_000_000);
    let params = Value::Map(vec![("top_n".into(), 2.into())]);
    let r = run(&frames, &[("flow-stats", params)]).await;
    let res = collect(&r, "flow-stats").await;
    let (all, all_bytes) = count(&frames, |_| true);
    assert_eq!((u(&res, "packets"), u(&res, "bytes")), (all, all_bytes));
    assert_eq!((u(&res, "active_flows"), u(&res, "non_ip_packets")), (3, 0));
    let top = field(&res, "top").as_array().unwrap();
    assert_eq!(top.len(), 2);
    let tcp = &top[0];
    assert_eq!(
        (
            field(tcp, "src").as_str(),
            field(tcp, "dst").as_str(),
            u(tcp, "sport"),
            u(tcp, "dport"),
            u(tcp, "proto")
        ),
        (Some("10.0.0.1"), Some("10.0.0.2"), 40000, 80, 6)
    );
    assert_eq!(
        (u(tcp, "packets"), u(tcp, "bytes"), u(tcp, "tcp_flags")),
        (400, 400 * 154, 0x18)
    );
    assert_eq!(u(tcp, "first_ns"), frames[0].ts_ns);
    let udp = &top[1];
    assert_eq!(
        (u(udp, "dport"), u(udp, "packets"), u(udp, "bytes")),
        (53, 400, 400 * 82)
    );
    let links = field(&res, "links").as_map().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(u(&links[0].1, "packets"), all);

    let _: ConfigureReply = request(
        &r.client,
        subject::monitor_configure("a", "t"),
        &ConfigureRequest {
            deployment: "flow-stats".into(),
            requester: "t".into(),
            params: Value::Map(vec![("top_n".into(), 3.into())]),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap();
    let res = collect(&r, "flow-stats").await;
    let top = field(&res, "top").as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(
        (
            u(&top[2], "proto"),
            u(&top[2], "packets"),
            u(&top[2], "bytes")
        ),
        (1, 100, 100 * 98)
    );
    assert_eq!(u(&res, "packets"), all, "configure must not reset state");
}

/// A capture with random byte errors and truncated packets is analyzed to
/// the last packet by every analyzer, without a trap.
#[tokio::test]
async fn corrupted_captures_are_analyzed_without_a_trap() {
    // The mix plus TCP sessions with handshakes, loss and a SYN flood, so
    // the sequence tracking and flood tallies see damaged packets too.
    let mut frames = mixed(300, T0);
    let mut tl = pcapgen::Timeline::new(T0 + 2_000_000_000, 100_000);
    pcapgen::scenarios::transfer(&mut tl, sa("10.1.0.1:40001"), sa("10.2.0.1:80"), 60, 5);
    pcapgen::scenarios::syn_flood(&mut tl, sa("10.2.0.9:80"), 200, 1000);
    frames.extend(tl.frames);
    pcapgen::corrupt(&mut frames, 0xdead_beef, 4);
    let names = [
        "flow-stats",
        "packet-count",
        "tcp-perf",
        "dos-detect",
        "tcp-flags",
    ];
    let analyzers: Vec<(&str, Value)> = names.iter().map(|n| (*n, Value::Nil)).collect();
    let r = run(&frames, &analyzers).await;
    let st = r.monitor.status(&r.client).await;
    for d in &st.deployments {
        assert_eq!(
            d.state,
            DeploymentState::Running,
            "{} failed: {:?}",
            d.deployment,
            d.last_error
        );
    }
    let total = frames.len() as u64;
    for name in names {
        assert_eq!(u(&collect(&r, name).await, "packets"), total, "{name}");
    }
    assert!(
        st.links[0].parse_errors > 0,
        "the corruption produced no parse errors"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

const T0: u64 = 1_764_000_000_000_000_000;

/// tcp-perf on three connections — a lossy IPv4 transfer, a clean IPv6
/// one, and one with reordering, zero windows and a reset — gives exactly
/// the generated figures, and flags the lossy one with an alert event.
#[tokio::test]
async fn tcp_perf_gives_exact_loss_figures_and_flags_the_lossy_flow() {
    use pcapgen::scenarios::{Session, SessionTruth, transfer};
    let mut tl = pcapgen::Timeline::new(T0, 100_000);
    let lossy = transfer(&mut tl, sa("10.1.0.1:40001"), sa("10.2.0.1:80"), 40, 4);
    let clean = transfer(&mut tl, sa("[fd00::1]:40002"), sa("[fd00::2]:443"), 30, 0);
    let mut s = Session::new(sa("10.1.0.3:40003"), sa("10.2.0.3:8080"));
    s.handshake(&mut tl, 1_000_000, 3_000_000);
    for _ in 0..3 {
        s.send(&mut tl, 500);
        s.send_swapped(&mut tl, 500);
        s.ack(&mut tl, 0);
    }
    s.ack(&mut tl, 1000);
    s.reset(&mut tl);
    let odd = s.truth;
    let frames = tl.frames;

    let r = run(&frames, &[("tcp-perf", Value::Nil)]).await;
    let res = collect(&r, "tcp-perf").await;
    let all = [lossy, clean, odd];
    let sum = |f: fn(&SessionTruth) -> u64| all.iter().map(f).sum::<u64>();
    assert_eq!(u(&res, "packets"), frames.len() as u64);
    assert_eq!(u(&res, "tcp_packets"), sum(|t| t.packets));
    assert_eq!(u(&res, "data_packets"), sum(|t| t.data_packets));
    assert_eq!(u(&res, "retransmissions"), sum(|t| t.retransmissions));
    assert_eq!(u(&res, "out_of_order"), sum(|t| t.out_of_order));
    assert_eq!(u(&res, "zero_windows"), sum(|t| t.zero_windows));
    assert_eq!(u(&res, "resets"), sum(|t| t.resets));
    assert_eq!(
        (lossy.retransmissions, odd.out_of_order, odd.zero_windows),
        (10, 3, 3)
    );
    let rtts: Vec<u64> = all
        .iter()
        .map(|t| (t.syn_to_synack_ns + t.synack_to_ack_ns) / 1000)
        .collect();
    let rtt = field(&res, "rtt_us");
    assert_eq!(
        (
            u(rtt, "count"),
            u(rtt, "min"),
            u(rtt, "max"),
            u(rtt, "mean")
        ),
        (
            3,
            *rtts.iter().min().unwrap(),
            *rtts.iter().max().unwrap(),
            rtts.iter().sum::<u64>() / 3
        )
    );
    let flows = field(&res, "flows").as_array().unwrap();
    assert_eq!(flows.len(), 3);
    let top = &flows[0];
    assert_eq!(
        (
            field(top, "client").as_str(),
            field(top, "server").as_str(),
            u(top, "server_port"),
            u(top, "retransmissions"),
            u(top, "data_packets"),
            u(top, "rtt_us"),
            field(top, "flagged").as_bool()
        ),
        (
            Some("10.1.0.1"),
            Some("10.2.0.1"),
            80,
            lossy.retransmissions,
            lossy.data_packets,
            rtts[0],
            Some(true)
        )
    );
    let v6 = flows
        .iter()
        .find(|f| field(f, "client").as_str() == Some("fd00::1"))
        .expect("the IPv6 connection");
    assert_eq!(
        (
            u(v6, "packets"),
            u(v6, "retransmissions"),
            field(v6, "flagged").as_bool()
        ),
        (clean.packets, 0, Some(false))
    );
    let flagged = field(&res, "flagged").as_array().unwrap();
    assert_eq!(flagged.len(), 1);
    let link = &field(&res, "links").as_map().unwrap()[0].1;
    assert_eq!(u(link, "retransmissions"), sum(|t| t.retransmissions));

    // The flag was raised as an alert event at once, naming the flow.
    let events = common::stream_events(&r.client, "tcp-perf").await;
    let alerts: Vec<_> = events
        .iter()
        .filter(|e| e.kind == bus_schema::EventKind::Alert)
        .collect();
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert_eq!(field(&alerts[0].data, "client").as_str(), Some("10.1.0.1"));
    assert_eq!(
        field(&alerts[0].data, "kind").as_str(),
        Some("tcp_retransmissions")
    );
}

/// dos-detect raises a SYN flood, a UDP flood and a port scan, each the
/// moment its threshold is crossed, and no alert for normal traffic.
#[tokio::test]
async fn dos_detect_raises_each_attack_when_its_threshold_is_crossed() {
    use pcapgen::scenarios::{port_scan, syn_flood, transfer, udp_flood};
    let mut tl = pcapgen::Timeline::new(T0 + 100_000_000, 50_000);
    transfer(&mut tl, sa("10.1.0.1:40001"), sa("10.2.0.1:80"), 100, 0);
    tl.wait(10_000_000);
    let syn_start = tl.frames.len();
    syn_flood(&mut tl, sa("10.2.0.9:80"), 1500, 10_000);
    tl.wait(10_000_000);
    let udp_start = tl.frames.len();
    udp_flood(
        &mut tl,
        sa("10.1.0.5:7777"),
        sa("10.2.0.8:53"),
        6000,
        20_000,
    );
    tl.wait(10_000_000);
    let scan_start = tl.frames.len();
    port_scan(
        &mut tl,
        sa("10.1.0.7:5555"),
        "10.2.0.1".parse().unwrap(),
        150,
        100_000,
    );
    let frames = tl.frames;
    assert!(
        frames.last().unwrap().ts_ns < T0 + 1_000_000_000,
        "all in one window"
    );

    let r = run(&frames, &[("dos-detect", Value::Nil)]).await;
    let res = collect(&r, "dos-detect").await;
    assert_eq!(u(&res, "packets"), frames.len() as u64);
    let kinds = field(&res, "by_kind");
    assert_eq!(
        (
            u(kinds, "syn_flood"),
            u(kinds, "udp_flood"),
            u(kinds, "port_scan")
        ),
        (1, 1, 1)
    );
    let alerts = field(&res, "alerts").as_array().unwrap();
    // (kind, target, the packet that crossed the threshold, final count)
    let expected = [
        ("syn_flood", "10.2.0.9", syn_start + 999, 1500),
        ("udp_flood", "10.2.0.8", udp_start + 4999, 6000),
        ("port_scan", "10.1.0.7", scan_start + 99, 150),
    ];
    for (a, (kind, target, at, count)) in alerts.iter().zip(expected) {
        assert_eq!(
            (
                field(a, "kind").as_str(),
                field(a, "target").as_str(),
                u(a, "ts_ns"),
                u(a, "count"),
                u(a, "link")
            ),
            (Some(kind), Some(target), frames[at].ts_ns, count, 0)
        );
    }
    // Each went out as an event, in order, with the crossing time.
    let events = common::stream_events(&r.client, "dos-detect").await;
    let raised: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.kind == bus_schema::EventKind::Alert)
        .map(|e| {
            (
                field(&e.data, "kind").as_str().unwrap().to_owned(),
                u(&e.data, "ts_ns"),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = expected
        .iter()
        .map(|(k, _, at, _)| ((*k).to_owned(), frames[*at].ts_ns))
        .collect();
    assert_eq!(raised, want);
}

/// The C analyzer (analyzers/c/tcp-flags.c) runs in the monitor like the
/// Rust ones: exact counts, bad params refused with its own message.
#[tokio::test]
async fn the_c_analyzer_counts_tcp_flags_exactly() {
    use pcapgen::flags::{ACK, FIN, RST, SYN};
    use pcapgen::scenarios::{Session, syn_flood, transfer};
    let mut tl = pcapgen::Timeline::new(T0, 10_000);
    transfer(&mut tl, sa("10.1.0.1:40001"), sa("10.2.0.1:80"), 20, 3);
    syn_flood(&mut tl, sa("10.2.0.9:80"), 300, 1000);
    let mut s = Session::new(sa("10.1.0.3:1"), sa("10.2.0.3:2"));
    s.handshake(&mut tl, 1000, 1000);
    s.reset(&mut tl);
    let mut frames = tl.frames;
    frames.extend(mixed(50, T0 + 1_000_000_000));
    let flags: Vec<u8> = frames.iter().filter_map(pcapgen::tcp_flags).collect();
    let n = |f: &dyn Fn(u8) -> bool| flags.iter().filter(|&&x| f(x)).count() as u64;

    let r = run(&frames, &[("tcp-flags", Value::Nil)]).await;
    let res = collect(&r, "tcp-flags").await;
    let (packets, bytes) = count(&frames, |_| true);
    assert_eq!((u(&res, "packets"), u(&res, "bytes")), (packets, bytes));
    assert_eq!(u(&res, "tcp"), flags.len() as u64);
    assert_eq!(u(&res, "syn"), n(&|f| f & (SYN | ACK) == SYN));
    assert_eq!(u(&res, "synack"), n(&|f| f & (SYN | ACK) == SYN | ACK));
    assert_eq!(u(&res, "fin"), n(&|f| f & FIN != 0));
    assert_eq!(u(&res, "rst"), n(&|f| f & RST != 0));
    assert_eq!(u(&res, "syn"), 302);

    let err = request::<_, ConfigureReply>(
        &r.client,
        subject::monitor_configure("a", "t"),
        &ConfigureRequest {
            deployment: "tcp-flags".into(),
            requester: "t".into(),
            params: Value::Map(vec![("x".into(), 1.into())]),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap_err();
    assert!(err.message.contains("takes no parameters"), "{err:?}");
}

/// A byte figure as tshark prints it ("4095 bytes", "150 kB"): exact below
/// its unit switch, rounded above. Returns (value, unit size).
fn tshark_bytes(n: &str, unit: &str) -> (u64, u64) {
    let scale = match unit {
        "bytes" => 1,
        "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => panic!("unknown tshark unit {other}"),
    };
    (n.parse::<u64>().unwrap() * scale, scale)
}

/// Every TCP and UDP conversation tshark reports (`-z conv,tcp -z
/// conv,udp`) matches flow-stats' two directional flows: frames exactly,
/// bytes exactly (or to tshark's printed precision above 10 kB).
#[tokio::test]
async fn flow_stats_agrees_with_tshark_conversations() {
    use pcapgen::scenarios::{syn_flood, transfer};
    let mut tl = pcapgen::Timeline::new(T0, 100_000);
    transfer(&mut tl, sa("10.1.0.1:40001"), sa("10.2.0.1:80"), 6, 2);
    transfer(&mut tl, sa("[fd00::1]:40002"), sa("[fd00::2]:443"), 4, 0);
    syn_flood(&mut tl, sa("10.2.0.9:80"), 40, 1000);
    let mut frames = tl.frames;
    frames.extend(mixed(40, T0 + 1_000_000_000));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conv.pcap");
    pcapgen::write_pcap(&file, pcapgen::linktype::ETHERNET, &frames).unwrap();
    let out = std::process::Command::new("tshark")
        .args(["-n", "-q", "-z", "conv,tcp", "-z", "conv,udp", "-r"])
        .arg(&file)
        .output()
        .expect("tshark is required (xtask/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();

    let params = Value::Map(vec![("top_n".into(), 10_000.into())]);
    let r = run(&frames, &[("flow-stats", params)]).await;
    let res = collect(&r, "flow-stats").await;
    let mut flows = std::collections::HashMap::new();
    for f in field(&res, "top").as_array().unwrap() {
        let end = |a: &str, p: &str| format!("{}:{}", field(f, a).as_str().unwrap(), u(f, p));
        flows.insert(
            (end("src", "sport"), end("dst", "dport"), u(f, "proto")),
            (u(f, "packets"), u(f, "bytes")),
        );
    }
    let mut proto = 0;
    let mut compared = 0;
    let mut exact = 0;
    for line in text.lines() {
        if line.starts_with("TCP Conversations") {
            proto = 6;
        } else if line.starts_with("UDP Conversations") {
            proto = 17;
        }
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 9 || t[1] != "<->" {
            continue;
        }
        // A <-> B | frames bytes unit (B to A) | frames bytes unit (A to B)
        for (from, to, frames_at) in [(t[2], t[0], 3), (t[0], t[2], 6)] {
            let frames_n: u64 = t[frames_at].parse().unwrap();
            let (bytes, scale) = tshark_bytes(t[frames_at + 1], t[frames_at + 2]);
            let ours = flows.get(&(from.to_owned(), to.to_owned(), proto)).copied();
            if frames_n == 0 {
                assert_eq!(ours, None, "{from} -> {to}: tshark saw no frames");
                continue;
            }
            let (p, b) = ours.unwrap_or_else(|| panic!("flow-stats has no {from} -> {to}"));
            assert_eq!(p, frames_n, "{from} -> {to} frames");
            if scale == 1 {
                assert_eq!(b, bytes, "{from} -> {to} bytes");
                exact += 1;
            } else {
                assert!(
                    b.abs_diff(bytes) <= scale / 2 + scale / 10,
                    "{from} -> {to}: {b} vs {bytes}"
                );
            }
            compared += 1;
        }
    }
    // 2 transfers both ways, 40 SYNs, the mix's TCP and UDP flow.
    assert_eq!(compared, 2 * 2 + 40 + 2, "{text}");
    assert!(exact > 0);
    let tcp_udp = flows.keys().filter(|k| k.2 == 6 || k.2 == 17).count();
    assert_eq!(tcp_udp, compared, "flows tshark did not report");
}
