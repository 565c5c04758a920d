//! Captures of every link type captures commonly carry, replayed by a real
//! monitor: each link counts what tcpdump counts in its file, and
//! flow-stats finds each file's flow with every packet of it. A header
//! with FCS bits in its link-type field reads as Ethernet (as libpcap
//! reads it), and an unknown link type is counted, its packets non-IP.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::{
    BlobRef, CollectRequest, Filter, LinkState, LoadReply, LoadRequest, ResultWindow, Value,
    subject,
};
use common::{MonitorProc, put_blob, request, wasm};
use etherparse::PacketBuilder;
use harness::NatsServer;
use pcapgen::{Frame, linktype as lt, write_pcap};

const PACKETS: u64 = 25;

/// A TCP (IPv4) or UDP (IPv6) packet of the flow with source port `sport`.
fn ip(v6: bool, sport: u16, i: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let payload = vec![i as u8; 10 + i as usize];
    if v6 {
        let a = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let b = "2001:db8::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        PacketBuilder::ipv6(a, b, 64)
            .udp(sport, 53)
            .write(&mut out, &payload)
            .unwrap();
    } else {
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(sport, 80, 1, 65535)
            .write(&mut out, &payload)
            .unwrap();
    }
    out
}

/// What tcpdump counts in `path` (`tcpdump --count -r`: "N packets").
fn tcpdump_count(path: &Path) -> u64 {
    let out = std::process::Command::new("tcpdump")
        .args(["--count", "-r"])
        .arg(path)
        .output()
        .expect("tcpdump (xtask/setup.sh installs it)");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tcpdump -r {}: {said}",
        path.display()
    );
    said.lines()
        .find_map(|l| l.strip_suffix(" packets")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count from tcpdump: {said}"))
}

struct Case {
    name: &'static str,
    header_linktype: u32,
    v6: bool,
    frame: fn(&[u8]) -> Vec<u8>,
}

