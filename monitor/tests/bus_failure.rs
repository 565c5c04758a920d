//! Nothing is lost when the bus fails: a monitor replays a capture at its
//! recorded pace with packet-count publishing a window every 200 ms while
//! nats-server is killed (SIGKILL, then restarted on the same store) or
//! frozen (SIGSTOP, then SIGCONT). Every window reaches the results stream
//! exactly once, in order, and the monitor keeps capturing and analysing
//! throughout (seen on its metrics endpoint while NATS is frozen). A blob
//! read sends requests that timed out again, a bounded number of times.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use bus_schema::{
    BlobRef, CollectRequest, Filter, LinkState, LoadReply, LoadRequest, UnloadReply, UnloadRequest,
    Value, subject,
};
use common::{put_blob, request, wasm};
use harness::NatsServer;
use harness::metrics;
use harness::monitor::MonitorProc;
use pcapgen::{linktype, write_pcap};

const REPORT_MS: u64 = 200;

/// A monitor replaying `seconds` of packets (one per 10 ms) at recorded
/// pace, packet-count loaded as `pc` reporting every 200 ms; the number of
/// packets and the monitor's metrics address.
async fn reporting_monitor(
    nats: &NatsServer,
    client: &async_nats::Client,
    seconds: u64,
) -> (MonitorProc, u64, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let frames = pcapgen::paced(
        (seconds * 100) as usize,
        1_764_000_000_000_000_000,
        10_000_000,
    );
    write_pcap(&dir.path().join("l.pcap"), linktype::ETHERNET, &frames).unwrap();
    let addr = metrics::free_addr();
    let config = format!(
        "address = \"10.9.9.9\"\nmetrics_listen = \"{addr}\"\n\
         [[link]]\nid = 0\npcap = \"l.pcap\"\nreplay = \"recorded-pace\"\nfrom_router = \"10.0.0.1\"\nto_router = \"10.0.0.2\"\n"
    );
    let monitor = MonitorProc::start_in(nats, client, "m", &config, dir).await;
    let js = jetstream::new(client.clone());
    let sha = put_blob(&js, "packet-count", &wasm("packet-count")).await;
    let _: LoadReply = request(
        client,
        subject::monitor_load("m", "t"),
        &LoadRequest {
            deployment: "pc".into(),
            analyzer: BlobRef {
                name: "packet-count".into(),
                sha256: sha,
            },
            params: Value::Nil,
            filter: Filter::default(),
            links: vec![0],
            owner: "t".into(),
            report_every_ms: Some(REPORT_MS),
        },
    )
    .await
    .into_result()
    .unwrap();
    (monitor, frames.len() as u64, addr)
}

