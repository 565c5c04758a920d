//! Live capture of real traffic between two network namespaces the test
//! creates, tapped like an optical tap: tc mirrors both directions of one
//! veth to a mirror port the monitor captures on. Needs root, `ip netns`,
//! ping and iperf3 (skipped with a printed reason otherwise). All traffic
//! stays between the test's own namespaces and is bounded in count and time.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::{BlobRef, Filter, LoadReply, LoadRequest, Value, subject};
use common::{MonitorProc, put_blob, request, wasm};
use harness::NatsServer;

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all)
}

/// Two namespaces joined by a veth pair, and a mirror port into the root
/// namespace; removed on drop, also after a failed assertion.
struct Lab {
    a: String,
    b: String,
    tap_root: String,
}

impl Lab {
    fn create() -> Result<Lab, String> {
        let id = std::process::id() % 100_000;
        let lab = Lab {
            a: format!("tm{id}a"),
            b: format!("tm{id}b"),
            tap_root: format!("tm{id}r"),
        };
        let (a, b) = (lab.a.as_str(), lab.b.as_str());
        let tap_ns = format!("tm{id}t");
        sh(&["ip", "netns", "add", a])?;
        sh(&["ip", "netns", "add", b])?;
        for ns in [a, b] {
            // No IPv6: no router solicitations or ND to blur the counts.
            in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            in_ns(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            )?;
            in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "vb", "netns", b,
        ])?;
        in_ns(a, &["ip", "addr", "add", "10.203.0.1/30", "dev", "va"])?;
        in_ns(b, &["ip", "addr", "add", "10.203.0.2/30", "dev", "vb"])?;
        in_ns(a, &["ip", "link", "set", "va", "up"])?;
        in_ns(b, &["ip", "link", "set", "vb", "up"])?;
        // The mirror port: one end in A, the other in the root namespace.
        sh(&[
            "ip",
            "link",
            "add",
            &tap_ns,
            "netns",
            a,
            "type",
            "veth",
            "peer",
            &lab.tap_root,
        ])?;
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", lab.tap_root),
        ])?;
        sh(&["ip", "link", "set", &lab.tap_root, "up"])?;
        in_ns(a, &["ip", "link", "set", &tap_ns, "up"])?;
        in_ns(a, &["tc", "qdisc", "add", "dev", "va", "clsact"])?;
        for dir in ["ingress", "egress"] {
            in_ns(
                a,
                &[
                    "tc", "filter", "add", "dev", "va", dir, "u32", "match", "u32", "0", "0",
                    "action", "mirred", "egress", "mirror", "dev", &tap_ns,
                ],
            )?;
        }
        Ok(lab)
    }

    /// rx + tx packets of `va`, read inside namespace A.
    fn va_packets(&self) -> u64 {
        ["rx_packets", "tx_packets"]
            .iter()
            .map(|c| {
                in_ns(
                    &self.a,
                    &["cat", &format!("/sys/class/net/va/statistics/{c}")],
                )
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
            })
            .sum()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.tap_root]);
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
    }
}

fn missing_prerequisite() -> Option<String> {
    for tool in ["ip", "tc", "ping", "iperf3"] {
        if sh(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!(
                "{tool} is not installed (xtask/setup.sh installs it)"
            ));
        }
    }
    let probe = format!("tmprobe{}", std::process::id() % 100_000);
    if let Err(e) = sh(&["ip", "netns", "add", &probe]) {
        return Some(format!("network namespaces are unavailable: {e}"));
    }
    let _ = sh(&["ip", "netns", "del", &probe]);
    None
}

