//! Management apps in wasmtime: load (S1), timers and events, unload (S8).
//!
//! Each app runs in its own store on its own tokio task; calls into one
//! app never overlap. Host calls that touch NATS are async host functions:
//! while an app waits for a monitor, its task is suspended and everything
//! else (other apps, commands to this manager) carries on. Every guest call
//! has an epoch deadline; time spent waiting inside a host call does not
//! count against it (the deadline is renewed when the host call returns).
//! An app that traps, overruns its deadline or its memory cap is unloaded,
//! marked `failed` in the app list with the reason, and reported on
//! `tm.v1.reports.{manager}.{app}` (kind `app-failed`); other apps carry on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bus_schema::{
    AppSource, AppState, AppStatus, BlobRef, ErrorBody, ErrorCode, Event, Report, Value,
    store::{self, BlobKind, BlobMeta},
    subject,
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tm_app_api as api;
use tokio::sync::{mpsc, oneshot};
use wasm_host::trust::TrustedKeys;
use wasm_host::{Failure, GuestMemory, Limits, Sandbox};
use wasmtime::{AsContextMut, Caller, Instance, Linker, Module, Store};

use crate::archive::Archive;
use crate::control::{self, Control, DeploySpec, Targets, now_ms};
use crate::topology::{self, Topology};

/// Limits every app runs under.
#[derive(Debug, Clone)]
pub struct AppLimits {
    /// Linear-memory cap, bytes.
    pub memory_bytes: usize,
    /// Deadline of one guest call's computation.
    pub call_timeout: Duration,
    /// Largest request or reply passed through `call`, bytes.
    pub max_message: usize,
    /// Directories whose files `apps.load` may name (`source.file`); a
    /// path elsewhere is refused. Empty: no file is read for a request
    /// over the bus (the manager's own `--app` flags still are).
    pub apps_dirs: Vec<std::path::PathBuf>,
}

/// Largest app module a manager reads, from a file or the object store.
pub const MAX_APP_BYTES: usize = 64 << 20;

impl AppLimits {
    /// Checks the limits as `tm-manager`'s flags give them, naming the flag.
    ///
    /// # Errors
    /// The first limit out of its range, or an apps directory that is not one.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mb = self.memory_bytes >> 20;
        if !(1..=4096).contains(&mb) || !self.memory_bytes.is_multiple_of(1 << 20) {
            anyhow::bail!("--app-memory-mb = {mb}: must be 1 to 4096");
        }
        let ms = self.call_timeout.as_millis();
        if !(1..=600_000).contains(&ms) {
            anyhow::bail!("--app-call-timeout-ms = {ms}: must be 1 to 600000");
        }
        for dir in &self.apps_dirs {
            if !dir.is_dir() {
                anyhow::bail!("--apps-dir {}: not a directory", dir.display());
            }
        }
        Ok(())
    }
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(1),
            max_message: 16 << 20,
            apps_dirs: Vec::new(),
        }
    }
}

/// What every app's host calls share.
struct Shared {
    manager: String,
    control: Control,
    js: jetstream::Context,
    topology: kv::Store,
    archive: Option<Archive>,
    sandbox: Sandbox,
    limits: AppLimits,
    /// Signers whose apps load from the object store.
    trusted: TrustedKeys,
    /// How long the manager's own commands took.
    commands: wasm_host::metrics::CommandTimes,
}

/// Store data of one app.
struct Ctx {
    app: String,
    shared: Arc<Shared>,
    limits: Limits,
    reply: Vec<u8>,
    timers: HashMap<u32, tokio::task::JoinHandle<()>>,
    subscriptions: HashMap<String, tokio::task::JoinHandle<()>>,
    inbox: mpsc::Sender<Msg>,
    report_seq: u64,
    deployed: u64,
}

impl AsRef<Limits> for Ctx {
    fn as_ref(&self) -> &Limits {
        &self.limits
    }
}

