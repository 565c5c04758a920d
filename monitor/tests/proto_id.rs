//! proto-id run by the real monitor on pcapgen's application mix
//! (`pcapgen::apps::mix`): exact figures against the generator's ground
//! truth, agreement with tshark's protocol hierarchy on the same file,
//! corrupted captures analyzed without a trap, bad params named.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use bus_schema::{
    ConfigureReply, ConfigureRequest, DeploymentState, ErrorCode, Reply, Value, subject,
};
use common::{Run, collect, field, request, run, u};
use pcapgen::apps::{Tally, mix};
use pcapgen::{Frame, linktype, write_pcap};

const START_NS: u64 = 1_764_000_000_000_000_000;

/// Every application name proto-id reports.
const APPS: [&str; 11] = [
    "http", "tls", "dns", "ssh", "quic", "smtp", "dhcp", "ntp", "icmp", "icmpv6", "unknown",
];

/// `{name: {"packets", "bytes", ["flows"]}}` as name → (packets, bytes, flows).
fn tallies(res: &Value, section: &str) -> BTreeMap<String, (u64, u64, u64)> {
    field(res, section)
        .as_map()
        .unwrap_or_else(|| panic!("{section} is not a map in {res}"))
        .iter()
        .map(|(k, v)| {
            let flows = v
                .as_map()
                .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("flows")))
                .map_or(0, |_| u(v, "flows"));
            (
                k.as_str().unwrap().to_string(),
                (u(v, "packets"), u(v, "bytes"), flows),
            )
        })
        .collect()
}

fn expected(truth: &BTreeMap<&'static str, Tally>, name: &str) -> (u64, u64, u64) {
    let t = truth.get(name).copied().unwrap_or_default();
    (t.packets, t.bytes, t.flows)
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_map()
        .unwrap_or_else(|| panic!("not a map: {v}"))
        .iter()
        .map(|(k, n)| (k.as_str().unwrap().to_string(), n.as_u64().unwrap()))
        .collect()
}

/// Every count of the results equals the generator's truth.
#[tokio::test]
async fn proto_id_gives_the_exact_mix_of_the_generated_capture() {
    let (frames, truth) = mix(START_NS);
    let r = run(&frames, &[("proto-id", Value::Nil)]).await;
    let res = collect(&r, "proto-id").await;

    assert_eq!(
        (u(&res, "packets"), u(&res, "bytes")),
        (truth.packets, truth.bytes)
    );
    let l3 = tallies(&res, "l3");
    assert_eq!(
        l3.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ipv4", "ipv6", "other"]
    );
    for (name, got) in &l3 {
        assert_eq!(*got, expected(&truth.l3, name), "l3 {name}");
    }
    let l4 = tallies(&res, "l4");
    assert_eq!(l4.len(), 5, "{l4:?}");
    for (name, got) in &l4 {
        assert_eq!(*got, expected(&truth.l4, name), "l4 {name}");
    }
    let app = tallies(&res, "app");
    let mut names: Vec<&str> = APPS.to_vec();
    names.sort_unstable();
    assert_eq!(app.keys().map(String::as_str).collect::<Vec<_>>(), names);
    for name in truth.app.keys() {
        assert!(app.contains_key(*name), "{name} missing from {app:?}");
    }
    for (name, got) in &app {
        assert_eq!(*got, expected(&truth.app, name), "app {name}");
    }
    let flows: u64 = truth.app.values().map(|t| t.flows).sum();
    assert_eq!(
        (u(&res, "active_flows"), u(&res, "refused_packets")),
        (flows, 0)
    );

    let http = field(&res, "http");
    assert_eq!(
        u(http, "requests"),
        truth.http_methods.values().sum::<u64>()
    );
    assert_eq!(u(http, "responses"), truth.http_responses);
    assert_eq!(
        counts(field(http, "methods")),
        truth
            .http_methods
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    );
    let hosts: BTreeMap<String, u64> = field(http, "hosts")
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let methods = counts(field(h, "methods"));
            assert_eq!(methods.values().sum::<u64>(), u(h, "requests"), "{h}");
            (
                field(h, "host").as_str().unwrap().to_string(),
                u(h, "requests"),
            )
        })
        .collect();
    assert_eq!(hosts, truth.http_hosts);
    assert_eq!(u(http, "untracked_requests"), 0);

    let tls = field(&res, "tls");
    assert_eq!(
        u(tls, "client_hellos"),
        truth.tls_hellos.values().sum::<u64>()
    );
    assert_eq!(
        u(tls, "server_hellos"),
        truth.tls_versions.values().sum::<u64>()
    );
    assert_eq!(u(tls, "no_sni"), 0);
    assert_eq!(counts(field(tls, "versions")), truth.tls_versions);
    let snis: BTreeMap<(String, String), u64> = field(tls, "snis")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (
                    field(s, "sni").as_str().unwrap().to_string(),
                    field(s, "version").as_str().unwrap().to_string(),
                ),
                u(s, "handshakes"),
            )
        })
        .collect();
    assert_eq!(snis, truth.tls_hellos);
}