/// Ping and a short iperf3 run between two namespaces, mirrored to a tap
/// port: the monitor captures exactly the packets the veth's own counters
/// report, in both directions, without kernel drops.
#[tokio::test]
async fn live_capture_on_a_mirrored_veth_matches_its_counters() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let lab = Lab::create().unwrap();
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let config = format!(
        "address = \"10.203.0.9\"\n[[link]]\nid = 0\ninterface = \"{}\"\nsnaplen = 128\nfrom_router = \"10.203.0.1\"\nto_router = \"10.203.0.2\"\n",
        lab.tap_root
    );
    let monitor = MonitorProc::start(&nats, &client, "ns", &config).await;
    request::<_, LoadReply>(
        &client,
        subject::monitor_load("ns", "t"),
        &LoadRequest {
            deployment: "all".into(),
            analyzer: BlobRef {
                name: "packet-count".into(),
                sha256: sha,
            },
            params: Value::Nil,
            filter: Filter::default(),
            links: vec![0],
            owner: "t".into(),
            report_every_ms: None,
        },
    )
    .await
    .into_result()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let link_before = monitor.status(&client).await.links[0].packets;
    let va_before = lab.va_packets();

    let (a, b) = (lab.a.clone(), lab.b.clone());
    tokio::task::spawn_blocking(move || {
        in_ns(
            &a,
            &["ping", "-c", "20", "-i", "0.02", "-W", "1", "10.203.0.2"],
        )
        .unwrap();
        let mut server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &b,
                "iperf3",
                "-s",
                "-1",
                "-B",
                "10.203.0.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let client = in_ns(
            &a,
            &[
                "iperf3",
                "-c",
                "10.203.0.2",
                "-t",
                "1",
                "-b",
                "20M",
                "-l",
                "1200",
            ],
        );
        let _ = server.wait();
        client.unwrap();
    })
    .await
    .unwrap();

    // Let the last mirrored packets arrive and be counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let va_delta = lab.va_packets() - va_before;
    let st = monitor
        .wait_status(&client, "captured the veth's packets", |st| {
            st.links[0].packets - link_before >= va_delta
        })
        .await;
    let link = &st.links[0];
    eprintln!(
        "veth counters: {va_delta} packets; captured: {}",
        link.packets - link_before
    );
    assert!(va_delta > 1000, "too little traffic: {va_delta} packets");
    assert_eq!(link.kernel_drops, 0);
    assert_eq!(
        link.packets - link_before,
        va_delta,
        "captured vs interface counters"
    );
    let d = &st.deployments[0].stats;
    assert_eq!(d.dropped, 0);
    assert!(d.packets_in >= va_delta, "{d:?}");
}

/// UDP datagrams sent from a namespace at rising rates (5k pps, 20k pps,
/// then as fast as it goes; bounded counts) into a veth whose root end a
/// monitor captures, through a deliberately slow analyzer behind a tiny
/// queue, alone (the link leaves the packets in the kernel's small ring:
/// kernel drops, no queue drops), then beside a fast one (the link reads on:
/// the slow one drops at its queue). Every packet the interface received
/// is captured or a kernel drop, every captured packet analyzed or a queue
/// drop, and the drops show in status, in the result window and on the
/// metrics endpoint.
#[tokio::test]
async fn rising_rates_through_a_slow_analyzer_account_for_every_packet() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let id = std::process::id() % 100_000;
    let (ns, root_if) = (format!("tm{id}s"), format!("tm{id}v"));
    struct Gone(String, String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = sh(&["ip", "link", "del", &self.1]);
            let _ = sh(&["ip", "netns", "del", &self.0]);
        }
    }
    let _gone = Gone(ns.clone(), root_if.clone());
    sh(&["ip", "netns", "add", &ns]).unwrap();
    in_ns(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]).unwrap();
    in_ns(
        &ns,
        &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
    )
    .unwrap();
    sh(&[
        "ip", "link", "add", "vs", "netns", &ns, "type", "veth", "peer", &root_if,
    ])
    .unwrap();
    sh(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{root_if}.disable_ipv6=1"),
    ])
    .unwrap();
    sh(&["ip", "link", "set", &root_if, "up"]).unwrap();
    in_ns(&ns, &["ip", "addr", "add", "10.204.0.1/24", "dev", "vs"]).unwrap();
    in_ns(&ns, &["ip", "link", "set", "vs", "up"]).unwrap();
    // A neighbour that does not exist: frames reach the root end addressed
    // to another host, so the root namespace's stack drops them unrouted.
    in_ns(
        &ns,
        &[
            "ip",
            "neigh",
            "add",
            "10.204.0.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "vs",
        ],
    )
    .unwrap();

    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let metrics_addr = harness::metrics::free_addr();
    let config = format!(
        "address = \"10.204.0.9\"\nmetrics_listen = \"{metrics_addr}\"\n\
         [limits]\nqueue_batches = 2\nbatch_packets = 64\n\
         [[link]]\nid = 0\ninterface = \"{root_if}\"\nsnaplen = 128\nbuffer_mb = 2\n\
         from_router = \"10.204.0.1\"\nto_router = \"10.204.0.2\"\n"
    );
    let monitor = MonitorProc::start(&nats, &client, "rr", &config).await;
    let slow = common::wat_analyzer(
        1,
        "(local $i i32) (loop (local.set $i (i32.add (local.get $i) (i32.const 1))) \
         (br_if 0 (i32.lt_u (local.get $i) (i32.const 2000000))))",
    );
    let sha = put_blob(&js, "slow", &slow).await;
    request::<_, LoadReply>(
        &client,
        subject::monitor_load("rr", "t"),
        &LoadRequest {
            deployment: "slow".into(),
            analyzer: BlobRef {
                name: "slow".into(),
                sha256: sha,
            },
            params: Value::Nil,
            filter: Filter::default(),
            links: vec![0],
            owner: "t".into(),
            report_every_ms: None,
        },
    )
    .await
    .into_result()
    .unwrap();
    let rx = |what: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{root_if}/statistics/{what}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let sender = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 64
