//! `tmctl topology import|show`: the table every manager shares, in
//! `tm_topology`.

use std::path::Path;

use anyhow::{Context, anyhow};
use async_nats::jetstream::{self, kv};
use manager::control::now_ms;
use manager::topology::{self, Topology};

use crate::{BAD_INPUT, Failure, NOT_FOUND, TopologyCommand, fail};

/// `tmctl topology …`
pub(crate) async fn topology(
    js: &jetstream::Context,
    command: TopologyCommand,
    json: bool,
) -> Result<(), Failure> {
    let kv = topology::open_bucket(js, 1)
        .await
        .map_err(|e| anyhow!(e))
        .context("cannot open the topology bucket")?;
    match command {
        TopologyCommand::Import { file, replace } => import(js, &kv, &file, replace, json).await,
        TopologyCommand::Show { dot } => show(&kv, dot, json).await,
    }
}

async fn import(
    js: &jetstream::Context,
    kv: &kv::Store,
    file: &Path,
    replace: bool,
    json: bool,
) -> Result<(), Failure> {
    let topo = Topology::from_path(file).map_err(|e| fail(BAD_INPUT, e))?;
    let current = topology::load(kv).await.map_err(|e| anyhow!(e))?;
    let expected = match (&current, replace) {
        (Some(stored), true) => Some(stored.revision),
        (Some(stored), false) => {
            return Err(fail(
                1,
                anyhow!(
                    "a topology is already stored (revision {}, imported by {}); add --replace to replace it",
                    stored.revision,
                    stored.record.imported_by
                ),
            ));
        }
        (None, _) => None,
    };
    let by = format!("tmctl@{}", hostname());
    let record = topo.to_record(&by, now_ms());
    // The whole topology is one KV value: it must fit one message.
    let size = bus_schema::encode(&record).map_or(0, |b| b.len());
    let max = js.client().server_info().max_payload;
    if size > max {
        return Err(fail(
            BAD_INPUT,
            anyhow!(
                "{}: {} rows take {size} bytes encoded, more than the bus's max payload ({max} bytes, about {} rows like these); split the network or raise nats-server's max_payload",
                file.display(),
                record.rows.len(),
                max * record.rows.len() / size.max(1)
            ),
        ));
    }
    let revision = topology::save(kv, &record, expected)
        .await
        .map_err(|e| anyhow!(e))
        .context("cannot store the topology")?;
    let links = topo.links().len();
    if json {
        println!(
            "{}",
            serde_json::json!({"revision": revision, "rows": record.rows.len(), "routers": topo.routers().len(), "links": links})
        );
    } else {
        println!(
            "imported {} rows: {} routers, {} directed links ({} unmonitored); revision {revision}",
            record.rows.len(),
            topo.routers().len(),
            links,
            topo.unmonitored_links().len()
        );
    }
    Ok(())
}

async fn show(kv: &kv::Store, dot: bool, json: bool) -> Result<(), Failure> {
    let Some(stored) = topology::load(kv).await.map_err(|e| anyhow!(e))? else {
        return Err(fail(
            NOT_FOUND,
            anyhow!("no topology stored; import one with `tmctl topology import FILE`"),
        ));
    };
    if dot {
        print!("{}", stored.topology.dot());
    } else if json {
        let rows: Vec<_> = stored
            .record
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "monitor_address": r.monitor_address, "link_id": r.link_id,
                    "from_router": r.from_router, "to_router": r.to_router,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"revision": stored.revision, "imported_by": stored.record.imported_by,
                "imported_unix_ms": stored.record.imported_unix_ms, "rows": rows})
        );
    } else {
        print!("{}", stored.topology.table());
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
