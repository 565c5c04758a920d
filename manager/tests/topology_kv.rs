//! The topology in KV (`tm_topology`, key `current`) on a real nats-server:
//! one topology for every manager, written with create / update-with-revision.

use std::path::Path;

use bus_schema::TopologyRow;
use bus_schema::store::{TOPOLOGY_BUCKET, TOPOLOGY_KEY, buckets};
use harness::NatsServer;
use manager::topology::{self, KvError, Topology};

fn figure5() -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/topology/figure5.toml");
    Topology::from_path(&path).unwrap()
}

/// Saved by one client, loaded by another; a save from a stale revision, or
/// a second create, is refused and leaves the stored topology as it was.
#[tokio::test]
async fn save_load_and_stale_revision() {
    let nats = NatsServer::start().await.unwrap();
    let kv1 = topology::open_bucket(&nats.jetstream().await, 1)
        .await
        .unwrap();
    assert!(topology::load(&kv1).await.unwrap().is_none());

    // The bucket has the contract's settings.
    let spec = buckets()
        .into_iter()
        .find(|b| b.name == TOPOLOGY_BUCKET)
        .unwrap();
    assert_eq!(kv1.status().await.unwrap().history(), spec.history);

    let record = figure5().to_record("manager-1", 1_764_108_000_000);
    let rev1 = topology::save(&kv1, &record, None).await.unwrap();

    // A second manager, on its own connection, sees the same topology.
    let kv2 = topology::open_bucket(&nats.jetstream().await, 1)
        .await
        .unwrap();
    let stored = topology::load(&kv2).await.unwrap().expect("stored");
    assert_eq!(stored.revision, rev1);
    assert_eq!(stored.record, record);
    assert_eq!(stored.topology.rows(), figure5().rows());
    assert_eq!(stored.topology.unmonitored_links().len(), 2);

    // Creating again is refused: a topology is already there.
    let again = topology::save(&kv1, &record, None).await.unwrap_err();
    assert!(
        matches!(again, KvError::Conflict { expected: None }),
        "{again}"
    );

    // Manager 2 adds a line nobody taps, from the revision it read.
    let mut changed = stored.record.clone();
    changed.rows.push(TopologyRow {
        monitor_address: String::new(),
        link_id: 0,
        from_router: "10.0.1.1".into(),
        to_router: "10.0.3.1".into(),
    });
    changed.imported_by = "manager-2".into();
    let rev2 = topology::save(&kv2, &changed, Some(stored.revision))
        .await
        .unwrap();
    assert!(rev2 > rev1);

    // Manager 1 still holds revision 1: its update is refused.
    let stale = topology::save(&kv1, &record, Some(rev1)).await.unwrap_err();
    assert!(
        matches!(stale, KvError::Conflict { expected: Some(r) } if r == rev1),
        "{stale}"
    );

    // Both now read manager 2's topology: the new line is a shortcut R1–R3.
    for kv in [&kv1, &kv2] {
        let now = topology::load(kv).await.unwrap().unwrap();
        assert_eq!(now.revision, rev2);
        assert_eq!(now.record, changed);
        let path = now
            .topology
            .shortest_path("10.0.1.1".parse().unwrap(), "10.0.3.1".parse().unwrap())
            .unwrap();
        assert_eq!(path.links.len(), 1);
        assert!(!path.links[0].is_monitored());
    }
}

/// An invalid record is refused before anything is written.
#[tokio::test]
async fn invalid_record_is_not_written() {
    let nats = NatsServer::start().await.unwrap();
    let kv = topology::open_bucket(&nats.jetstream().await, 1)
        .await
        .unwrap();
    let mut record = figure5().to_record("manager-1", 1);
    record.rows[2].from_router = "router-2".into();
    let e = topology::save(&kv, &record, None).await.unwrap_err();
    assert!(matches!(e, KvError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("rows[2].from_router"), "{e}");
    assert!(kv.entry(TOPOLOGY_KEY).await.unwrap().is_none());
}

/// Of two managers creating the topology at once, exactly one wins; after a
/// delete, the key can be created again.
#[tokio::test]
async fn concurrent_create_and_recreate_after_delete() {
    let nats = NatsServer::start().await.unwrap();
    let kv1 = topology::open_bucket(&nats.jetstream().await, 1)
        .await
        .unwrap();
    let kv2 = topology::open_bucket(&nats.jetstream().await, 1)
        .await
        .unwrap();
    let a = figure5().to_record("manager-a", 1);
    let b = figure5().to_record("manager-b", 2);
    let (ra, rb) = tokio::join!(
        topology::save(&kv1, &a, None),
        topology::save(&kv2, &b, None)
    );
    let winner = match (ra, rb) {
        (Ok(_), Err(KvError::Conflict { expected: None })) => a.clone(),
        (Err(KvError::Conflict { expected: None }), Ok(_)) => b,
        other => panic!("expected one create to win: {other:?}"),
    };
    assert_eq!(topology::load(&kv1).await.unwrap().unwrap().record, winner);

    kv1.delete(TOPOLOGY_KEY).await.unwrap();
    assert!(topology::load(&kv2).await.unwrap().is_none());
    let rev = topology::save(&kv2, &a, None).await.unwrap();
    assert_eq!(topology::load(&kv1).await.unwrap().unwrap().revision, rev);
}
