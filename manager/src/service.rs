//! `tm-manager` on the bus: the NATS service (`tm.v1.mgr.{id}.apps.*`,
//! discoverable with `$SRV.PING`/`INFO`/`STATS`) and the liveness record in
//! `tm_managers` that tells other managers it is up.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::service::ServiceExt;
use bus_schema::{
    AppList, AppListRequest, AppLoadRequest, AppUnloadRequest, ErrorBody, ErrorCode, ManagerRecord,
    Reply, subject,
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apps::Apps;
use crate::control::now_ms;

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorBody> {
    bus_schema::decode(payload).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}

fn encode<T: Serialize>(reply: Result<T, ErrorBody>) -> bytes::Bytes {
    let reply = Reply::from(reply);
    bus_schema::encode(&reply)
        .or_else(|e| {
            bus_schema::encode(&Reply::<()>::error(
                ErrorCode::Internal,
                format!("cannot encode the reply: {e}"),
            ))
        })
        .unwrap_or_default()
        .into()
}

/// Decodes and runs one manager command; returns the encoded reply.
pub async fn handle(apps: &Apps, command: &str, payload: &[u8]) -> bytes::Bytes {
    match command {
        "apps.load" => encode(
            async {
                let q: AppLoadRequest = decode(payload)?;
                apps.load(&q.app, q.source, q.params).await
            }
            .await,
        ),
        "apps.unload" => encode(
            async {
                let q: AppUnloadRequest = decode(payload)?;
                apps.unload(&q.app).await
            }
            .await,
        ),
        "apps.list" => encode(
            async {
                if !payload.is_empty() {
                    decode::<AppListRequest>(payload)?;
                }
                Ok(AppList {
                    manager: apps.manager().to_owned(),
                    apps: apps.list(),
                })
            }
            .await,
        ),
        other => encode::<()>(Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("unknown command {other}"),
        ))),
    }
}

/// Serves the manager's commands until the connection closes; each request
/// is handled on its own task, so a long `apps.load` does not hold up
/// `apps.list`.
///
/// # Errors
/// If the service or an endpoint cannot be registered.
pub async fn serve(apps: Apps, client: async_nats::Client) -> anyhow::Result<()> {
    let id = apps.manager().to_owned();
    let service = client
        .service_builder()
        .description(format!("tm-manager {id}"))
        .metadata(HashMap::from([("manager".to_owned(), id.clone())]))
        .start("tm-manager", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the service: {e}"))?;
    let endpoints = [
        ("apps.load", subject::manager_apps_load(&id)),
        ("apps.unload", subject::manager_apps_unload(&id)),
        ("apps.list", subject::manager_apps_list(&id)),
    ];
    let mut tasks = Vec::new();
    for (name, subj) in endpoints {
        let mut endpoint = service
            .endpoint_builder()
            .name(name.replace('.', "-"))
            .add(subj)
            .await
            .map_err(|e| anyhow::anyhow!("cannot add endpoint {name}: {e}"))?;
        let apps = apps.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let apps = apps.clone();
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let reply = handle(&apps, name, &request.message.payload).await;
                    apps.commands().observe(name, started.elapsed());
                    if let Err(e) = request.respond(Ok(reply)).await {
                        tracing::warn!(command = name, error = %e, "cannot send reply");
                    }
                });
            }
        }));
    }
    tracing::info!(manager = %id, "serving commands");
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Refreshes the manager's record in `tm_managers` every `every` (at most
/// [`bus_schema::store::HEARTBEAT_EVERY`]) until aborted.
pub async fn heartbeat(apps: Apps, control: crate::control::Control, every: Duration) {
    let started = now_ms();
    loop {
        let record = ManagerRecord {
            manager: apps.manager().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            apps: apps.running(),
            started_unix_ms: started,
            heartbeat_unix_ms: now_ms(),
            heartbeat_every_ms: every.as_millis() as u64,
        };
        if let Err(e) = control.heartbeat(&record).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
        tokio::time::sleep(every).await;
    }
}