impl Ctx {
    fn cancel_all(&mut self) {
        for (_, t) in self.timers.drain() {
            t.abort();
        }
        for (_, s) in self.subscriptions.drain() {
            s.abort();
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.cancel_all();
    }
}

/// What an app's task is asked to do.
enum Msg {
    Timer(u32),
    Event(Vec<u8>),
}

struct Running {
    status: Arc<Mutex<AppStatus>>,
    stop: Option<oneshot::Sender<oneshot::Sender<Result<(), String>>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The mgmt apps of one manager.
#[derive(Clone)]
pub struct Apps {
    shared: Arc<Shared>,
    linker: Arc<Linker<Ctx>>,
    apps: Arc<Mutex<BTreeMap<String, Running>>>,
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ErrorBody> {
    Err(ErrorBody::new(code, message))
}

/// The file a request over the bus names, if it lies under one of
/// `dirs`: the path must be absolute without `..`, and stay under the
/// directory once symbolic links are resolved. Nothing outside is
/// touched, so a refusal says nothing about what exists there.
fn served_file(path: &str, dirs: &[std::path::PathBuf]) -> Result<std::path::PathBuf, ErrorBody> {
    use std::path::{Component, Path};
    let refused = |why: String| {
        Err(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("source.path = {path:?}: {why}"),
        ))
    };
    if dirs.is_empty() {
        return refused(
            "this manager serves no app files over the bus (start it with --apps-dir DIR, or put the app in the object store)".into(),
        );
    }
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return refused("must be an absolute path without `..`".into());
    }
    let canonical_dirs: Vec<std::path::PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let under = |f: &Path| canonical_dirs.iter().any(|d| f.starts_with(d));
    if !under(p) && !dirs.iter().any(|d| p.starts_with(d)) {
        return refused(format!("not under this manager's --apps-dir {dirs:?}"));
    }
    match std::fs::canonicalize(p) {
        Ok(real) if under(&real) => Ok(real),
        Ok(_) => refused(format!(
            "leads outside this manager's --apps-dir {dirs:?} (a symbolic link)"
        )),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::BlobNotFound,
            format!("source.path = {path:?}: {e}"),
        )),
    }
}

