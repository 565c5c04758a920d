//! The monitor on the bus: command handlers (registered with the NATS
//! service API), result/event publishing, and the liveness record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::service::ServiceExt;
use bus_schema::store;
use bus_schema::{
    CollectRequest, ConfigureReply, ConfigureRequest, DeploymentState, ErrorBody, ErrorCode,
    EventKind, LoadReply, LoadRequest, MonitorRecord, MonitorStatus, Reply, ResultWindow,
    StatusRequest, UnloadReply, UnloadRequest, Value, subject,
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use wasm_host::Sandbox;

use crate::config::Config;
use crate::deployment::{self, DeploymentInfo, Shared, Timers};
use crate::filter::{CompiledFilter, compile_bpf};
use crate::guest::{Analyzer, InstanceConfig};
use crate::inbox::DepMsg;
use crate::link::{LinkCtl, LinkHandle};
use crate::outbox::Outbox;
use crate::tap::{Tap, guest_batch_bytes};
use crate::unix_ms;

/// Largest analyzer blob a monitor accepts.
pub const MAX_BLOB_BYTES: usize = 64 << 20;
/// How long a command waits for a deployment thread.
const DEPLOYMENT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A blob whose SHA-256 was checked against the request.
struct VerifiedBlob {
    sha256: String,
    bytes: Vec<u8>,
}

struct Deployment {
    shared: Arc<Shared>,
    tx: crossbeam_channel::Sender<DepMsg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running monitor.
pub struct Monitor {
    /// Monitor id.
    pub id: String,
    config: Config,
    sandbox: Sandbox,
    /// How long each command took, for the metrics endpoint.
    commands: wasm_host::metrics::CommandTimes,
    /// Signers whose analyzers run here.
    trusted: wasm_host::trust::TrustedKeys,
    links: BTreeMap<u32, LinkHandle>,
    deployments: Mutex<HashMap<String, Deployment>>,
    js: jetstream::Context,
    outbox: Arc<Outbox>,
    started: Instant,
}

fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ErrorBody> {
    Err(ErrorBody::new(code, message))
}

fn decode_request<T: DeserializeOwned + Default>(payload: &[u8]) -> Result<T, ErrorBody> {
    if payload.is_empty() {
        return Ok(T::default());
    }
    bus_schema::decode(payload).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}

fn decode_required<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorBody> {
    bus_schema::decode(payload).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}

fn encode_reply<T: Serialize>(reply: &Reply<T>) -> bytes::Bytes {
    match bus_schema::encode(reply) {
        Ok(b) => b.into(),
        Err(e) => bus_schema::encode(&Reply::<()>::error(ErrorCode::Internal, e.to_string()))
            .expect("an error reply encodes")
            .into(),
    }
}

fn token(field: &str, value: &str) -> Result<(), ErrorBody> {
    bus_schema::validate_token(field, value)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}

/// The owner or requester a command's body names must be the requester its
/// subject carries, which the permissions prove where identities are
/// enforced (without them, nothing is proven: lab mode).
fn proven(field: &str, claimed: &str, requester: &str) -> Result<(), ErrorBody> {
    if claimed == requester {
        return Ok(());
    }
    err(
        ErrorCode::Unauthorized,
        format!(
            "{field} = {claimed:?}, but the command was sent as {requester:?} (its subject's last token): a requester acts only for itself"
        ),
    )
}

impl Monitor {
    /// Starts links, connects the stores and returns the monitor with the
    /// receiving end of its outbox.
    ///
    /// # Errors
    /// If streams or buckets cannot be created, or the sandbox fails.
    pub async fn start(
        config: Config,
        js: jetstream::Context,
    ) -> anyhow::Result<(Arc<Monitor>, Arc<Outbox>)> {
        let sandbox = Sandbox::new(&wasm_host::SandboxConfig {
            compiled_dir: config.compiled_dir.clone(),
            ..wasm_host::SandboxConfig::default()
        })?;
        Self::start_with(config, js, sandbox).await
    }

    /// [`Monitor::start`] with a given sandbox (engine and module cache),
    /// which several in-process monitors may share (benchmarks).
    ///
    /// # Errors
    /// If the stores cannot be created or a link cannot start.
    pub async fn start_with(
        config: Config,
        js: jetstream::Context,
        sandbox: Sandbox,
    ) -> anyhow::Result<(Arc<Monitor>, Arc<Outbox>)> {
        // Where identities are enforced only the admin creates streams and
        // buckets; everyone checks they have the contract's settings.
        let enforced = config.nats_credentials.is_some();
        if !enforced {
            bus_schema::nats::ensure_stores(&js, config.replicas, bus_schema::Role::Monitor)
                .await?;
            tracing::warn!(
                "no nats_credentials: requesters and monitor addresses are not authenticated (lab mode)"
            );
        }
        bus_schema::nats::check_stores(&js, bus_schema::Role::Monitor, enforced).await?;
        let trusted = config.trusted_keys()?;
        if trusted.enforced() {
            tracing::info!(
                keys = trusted.len(),
                "only analyzers signed by a trusted key load"
            );
        } else {
            tracing::warn!(
                "no [trust] keys: analyzer signatures are not checked (digests still are)"
            );
        }
        let mut links = BTreeMap::new();
        for link in &config.links {
            links.insert(link.id, LinkHandle::start(link.clone())?);
        }
        let max_payload = js.client().server_info().max_payload;
        let outbox = Outbox::new(
            (config.limits.outbox_mb as usize) << 20,
            max_payload,
            config.spool_dir.as_deref(),
        );
        match outbox.load_spool() {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "publishing what the last stop spooled"),
            Err(e) => tracing::error!(error = %e, "cannot read the spool; it is left as it is"),
        }
        let monitor = Arc::new(Monitor {
            id: config.monitor_id(),
            config,
            sandbox,
            commands: wasm_host::metrics::CommandTimes::default(),
            trusted,
            links,
            deployments: Mutex::default(),
            js,
            outbox: outbox.clone(),
            started: Instant::now(),
        });
        Ok((monitor, outbox))
    }

    /// Registers the command endpoints with the NATS service API and serves
    /// them until the client closes.
    ///
    /// # Errors
    /// If the service cannot be registered.
    pub async fn serve(self: Arc<Self>, client: async_nats::Client) -> anyhow::Result<()> {
        let service = client
            .service_builder()
            .description(format!("tm-monitor {} at {}", self.id, self.config.address))
            .metadata(HashMap::from([
                ("monitor".to_owned(), self.id.clone()),
                ("address".to_owned(), self.config.address.clone()),
            ]))
            .start("tm-monitor", env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot register the service: {e}"))?;
        let id = self.id.clone();
        // The last token is the requester, which the permissions prove.
        let endpoints = [
            ("load", subject::monitor_load(&id, "*")),
            ("unload", subject::monitor_unload(&id, "*")),
            ("collect", subject::monitor_collect(&id, "*")),
            ("configure", subject::monitor_configure(&id, "*")),
            ("status", subject::monitor_status(&id, "*")),
        ];
        let mut tasks = Vec::new();
        for (name, subj) in endpoints {
            let mut endpoint = service
                .endpoint_builder()
                .name(name)
                .add(subj)
                .await
                .map_err(|e| anyhow::anyhow!("cannot add endpoint {name}: {e}"))?;
            let monitor = self.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(request) = endpoint.next().await {
                    let monitor = monitor.clone();
                    tokio::spawn(async move {
                        let payload = request.message.payload.clone();
                        let requester =
                            subject::requester_of(&request.message.subject).unwrap_or_default();
                        let reply = monitor.handle(name, requester, &payload).await;
                        if let Err(e) = request.respond(Ok(reply)).await {
                            tracing::warn!(command = name, error = %e, "cannot send reply");
                        }
                    });
                }
            }));
        }
        tracing::info!(monitor = %self.id, "serving commands");
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }

    /// How long commands took (for the metrics endpoint).
    #[must_use]
    pub fn commands(&self) -> &wasm_host::metrics::CommandTimes {
        &self.commands
    }

    /// Decodes and runs one command sent by `requester` (the subject's last
    /// token), returning the encoded reply envelope.
    pub async fn handle(
        self: &Arc<Self>,
        command: &str,
        requester: &str,
        payload: &[u8],
    ) -> bytes::Bytes {
        let started = Instant::now();
        let reply = match command {
            "load" => encode_reply(&Reply::from(self.load(requester, payload).await)),
            "unload" => encode_reply(&Reply::from(self.unload(requester, payload).await)),
            "collect" => encode_reply(&Reply::from(self.collect(payload).await)),
            "configure" => encode_reply(&Reply::from(self.configure(requester, payload).await)),
            "status" => encode_reply(&Reply::from(self.status(payload))),
            other => encode_reply(&Reply::<()>::error(
                ErrorCode::BadRequest,
                format!("unknown command {other}"),
            )),
        };
        // A reply the bus cannot carry would leave the requester waiting.
        let max = self.outbox.max_message();
        let reply = if reply.len() > max {
            tracing::warn!(
                command,
                size = reply.len(),
                max,
                "reply too large for the bus"
            );
            encode_reply(&Reply::<()>::error(
                ErrorCode::ResourceLimit,
                format!(
                    "the {command} reply takes {} bytes, more than the bus's max payload ({max} bytes): ask for less (params such as top_n) or raise max_payload",
                    reply.len()
                ),
            ))
        } else {
            reply
        };
        self.commands.observe(command, started.elapsed());
        tracing::debug!(
            command,
            elapsed_us = started.elapsed().as_micros() as u64,
            "command handled"
        );
        reply
    }

    /// The blob's bytes and its metadata map, read without leaving a
    /// consumer behind and at most [`MAX_BLOB_BYTES`] of it.
    async fn fetch_blob(
        &self,
        name: &str,
    ) -> Result<(Vec<u8>, std::collections::HashMap<String, String>), ErrorBody> {
        use bus_schema::nats::BlobReadError;
        match bus_schema::nats::read_blob(&self.js, name, MAX_BLOB_BYTES).await {
            Ok((info, bytes)) => Ok((bytes, info.metadata)),
            Err(e @ BlobReadError::NotFound { .. }) => err(
                ErrorCode::BlobNotFound,
                format!("analyzer.name = {name:?}: {e}"),
            ),
            Err(e @ BlobReadError::TooLarge { .. }) => {
                err(ErrorCode::BadModule, format!("blob {name:?}: {e}"))
            }
            Err(e @ BlobReadError::Unavailable(_)) => err(
                ErrorCode::Unavailable,
                format!("cannot fetch blob {name:?}: {e}"),
            ),
        }
    }

    async fn load(
        self: &Arc<Self>,
        requester: &str,
        payload: &[u8],
    ) -> Result<LoadReply, ErrorBody> {
        let req: LoadRequest = decode_required(payload)?;
        token("owner", &req.owner)?;
        proven("owner", &req.owner, requester)?;
        self.load_request(req, None).await
    }

    /// Reloads every deployment this monitor saved in `tm_snapshots` (after
    /// a crash: a clean shutdown leaves none). Returns how many came back.
    ///
    /// # Errors
    /// If the bucket cannot be read.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<usize> {
        let kv = self.js.get_key_value(store::SNAPSHOTS_BUCKET).await?;
        let prefix = store::snapshot_prefix(&self.id);
        let mut keys = kv.keys().await?;
        let mut mine = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.starts_with(&prefix) {
                mine.push(key);
            }
        }
        // A removal spooled at the last stop wins over the snapshot.
        crate::outbox::settle_snapshots(&self.outbox, &self.js).await;
        let purged = self.outbox.pending_purges();
        let mut restored = 0;
        for key in mine {
            let Some(bytes) = kv.get(&key).await? else {
                continue;
            };
            let snap: bus_schema::DeploymentSnapshot = match bus_schema::decode(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(key, error = %e, "unreadable snapshot; removing it");
                    let _ = kv.delete(&key).await;
                    continue;
                }
            };
            let id = snap.request.deployment.clone();
            if purged.contains(&id) {
                continue;
            }
            match self.load_request(snap.request.clone(), Some(snap)).await {
                Ok(_) => {
                    tracing::info!(deployment = %id, "deployment recovered from its snapshot");
                    restored += 1;
                }
                Err(e) => {
                    tracing::error!(deployment = %id, error = %e, "cannot recover deployment; removing its snapshot");
                    let _ = kv.delete(&key).await;
                }
            }
        }
        Ok(restored)
    }

    async fn load_request(
        self: &Arc<Self>,
        req: LoadRequest,
        restore: Option<bus_schema::DeploymentSnapshot>,
    ) -> Result<LoadReply, ErrorBody> {
        token("deployment", &req.deployment)?;
        token("owner", &req.owner)?;
        self.authorised("owner", &req.owner)?;
        if self
            .deployments
            .lock()
            .expect("deployments")
            .contains_key(&req.deployment)
        {
            return err(
                ErrorCode::DeploymentExists,
                format!(
                    "deployment = {:?} already exists on monitor {}",
                    req.deployment, self.id
                ),
            );
        }
        self.within_limits(&req.deployment)?;
        let links: Vec<u32> = if req.links.is_empty() {
            self.links.keys().copied().collect()
        } else {
            req.links.clone()
        };
        for (i, l) in links.iter().enumerate() {
            if let Some(j) = links[..i].iter().position(|x| x == l) {
                return err(
                    ErrorCode::BadRequest,
                    format!("links[{i}] = {l}: already given as links[{j}] (each link once)"),
                );
            }
            if !self.links.contains_key(l) {
                return err(
                    ErrorCode::UnknownLink,
                    format!(
                        "links[{i}] = {l}: monitor {} has links {:?}",
                        self.id,
                        self.links.keys().collect::<Vec<_>>()
                    ),
                );
            }
        }
        let filter = Arc::new(
            CompiledFilter::new(&req.filter)
                .map_err(|e| ErrorBody::new(ErrorCode::BadFilter, e.0))?,
        );
        if let Some(every) = req.report_every_ms
            && every < 100
        {
            return err(
                ErrorCode::BadRequest,
                format!("report_every_ms = {every}: must be at least 100"),
            );
        }
        let want = req.analyzer.sha256.to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return err(
                ErrorCode::BadRequest,
                format!(
                    "analyzer.sha256 = {:?}: expected 64 hex digits",
                    req.analyzer.sha256
                ),
            );
        }
        let params = bus_schema::encode(&req.params)
            .map_err(|e| ErrorBody::new(ErrorCode::BadParams, e.to_string()))?;
        self.params_fit(&params)?;
        let (bytes, metadata) = self.fetch_blob(&req.analyzer.name).await?;
        // Digest and signature, before anything is compiled.
        let got = self.trusted.verify(
            store::BlobKind::Analyzer,
            &req.analyzer.name,
            &metadata,
            &bytes,
        )?;
        if got != want {
            return err(
                ErrorCode::DigestMismatch,
                format!(
                    "blob {:?} has sha256 {got}, the request asked for {want}",
                    req.analyzer.name
                ),
            );
        }
        if let Some(abi) = metadata.get(store::meta_key::ABI).filter(|a| !a.is_empty())
            && abi.parse::<u32>().ok() != Some(tm_abi::ABI_VERSION)
        {
            return err(
                ErrorCode::AbiMismatch,
                format!(
                    "blob {:?} is stored with {} = {abi:?}; this monitor runs analyzers of ABI v{}",
                    req.analyzer.name,
                    store::meta_key::ABI,
                    tm_abi::ABI_VERSION
                ),
            );
        }
        // Compiling and instantiating are CPU work: keep them off the runtime.
        let monitor = self.clone();
        tokio::task::spawn_blocking(move || {
            let blob = VerifiedBlob { sha256: got, bytes };
            monitor.start_deployment(req, links, filter, &blob, &params, restore)
        })
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("load task: {e}")))?
    }

    /// Snapshots carry the params: they must leave room for the state.
    fn params_fit(&self, params: &[u8]) -> Result<(), ErrorBody> {
        let max = self.outbox.max_message() / 2;
        if params.len() > max {
            return err(
                ErrorCode::BadParams,
                format!(
                    "params take {} bytes encoded; at most {max} (half the bus's max payload: snapshots carry them)",
                    params.len()
                ),
            );
        }
        Ok(())
    }

    fn start_deployment(
        self: &Arc<Self>,
        req: LoadRequest,
        links: Vec<u32>,
        filter: Arc<CompiledFilter>,
        blob: &VerifiedBlob,
        params: &[u8],
        restore: Option<bus_schema::DeploymentSnapshot>,
    ) -> Result<LoadReply, ErrorBody> {
        let (sha256, bytes) = (blob.sha256.as_str(), blob.bytes.as_slice());
        // BPF is compiled per link, for that link's link type.
        let mut bpfs = Vec::new();
        for l in &links {
            let bpf = match &filter.bpf {
                Some(expr) => {
                    let dlt = self.links[l].shared.dlt().ok_or_else(|| {
                        ErrorBody::new(
                            ErrorCode::BadFilter,
                            format!("filter.bpf: link {l} is not capturing"),
                        )
                    })?;
                    Some(
                        compile_bpf(expr, dlt)
                            .map_err(|e| ErrorBody::new(ErrorCode::BadFilter, e.0))?,
                    )
                }
                None => None,
            };
            bpfs.push(bpf);
        }
        let module = self.sandbox.module(sha256, bytes).map_err(|e| {
            ErrorBody::new(
                ErrorCode::BadModule,
                format!("blob {:?}: {e}", req.analyzer.name),
            )
        })?;
        let shared = Shared::new(
            DeploymentInfo {
                monitor: self.id.clone(),
                deployment: req.deployment.clone(),
                analyzer: bus_schema::BlobRef {
                    name: req.analyzer.name.clone(),
                    sha256: sha256.to_owned(),
                },
                links: links.clone(),
                link_stats: links.iter().map(|l| self.links[l].shared.clone()).collect(),
                started_unix_ms: unix_ms(),
                run: restore
                    .as_ref()
                    .map(|snap| snap.run.clone())
                    .unwrap_or_else(|| nuid::next().to_string()),
            },
            LoadRequest {
                links: links.clone(),
                ..req.clone()
            },
            self.outbox.clone(),
        );
        let limits = &self.config.limits;
        let snaplen = links
            .iter()
            .map(|l| self.links[l].shared.config.snaplen)
            .max()
            .unwrap_or(65535);
        let emit_shared = Arc::downgrade(&shared);
        let analyzer = Analyzer::new(
            &self.sandbox,
            &module,
            &InstanceConfig {
                memory_bytes: (limits.memory_mb as usize) << 20,
                call_timeout: Duration::from_millis(limits.call_timeout_ms),
                batch_bytes: guest_batch_bytes(snaplen),
                deployment: req.deployment.clone(),
            },
            params,
            Box::new(move |value: Value| {
                if let Some(shared) = emit_shared.upgrade() {
                    let message = value["message"].as_str().unwrap_or("alert").to_owned();
                    shared.event(EventKind::Alert, message, value);
                }
            }),
        )
        .map_err(|e| ErrorBody::new(e.code, e.message))?;
        let mut analyzer = analyzer;
        if let Some(snap) = &restore {
            if snap.state != Value::Nil
                && let Err(e) = analyzer.restore(&snap.state)
            {
                tracing::warn!(deployment = %req.deployment, error = ?e, "analyzer state not restored; it starts afresh");
            }
            shared.restore_from(snap);
        }
        let abi_version = tm_abi::ABI_VERSION;
        let snap_len = analyzer.snap_len();
        // Room for a partial batch from every link besides the budget's
        // full ones: the taps hold the queue to its budget in packets.
        let (tx, rx) = crossbeam_channel::bounded(limits.queue_batches * 4 + links.len());
        let timers = Timers {
            tick: Duration::from_millis(limits.tick_ms),
            report: req.report_every_ms.map(Duration::from_millis),
            snapshot: Duration::from_millis(limits.snapshot_ms),
        };
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("dep-{}", req.deployment))
                .spawn(move || deployment::run(analyzer, rx, shared, timers))
                .map_err(|e| {
                    ErrorBody::new(ErrorCode::Internal, format!("cannot start thread: {e}"))
                })?
        };
        {
            let mut deployments = self.deployments.lock().expect("deployments");
            if deployments.contains_key(&req.deployment) {
                return err(
                    ErrorCode::DeploymentExists,
                    format!("deployment = {:?} already exists", req.deployment),
                );
            }
            deployments.insert(
                req.deployment.clone(),
                Deployment {
                    shared: shared.clone(),
                    tx: tx.clone(),
                    thread: Some(thread),
                },
            );
        }
        for (l, bpf) in links.iter().zip(bpfs) {
            let tap = Tap::new(
                req.deployment.clone(),
                filter.clone(),
                bpf,
                tx.clone(),
                shared.counters.clone(),
                limits.batch_packets,
                snap_len,
            )
            .with_queue_budget(limits.queue_batches as u64 * u64::from(limits.batch_packets));
            let _ = self.links[l].ctl.send(LinkCtl::Attach(Box::new(tap)));
        }
        tracing::info!(deployment = %req.deployment, analyzer = %req.analyzer.name, links = ?links, owner = %req.owner, "deployment loaded");
        let how = if restore.is_some() {
            "recovered"
        } else {
            "loaded"
        };
        shared.event(
            EventKind::Loaded,
            format!("{} {how} on links {links:?}", req.analyzer.name),
            Value::Nil,
        );
        let not_capturing = self.idle_links(&links);
        Ok(LoadReply {
            deployment: req.deployment,
            monitor: self.id.clone(),
            links,
            abi_version,
            run: shared.info.run.clone(),
            not_capturing,
        })
    }

    fn find(
        &self,
        deployment: &str,
    ) -> Result<(Arc<Shared>, crossbeam_channel::Sender<DepMsg>), ErrorBody> {
        let deployments = self.deployments.lock().expect("deployments");
        let d = deployments.get(deployment).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::UnknownDeployment,
                format!(
                    "deployment = {deployment:?}: no such deployment on monitor {}",
                    self.id
                ),
            )
        })?;
        Ok((d.shared.clone(), d.tx.clone()))
    }

    /// Only the owner may configure or unload (or anyone with `force`).
    /// Ownership moves when a manager adopts a deployment: the record in
    /// `tm_deployments` is the authority, so a requester it names as owner
    /// is accepted and becomes the owner here too.
    async fn check_owner(
        &self,
        shared: &Shared,
        requester: &str,
        force: bool,
    ) -> Result<(), ErrorBody> {
        self.authorised("requester", requester)?;
        let owner = shared.owner();
        if force || owner == requester {
            return Ok(());
        }
        if self
            .recorded_owner(&shared.info.deployment)
            .await
            .as_deref()
            == Some(requester)
        {
            tracing::info!(deployment = %shared.info.deployment, from = %owner, to = %requester, "deployment adopted");
            shared.set_owner(requester);
            return Ok(());
        }
        err(
            ErrorCode::NotOwner,
            format!(
                "requester = {requester:?}: deployment {:?} is owned by {owner:?}; to adopt it, make {requester:?} its owner in tm_deployments (tmctl adopt, or an update of the DeploymentRecord with its revision) and send again, or set force",
                shared.info.deployment
            ),
        )
    }

    /// Refuses a load past `limits.max_deployments` or one whose memory
    /// cap would take the deployments' caps past `limits.total_memory_mb`.
    fn within_limits(&self, deployment: &str) -> Result<(), ErrorBody> {
        let l = &self.config.limits;
        let n = self.deployments.lock().expect("deployments").len();
        if n >= l.max_deployments {
            return err(
                ErrorCode::ResourceLimit,
                format!(
                    "deployment = {deployment:?}: monitor {} already runs {n} deployments, its limits.max_deployments",
                    self.id
                ),
            );
        }
        let reserved = (n as u64 + 1) * u64::from(l.memory_mb);
        if reserved > l.total_memory_mb {
            return err(
                ErrorCode::ResourceLimit,
                format!(
                    "deployment = {deployment:?}: one more deployment of {} MiB would reserve {reserved} MiB on monitor {}, past its limits.total_memory_mb = {} ({n} running)",
                    l.memory_mb, self.id, l.total_memory_mb
                ),
            );
        }
        Ok(())
    }

    /// With `[trust] owners` set, only those may own deployments here:
    /// a load naming another owner, and a configure or unload by another
    /// requester (even with `force`), is refused.
    fn authorised(&self, field: &str, who: &str) -> Result<(), ErrorBody> {
        let owners = &self.config.trust.owners;
        if owners.is_empty() || owners.iter().any(|o| o == who) {
            return Ok(());
        }
        err(
            ErrorCode::Unauthorized,
            format!(
                "{field} = {who:?}: not an authorised manager of monitor {} (its [trust] owners are {owners:?})",
                self.id
            ),
        )
    }

    /// The owner `tm_deployments` records for a deployment, if it can be read.
    async fn recorded_owner(&self, deployment: &str) -> Option<String> {
        let kv = self
            .js
            .get_key_value(store::DEPLOYMENTS_BUCKET)
            .await
            .ok()?;
        let bytes = kv.get(deployment).await.ok()??;
        bus_schema::decode::<bus_schema::DeploymentRecord>(&bytes)
            .ok()
            .map(|r| r.owner)
    }

    /// Hands partial batches of the deployment's links to it.
    async fn flush_links(self: &Arc<Self>, links: &[u32]) {
        let monitor = self.clone();
        let links = links.to_vec();
        let _ = tokio::task::spawn_blocking(move || {
            for l in links {
                if let Some(link) = monitor.links.get(&l) {
                    link.flush();
                }
            }
        })
        .await;
    }

    /// Sends a message to a deployment thread and awaits its answer.
    async fn ask<T>(
        tx: &crossbeam_channel::Sender<DepMsg>,
        make: impl FnOnce(oneshot::Sender<T>) -> DepMsg,
    ) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let msg = make(reply);
        // The queue may be full of batches: wait for room off the runtime.
        let tx = tx.clone();
        let sent = tokio::task::spawn_blocking(move || {
            tx.send_timeout(msg, DEPLOYMENT_REPLY_TIMEOUT).is_ok()
        })
        .await
        .unwrap_or(false);
        if !sent {
            return None;
        }
        tokio::time::timeout(DEPLOYMENT_REPLY_TIMEOUT, rx)
            .await
            .ok()?
            .ok()
    }

    async fn collect(self: &Arc<Self>, payload: &[u8]) -> Result<ResultWindow, ErrorBody> {
        let req: CollectRequest = decode_required(payload)?;
        let (shared, tx) = self.find(&req.deployment)?;
        if shared.state().0 == DeploymentState::Running {
            self.flush_links(&shared.info.links).await;
            if let Some(answer) = Self::ask(&tx, DepMsg::Collect).await {
                return answer;
            }
        }
        // Failed (now or meanwhile): the last good results.
        Ok(shared.last_window(false))
    }

    async fn configure(
        self: &Arc<Self>,
        requester: &str,
        payload: &[u8],
    ) -> Result<ConfigureReply, ErrorBody> {
        let req: ConfigureRequest = decode_required(payload)?;
        proven("requester", &req.requester, requester)?;
        let (shared, tx) = self.find(&req.deployment)?;
        self.check_owner(&shared, &req.requester, req.force).await?;
        if let (DeploymentState::Failed, why) = shared.state() {
            return err(
                ErrorCode::GuestTrap,
                format!(
                    "deployment {:?} failed: {}",
                    req.deployment,
                    why.unwrap_or_default()
                ),
            );
        }
        let params = bus_schema::encode(&req.params)
            .map_err(|e| ErrorBody::new(ErrorCode::BadParams, e.to_string()))?;
        self.params_fit(&params)?;
        self.flush_links(&shared.info.links).await;
        match Self::ask(&tx, |r| DepMsg::Configure(req.params.clone(), params, r)).await {
            Some(answer) => answer.map(|config_revision| ConfigureReply {
                deployment: req.deployment,
                config_revision,
            }),
            None => err(
                ErrorCode::GuestTrap,
                format!(
                    "deployment {:?} failed: {}",
                    req.deployment,
                    shared.state().1.unwrap_or_default()
                ),
            ),
        }
    }

    async fn unload(
        self: &Arc<Self>,
        requester: &str,
        payload: &[u8],
    ) -> Result<UnloadReply, ErrorBody> {
        let req: UnloadRequest = decode_required(payload)?;
        proven("requester", &req.requester, requester)?;
        let (shared, _) = self.find(&req.deployment)?;
        self.check_owner(&shared, &req.requester, req.force).await?;
        let mut final_results = self.unload_deployment(&req.deployment).await?;
        // The deployment is gone either way: a reply the bus cannot carry
        // says so without its results (a `too_large` event tells why).
        let size = bus_schema::encode(&final_results).map_or(0, |b| b.len());
        if size > self.outbox.max_message() {
            final_results.results = Value::Map(vec![(
                "error".into(),
                format!("the final results took {size} bytes, more than the bus's max payload")
                    .into(),
            )]);
        }
        Ok(UnloadReply {
            deployment: req.deployment,
            final_results,
        })
    }

    /// Stops a deployment after the packets captured so far, and removes it.
    async fn unload_deployment(self: &Arc<Self>, id: &str) -> Result<ResultWindow, ErrorBody> {
        let (shared, tx) = self.find(id)?;
        let mut window = None;
        if shared.state().0 == DeploymentState::Running {
            self.flush_links(&shared.info.links).await;
            window = Self::ask(&tx, DepMsg::Unload).await;
        }
        let window = match window {
            Some(w) => w,
            None => {
                shared.forget();
                shared.last_window(true)
            }
        };
        let removed = self.deployments.lock().expect("deployments").remove(id);
        if let Some(mut d) = removed {
            drop(d.tx);
            if let Some(t) = d.thread.take() {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
        shared.event(
            EventKind::Unloaded,
            format!("unloaded after {} packets", window.stats.packets_in),
            Value::Nil,
        );
        tracing::info!(deployment = %id, packets = window.stats.packets_in, "deployment unloaded");
        Ok(window)
    }

    fn status(&self, payload: &[u8]) -> Result<MonitorStatus, ErrorBody> {
        let req: StatusRequest = decode_request(payload)?;
        self.snapshot(req.deployment.as_deref())
    }

    /// The monitor's links and deployments (only `deployment`, if given):
    /// what `status` answers and the metrics endpoint exposes.
    ///
    /// # Errors
    /// `unknown_deployment` for a deployment that is not here.
    pub fn snapshot(&self, deployment: Option<&str>) -> Result<MonitorStatus, ErrorBody> {
        let req = StatusRequest {
            deployment: deployment.map(str::to_owned),
        };
        let deployments = self.deployments.lock().expect("deployments");
        if let Some(d) = &req.deployment
            && !deployments.contains_key(d)
        {
            return err(
                ErrorCode::UnknownDeployment,
                format!(
                    "deployment = {d:?}: no such deployment on monitor {}",
                    self.id
                ),
            );
        }
        let mut list: Vec<_> = deployments
            .values()
            .filter(|d| {
                req.deployment
                    .as_ref()
                    .is_none_or(|want| *want == d.shared.info.deployment)
            })
            .map(|d| d.shared.status_report())
            .collect();
        list.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        Ok(MonitorStatus {
            monitor: self.id.clone(),
            address: self.config.address.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            links: self.links.values().map(|l| l.shared.status()).collect(),
            deployments: list,
            outbox: self.outbox_status(),
        })
    }

    /// The outbox's figures.
    #[must_use]
    pub fn outbox_status(&self) -> bus_schema::OutboxStatus {
        self.outbox.figures()
    }

    /// The liveness record.
    #[must_use]
    pub fn record(&self, started_unix_ms: u64) -> MonitorRecord {
        MonitorRecord {
            monitor: self.id.clone(),
            address: self.config.address.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: bus_schema::PROTOCOL_VERSION,
            links: self.links.values().map(|l| l.shared.info()).collect(),
            started_unix_ms,
            heartbeat_unix_ms: unix_ms(),
        }
    }

    /// Those of `links` that are not capturing, with why.
    fn idle_links(&self, links: &[u32]) -> Vec<bus_schema::IdleLink> {
        links
            .iter()
            .filter_map(|l| {
                let st = self.links.get(l)?.shared.status();
                (st.state != bus_schema::LinkState::Running).then_some(bus_schema::IdleLink {
                    link: *l,
                    state: st.state,
                    error: st.last_error,
                })
            })
            .collect()
    }

    /// Tells the deployments of a link, in an event each, when the link
    /// fails or its replay finishes (as the state changes, until
    /// cancelled).
    pub async fn watch_links(self: Arc<Self>) {
        let watchers: Vec<_> = self
            .links
            .iter()
            .map(|(id, link)| {
                let (monitor, id, mut rx) = (self.clone(), *id, link.shared.watch_state());
                tokio::spawn(async move {
                    let mut last = *rx.borrow_and_update();
                    while rx.changed().await.is_ok() {
                        let state = *rx.borrow_and_update();
                        if state != last {
                            last = state;
                            monitor.tell_link_state(id);
                        }
                    }
                })
            })
            .collect();
        for w in watchers {
            let _ = w.await;
        }
    }

    fn tell_link_state(&self, id: u32) {
        let st = self.links[&id].shared.status();
        let (kind, message, data) = match st.state {
            bus_schema::LinkState::Running => return,
            bus_schema::LinkState::Failed => {
                let error = st.last_error.clone().unwrap_or_default();
                (
                    EventKind::LinkFailed,
                    format!("link {id} stopped capturing: {error}"),
                    Value::Map(vec![
                        ("link".into(), id.into()),
                        ("error".into(), error.into()),
                    ]),
                )
            }
            bus_schema::LinkState::Finished => (
                EventKind::LinkFinished,
                format!("link {id}'s replay finished after {} packets", st.packets),
                Value::Map(vec![
                    ("link".into(), id.into()),
                    ("packets".into(), st.packets.into()),
                ]),
            ),
        };
        let attached: Vec<Arc<Shared>> = self
            .deployments
            .lock()
            .expect("deployments")
            .values()
            .filter(|d| d.shared.info.links.contains(&id))
            .map(|d| d.shared.clone())
            .collect();
        for shared in attached {
            shared.event(kind, message.clone(), data.clone());
        }
    }

    /// Refreshes the liveness record every heartbeat until cancelled.
    pub async fn heartbeat(self: Arc<Self>) {
        let started = unix_ms();
        let mut kv = None;
        loop {
            if kv.is_none() {
                kv = self.js.get_key_value(store::MONITORS_BUCKET).await.ok();
            }
            if let Some(bucket) = &kv {
                match bus_schema::encode(&self.record(started)) {
                    Ok(bytes) => {
                        if let Err(e) = bucket.put(&self.id, bytes.into()).await {
                            tracing::warn!(error = %e, "cannot refresh the liveness record");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode the liveness record"),
                }
            }
            tokio::time::sleep(store::HEARTBEAT_EVERY).await;
        }
    }

    /// Unloads every deployment; their final windows go to the outbox.
    pub async fn shutdown(self: &Arc<Self>) {
        let ids: Vec<String> = self
            .deployments
            .lock()
            .expect("deployments")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            if let Err(e) = self.unload_deployment(&id).await {
                tracing::warn!(deployment = %id, error = %e, "unload at shutdown failed");
            }
        }
    }

    /// Removes the liveness record (at a stop, after the final windows).
    pub async fn leave(&self) {
        if let Ok(kv) = self.js.get_key_value(store::MONITORS_BUCKET).await {
            let _ = kv.delete(&self.id).await;
        }
    }
}
