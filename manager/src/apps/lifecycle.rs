//! The apps of one manager: load (S1), each app's task, stop and unload
//! (S8), and the registry `apps.list` reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use bus_schema::{AppSource, AppState, AppStatus, BlobRef, ErrorBody, ErrorCode, Report, Value};
use tm_app_api as api;
use tokio::sync::{mpsc, oneshot};
use wasm_host::trust::TrustedKeys;
use wasm_host::{Failure, Sandbox};
use wasmtime::{Linker, Module};

use super::guest::{self, Ctx, Guest};
use super::{AppLimits, Msg, Shared, fetch, refuse};
use crate::archive::Archive;
use crate::control::{self, Control, now_ms};
use crate::topology;

/// Asks an app's task to stop; it answers with the outcome of the app's
/// `stop`.
type StopSignal = oneshot::Sender<oneshot::Sender<Result<(), String>>>;

struct Running {
    status: Arc<Mutex<AppStatus>>,
    stop: Option<StopSignal>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The mgmt apps of one manager.
#[derive(Clone)]
pub struct Apps {
    shared: Arc<Shared>,
    linker: Arc<Linker<Ctx>>,
    apps: Arc<Mutex<BTreeMap<String, Running>>>,
}

impl Apps {
    /// A host for apps of manager `control.id()`.
    ///
    /// # Errors
    /// If the topology bucket cannot be opened or the host functions cannot
    /// be defined.
    pub async fn new(
        control: Control,
        sandbox: Sandbox,
        archive: Option<Archive>,
        limits: AppLimits,
        trusted: TrustedKeys,
    ) -> anyhow::Result<Apps> {
        let js = jetstream::new(control.client().clone());
        let topology = topology::open_bucket(&js, 1).await?;
        let linker = guest::linker(sandbox.engine())?;
        Ok(Apps {
            shared: Arc::new(Shared {
                manager: control.id().to_owned(),
                control,
                js,
                topology,
                archive,
                sandbox,
                limits,
                trusted,
                commands: wasm_host::metrics::CommandTimes::default(),
            }),
            linker: Arc::new(linker),
            apps: Arc::default(),
        })
    }

    /// The manager id.
    #[must_use]
    pub fn manager(&self) -> &str {
        &self.shared.manager
    }

    /// How long the manager's commands took (for the metrics endpoint).
    #[must_use]
    pub fn commands(&self) -> &wasm_host::metrics::CommandTimes {
        &self.shared.commands
    }

    /// The control plane the apps use.
    #[must_use]
    pub fn control(&self) -> &Control {
        &self.shared.control
    }

    /// Every app's status, by name.
    #[must_use]
    pub fn list(&self) -> Vec<AppStatus> {
        self.apps
            .lock()
            .expect("apps")
            .values()
            .map(|r| r.status.lock().expect("app status").clone())
            .collect()
    }

    /// Names of the apps that are running.
    #[must_use]
    pub fn running(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|s| s.state == AppState::Running)
            .map(|s| s.app)
            .collect()
    }

    /// S1: loads an app and starts it with `params`; returns once its
    /// `start` returned (it may have deployed analyzers by then).
    ///
    /// # Errors
    /// `app_exists`, an unreadable source, `digest_mismatch`, `bad_module`,
    /// `abi_mismatch`, `bad_params` (the app's own message), or the trap
    /// `start` ended in.
    pub async fn load(
        &self,
        app: &str,
        source: AppSource,
        params: Value,
    ) -> Result<AppStatus, ErrorBody> {
        self.load_from(app, source, params, false).await
    }

    /// [`Apps::load`] for the manager's own `--app` flags: a file source is
    /// accepted even where signatures are required (the operator's own file).
    ///
    /// # Errors
    /// As [`Apps::load`].
    pub async fn load_local(
        &self,
        app: &str,
        source: AppSource,
        params: Value,
    ) -> Result<AppStatus, ErrorBody> {
        self.load_from(app, source, params, true).await
    }

    async fn load_from(
        &self,
        app: &str,
        source: AppSource,
        params: Value,
        local: bool,
    ) -> Result<AppStatus, ErrorBody> {
        bus_schema::validate_token("app", app)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        if self.apps.lock().expect("apps").contains_key(app) {
            return refuse(
                ErrorCode::AppExists,
                format!(
                    "app = {app:?} is already loaded on manager {}",
                    self.shared.manager
                ),
            );
        }
        let (bytes, sha256) = fetch::fetch(&self.shared, &source, local).await?;
        if let AppSource::Object(BlobRef { sha256: want, .. }) = &source
            && !want.is_empty()
            && *want != sha256
        {
            return refuse(
                ErrorCode::DigestMismatch,
                format!("source.sha256 = {want:?}: the blob's digest is {sha256}"),
            );
        }
        let module = self
            .shared
            .sandbox
            .module(&sha256, &bytes)
            .map_err(|e| ErrorBody::new(ErrorCode::BadModule, e.to_string()))?;
        let status = Arc::new(Mutex::new(AppStatus {
            app: app.to_owned(),
            manager: self.shared.manager.clone(),
            source,
            sha256,
            state: AppState::Running,
            started_unix_ms: now_ms(),
            last_error: None,
        }));
        // Reserve the name while starting, so a second load is refused.
        self.apps.lock().expect("apps").insert(
            app.to_owned(),
            Running {
                status: status.clone(),
                stop: None,
                task: None,
            },
        );
        match self.start(app, &module, &params, status.clone()).await {
            Ok(running) => {
                self.apps
                    .lock()
                    .expect("apps")
                    .insert(app.to_owned(), running);
                tracing::info!(app, "app started");
                Ok(status.lock().expect("app status").clone())
            }
            Err(e) => {
                self.apps.lock().expect("apps").remove(app);
                tracing::warn!(app, error = %e, "app refused to start");
                Err(e)
            }
        }
    }