/// A regular file's bytes, at most `max` of them. The error says why it
/// cannot be had (`blob_not_found`, or `bad_module` when too large), never
/// what it holds.
async fn read_capped(path: &std::path::Path, max: usize) -> Result<Vec<u8>, (ErrorCode, String)> {
    use tokio::io::AsyncReadExt;
    let missing = |why: String| (ErrorCode::BlobNotFound, why);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| missing(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| missing(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(missing("not a regular file".into()));
    }
    let too_large = |size: String| {
        (
            ErrorCode::BadModule,
            format!("{size} bytes, more than the {max} allowed"),
        )
    };
    if meta.len() > max as u64 {
        return Err(too_large(meta.len().to_string()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| missing(format!("cannot read: {e}")))?;
    if bytes.len() > max {
        return Err(too_large(format!("over {max}")));
    }
    Ok(bytes)
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
        let mut linker = Linker::new(sandbox.engine());
        define_imports(&mut linker)?;
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

    /// The app's bytes and SHA-256; an object-store blob's digest and
    /// signature are checked against its metadata first.
    async fn fetch(&self, source: &AppSource, local: bool) -> Result<(Vec<u8>, String), ErrorBody> {
        match source {
            AppSource::File { path } => {
                if self.shared.trusted.enforced() && !local {
                    return refuse(
                        ErrorCode::UnsignedBlob,
                        format!(
                            "source.path = {path:?}: this manager runs only signed apps from {} (files only from its own --app flag)",
                            store::BLOBS_BUCKET
                        ),
                    );
                }
                let file = if local {
                    std::path::PathBuf::from(path)
                } else {
                    served_file(path, &self.shared.limits.apps_dirs)?
                };
                let bytes = read_capped(&file, MAX_APP_BYTES)
                    .await
                    .map_err(|(code, why)| {
                        ErrorBody::new(code, format!("source.path = {path:?}: {why}"))
                    })?;
                let sha256 = wasm_host::sha256_hex(&bytes);
                Ok((bytes, sha256))
            }
            AppSource::Object(blob) => {
                use bus_schema::nats::BlobReadError;
                let (info, bytes) =
                    match bus_schema::nats::read_blob(&self.shared.js, &blob.name, MAX_APP_BYTES)
                        .await
                    {
                        Ok(read) => read,
                        Err(e @ BlobReadError::NotFound { .. }) => {
                            return refuse(
                                ErrorCode::BlobNotFound,
                                format!("source.name = {:?}: {e}", blob.name),
                            );
                        }
                        Err(e @ BlobReadError::TooLarge { .. }) => {
                            return refuse(
                                ErrorCode::BadModule,
                                format!("source.name = {:?}: {e}", blob.name),
                            );
                        }
                        Err(e) => {
                            return refuse(
                                ErrorCode::Unavailable,
                                format!("reading {}: {e}", blob.name),
                            );
                        }
                    };
                if let Ok(meta) = BlobMeta::from_map(&info.metadata)
                    && meta.kind != BlobKind::MgmtApp
                {
                    return refuse(
                        ErrorCode::BadModule,
                        format!(
                            "source.name = {:?} is an {}, not a mgmt app",
                            blob.name,
                            meta.kind.as_str()
                        ),
                    );
                }
                // Digest and signature, before anything is compiled.
                let sha256 = self.shared.trusted.verify(
                    BlobKind::MgmtApp,
                    &blob.name,
                    &info.metadata,
                    &bytes,
                )?;
                Ok((bytes, sha256))
            }
        }
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
        let (bytes, sha256) = self.fetch(&source, local).await?;
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

    async fn start(
        &self,
        app: &str,
        module: &Module,
        params: &Value,
        status: Arc<Mutex<AppStatus>>,
    ) -> Result<Running, ErrorBody> {
        let (inbox, mut rx) = mpsc::channel(256);
        let mut store = Store::new(
            self.shared.sandbox.engine(),
            Ctx {
                app: app.to_owned(),
                shared: self.shared.clone(),
                limits: Limits::new(self.shared.limits.memory_bytes),
                reply: Vec::new(),
                timers: HashMap::new(),
                subscriptions: HashMap::new(),
                inbox,
                report_seq: 0,
                deployed: 0,
            },
        );
        store.limiter(|c| &mut c.limits);
        store.epoch_deadline_trap();
        let ticks = self.shared.sandbox.ticks(self.shared.limits.call_timeout);
        store.set_epoch_deadline(ticks);
        let instance = self
            .linker
            .instantiate_async(&mut store, module)
            .await
            .map_err(|e| {
                ErrorBody::new(ErrorCode::BadModule, format!("cannot instantiate: {e:#}"))
            })?;
        let mut guest = Guest {
            store,
            instance,
            ticks,
            limit_ms: self.shared.limits.call_timeout.as_millis() as u64,
        };
        let abi = guest
            .call::<(), u32>(api::export::ABI_VERSION, ())
            .await
            .map_err(|e| {
                ErrorBody::new(
                    ErrorCode::AbiMismatch,
                    format!("no usable {}: {e}", api::export::ABI_VERSION),
                )
            })?;
        if abi != api::ABI_VERSION {
            return refuse(
                ErrorCode::AbiMismatch,
                format!(
                    "the app speaks mgmt-app ABI {abi}; this manager speaks {}",
                    api::ABI_VERSION
                ),
            );
        }
        let params = bus_schema::encode(params)
            .map_err(|e| ErrorBody::new(ErrorCode::BadParams, e.to_string()))?;
        let raw = guest
            .call_with_bytes(api::export::START, &params)
            .await
            .map_err(|f| ErrorBody::new(ErrorCode::GuestTrap, f.to_string()))?;
        match api::Status::from_raw(raw) {
            api::Status::Ok => {}
            api::Status::BadParams => {
                return refuse(ErrorCode::BadParams, guest.last_error().await);
            }
            api::Status::Failed => {
                return refuse(
                    ErrorCode::Internal,
                    format!("start failed: {}", guest.last_error().await),
                );
            }
        }
        let (stop_tx, mut stop_rx) = oneshot::channel::<oneshot::Sender<Result<(), String>>>();
        let apps = self.clone();
        let name = app.to_owned();
        let task_status = status.clone();
        let task = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    biased;
                    done = &mut stop_rx => {
                        let result = match done {
                            Ok(_) => guest.stop().await,
                            Err(_) => Ok(()),
                        };
                        guest.store.data_mut().cancel_all();
                        if let Ok(reply) = done {
                            let _ = reply.send(result);
                        }
                        return;
                    }
                    msg = rx.recv() => msg,
                };
                let outcome = match msg {
                    Some(Msg::Timer(id)) => {
                        guest
                            .call::<(u32, u64), u32>(api::export::TIMER, (id, now_ns()))
                            .await
                    }
                    Some(Msg::Event(bytes)) => {
                        guest.call_with_bytes(api::export::EVENT, &bytes).await
                    }
                    None => return,
                };
                match outcome {
                    Ok(raw) if api::Status::from_raw(raw) == api::Status::Ok => {}
                    Ok(_) => {
                        let why = guest.last_error().await;
                        tracing::warn!(app = %name, error = %why, "app call failed");
                        task_status.lock().expect("app status").last_error = Some(why);
                    }
                    Err(failure) => {
                        guest.store.data_mut().cancel_all();
                        apps.failed(&name, &task_status, &failure).await;
                        return;
                    }
                }
            }
        });
        Ok(Running {
            status,
            stop: Some(stop_tx),
            task: Some(task),
        })
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
        publish_report(
            &self.shared,
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

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An instantiated app and the calls into it.
struct Guest {
    store: Store<Ctx>,
    instance: Instance,
    ticks: u64,
    limit_ms: u64,
}

impl Guest {
    async fn call<P, R>(&mut self, name: &str, params: P) -> Result<R, Failure>
    where
        P: wasmtime::WasmParams + Sync,
        R: wasmtime::WasmResults + Sync,
    {
        let f = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| Failure::Abi {
                call: name.into(),
                detail: format!("{e:#}"),
            })?;
        self.store.set_epoch_deadline(self.ticks);
        f.call_async(&mut self.store, params)
            .await
            .map_err(|e| Failure::classify(&self.store, name, self.limit_ms, &e))
    }

    fn memory(&mut self) -> Result<GuestMemory, Failure> {
        self.instance
            .get_memory(&mut self.store, api::export::MEMORY)
            .map(GuestMemory)
            .ok_or_else(|| Failure::Abi {
                call: "memory".into(),
                detail: "the app exports no memory".into(),
            })
    }

    /// Copies `bytes` into a guest buffer and calls `name(ptr, len)`.
    async fn call_with_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<u32, Failure> {
        let ptr = self
            .call::<u32, u32>(api::export::ALLOC, bytes.len() as u32)
            .await?;
        if ptr == 0 && !bytes.is_empty() {
            return Err(Failure::Abi {
                call: api::export::ALLOC.into(),
                detail: format!("could not allocate {} bytes", bytes.len()),
            });
        }
        let memory = self.memory()?;
        memory
            .write(&mut self.store, ptr, bytes)
            .map_err(|detail| Failure::Abi {
                call: name.into(),
                detail,
            })?;
        self.call::<(u32, u32), u32>(name, (ptr, bytes.len() as u32))
            .await
    }

    async fn last_error(&mut self) -> String {
        let packed = match self.call::<(), u64>(api::export::LAST_ERROR, ()).await {
            Ok(p) => p,
            Err(e) => return format!("(no message: {e})"),
        };
        let (ptr, len) = api::unpack(packed);
        match self.memory() {
            Ok(m) => m
                .read(&self.store, ptr, len, 64 * 1024)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(unreadable message: {e})")),
            Err(e) => format!("(no message: {e})"),
        }
    }

    async fn stop(&mut self) -> Result<(), String> {
        if self
            .instance
            .get_typed_func::<(), u32>(&mut self.store, api::export::STOP)
            .is_err()
        {
            return Ok(());
        }
        match self.call::<(), u32>(api::export::STOP, ()).await {
            Ok(raw) if api::Status::from_raw(raw) == api::Status::Ok => Ok(()),
            Ok(_) => Err(self.last_error().await),
            Err(f) => Err(f.to_string()),
        }
    }
}

fn guest_memory(caller: &mut Caller<'_, Ctx>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export(api::export::MEMORY)
        .and_then(wasmtime::Extern::into_memory)
        .ok_or_else(|| wasmtime::Error::msg("the app exports no memory"))
}

fn define_imports(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        api::IMPORT_MODULE,
        api::import::LOG,
        |mut caller: Caller<'_, Ctx>, level: u32, ptr: u32, len: u32| -> wasmtime::Result<()> {
            let memory = guest_memory(&mut caller)?;
            let text = GuestMemory::slice(memory.data(&caller), ptr, len, 16 * 1024)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .map_err(wasmtime::Error::msg)?;
            let app = &caller.data().app;
            match level {
                0 => tracing::error!(app = %app, "{text}"),
                1 => tracing::warn!(app = %app, "{text}"),
                2 => tracing::info!(app = %app, "{text}"),
                3 => tracing::debug!(app = %app, "{text}"),
                _ => tracing::trace!(app = %app, "{text}"),
            }
            Ok(())
        },
    )?;
    linker.func_wrap(api::IMPORT_MODULE, api::import::NOW, || -> u64 { now_ns() })?;
    linker.func_wrap_async(
        api::IMPORT_MODULE,
        api::import::CALL,
        |mut caller: Caller<'_, Ctx>, (op_ptr, op_len, req_ptr, req_len): (u32, u32, u32, u32)| {
            Box::new(async move {
                let memory = guest_memory(&mut caller)?;
                let max = caller.data().shared.limits.max_message;
                let (op, request) = {
                    let data = memory.data(&caller);
                    let op = GuestMemory::slice(data, op_ptr, op_len, 64)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .map_err(wasmtime::Error::msg)?;
                    let request = GuestMemory::slice(data, req_ptr, req_len, max)
                        .map_err(wasmtime::Error::msg)?
                        .to_vec();
                    (op, request)
                };
                let reply = dispatch(caller.data_mut(), &op, &request).await;
                let len = reply.len() as u32;
                caller.data_mut().reply = reply;
                // Waiting for the bus does not count against the deadline.
                let ticks = {
                    let s = &caller.data().shared;
                    s.sandbox.ticks(s.limits.call_timeout)
                };
                caller.as_context_mut().set_epoch_deadline(ticks);
                Ok(len)
            })
        },
    )?;
    linker.func_wrap(
        api::IMPORT_MODULE,
        api::import::REPLY,
        |mut caller: Caller<'_, Ctx>, ptr: u32| -> wasmtime::Result<u32> {
            let memory = guest_memory(&mut caller)?;
            let reply = std::mem::take(&mut caller.data_mut().reply);
            memory
                .write(&mut caller, ptr as usize, &reply)
                .map_err(|_| {
                    wasmtime::Error::msg(format!(
                        "reply: range {ptr}+{} is outside guest memory",
                        reply.len()
                    ))
                })?;
            Ok(reply.len() as u32)
        },
    )?;
    Ok(())
}

