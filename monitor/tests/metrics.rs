//! The monitor's Prometheus endpoint: parsed by the reference OpenMetrics
//! parser, and every counter equal to what `status` reports.

mod common;

use async_nats::jetstream;
use bus_schema::{BlobRef, Filter, LinkState, LoadReply, LoadRequest, Value, subject};
use common::{put_blob, request, wasm};
use harness::NatsServer;
use harness::metrics::{self, value};
use harness::monitor::MonitorProc;
use pcapgen::{linktype, write_pcap};

#[tokio::test]
async fn metrics_parse_and_match_status() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let frames = pcapgen::mixed(1500, 1_764_000_000_000_000_000);
    write_pcap(&dir.path().join("l.pcap"), linktype::ETHERNET, &frames).unwrap();
    let addr = metrics::free_addr();
    let config = format!(
        "address = \"10.9.9.1\"\nmetrics_listen = \"{addr}\"\n\
         [[link]]\nid = 0\npcap = \"l.pcap\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n\
         [[link]]\nid = 1\npcap = \"l.pcap\"\nfrom_router = \"10.0.0.2\"\nto_router = \"10.0.0.1\"\n"
    );
    let monitor = MonitorProc::start_in(&nats, &client, "m", &config, dir).await;
    for (i, name) in ["packet-count", "flow-stats"].into_iter().enumerate() {
        let sha = put_blob(&js, name, &wasm(name)).await;
        let _: LoadReply = request(
            &client,
            subject::monitor_load("m", "t"),
            &LoadRequest {
                deployment: format!("{name}-x"),
                analyzer: BlobRef {
                    name: name.into(),
                    sha256: sha,
                },
                params: Value::Nil,
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
    let st = monitor
        .wait_status(&client, "replays analyzed", |st| {
            st.links.iter().all(|l| l.state == LinkState::Finished)
                && st.deployments.iter().all(|d| d.stats.packets_in == total)
        })
        .await;

    // A collected window carries its link's capture figures.
    let window: bus_schema::ResultWindow = request(
        &client,
        subject::monitor_collect("m", "t"),
        &bus_schema::CollectRequest {
            deployment: "packet-count-x".into(),
        },
    )
    .await
    .into_result()
    .unwrap();
    let l0 = &st.links[0];
    assert_eq!(
        window.capture,
        [bus_schema::LinkCapture {
            link: 0,
            packets: l0.packets,
            bytes: l0.bytes,
            kernel_drops: l0.kernel_drops,
            interface_drops: l0.interface_drops,
        }]
    );
    let samples = tokio::task::spawn_blocking(move || metrics::scrape(addr))
        .await
        .unwrap()
        .unwrap();
    for l in &st.links {
        let link = l.link.id.to_string();
        let labels = [("link", link.as_str())];
        for (name, want) in [
            ("tm_monitor_link_packets_total", l.packets),
            ("tm_monitor_link_bytes_total", l.bytes),
            ("tm_monitor_link_parse_errors_total", l.parse_errors),
            ("tm_monitor_link_kernel_drops_total", l.kernel_drops),
            ("tm_monitor_link_interface_drops_total", l.interface_drops),
        ] {
            assert_eq!(
                value(&samples, name, &labels),
                Some(want as f64),
                "{name} of link {link}"
            );
        }
        assert_eq!(l.packets, total);
        assert_eq!(value(&samples, "tm_monitor_link_up", &labels), Some(0.0));
    }
    assert_eq!(value(&samples, "tm_monitor_deployments", &[]), Some(2.0));
    for d in &st.deployments {
        let labels = [
            ("deployment", d.deployment.as_str()),
            ("analyzer", d.analyzer.name.as_str()),
        ];
        for (name, want) in [
            ("tm_monitor_deployment_packets_total", d.stats.packets_in),
            ("tm_monitor_deployment_bytes_total", d.stats.bytes_in),
            ("tm_monitor_deployment_queue_drops_total", d.stats.dropped),
        ] {
            assert_eq!(
                value(&samples, name, &labels),
                Some(want as f64),
                "{name} of {}",
                d.deployment
            );
        }
        // Guest calls and time go on between the status and the scrape
        // (ticks): at least what status said.
        let calls = value(&samples, "tm_monitor_deployment_guest_calls_total", &labels).unwrap();
        assert!(
            calls >= d.stats.guest_calls as f64,
            "{calls} < {:?}",
            d.stats
        );
        let secs = value(
            &samples,
            "tm_monitor_deployment_guest_seconds_total",
            &labels,
        )
        .unwrap();
        assert!(secs >= d.stats.guest_time_us as f64 / 1e6 && secs > 0.0);
    }
    // Two loads and the status polls went through the command histogram.
    let loads = value(
        &samples,
        "tm_monitor_command_duration_seconds_count",
        &[("command", "load")],
    );
    assert_eq!(loads, Some(2.0));
    let statuses = value(
        &samples,
        "tm_monitor_command_duration_seconds_count",
        &[("command", "status")],
    )
    .unwrap();
    assert!(statuses >= 2.0, "{statuses}");
    assert_eq!(value(&samples, "tm_nats_reconnects_total", &[]), Some(0.0));
    // Anything but GET /metrics is a 404.
    let (code, _) = tokio::task::spawn_blocking(move || metrics::get(addr, "/other"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 404);
}