sent = 0
for rate, count in [(5000, 5000), (20000, 20000), (0, 100000)]:
    start = time.perf_counter()
    for i in range(count):
        if rate:
            due = start + i / rate
            while time.perf_counter() < due:
                pass
        s.sendto(payload, ("10.204.0.2", 9))
        sent += 1
print(sent)
"#;
    // Sends the rising rates; what the interface received.
    let send = || {
        let ns = ns.clone();
        let before = rx("rx_packets");
        async move {
            let sent: u64 = tokio::task::spawn_blocking(move || {
                in_ns(&ns, &["python3", "-c", sender])
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let received = rx("rx_packets") - before;
            assert!(
                received >= sent * 9 / 10,
                "sent {sent}, received {received}"
            );
            received
        }
    };

    // The only deployment is behind: the link stops reading, the packets
    // wait in the kernel's ring, and what it cannot hold are kernel drops;
    // nothing is dropped at the queue.
    let received = send().await;
    let st = monitor
        .wait_status(&client, "every received packet accounted for", |st| {
            let l = &st.links[0];
            let d = &st.deployments[0].stats;
            l.packets + l.kernel_drops + l.interface_drops >= received
                && d.packets_in + d.dropped == l.packets
        })
        .await;
    let (l, d) = (&st.links[0], &st.deployments[0].stats);
    eprintln!(
        "one slow deployment: interface received {received}: captured {}, kernel drops {}, \
         interface drops {}; analyzed {}, queue drops {}",
        l.packets, l.kernel_drops, l.interface_drops, d.packets_in, d.dropped
    );
    assert_eq!(l.packets + l.kernel_drops + l.interface_drops, received);
    assert_eq!(d.packets_in + d.dropped, l.packets);
    assert_eq!(d.dropped, 0, "the ring holds what the queue cannot: {d:?}");
    assert!(l.kernel_drops > 0, "the 2 MiB ring held everything: {l:?}");
    let captured_before = l.packets;
    let received_before = received;

    // A fast deployment beside it: the link reads on for it, and the slow
    // one drops whole batches at its queue.
    let counter = put_blob(&js, "packet-count", &common::wasm("packet-count")).await;
    let counter = ("packet-count", counter.as_str());
    common::load_on(&client, "rr", "fast", counter, Value::Nil, vec![0]).await;
    let received = received_before + send().await;
    let dep = |st: &bus_schema::MonitorStatus, name: &str| {
        st.deployments
            .iter()
            .find(|d| d.deployment == name)
            .unwrap()
            .stats
            .clone()
    };
    let st = monitor
        .wait_status(&client, "every received packet accounted for", |st| {
            let l = &st.links[0];
            let (slow, fast) = (dep(st, "slow"), dep(st, "fast"));
            l.packets + l.kernel_drops + l.interface_drops >= received
                && slow.packets_in + slow.dropped == l.packets
                && fast.packets_in + fast.dropped == l.packets - captured_before
        })
        .await;
    let l = &st.links[0];
    let (d, fast) = (dep(&st, "slow"), dep(&st, "fast"));
    eprintln!(
        "slow and fast: interface received {received}: captured {}, kernel drops {}; \
         slow analyzed {}, queue drops {}; fast analyzed {}, queue drops {}",
        l.packets, l.kernel_drops, d.packets_in, d.dropped, fast.packets_in, fast.dropped
    );
    assert_eq!(l.packets + l.kernel_drops + l.interface_drops, received);
    assert_eq!(d.packets_in + d.dropped, l.packets);
    assert_eq!(fast.packets_in + fast.dropped, l.packets - captured_before);
    assert!(d.dropped > 0, "the slow analyzer dropped nothing: {d:?}");

    // The result window and the metrics endpoint say the same.
    let window: bus_schema::ResultWindow = request(
        &client,
        subject::monitor_collect("rr", "t"),
        &bus_schema::CollectRequest {
            deployment: "slow".into(),
        },
    )
    .await
    .into_result()
    .unwrap();
    assert_eq!(window.capture[0].packets, l.packets);
    assert_eq!(window.capture[0].kernel_drops, l.kernel_drops);
    assert_eq!(window.stats.dropped, d.dropped);
    let samples = tokio::task::spawn_blocking(move || harness::metrics::scrape(metrics_addr))
        .await
        .unwrap()
        .unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| {
        harness::metrics::value(&samples, name, labels).unwrap() as u64
    };
    assert_eq!(
        value(
            "tm_monitor_deployment_queue_drops_total",
            &[("deployment", "slow"), ("analyzer", "slow")]
        ),
        d.dropped
    );
    assert_eq!(
        value("tm_monitor_link_kernel_drops_total", &[("link", "0")]),
        l.kernel_drops
    );
    assert_eq!(
        value("tm_monitor_link_packets_total", &[("link", "0")]),
        l.packets
    );
}
