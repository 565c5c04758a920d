//! Live capture with libpcap on the loopback interface (needs root or
//! CAP_NET_RAW; skipped with a printed reason otherwise). Traffic goes to
//! 127.0.0.1 only, in a bounded loop.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::{
    BlobRef, CollectRequest, Filter, LinkState, LoadReply, LoadRequest, ResultWindow, Value,
    subject,
};
use common::{MonitorProc, put_blob, request, wasm};
use harness::NatsServer;

fn can_capture() -> Result<(), String> {
    pcap::Capture::from_device("lo")
        .and_then(|c| c.timeout(10).open())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Packets sent to a loopback UDP port are captured live, exactly once each,
/// and the deployment's BPF is pushed into the kernel so the link itself
/// sees only those packets.
#[tokio::test]
async fn live_loopback_capture_counts_exactly_and_filters_in_the_kernel() {
    if let Err(e) = can_capture() {
        eprintln!("SKIPPED: cannot capture on lo here ({e}); run as root");
        return;
    }
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let config = "address = \"127.0.0.1\"\n[[link]]\nid = 0\ninterface = \"lo\"\nsnaplen = 256\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n";
    let monitor = MonitorProc::start(&nats, &client, "live", config).await;

    // A port nobody else uses: bind it, so the kernel owns it for this test.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let reply: LoadReply = request(
        &client,
        subject::monitor_load("live", "t"),
        &LoadRequest {
            deployment: "udp".into(),
            analyzer: BlobRef {
                name: "packet-count".into(),
                sha256: sha,
            },
            params: Value::Nil,
            filter: Filter {
                protocols: vec![17],
                bpf: Some(format!("udp and dst port {port}")),
                ..Filter::default()
            },
            links: vec![],
            owner: "t".into(),
            report_every_ms: None,
        },
    )
    .await
    .into_result()
    .unwrap();
    assert_eq!(reply.links, vec![0]);
    // Let the link thread install the kernel filter before sending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = monitor.status(&client).await.links[0].packets;

    const N: u64 = 500;
    const PAYLOAD: usize = 64;
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..N {
        sender
            .send_to(&[7u8; PAYLOAD], ("127.0.0.1", port))
            .unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let st = monitor
        .wait_status(&client, "all datagrams analyzed", |st| {
            st.deployments[0].stats.packets_in >= N
        })
        .await;
    let link = &st.links[0];
    assert_eq!(link.state, LinkState::Running);
    assert_eq!(link.kernel_drops, 0);
    assert_eq!(st.deployments[0].stats.packets_in, N);
    // Only the filtered packets reached user space.
    assert_eq!(
        link.packets - before,
        N,
        "kernel filter let other packets through"
    );

    let w: ResultWindow = request(
        &client,
        subject::monitor_collect("live", "t"),
        &CollectRequest {
            deployment: "udp".into(),
        },
    )
    .await
    .into_result()
    .unwrap();
    let wire = (14 + 20 + 8 + PAYLOAD) as u64;
    assert_eq!(w.stats.bytes_in, N * wire);
    drop(sink);
}