// --- tshark ---------------------------------------------------------------

/// tshark's protocol hierarchy (`-z io,phs`): per protocol name, frames and
/// bytes of the frames that contain it, as proto-id reads packets: a
/// protocol nested inside itself (coalesced QUIC packets) counts once, and
/// what lies under a second IP header (an ICMP error quoting a packet, a
/// tunnel) does not count. `data` (payload no dissector claimed) is kept
/// only right under `tcp` or `udp`.
fn phs(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Protocol Hierarchy Statistics") {
            inside = true;
            continue;
        }
        if !inside || !line.contains("frames:") {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_string();
        let mut number = |prefix: &str| -> u64 {
            words
                .next()
                .and_then(|w| w.strip_prefix(prefix))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cannot read {prefix} in {line:?}"))
        };
        let frames = number("frames:");
        let bytes = number("bytes:");
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let is_ip = |n: &str| n == "ip" || n == "ipv6";
        let ip_layers = stack.iter().filter(|(_, n)| is_ip(n)).count() + usize::from(is_ip(&name));
        let nested = ip_layers > 1 || stack.iter().any(|(_, n)| *n == name);
        let parent = stack.last().map(|(_, n)| n.as_str());
        let keep = !nested && (name != "data" || matches!(parent, Some("tcp" | "udp")));
        if keep {
            let e = out.entry(name.clone()).or_insert((0, 0));
            e.0 += frames;
            e.1 += bytes;
        }
        stack.push((indent, name));
    }
    assert!(inside, "no protocol hierarchy in tshark's output:\n{text}");
    out
}