fn encode_reply<T: Serialize>(reply: Result<T, ErrorBody>) -> Vec<u8> {
    let envelope = match reply {
        Ok(v) => api::Reply::Ok(v),
        Err(e) => api::Reply::Err(api::CallError {
            code: e.code.as_str().to_owned(),
            message: e.message,
        }),
    };
    rmp_serde::to_vec_named(&envelope).unwrap_or_else(|e| {
        rmp_serde::to_vec_named(&api::Reply::<()>::Err(api::CallError {
            code: "internal".into(),
            message: format!("cannot encode the reply: {e}"),
        }))
        .unwrap_or_default()
    })
}

fn decode_request<T: DeserializeOwned>(op: &str, bytes: &[u8]) -> Result<T, ErrorBody> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("{op}: bad request: {e}")))
}

async fn load_topology(shared: &Shared) -> Result<(Topology, u64), ErrorBody> {
    match topology::load(&shared.topology).await {
        Ok(Some(stored)) => Ok((stored.topology, stored.revision)),
        Ok(None) => refuse(
            ErrorCode::Unavailable,
            "no topology is stored: import one with `tmctl topology import FILE`",
        ),
        Err(e) => refuse(ErrorCode::Unavailable, e.to_string()),
    }
}

fn link_view(link: &topology::Link) -> api::LinkView {
    api::LinkView {
        from_router: link.from.to_string(),
        to_router: link.to.to_string(),
        taps: link
            .seen_by
            .iter()
            .map(|t| api::TapView {
                monitor_address: t.monitor.to_string(),
                link_id: t.link_id,
            })
            .collect(),
    }
}

