//! The harness starts real, isolated nats-server processes.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use harness::{NatsCluster, NatsServer};
use tokio::io::AsyncReadExt;

async fn put_blob_and_key(js: &jetstream::Context, blob: &[u8], value: &str) {
    let store = js
        .create_object_store(object_store::Config {
            bucket: "tm_blobs".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    store.put("module", &mut &blob[..]).await.unwrap();
    let kv = js
        .create_key_value(kv::Config {
            bucket: "tm_monitors".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    kv.put("m1", value.to_owned().into()).await.unwrap();
}

async fn get_blob_and_key(js: &jetstream::Context) -> (Vec<u8>, String) {
    let store = js.get_object_store("tm_blobs").await.unwrap();
    let mut blob = Vec::new();
    store
        .get("module")
        .await
        .unwrap()
        .read_to_end(&mut blob)
        .await
        .unwrap();
    let kv = js.get_key_value("tm_monitors").await.unwrap();
    let value = kv.get("m1").await.unwrap().expect("key m1");
    (blob, String::from_utf8(value.to_vec()).unwrap())
}

/// Two servers side by side keep their own object stores, KV buckets and
/// subjects: nothing written or published on one is seen on the other.
#[tokio::test]
async fn two_servers_do_not_cross_talk() {
    let (a, b) = tokio::join!(NatsServer::start(), NatsServer::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());

    let (js_a, js_b) = (a.jetstream().await, b.jetstream().await);
    let blob_a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let blob_b = b"\0asm second server".to_vec();
    put_blob_and_key(&js_a, &blob_a, "on a").await;
    put_blob_and_key(&js_b, &blob_b, "on b").await;

    assert_eq!(get_blob_and_key(&js_a).await, (blob_a, "on a".to_owned()));
    assert_eq!(get_blob_and_key(&js_b).await, (blob_b, "on b".to_owned()));

    // Core subjects do not cross either.
    let (ca, cb) = (a.client().await, b.client().await);
    let mut sub_b = cb.subscribe("tm.v1.probe").await.unwrap();
    let mut sub_a = ca.subscribe("tm.v1.probe").await.unwrap();
    cb.flush().await.unwrap();
    ca.flush().await.unwrap();
    ca.publish("tm.v1.probe", "from a".into()).await.unwrap();
    ca.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub_a.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"from a");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub_b.next())
            .await
            .is_err(),
        "server b received a message published on server a"
    );

    // A bucket created on one server does not exist on the other.
    js_a.create_key_value(kv::Config {
        bucket: "only_a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(js_b.get_key_value("only_a").await.is_err());
}

/// A killed server restarts on the same port with its JetStream data.
#[tokio::test]
async fn restart_keeps_port_and_data() {
    let mut server = NatsServer::start().await.unwrap();
    let port = server.port();
    put_blob_and_key(&server.jetstream().await, b"persisted", "kept").await;
    server.kill();
    assert!(
        async_nats::connect(server.url()).await.is_err(),
        "still reachable after kill"
    );
    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    assert_eq!(
        get_blob_and_key(&server.jetstream().await).await,
        (b"persisted".to_vec(), "kept".to_owned())
    );
}

/// Dropping the harness kills the process and removes its store directory.
#[tokio::test]
async fn drop_cleans_up() {
    let server = NatsServer::start().await.unwrap();
    let pid = server.pid().unwrap();
    let log = server.log_path();
    let dir = log.parent().unwrap().to_owned();
    assert!(dir.exists());
    drop(server);
    assert!(!dir.exists(), "store dir {dir:?} left behind");
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    // A zombie would still have a /proc entry; the harness reaps it.
    assert!(!proc_dir.exists(), "nats-server {pid} still running");
}

/// A 3-node cluster replicates a 3-replica KV bucket, and a client that
/// knows every node keeps working when the node it used dies.
#[tokio::test]
async fn cluster_replicates_and_fails_over() {
    let mut cluster = NatsCluster::start().await.unwrap();
    assert_eq!(cluster.nodes.len(), 3);

    let js = jetstream::new(cluster.client().await);
    let kv = js
        .create_key_value(kv::Config {
            bucket: "tm_topology".into(),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    kv.put("current", "rows".into()).await.unwrap();

    // Every node serves the value.
    for node in &cluster.nodes {
        let js = node.jetstream().await;
        let kv = js.get_key_value("tm_topology").await.unwrap();
        let value = kv.get("current").await.unwrap().expect("replicated");
        assert_eq!(&value[..], b"rows", "on {}", node.name());
    }

    // Kill one node; the bucket keeps working through the others.
    cluster.nodes[0].kill();
    let js = jetstream::new(cluster.nodes[1].client().await);
    let mut last_error = String::new();
    let mut written = false;
    // Bounded: the stream may need a few seconds to elect a new leader.
    for _ in 0..150 {
        match js.get_key_value("tm_topology").await {
            Ok(kv) => match kv.put("current", "after failover".into()).await {
                Ok(_) => {
                    written = true;
                    break;
                }
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        written,
        "no write accepted with one node down: {last_error}"
    );
    cluster.nodes[0].restart().await.unwrap();
    let js = cluster.nodes[0].jetstream().await;
    let mut value = None;
    for _ in 0..150 {
        if let Ok(kv) = js.get_key_value("tm_topology").await {
            value = kv.get("current").await.ok().flatten();
        }
        if value.as_deref() == Some(&b"after failover"[..]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value.as_deref(), Some(&b"after failover"[..]));
}