/// Waits for the replay to end, unloads `pc`, and checks the stream: window
/// seqs 1..N without gap or repeat, in stream order, only the last flagged,
/// the final window counting every packet. Returns N.
async fn every_window_once(
    client: &async_nats::Client,
    monitor: &MonitorProc,
    total: u64,
    min_windows: u64,
) -> u64 {
    monitor
        .wait_status(client, "replay analyzed", |st| {
            st.links[0].state == LinkState::Finished
                && st
                    .deployments
                    .first()
                    .is_some_and(|d| d.stats.packets_in == total)
        })
        .await;
    let reply: UnloadReply = request(
        client,
        subject::monitor_unload("m", "t"),
        &UnloadRequest {
            deployment: "pc".into(),
            requester: "t".into(),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap();
    let last = reply.final_results;
    assert!(last.last);
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = harness::stream_windows(&js, "pc").await;
        if held.iter().any(|(_, w)| w.last) {
            break held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the final window never reached the stream:\n{}",
            monitor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seqs: Vec<u64> = held.iter().map(|(_, w)| w.seq).collect();
    let n = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "window seqs in stream order"
    );
    assert!(n >= min_windows, "only {n} windows");
    assert_eq!(
        held.iter().filter(|(_, w)| w.last).count(),
        1,
        "one final window"
    );
    let (_, final_window) = held.last().unwrap();
    assert!(final_window.last);
    assert_eq!(final_window.seq, last.seq);
    assert_eq!(final_window.stats.packets_in, total);
    // Each window counts at least what the one before it did.
    for pair in held.windows(2) {
        assert!(pair[0].1.stats.packets_in <= pair[1].1.stats.packets_in);
    }
    n
}

/// The deployment's packet count on the metrics endpoint (HTTP, no NATS).
async fn packets_from_metrics(addr: SocketAddr) -> f64 {
    tokio::task::spawn_blocking(move || {
        let samples = metrics::scrape(addr).unwrap();
        metrics::value(
            &samples,
            "tm_monitor_deployment_packets_total",
            &[("deployment", "pc"), ("analyzer", "packet-count")],
        )
        .unwrap()
    })
    .await
    .unwrap()
}

/// nats-server is SIGKILLed during periodic reporting and while collects are
/// in flight, and restarted 2 s later on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_during_reporting_and_collects_loses_no_window() {
    let mut nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let (monitor, total, _) = reporting_monitor(&nats, &client, 8).await;

    // Collects every 100 ms, counting answers and failures.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let collects = {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                let q = bus_schema::encode(&CollectRequest {
                    deployment: "pc".into(),
                })
                .unwrap();
                let answer = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.request(subject::monitor_collect("m", "t"), q.into()),
                )
                .await;
                match answer {
                    Ok(Ok(_)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart().await.unwrap();
    let ok_at_restart = ok.load(Ordering::Relaxed);
    // Client and monitor reconnect on their own (with backoff).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while ok.load(Ordering::Relaxed) <= ok_at_restart {
        assert!(
            tokio::time::Instant::now() < deadline,
            "collects did not resume within 15 s of the restart\n{}",
            monitor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collects.abort();
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "no collect failed while NATS was down"
    );

    let n = every_window_once(&client, &monitor, total, 8 * 1000 / REPORT_MS / 2).await;
    eprintln!("{n} windows, all in the stream once, in order, across a SIGKILL of nats-server");
}

/// nats-server frozen for `pause`: the monitor's counts rise meanwhile (its
/// metrics endpoint answers without NATS), and every window arrives once.
async fn frozen_nats(pause: Duration, replay_s: u64) {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let (monitor, total, metrics_addr) = reporting_monitor(&nats, &client, replay_s).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.pause();
    let frozen = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = packets_from_metrics(metrics_addr).await;
    tokio::time::sleep_until(frozen + pause - Duration::from_millis(500)).await;
    let late = packets_from_metrics(metrics_addr).await;
    nats.resume();
    eprintln!(
        "while NATS was frozen for {pause:?}: packets {early} after 1 s, {late} near the end"
    );
    assert!(
        late > early,
        "packet counts stalled while NATS was frozen: {early} → {late}"
    );
    let n = every_window_once(&client, &monitor, total, replay_s * 1000 / REPORT_MS / 2).await;
    eprintln!("{n} windows, all in the stream once, in order, across a {pause:?} SIGSTOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_frozen_5_s_loses_no_window() {
    frozen_nats(Duration::from_secs(5), 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_frozen_30_s_loses_no_window() {
    frozen_nats(Duration::from_secs(30), 36).await;
}

/// A blob read whose requests time out while nats-server is frozen sends
/// them again (a fleet loading one blob at once can time out one request
/// of thousands): a stall shorter than its attempts costs nothing, a
/// longer one is refused as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_read_sends_timed_out_requests_again() {
    use bus_schema::nats::{BlobReadError, read_blob};
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await;
    let mut js = jetstream::new(client.clone());
    let bytes = wasm("packet-count");
    put_blob(&js, "pc", &bytes).await;
    // Each attempt waits 250 ms: the first times out while frozen, the
    // second (after 100 ms) is answered once the server runs again.
    js.set_timeout(Duration::from_millis(250));
    nats.pause();
    let read = tokio::spawn({
        let js = js.clone();
        async move { read_blob(&js, "pc", 64 << 20).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    nats.resume();
    let (info, got) = read
        .await
        .unwrap()
        .expect("the read went on after a 400 ms stall");
    assert_eq!((info.size, got == bytes), (bytes.len(), true));

    // Frozen through all three attempts (250 + 100 + 250 + 200 + 250 ms).
    nats.pause();
    let started = std::time::Instant::now();
    let refused = read_blob(&js, "pc", 64 << 20).await;
    let waited = started.elapsed();
    nats.resume();
    match refused {
        Err(BlobReadError::Unavailable(why)) => eprintln!("refused after {waited:?}: {why}"),
        other => panic!(
            "a read through a long stall: {:?}",
            other.map(|(info, _)| info.size)
        ),
    }
    assert!(
        waited >= Duration::from_millis(1000),
        "gave up after {waited:?}, before its third attempt timed out"
    );
}