fn router(field: &str, text: &str) -> Result<std::net::IpAddr, ErrorBody> {
    text.parse().map_err(|_| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{field} = {text:?} is not a router address"),
        )
    })
}

fn query<T>(r: Result<T, topology::QueryError>) -> Result<T, ErrorBody> {
    r.map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}

fn filter(f: api::Filter) -> bus_schema::Filter {
    let ports = |v: Vec<api::PortRange>| {
        v.into_iter()
            .map(|p| bus_schema::PortRange {
                from: p.from,
                to: p.to,
            })
            .collect()
    };
    bus_schema::Filter {
        src: f.src,
        dst: f.dst,
        src_ports: ports(f.src_ports),
        dst_ports: ports(f.dst_ports),
        protocols: f.protocols,
        bpf: f.bpf,
    }
}

fn snake<T: Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn status_view(s: bus_schema::MonitorStatus) -> api::MonitorStatusView {
    api::MonitorStatusView {
        monitor: s.monitor,
        address: s.address,
        uptime_s: s.uptime_s,
        links: s
            .links
            .into_iter()
            .map(|l| api::LinkStatusView {
                id: l.link.id,
                state: snake(l.state),
                packets: l.packets,
                bytes: l.bytes,
                drops: l.kernel_drops + l.interface_drops,
            })
            .collect(),
        deployments: s
            .deployments
            .into_iter()
            .map(|d| api::DeploymentStatusView {
                deployment: d.deployment,
                analyzer: d.analyzer.name,
                owner: d.owner,
                state: snake(d.state),
                stats: api::Stats {
                    packets_in: d.stats.packets_in,
                    bytes_in: d.stats.bytes_in,
                    dropped: d.stats.dropped,
                },
                last_error: d.last_error,
            })
            .collect(),
    }
}