fn tshark_phs(frames: &[Frame]) -> BTreeMap<String, (u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mix.pcap");
    write_pcap(&path, linktype::ETHERNET, frames).unwrap();
    let bin = std::env::var("TSHARK").unwrap_or_else(|_| "tshark".into());
    let out = Command::new(&bin)
        .args(["-n", "-q", "-z", "io,phs", "-r"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "tshark is required for this test ({bin}: {e}); xtask/setup.sh installs it \
                 (Debian: apt-get install tshark)"
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    phs(&text)
}

#[test]
fn the_phs_reader_counts_nested_protocols_once() {
    let text = "\
===================================================================
Protocol Hierarchy Statistics
Filter: 

eth                                      frames:10 bytes:1000
  ip                                     frames:8 bytes:800
    udp                                  frames:5 bytes:500
      quic                               frames:3 bytes:300
        quic                             frames:1 bytes:100
      data                               frames:2 bytes:200
    icmp                                 frames:3 bytes:300
      ip                                 frames:1 bytes:100
        udp                              frames:1 bytes:100
  ipv6                                   frames:2 bytes:200
    udp                                  frames:2 bytes:200
===================================================================
";
    let p = phs(text);
    assert_eq!(p["eth"], (10, 1000));
    assert_eq!(p["ip"], (8, 800));
    assert_eq!(p["quic"], (3, 300));
    assert_eq!(p["udp"], (7, 700), "udp under icmp under ip is inside ip");
    assert_eq!(p["data"], (2, 200));
    assert_eq!(p["icmp"], (3, 300));
}

/// What a tshark protocol is in proto-id's results.
fn ours(res: &Value, tshark_name: &str) -> Option<(u64, u64)> {
    let pair = |v: &Value| (u(v, "packets"), u(v, "bytes"));
    let section = |s: &str, k: &str| pair(field(field(res, s), k));
    Some(match tshark_name {
        "eth" => (u(res, "packets"), u(res, "bytes")),
        "ip" => section("l3", "ipv4"),
        "ipv6" => section("l3", "ipv6"),
        "tcp" | "udp" => section("l4", tshark_name),
        "icmp" | "icmpv6" => {
            let l4 = section("l4", tshark_name);
            assert_eq!(l4, section("app", tshark_name), "{tshark_name}");
            l4
        }
        "http" | "tls" | "dns" | "ssh" | "quic" | "smtp" | "dhcp" | "ntp" => {
            section("app", tshark_name)
        }
        "data" => section("app", "unknown"),
        _ => return None,
    })
}

/// proto-id and tshark count the same frames and bytes for every protocol
/// both know, and proto-id reports nothing tshark does not.
#[tokio::test]
async fn proto_id_agrees_with_tshark_on_the_same_capture() {
    let (frames, _) = mix(START_NS);
    let tshark = tshark_phs(&frames);
    let r = run(&frames, &[("proto-id", Value::Nil)]).await;
    let res = collect(&r, "proto-id").await;
    let mut compared = Vec::new();
    for (name, theirs) in &tshark {
        if let Some(mine) = ours(&res, name) {
            assert_eq!(mine, *theirs, "{name}: proto-id vs tshark");
            compared.push(name.as_str());
        }
    }
    // Nothing proto-id counts is missing from tshark's hierarchy.
    let mapped = [
        "eth", "ip", "ipv6", "tcp", "udp", "icmp", "icmpv6", "http", "tls", "dns", "ssh", "quic",
        "smtp", "dhcp", "ntp", "data",
    ];
    for name in mapped {
        let mine = ours(&res, name).unwrap();
        if mine.0 > 0 {
            assert!(
                tshark.contains_key(name),
                "proto-id counts {name} {mine:?}; tshark does not report it: {tshark:?}"
            );
        }
    }
    compared.sort_unstable();
    let mut all = mapped.to_vec();
    all.sort_unstable();
    assert_eq!(compared, all, "the mix holds every protocol of the mapping");
}

// --- robustness and params ------------------------------------------------------

/// The mix with random byte flips and cuts (twice, with different damage)
/// is analyzed to the last packet without a trap.
#[tokio::test]
async fn corrupted_mix_is_analyzed_without_a_trap() {
    let (mut frames, _) = mix(START_NS);
    let (second, _) = mix(START_NS + 1_000_000_000);
    frames.extend(second);
    pcapgen::corrupt(&mut frames, 0x0bad_cafe, 3);
    let wire_bytes: u64 = frames
        .iter()
        .map(|f| u64::from(f.wire_len.unwrap_or(f.data.len() as u32)))
        .sum();
    let r = run(&frames, &[("proto-id", Value::Nil)]).await;
    let st = r.monitor.status(&r.client).await;
    let d = &st.deployments[0];
    assert_eq!(
        d.state,
        DeploymentState::Running,
        "proto-id failed: {:?}",
        d.last_error
    );
    assert!(
        st.links[0].parse_errors > 0,
        "the corruption produced no parse errors"
    );
    let res = collect(&r, "proto-id").await;
    let total = frames.len() as u64;
    assert_eq!((u(&res, "packets"), u(&res, "bytes")), (total, wire_bytes));
    let l3 = tallies(&res, "l3");
    assert_eq!(l3.values().map(|t| t.0).sum::<u64>(), total);
    assert_eq!(l3.values().map(|t| t.1).sum::<u64>(), wire_bytes);
    let ip = l3["ipv4"].0 + l3["ipv6"].0;
    let l4 = tallies(&res, "l4");
    assert_eq!(l4.values().map(|t| t.0).sum::<u64>(), ip);
    let app = tallies(&res, "app");
    assert!(app.values().map(|t| t.0).sum::<u64>() <= ip);
}

async fn configure(r: &Run, params: Value) -> Reply<ConfigureReply> {
    request(
        &r.client,
        subject::monitor_configure("a", "t"),
        &ConfigureRequest {
            deployment: "proto-id".into(),
            requester: "t".into(),
            params,
            force: false,
        },
    )
    .await
}

/// Refused params name the field and keep the old ones; good ones apply
/// to the next collect without losing counts.
#[tokio::test]
async fn bad_params_are_named_and_configure_keeps_state() {
    let (frames, truth) = mix(START_NS);
    let r = run(&frames, &[("proto-id", Value::Nil)]).await;
    for (key, value, needle) in [
        ("top_n", Value::from(5000), "top_n = 5000"),
        ("max_flows", Value::from(0), "max_flows = 0"),
        ("inspect_packets", Value::from(100), "inspect_packets = 100"),
        ("max_names", Value::from(0), "max_names = 0"),
        ("idle_timeout_s", Value::from("soon"), "idle_timeout_s"),
        ("max_flow", Value::from(10), "max_flow"),
    ] {
        match configure(&r, Value::Map(vec![(key.into(), value)])).await {
            Reply::Err(e) => {
                assert_eq!(e.code, ErrorCode::BadParams, "{key}: {e}");
                assert!(e.message.contains(needle), "expected {needle:?} in {e}");
            }
            Reply::Ok(ok) => panic!("{key} accepted: {ok:?}"),
        }
    }
    let res = collect(&r, "proto-id").await;
    assert_eq!(
        field(field(&res, "http"), "hosts")
            .as_array()
            .unwrap()
            .len(),
        truth.http_hosts.len().min(10),
        "the default top_n is still in force"
    );
    configure(&r, Value::Map(vec![("top_n".into(), 1.into())]))
        .await
        .into_result()
        .unwrap();
    let res = collect(&r, "proto-id").await;
    let hosts = field(field(&res, "http"), "hosts").as_array().unwrap();
    let (top, requests) = truth.http_hosts.iter().max_by_key(|(_, n)| **n).unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        (field(&hosts[0], "host").as_str(), u(&hosts[0], "requests")),
        (Some(top.as_str()), *requests)
    );
    assert_eq!(u(&res, "packets"), truth.packets, "configure keeps state");
}