#[tokio::test]
async fn captures_of_common_link_types_count_as_tcpdump_and_give_their_flows() {
    let cases: Vec<Case> = vec![
        Case {
            name: "ethernet",
            header_linktype: lt::ETHERNET,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::ETHERNET, p),
        },
        // FCS length 3 (×16 bits) and the FCS-present bit: libpcap masks them.
        Case {
            name: "ethernet+fcs-bits",
            header_linktype: 0x3000_0001,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::ETHERNET, p),
        },
        Case {
            name: "ethernet+fcs-flag",
            header_linktype: 0x0400_0001,
            v6: true,
            frame: |p| pcapgen::frame_ip(lt::ETHERNET, p),
        },
        Case {
            name: "vlan",
            header_linktype: lt::ETHERNET,
            v6: false,
            frame: |p| pcapgen::ethernet_vlan_mpls(&[7], &[], p),
        },
        Case {
            name: "qinq",
            header_linktype: lt::ETHERNET,
            v6: true,
            frame: |p| pcapgen::ethernet_vlan_mpls(&[10, 20], &[], p),
        },
        Case {
            name: "mpls",
            header_linktype: lt::ETHERNET,
            v6: false,
            frame: |p| pcapgen::ethernet_vlan_mpls(&[], &[100, 200], p),
        },
        Case {
            name: "raw",
            header_linktype: lt::RAW,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::RAW, p),
        },
        Case {
            name: "ipv4",
            header_linktype: lt::IPV4,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::IPV4, p),
        },
        Case {
            name: "ipv6",
            header_linktype: lt::IPV6,
            v6: true,
            frame: |p| pcapgen::frame_ip(lt::IPV6, p),
        },
        Case {
            name: "null",
            header_linktype: lt::NULL,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::NULL, p),
        },
        Case {
            name: "loop",
            header_linktype: lt::LOOP,
            v6: true,
            frame: |p| pcapgen::frame_ip(lt::LOOP, p),
        },
        Case {
            name: "ppp",
            header_linktype: lt::PPP,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::PPP, p),
        },
        Case {
            name: "ppp-hdlc",
            header_linktype: lt::PPP_HDLC,
            v6: true,
            frame: |p| pcapgen::frame_ip(lt::PPP_HDLC, p),
        },
        Case {
            name: "pppoe",
            header_linktype: lt::PPP_ETHER,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::PPP_ETHER, p),
        },
        Case {
            name: "cisco-hdlc",
            header_linktype: lt::C_HDLC,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::C_HDLC, p),
        },
        Case {
            name: "802.11",
            header_linktype: lt::IEEE802_11,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::IEEE802_11, p),
        },
        Case {
            name: "radiotap",
            header_linktype: lt::IEEE802_11_RADIOTAP,
            v6: true,
            frame: |p| pcapgen::frame_ip(lt::IEEE802_11_RADIOTAP, p),
        },
        Case {
            name: "sll",
            header_linktype: lt::LINUX_SLL,
            v6: false,
            frame: |p| pcapgen::frame_ip(lt::LINUX_SLL, p),
        },
        Case {
            name: "sll2",
            header_linktype: lt::LINUX_SLL2,
            v6: true,
            frame: |p| pcapgen::frame_ip(lt::LINUX_SLL2, p),
        },
    ];
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from("address = \"10.9.9.9\"\n");
    let link = |id: usize, file: &str| {
        format!(
            "[[link]]\nid = {id}\npcap = \"{file}\"\nreplay_waits_for = 1\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
        )
    };
    let mut expected_counts = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let sport = 1000 + i as u16;
        let frames: Vec<Frame> = (0..PACKETS)
            .map(|n| Frame {
                ts_ns: 1_764_000_000_000_000_000 + n * 1_000_000,
                data: (case.frame)(&ip(case.v6, sport, n)),
                wire_len: None,
            })
            .collect();
        let file = format!("{}.pcap", case.name);
        write_pcap(&dir.path().join(&file), case.header_linktype, &frames).unwrap();
        let counted = tcpdump_count(&dir.path().join(&file));
        assert_eq!(counted, PACKETS, "tcpdump reads {}", case.name);
        expected_counts.push(counted);
        config.push_str(&link(i, &file));
    }
    // A link type nothing here parses (LINKTYPE_USER0): counted, non-IP.
    let other = cases.len();
    let frames: Vec<Frame> = (0..PACKETS)
        .map(|n| Frame {
            ts_ns: 1_764_000_000_000_000_000 + n,
            data: ip(false, 999, n),
            wire_len: None,
        })
        .collect();
    write_pcap(&dir.path().join("user0.pcap"), 147, &frames).unwrap();
    let user0 = tcpdump_count(&dir.path().join("user0.pcap"));
    config.push_str(&link(other, "user0.pcap"));

    let monitor = MonitorProc::start_in(&nats, &client, "m", &config, dir).await;
    let sha = put_blob(&js, "flow-stats", &wasm("flow-stats")).await;
    let _: LoadReply = request(
        &client,
        subject::monitor_load("m", "t"),
        &LoadRequest {
            deployment: "flows".into(),
            analyzer: BlobRef {
                name: "flow-stats".into(),
                sha256: sha,
            },
            params: Value::Map(vec![("top_n".into(), 100.into())]),
            filter: Filter::default(),
            links: vec![],
            owner: "t".into(),
            report_every_ms: None,
        },
    )
    .await
    .into_result()
    .unwrap();
    let st = monitor
        .wait_status(&client, "every replay over", |st| {
            st.links.iter().all(|l| l.state != LinkState::Running)
        })
        .await;
    for (i, case) in cases.iter().enumerate() {
        let l = &st.links[i];
        assert_eq!(
            l.state,
            LinkState::Finished,
            "{}: {:?}",
            case.name,
            l.last_error
        );
        assert_eq!(l.packets, expected_counts[i], "{} packets", case.name);
        assert_eq!(l.parse_errors, 0, "{} parse errors", case.name);
    }
    let u = &st.links[other];
    assert_eq!((u.state, u.packets), (LinkState::Finished, user0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w: ResultWindow = request(
        &client,
        subject::monitor_collect("m", "t"),
        &CollectRequest {
            deployment: "flows".into(),
        },
    )
    .await
    .into_result()
    .unwrap();
    let top = w.results["top"].as_array().unwrap().clone();
    let field = |f: &Value, k: &str| common::field(f, k).clone();
    for (i, case) in cases.iter().enumerate() {
        let sport = 1000 + i as u64;
        let flow = top
            .iter()
            .find(|f| field(f, "sport").as_u64() == Some(sport))
            .unwrap_or_else(|| panic!("{}: no flow with source port {sport}", case.name));
        assert_eq!(
            field(flow, "packets").as_u64(),
            Some(PACKETS),
            "{}",
            case.name
        );
        assert_eq!(
            field(flow, "dport").as_u64(),
            Some(if case.v6 { 53 } else { 80 }),
            "{}",
            case.name
        );
    }
    assert_eq!(common::u(&w.results, "non_ip_packets"), user0);
}