fn missing(m: control::Missing) -> api::Missing {
    api::Missing {
        monitor: m.monitor,
        code: m.error.code.as_str().to_owned(),
        message: m.error.message,
    }
}

fn collected(c: control::Collected) -> api::Collected<Value> {
    api::Collected {
        deployment: c.deployment,
        results: c
            .results
            .into_iter()
            .map(|r| api::MonitorResults {
                monitor: r.window.monitor,
                address: r.address,
                seq: r.window.seq,
                start_unix_ms: r.window.start_unix_ms,
                end_unix_ms: r.window.end_unix_ms,
                stats: api::Stats {
                    packets_in: r.window.stats.packets_in,
                    bytes_in: r.window.stats.bytes_in,
                    dropped: r.window.stats.dropped,
                },
                results: r.window.results,
            })
            .collect(),
        missing: c.missing.into_iter().map(missing).collect(),
    }
}

async fn publish_report(shared: &Shared, report: &Report, msg_id: &str) {
    let Ok(bytes) = bus_schema::encode(report) else {
        return;
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let subject = subject::reports(&shared.manager, &report.app);
    match shared
        .js
        .publish_with_headers(subject, headers, bytes.into())
        .await
    {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(app = %report.app, error = %e, "report not stored");
            }
        }
        Err(e) => tracing::warn!(app = %report.app, error = %e, "report not published"),
    }
}