    /// Starts the app and its task.
    async fn start(
        &self,
        app: &str,
        module: &Module,
        params: &Value,
        status: Arc<Mutex<AppStatus>>,
    ) -> Result<Running, ErrorBody> {
        let (inbox, rx) = mpsc::channel(256);
        let guest = Guest::start(&self.shared, &self.linker, app, module, params, inbox).await?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let task =
            tokio::spawn(
                self.clone()
                    .serve(app.to_owned(), guest, rx, stop_rx, status.clone()),
            );
        Ok(Running {
            status,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// An app's task: timer ticks and events from its inbox, one at a time,
    /// until it is asked to stop (that first) or fails.
    async fn serve(
        self,
        name: String,
        mut guest: Guest,
        mut rx: mpsc::Receiver<Msg>,
        mut stop_rx: oneshot::Receiver<oneshot::Sender<Result<(), String>>>,
        status: Arc<Mutex<AppStatus>>,
    ) {
        loop {
            let msg = tokio::select! {
                biased;
                done = &mut stop_rx => {
                    let result = match done {
                        Ok(_) => guest.stop().await,
                        Err(_) => Ok(()),
                    };
                    guest.cancel_all();
                    if let Ok(reply) = done {
                        let _ = reply.send(result);
                    }
                    return;
                }
                msg = rx.recv() => msg,
            };
            let Some(msg) = msg else {
                return;
            };
            match guest.deliver(msg).await {
                Ok(raw) if api::Status::from_raw(raw) == api::Status::Ok => {}
                Ok(_) => {
                    let why = guest.last_error().await;
                    tracing::warn!(app = %name, error = %why, "app call failed");
                    status.lock().expect("app status").last_error = Some(why);
                }
                Err(failure) => {
                    guest.cancel_all();
                    self.failed(&name, &status, &failure).await;
                    return;
                }
            }
        }
    }

    /// Marks an app failed (it has been dropped) and reports it.
    async fn failed(&self, app: &str, status: &Mutex<AppStatus>, failure: &Failure) {
        tracing::error!(app, error = %failure, "app failed and was unloaded");
        {
            let mut s = status.lock().expect("app status");
            s.state = AppState::Failed;
            s.last_error = Some(failure.to_string());
        }
        let report = Report {
            manager: self.shared.manager.clone(),
            app: app.to_owned(),
            seq: 0,
            at_unix_ms: now_ms(),
            kind: "app-failed".into(),
            body: Value::from(failure.to_string()),
        };
        self.shared
            .publish_report(
                &report,
                &format!("{}:{app}:failed:{}", self.shared.manager, report.at_unix_ms),
            )
            .await;
    }

    /// S8: stops an app (its `tm_app_stop` runs first, so it can unload what
    /// it deployed) and unloads it. A failed app is just removed.
    ///
    /// # Errors
    /// `unknown_app`.
    pub async fn unload(&self, app: &str) -> Result<AppStatus, ErrorBody> {
        let running = self.apps.lock().expect("apps").remove(app);
        let Some(mut running) = running else {
            return refuse(
                ErrorCode::UnknownApp,
                format!(
                    "app = {app:?}: no such app on manager {}",
                    self.shared.manager
                ),
            );
        };
        let mut outcome = Ok(());
        if let Some(stop) = running.stop.take() {
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).is_ok() {
                // The app's stop may unload analyzers: allow it their time.
                outcome = match tokio::time::timeout(control::LOAD_TIMEOUT, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Ok(()),
                    Err(_) => Err("stop did not finish within 30 s".to_owned()),
                };
            }
        }
        if let Some(task) = running.task.take() {
            task.abort();
        }
        let mut status = running.status.lock().expect("app status").clone();
        if status.state == AppState::Running {
            status.state = AppState::Stopped;
        }
        if let Err(e) = outcome {
            status.last_error = Some(format!("stop: {e}"));
        }
        tracing::info!(app, "app unloaded");
        Ok(status)
    }

    /// Unloads every app (clean shutdown).
    pub async fn unload_all(&self) {
        let names: Vec<String> = self.apps.lock().expect("apps").keys().cloned().collect();
        for name in names {
            let _ = self.unload(&name).await;
        }
    }
}
