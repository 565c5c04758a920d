//! `tmctl apps …`: mgmt apps on managers, through each manager's
//! request/reply service.

use std::time::Duration;

use anyhow::anyhow;
use async_nats::jetstream;
use bus_schema::store::{self, BlobKind};
use bus_schema::{
    AppList, AppListRequest, AppLoadRequest, AppSource, AppStatus, AppUnloadRequest, BlobRef,
    ErrorBody, ErrorCode, Value, subject,
};
use futures::StreamExt;
use manager::control::now_ms;
use serde_json::json;

use crate::ops::{json_value, refused};
use crate::{AppsCommand, BAD_INPUT, Failure, fail};

/// How long a manager gets to load or unload an app.
const APP_TIMEOUT: Duration = Duration::from_secs(60);

/// `tmctl apps …`
pub(crate) async fn apps(
    client: &async_nats::Client,
    js: &jetstream::Context,
    command: AppsCommand,
    json: bool,
) -> Result<(), Failure> {
    match command {
        AppsCommand::Put(put) => crate::blobs::put(js, BlobKind::MgmtApp, put, json).await,
        AppsCommand::Load {
            app,
            manager,
            file,
            blob,
            sha256,
            params,
        } => {
            let source = source(file, blob, sha256)?;
            load(client, app, &manager, source, params, json).await
        }
        AppsCommand::Unload { app, manager } => {
            let subject = subject::manager_apps_unload(&manager);
            app_command(client, subject, &AppUnloadRequest { app }, json).await
        }
        AppsCommand::List { manager } => list(client, js, manager, json).await,
    }
}

/// What `apps load` names: a file (as an absolute path) or a blob.
fn source(
    file: Option<std::path::PathBuf>,
    blob: Option<String>,
    sha256: Option<String>,
) -> Result<AppSource, Failure> {
    match (file, blob) {
        (Some(f), _) => Ok(AppSource::File {
            path: std::fs::canonicalize(&f)
                .map_err(|e| fail(BAD_INPUT, anyhow!("--file {}: {e}", f.display())))?
                .to_string_lossy()
                .into_owned(),
        }),
        (None, Some(b)) => Ok(AppSource::Object(BlobRef {
            name: b,
            sha256: sha256.unwrap_or_default(),
        })),
        (None, None) => Err(fail(BAD_INPUT, anyhow!("give --file or --blob"))),
    }
}

async fn load(
    client: &async_nats::Client,
    app: String,
    manager: &str,
    source: AppSource,
    params: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let params = match params {
        Some(p) => json_value("--params", &p)?,
        None => Value::Nil,
    };
    let request = AppLoadRequest {
        app,
        source,
        params,
    };
    app_command(client, subject::manager_apps_load(manager), &request, json).await
}

/// Sends a load or unload to a manager and prints the app's status.
async fn app_command<Q: serde::Serialize>(
    client: &async_nats::Client,
    subject: String,
    q: &Q,
    json: bool,
) -> Result<(), Failure> {
    let status: AppStatus = request(client, subject, q, APP_TIMEOUT)
        .await
        .map_err(refused)?;
    print_apps(&[status], json);
    Ok(())
}

async fn list(
    client: &async_nats::Client,
    js: &jetstream::Context,
    manager: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let managers = match manager {
        Some(m) => vec![m],
        None => managers_up(js).await?,
    };
    let mut all = Vec::new();
    for m in &managers {
        let list: AppList = request(
            client,
            subject::manager_apps_list(m),
            &AppListRequest {},
            Duration::from_secs(5),
        )
        .await
        .map_err(refused)?;
        all.extend(list.apps);
    }
    print_apps(&all, json);
    if managers.is_empty() {
        eprintln!("tmctl: no manager is up");
    }
    Ok(())
}

/// The ids of the managers with a liveness record, sorted.
async fn managers_up(js: &jetstream::Context) -> Result<Vec<String>, Failure> {
    let kv = bus_schema::nats::open_kv(js, store::MANAGERS_BUCKET, 1)
        .await
        .map_err(|e| fail(1, e))?;
    let mut keys = kv.keys().await.map_err(|e| fail(1, e))?;
    let mut ids = Vec::new();
    while let Some(k) = keys.next().await {
        ids.push(k.map_err(|e| fail(1, e))?);
    }
    ids.sort();
    Ok(ids)
}

async fn request<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    q: &Q,
    timeout: Duration,
) -> Result<R, ErrorBody> {
    let payload =
        bus_schema::encode(q).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
    // The request's own timeout: the client's default (10 s) is shorter
    // than an app start that deploys to many monitors may take.
    let request = async_nats::client::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    let msg = match client.send_request(subject.clone(), request).await {
        Ok(m) => m,
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
            return Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!("no reply on {subject} within {} ms", timeout.as_millis()),
            ));
        }
        Err(e) => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownApp,
                format!("nobody answers on {subject}: is the manager up? ({e})"),
            ));
        }
    };
    bus_schema::decode::<bus_schema::Reply<R>>(&msg.payload)
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?
        .into_result()
}

fn print_apps(list: &[AppStatus], json: bool) {
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|a| {
                json!({"app": a.app, "manager": a.manager, "sha256": a.sha256,
                    "state": format!("{:?}", a.state).to_lowercase(), "started_unix_ms": a.started_unix_ms,
                    "source": match &a.source { AppSource::File { path } => json!({"file": path}),
                                                AppSource::Object(b) => json!({"blob": b.name}) },
                    "last_error": a.last_error})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:<20} {:<16} {:<8} {:>8}  {:<16}  LAST_ERROR",
        "APP", "MANAGER", "STATE", "UP_S", "SHA256"
    );
    for a in list {
        println!(
            "{:<20} {:<16} {:<8} {:>8}  {:<16}  {}",
            a.app,
            a.manager,
            format!("{:?}", a.state).to_lowercase(),
            now_ms().saturating_sub(a.started_unix_ms) / 1000,
            &a.sha256[..a.sha256.len().min(16)],
            a.last_error.as_deref().unwrap_or("")
        );
    }
}