/// Runs one host call for an app; the reply is an encoded envelope.
async fn dispatch(ctx: &mut Ctx, op: &str, request: &[u8]) -> Vec<u8> {
    let shared = ctx.shared.clone();
    match op {
        api::op::TOPOLOGY => {
            encode_reply(
                load_topology(&shared)
                    .await
                    .map(|(t, revision)| api::TopologyView {
                        revision,
                        routers: t.routers().iter().map(ToString::to_string).collect(),
                        links: t.links().into_iter().map(link_view).collect(),
                    }),
            )
        }
        api::op::SHORTEST_PATH | api::op::FLOW_PATH => {
            let reply = async {
                let q: api::RouterPair = decode_request(op, request)?;
                let (from, to) = (router("from", &q.from)?, router("to", &q.to)?);
                let (t, _) = load_topology(&shared).await?;
                query(t.shortest_path(from, to)).map(|p| {
                    (
                        p.routers
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>(),
                        p.links.into_iter().map(link_view).collect::<Vec<_>>(),
                    )
                })
            }
            .await;
            if op == api::op::SHORTEST_PATH {
                encode_reply(reply.map(|(routers, _)| routers))
            } else {
                encode_reply(reply.map(|(_, links)| links))
            }
        }
        api::op::NEIGHBOURS => encode_reply(
            async {
                let q: api::Router = decode_request(op, request)?;
                let r = router("router", &q.router)?;
                let (t, _) = load_topology(&shared).await?;
                let n = query(t.neighbours(r))?;
                Ok(api::NeighboursView {
                    outgoing: n.outgoing.iter().map(ToString::to_string).collect(),
                    incoming: n.incoming.iter().map(ToString::to_string).collect(),
                })
            }
            .await,
        ),
        api::op::UNMONITORED => encode_reply(load_topology(&shared).await.map(|(t, _)| {
            t.unmonitored_links()
                .into_iter()
                .map(link_view)
                .collect::<Vec<_>>()
        })),
        api::op::MONITORS => encode_reply(shared.control.monitors().await.map(|monitors| {
            let now = now_ms();
            monitors
                .into_values()
                .map(|m| api::MonitorView {
                    monitor: m.monitor,
                    address: m.address,
                    links: m
                        .links
                        .into_iter()
                        .map(|l| api::MonitorLink {
                            id: l.id,
                            from_router: l.from_router,
                            to_router: l.to_router,
                        })
                        .collect(),
                    heartbeat_age_ms: now.saturating_sub(m.heartbeat_unix_ms),
                })
                .collect::<Vec<_>>()
        })),
        api::op::STATUS => encode_reply(
            async {
                let q: api::StatusQuery = decode_request(op, request)?;
                let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(2000).clamp(1, 60_000));
                let all = shared.control.status(&q.monitors, timeout).await?;
                let mut out = api::Statuses {
                    monitors: Vec::new(),
                    missing: Vec::new(),
                };
                for (monitor, reply) in all {
                    match reply {
                        Ok(s) => out.monitors.push(status_view(s)),
                        Err(error) => out
                            .missing
                            .push(missing(control::Missing { monitor, error })),
                    }
                }
                out.monitors.sort_by(|a, b| a.monitor.cmp(&b.monitor));
                Ok(out)
            }
            .await,
        ),
        api::op::DEPLOY => {
            let reply = async {
                let q: api::Deploy<Value> = decode_request(op, request)?;
                let deployment = if q.deployment.is_empty() {
                    ctx.deployed += 1;
                    let id = format!(
                        "{}-{}-{}-{}",
                        ctx.app, q.analyzer, shared.manager, ctx.deployed
                    );
                    id.chars().take(bus_schema::MAX_TOKEN_LEN).collect()
                } else {
                    q.deployment
                };
                let spec = DeploySpec {
                    deployment,
                    analyzer: q.analyzer,
                    sha256: Some(q.sha256).filter(|s| !s.is_empty()),
                    params: q.params,
                    filter: filter(q.filter),
                    targets: match q.targets {
                        api::Targets::All => Targets::All,
                        api::Targets::Monitors(m) => Targets::Monitors(m),
                        api::Targets::Links(l) => Targets::Links(
                            l.into_iter()
                                .map(|t| (t.monitor_address, t.link_id))
                                .collect(),
                        ),
                    },
                    report_every_ms: q.report_every_ms,
                };
                let d = shared.control.deploy(&spec).await?;
                Ok(api::Deployed {
                    deployment: d.record.deployment,
                    sha256: d.record.analyzer.sha256,
                    placed: d
                        .placed
                        .into_iter()
                        .map(|p| api::Placement {
                            monitor: p.monitor,
                            address: p.address,
                            links: p.links,
                        })
                        .collect(),
                    failed: d.failed.into_iter().map(missing).collect(),
                })
            }
            .await;
            encode_reply(reply)
        }
        api::op::CONFIGURE => encode_reply(
            async {
                let q: api::Configure<Value> = decode_request(op, request)?;
                let c = shared
                    .control
                    .configure(&q.deployment, q.params, false)
                    .await?;
                Ok(api::Outcome {
                    done: c.done.into_iter().map(|(m, _)| m).collect(),
                    failed: c.failed.into_iter().map(missing).collect(),
                })
            }
            .await,
        ),
        api::op::COLLECT => encode_reply(
            async {
                let q: api::Collect = decode_request(op, request)?;
                let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(2000).clamp(1, 60_000));
                let c = shared.control.collect(&q.deployment, timeout).await?;
                if q.archive {
                    let archive = shared.archive.as_ref().ok_or_else(|| {
                        ErrorBody::new(
                            ErrorCode::Unavailable,
                            "archive: this manager has no archive (start it with --archive)",
                        )
                    })?;
                    archive
                        .results(&q.deployment, &c.results)
                        .await
                        .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
                }
                Ok(collected(c))
            }
            .await,
        ),
        api::op::UNLOAD => encode_reply(
            async {
                let q: api::DeploymentRef = decode_request(op, request)?;
                let c = shared.control.unload(&q.deployment, false).await?;
                if let Some(s) = ctx.subscriptions.remove(&q.deployment) {
                    s.abort();
                }
                Ok(collected(c))
            }
            .await,
        ),
        api::op::PUBLISH => encode_reply(
            async {
                let q: api::Publish<Value> = decode_request(op, request)?;
                ctx.report_seq += 1;
                let report = Report {
                    manager: shared.manager.clone(),
                    app: ctx.app.clone(),
                    seq: ctx.report_seq,
                    at_unix_ms: now_ms(),
                    kind: q.kind,
                    body: q.body,
                };
                let id = format!(
                    "{}:{}:{}:{}",
                    shared.manager, ctx.app, report.at_unix_ms, report.seq
                );
                publish_report(&shared, &report, &id).await;
                Ok(report.seq)
            }
            .await,
        ),
        api::op::ARCHIVE => encode_reply(
            async {
                let q: api::Archive<Value> = decode_request(op, request)?;
                bus_schema::validate_token("name", &q.name)
                    .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
                let archive = shared.archive.as_ref().ok_or_else(|| {
                    ErrorBody::new(
                        ErrorCode::Unavailable,
                        "archive: this manager has no archive (start it with --archive)",
                    )
                })?;
                let path = archive
                    .record(&ctx.app, &q.name, now_ms(), &q.body)
                    .await
                    .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
                Ok(api::Archived { paths: vec![path] })
            }
            .await,
        ),
        api::op::SET_TIMER => encode_reply((|| {
            let q: api::SetTimer = decode_request(op, request)?;
            if q.every_ms < 10 {
                return refuse(
                    ErrorCode::BadRequest,
                    format!("every_ms = {}: at least 10", q.every_ms),
                );
            }
            let inbox = ctx.inbox.clone();
            let period = Duration::from_millis(q.every_ms);
            let task = tokio::spawn(async move {
                if q.once {
                    tokio::time::sleep(period).await;
                    let _ = inbox.send(Msg::Timer(q.timer)).await;
                    return;
                }
                let mut every =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    every.tick().await;
                    // A slow app skips ticks instead of piling them up.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        inbox.try_send(Msg::Timer(q.timer))
                    {
                        return;
                    }
                }
            });
            if let Some(old) = ctx.timers.insert(q.timer, task) {
                old.abort();
            }
            Ok(api::Empty {})
        })()),
        api::op::CANCEL_TIMER => encode_reply((|| {
            let q: api::TimerRef = decode_request(op, request)?;
            if let Some(t) = ctx.timers.remove(&q.timer) {
                t.abort();
            }
            Ok(api::Empty {})
        })()),
        api::op::SUBSCRIBE => encode_reply(
            async {
                let q: api::DeploymentRef = decode_request(op, request)?;
                bus_schema::validate_token("deployment", &q.deployment)
                    .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
                let mut sub = shared
                    .control
                    .client()
                    .subscribe(subject::events("*", &q.deployment))
                    .await
                    .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
                let inbox = ctx.inbox.clone();
                let app = ctx.app.clone();
                let control = shared.control.clone();
                let task = tokio::spawn(async move {
                    let mut addresses: HashMap<String, String> = HashMap::new();
                    while let Some(msg) = sub.next().await {
                        let Ok(event) = bus_schema::decode::<Event>(&msg.payload) else {
                            continue;
                        };
                        if !addresses.contains_key(&event.monitor)
                            && let Ok(m) = control.monitors().await
                        {
                            addresses.extend(m.into_iter().map(|(id, r)| (id, r.address)));
                        }
                        let view = api::EventView {
                            address: addresses.get(&event.monitor).cloned().unwrap_or_default(),
                            monitor: event.monitor,
                            deployment: event.deployment,
                            kind: snake(event.kind),
                            message: event.message,
                            at_unix_ms: event.at_unix_ms,
                            data: event.data,
                        };
                        let Ok(bytes) = rmp_serde::to_vec_named(&view) else {
                            continue;
                        };
                        match inbox.try_send(Msg::Event(bytes)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                tracing::warn!(app = %app, "app is not keeping up: event dropped");
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                });
                if let Some(old) = ctx.subscriptions.insert(q.deployment, task) {
                    old.abort();
                }
                Ok(api::Empty {})
            }
            .await,
        ),
        other => encode_reply::<()>(refuse(
            ErrorCode::BadRequest,
            format!("op = {other:?}: no such host operation"),
        )),
    }
}
