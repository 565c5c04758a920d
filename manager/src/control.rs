//! Driving monitors on behalf of one identity (a manager, or `tmctl --as`).
//!
//! Deployments are desired state in `tm_deployments`: [`Control::deploy`]
//! *claims* the id with a KV create (exactly one of several racing managers
//! wins), then sends `load` to every target monitor. Configure and unload
//! check the recorded owner and write the record with the revision they
//! read, never a blind put; [`Control::adopt`] moves ownership the same way.
//! Commands go to all targets at once, each with its own timeout, so one
//! slow or dead monitor only costs its own timeout and is reported as
//! missing, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, object_store};
use bus_schema::store::{self, BlobKind, BlobMeta};
use bus_schema::{
    BlobRef, CollectRequest, ConfigureReply, ConfigureRequest, DeploymentRecord, DeploymentTarget,
    DesiredState, ErrorBody, ErrorCode, Filter, LoadReply, LoadRequest, ManagerRecord,
    MonitorRecord, MonitorStatus, Reply, ResultWindow, StatusRequest, UnloadReply, UnloadRequest,
    Value, subject,
};
use futures::future::join_all;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Unix time in ms.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ErrorBody> {
    Err(ErrorBody::new(code, message))
}

fn bus(what: &str, e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

/// Where a deployment should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Every monitor that is up, all its links.
    All,
    /// These monitor ids, all their links.
    Monitors(Vec<String>),
    /// These links, by (monitor address, link id) as in the topology.
    Links(Vec<(String, u32)>),
}

/// What to deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploySpec {
    /// Deployment id.
    pub deployment: String,
    /// Analyzer blob name in `tm_blobs`.
    pub analyzer: String,
    /// Expected SHA-256; `None`: whatever is stored under the name.
    pub sha256: Option<String>,
    /// Analyzer params.
    pub params: Value,
    /// Packet filter.
    pub filter: Filter,
    /// Where it runs.
    pub targets: Targets,
    /// Periodic result publication, ms.
    pub report_every_ms: Option<u64>,
}

/// A monitor that did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Monitor id.
    pub monitor: String,
    /// Why.
    pub error: ErrorBody,
}

/// Outcome of a deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    /// The record as claimed.
    pub record: DeploymentRecord,
    /// KV revision of the record.
    pub revision: u64,
    /// Monitors that loaded it.
    pub placed: Vec<Placed>,
    /// Monitors that refused or did not answer.
    pub failed: Vec<Missing>,
}

/// A monitor that loaded a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Monitor id.
    pub monitor: String,
    /// Its address.
    pub address: String,
    /// The links the deployment analyses there.
    pub links: Vec<u32>,
    /// Those of them not capturing (finished replays, failed links).
    pub not_capturing: Vec<bus_schema::IdleLink>,
}

/// One monitor's results.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorResults {
    /// Its address (empty if it is no longer registered).
    pub address: String,
    /// The window it returned.
    pub window: ResultWindow,
}

/// Results of a collect or unload: all that answered, and who did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The deployment id.
    pub deployment: String,
    /// Sorted by monitor id.
    pub results: Vec<MonitorResults>,
    /// Monitors that did not answer in time or refused.
    pub missing: Vec<Missing>,
}

/// Outcome of a configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// Monitors that applied it, with their config revision.
    pub done: Vec<(String, u64)>,
    /// Monitors that did not.
    pub failed: Vec<Missing>,
}

/// Default time a monitor gets to answer a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a monitor gets to fetch, compile and start an analyzer.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The handles every operation needs. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    id: String,
    /// Identities are enforced (connected with credentials): monitors are
    /// bound to their addresses and the stores are the admin's to create.
    enforced: bool,
    client: async_nats::Client,
    deployments: kv::Store,
    monitors: kv::Store,
    managers: kv::Store,
    blobs: object_store::ObjectStore,
    /// Round trips of the commands sent to monitors, by command.
    times: wasm_host::metrics::CommandTimes,
}

impl Control {
    /// Opens (creating where missing) the streams and buckets, acting as `id`.
    ///
    /// # Errors
    /// If `id` is not a valid token or JetStream cannot be reached.
    pub async fn connect(
        client: async_nats::Client,
        id: &str,
        replicas: usize,
    ) -> Result<Control, ErrorBody> {
        Self::connect_with(client, id, replicas, false).await
    }

    /// [`Control::connect`] where identities are `enforced` (the client
    /// has credentials): the streams and buckets must exist already (the
    /// admin's `tmctl setup` makes them), and only monitors whose id is
    /// their address's count as holding it.
    ///
    /// # Errors
    /// If `id` is not a valid token, JetStream cannot be reached, or a
    /// stream or bucket is missing or differs from the contract.
    pub async fn connect_with(
        client: async_nats::Client,
        id: &str,
        replicas: usize,
        enforced: bool,
    ) -> Result<Control, ErrorBody> {
        bus_schema::validate_token("manager", id)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let js = jetstream::new(client.clone());
        if !enforced {
            bus_schema::nats::ensure_stores(&js, replicas, bus_schema::Role::Manager)
                .await
                .map_err(|e| bus("JetStream", e))?;
        }
        bus_schema::nats::check_stores(&js, bus_schema::Role::Manager, enforced)
            .await
            .map_err(|e| bus("JetStream", e))?;
        let open = |name| {
            let js = js.clone();
            async move {
                bus_schema::nats::open_kv(&js, name, replicas)
                    .await
                    .map_err(|e| bus("JetStream", e))
            }
        };
        Ok(Control {
            id: id.to_owned(),
            enforced,
            deployments: open(store::DEPLOYMENTS_BUCKET).await?,
            monitors: open(store::MONITORS_BUCKET).await?,
            managers: open(store::MANAGERS_BUCKET).await?,
            blobs: bus_schema::nats::open_blobs(&js, replicas)
                .await
                .map_err(|e| bus("JetStream", e))?,
            client,
            times: wasm_host::metrics::CommandTimes::default(),
        })
    }

    /// Round trips of the monitor commands sent (for the metrics endpoint).
    #[must_use]
    pub fn request_times(&self) -> &wasm_host::metrics::CommandTimes {
        &self.times
    }

    /// The identity commands are sent as (owner of what it deploys).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The NATS client.
    #[must_use]
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Sends a command to a monitor and decodes its reply envelope; a
    /// monitor that does not answer within `timeout` is a `timeout` error.
    ///
    /// # Errors
    /// The monitor's error reply, `timeout`, or `unavailable` on transport errors.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: String,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, ErrorBody> {
        let payload = bus_schema::encode(request)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let request = async_nats::client::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(
            timeout + Duration::from_millis(100),
            self.client.send_request(subject.clone(), request),
        )
        .await;
        let command = subject::command_of(&subject).unwrap_or_default();
        self.times.observe(command, started.elapsed());
        let reply = match sent {
            Err(_) => {
                return refuse(
                    ErrorCode::Timeout,
                    format!("no reply on {subject} within {} ms", timeout.as_millis()),
                );
            }
            Ok(Err(e)) => {
                use async_nats::client::RequestErrorKind;
                return match e.kind() {
                    RequestErrorKind::NoResponders => refuse(
                        ErrorCode::Unavailable,
                        format!("nobody answers on {subject}"),
                    ),
                    RequestErrorKind::TimedOut => refuse(
                        ErrorCode::Timeout,
                        format!("no reply on {subject} within {} ms", timeout.as_millis()),
                    ),
                    _ => Err(bus(&subject, e)),
                };
            }
            Ok(Ok(msg)) => msg,
        };
        bus_schema::decode::<Reply<R>>(&reply.payload)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("reply on {subject}: {e}")))?
            .into_result()
    }

    /// Monitors that are up (records younger than the bucket's max_age), by id.
    ///
    /// # Errors
    /// If the bucket cannot be read.
    ///
    /// A record counts only under its own id, and where identities are
    /// enforced only if that id is its address's (`bus_schema::holds_address`):
    /// a monitor may write only its own record, so no monitor can pose as
    /// the one at another address. Without enforced identities a record
    /// that claims the address of one holding it is dropped too. Dropped
    /// records are logged with the address they claimed.
    pub async fn monitors(&self) -> Result<BTreeMap<String, MonitorRecord>, ErrorBody> {
        let all: BTreeMap<String, MonitorRecord> = read_all(&self.monitors, "tm_monitors").await?;
        let (kept, ignored) = holding_monitors(all, self.enforced);
        for (key, r, why) in ignored {
            tracing::warn!(monitor = %key, address = %r.address, why, "monitor record ignored");
        }
        Ok(kept)
    }

    /// Managers that are up, by id.
    ///
    /// # Errors
    /// If the bucket cannot be read.
    pub async fn managers(&self) -> Result<BTreeMap<String, ManagerRecord>, ErrorBody> {
        read_all(&self.managers, "tm_managers").await
    }

    /// Writes this identity's liveness record (a manager does it every
    /// [`store::HEARTBEAT_EVERY`]).
    ///
    /// # Errors
    /// If the bucket cannot be written.
    pub async fn heartbeat(&self, record: &ManagerRecord) -> Result<(), ErrorBody> {
        let bytes = bus_schema::encode(record)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        self.managers
            .put(&self.id, bytes.into())
            .await
            .map_err(|e| bus("tm_managers", e))?;
        Ok(())
    }

    /// Removes this identity's liveness record (clean shutdown).
    pub async fn sign_off(&self) {
        let _ = self.managers.delete(&self.id).await;
    }

    /// Every deployment record with its revision, by id.
    ///
    /// # Errors
    /// If the bucket cannot be read.
    pub async fn deployments(
        &self,
    ) -> Result<BTreeMap<String, (DeploymentRecord, u64)>, ErrorBody> {
        let mut out = BTreeMap::new();
        for key in keys(&self.deployments, "tm_deployments").await? {
            if let Some(r) = self.record(&key).await? {
                out.insert(key, r);
            }
        }
        Ok(out)
    }

    /// A deployment record and its revision, if it exists.
    ///
    /// # Errors
    /// If the bucket cannot be read or the record is unreadable.
    pub async fn record(&self, id: &str) -> Result<Option<(DeploymentRecord, u64)>, ErrorBody> {
        let entry = self
            .deployments
            .entry(id)
            .await
            .map_err(|e| bus("tm_deployments", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = bus_schema::decode(&e.value).map_err(|err| {
                    ErrorBody::new(ErrorCode::Internal, format!("tm_deployments/{id}: {err}"))
                })?;
                Ok(Some((record, e.revision)))
            }
            _ => Ok(None),
        }
    }

    async fn existing(&self, id: &str) -> Result<(DeploymentRecord, u64), ErrorBody> {
        self.record(id).await?.ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::UnknownDeployment,
                format!("deployment = {id:?}: no such deployment in tm_deployments"),
            )
        })
    }

    /// The analyzer blob `name`, checked against `sha256` if given.
    ///
    /// # Errors
    /// `blob_not_found`, `digest_mismatch`, or `bad_module` for a blob that is
    /// not an analyzer.
    pub async fn analyzer_blob(
        &self,
        name: &str,
        sha256: Option<&str>,
    ) -> Result<BlobRef, ErrorBody> {
        let info = match self.blobs.info(name).await {
            Ok(i) if !i.deleted => i,
            _ => {
                return refuse(
                    ErrorCode::BlobNotFound,
                    format!(
                        "analyzer = {name:?}: no such blob in {}",
                        store::BLOBS_BUCKET
                    ),
                );
            }
        };
        let meta = BlobMeta::from_map(&info.metadata).map_err(|e| {
            ErrorBody::new(ErrorCode::BadModule, format!("analyzer = {name:?}: {e}"))
        })?;
        if meta.kind != BlobKind::Analyzer {
            return refuse(
                ErrorCode::BadModule,
                format!(
                    "analyzer = {name:?} is a {}, not an analyzer",
                    meta.kind.as_str()
                ),
            );
        }
        if let Some(want) = sha256
            && want != meta.sha256
        {
            return refuse(
                ErrorCode::DigestMismatch,
                format!(
                    "sha256 = {want:?}: analyzer {name:?} is stored with digest {}",
                    meta.sha256
                ),
            );
        }
        Ok(BlobRef {
            name: name.to_owned(),
            sha256: meta.sha256,
        })
    }

    async fn resolve_targets(
        &self,
        targets: &Targets,
        monitors: &BTreeMap<String, MonitorRecord>,
    ) -> Result<Vec<DeploymentTarget>, ErrorBody> {
        let whole = |id: &String| DeploymentTarget {
            monitor: id.clone(),
            links: Vec::new(),
        };
        let out: Vec<DeploymentTarget> = match targets {
            Targets::All => monitors.keys().map(whole).collect(),
            Targets::Monitors(ids) => {
                for id in ids {
                    if !monitors.contains_key(id) {
                        return refuse(
                            ErrorCode::BadRequest,
                            format!("monitor = {id:?}: no such monitor is up"),
                        );
                    }
                }
                ids.iter().map(whole).collect()
            }
            Targets::Links(links) => {
                let mut by_monitor: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                for (address, link) in links {
                    if address.parse::<std::net::IpAddr>().is_err() {
                        return refuse(
                            ErrorCode::BadRequest,
                            format!(
                                "monitor address = {address:?}: not an IP address (monitors are named by their IPv4 or IPv6 address)"
                            ),
                        );
                    }
                    let claiming: Vec<&String> = monitors
                        .iter()
                        .filter(|(_, m)| &m.address == address)
                        .map(|(id, _)| id)
                        .collect();
                    if claiming.len() > 1 {
                        return refuse(
                            ErrorCode::BadRequest,
                            format!(
                                "monitor address = {address:?}: monitors {claiming:?} all claim it; give each monitor its own address (its id then follows from it)"
                            ),
                        );
                    }
                    let Some(m) = monitors.values().find(|m| &m.address == address) else {
                        return refuse(
                            ErrorCode::BadRequest,
                            format!(
                                "monitor address = {address:?}: no monitor with that address is up"
                            ),
                        );
                    };
                    if !m.links.iter().any(|l| l.id == *link) {
                        return refuse(
                            ErrorCode::UnknownLink,
                            format!(
                                "link = {address}:{link}: monitor {} has no link {link}",
                                m.monitor
                            ),
                        );
                    }
                    let ids = by_monitor.entry(m.monitor.clone()).or_default();
                    if !ids.contains(link) {
                        ids.push(*link);
                    }
                }
                by_monitor
                    .into_iter()
                    .map(|(monitor, links)| DeploymentTarget { monitor, links })
                    .collect()
            }
        };
        if out.is_empty() {
            return refuse(ErrorCode::Unavailable, "no monitor is up to deploy to");
        }
        Ok(out)
    }

    /// Claims deployment id `record.deployment` with a KV create: of several
    /// managers racing for one id exactly one gets `Ok(revision)`, the
    /// others `deployment_exists` naming the winner.
    ///
    /// # Errors
    /// `deployment_exists`, or a bus error.
    pub async fn claim(&self, record: &DeploymentRecord) -> Result<u64, ErrorBody> {
        let bytes = bus_schema::encode(record)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        match self
            .deployments
            .create(&record.deployment, bytes.into())
            .await
        {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let owner = self
                    .record(&record.deployment)
                    .await
                    .ok()
                    .flatten()
                    .map_or_else(|| "?".to_owned(), |(r, _)| r.owner);
                refuse(
                    ErrorCode::DeploymentExists,
                    format!(
                        "deployment = {:?} already exists, owned by {owner:?}",
                        record.deployment
                    ),
                )
            }
            Err(e) => Err(bus("tm_deployments", e)),
        }
    }

    async fn write(&self, record: &DeploymentRecord, revision: u64) -> Result<u64, ErrorBody> {
        let bytes = bus_schema::encode(record)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        match self
            .deployments
            .update(&record.deployment, bytes.into(), revision)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => refuse(
                ErrorCode::DeploymentExists,
                format!(
                    "deployment = {:?} changed concurrently (expected revision {revision}); try again",
                    record.deployment
                ),
            ),
            Err(e) => Err(bus("tm_deployments", e)),
        }
    }

    /// S2: claims the deployment and loads it on every target at once.
    /// If no monitor loads it, the claim is withdrawn and the first refusal
    /// is returned.
    ///
    /// # Errors
    /// Bad input (naming the field), `deployment_exists`, blob errors, or
    /// every monitor's refusal.
    pub async fn deploy(&self, spec: &DeploySpec) -> Result<Deployed, ErrorBody> {
        bus_schema::validate_token("deployment", &spec.deployment)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let analyzer = self
            .analyzer_blob(&spec.analyzer, spec.sha256.as_deref())
            .await?;
        let monitors = self.monitors().await?;
        let targets = self.resolve_targets(&spec.targets, &monitors).await?;
        let now = now_ms();
        let record = DeploymentRecord {
            deployment: spec.deployment.clone(),
            analyzer: analyzer.clone(),
            params: spec.params.clone(),
            filter: spec.filter.clone(),
            targets,
            owner: self.id.clone(),
            desired: DesiredState::Running,
            report_every_ms: spec.report_every_ms,
            created_unix_ms: now,
            updated_unix_ms: now,
        };
        let revision = self.claim(&record).await?;
        let loads = record.targets.iter().map(|t| {
            let request = LoadRequest {
                deployment: record.deployment.clone(),
                analyzer: analyzer.clone(),
                params: record.params.clone(),
                filter: record.filter.clone(),
                links: t.links.clone(),
                owner: self.id.clone(),
                report_every_ms: record.report_every_ms,
            };
            async move {
                let reply: Result<LoadReply, ErrorBody> = self
                    .request(
                        subject::monitor_load(&t.monitor, &self.id),
                        &request,
                        LOAD_TIMEOUT,
                    )
                    .await;
                (t.monitor.clone(), reply)
            }
        });
        let mut placed = Vec::new();
        let mut failed = Vec::new();
        for (monitor, reply) in join_all(loads).await {
            match reply {
                Ok(r) => {
                    let address = monitors
                        .get(&monitor)
                        .map(|m| m.address.clone())
                        .unwrap_or_default();
                    placed.push(Placed {
                        monitor,
                        address,
                        links: r.links,
                        not_capturing: r.not_capturing,
                    });
                }
                Err(error) => failed.push(Missing { monitor, error }),
            }
        }
        if placed.is_empty() {
            let _ = self
                .deployments
                .delete_expect_revision(&record.deployment, Some(revision))
                .await;
            let first = failed.remove(0).error;
            return Err(ErrorBody::new(
                first.code,
                format!(
                    "deployment = {:?} loaded nowhere: {}",
                    record.deployment, first.message
                ),
            ));
        }
        Ok(Deployed {
            record,
            revision,
            placed,
            failed,
        })
    }

    fn check_owner(&self, record: &DeploymentRecord, force: bool) -> Result<(), ErrorBody> {
        if force || record.owner == self.id {
            return Ok(());
        }
        refuse(
            ErrorCode::NotOwner,
            format!(
                "deployment {:?} is owned by {:?}, not {:?}: adopt it or use force",
                record.deployment, record.owner, self.id
            ),
        )
    }

    /// S4/S5: every target's results, each monitor given `timeout`.
    ///
    /// # Errors
    /// `unknown_deployment` or a bus error; monitors that fail are in
    /// [`Collected::missing`].
    pub async fn collect(&self, id: &str, timeout: Duration) -> Result<Collected, ErrorBody> {
        let (record, _) = self.existing(id).await?;
        let (monitors, replies) = tokio::join!(
            self.monitors(),
            join_all(record.targets.iter().map(|t| async move {
                let reply: Result<ResultWindow, ErrorBody> = self
                    .request(
                        subject::monitor_collect(&t.monitor, &self.id),
                        &CollectRequest {
                            deployment: id.to_owned(),
                        },
                        timeout,
                    )
                    .await;
                (t.monitor.clone(), reply)
            }))
        );
        Ok(gather(id, &monitors.unwrap_or_default(), replies))
    }

    /// New params, recorded (with the revision read) and sent to every target.
    ///
    /// # Errors
    /// `unknown_deployment`, `not_owner` (without `force`), a concurrent
    /// change, or a bus error.
    pub async fn configure(
        &self,
        id: &str,
        params: Value,
        force: bool,
    ) -> Result<Configured, ErrorBody> {
        let (mut record, revision) = self.existing(id).await?;
        self.check_owner(&record, force)?;
        record.params = params.clone();
        record.updated_unix_ms = now_ms();
        self.write(&record, revision).await?;
        let request = ConfigureRequest {
            deployment: id.to_owned(),
            requester: self.id.clone(),
            params,
            force,
        };
        let replies = join_all(record.targets.iter().map(|t| {
            let request = &request;
            async move {
                let reply: Result<ConfigureReply, ErrorBody> = self
                    .request(
                        subject::monitor_configure(&t.monitor, &self.id),
                        request,
                        COMMAND_TIMEOUT,
                    )
                    .await;
                (t.monitor.clone(), reply)
            }
        }))
        .await;
        let mut out = Configured {
            done: Vec::new(),
            failed: Vec::new(),
        };
        for (monitor, reply) in replies {
            match reply {
                Ok(r) => out.done.push((monitor, r.config_revision)),
                Err(error) => out.failed.push(Missing { monitor, error }),
            }
        }
        Ok(out)
    }

    /// S6/S7: marks the deployment unloaded (with the revision read: of two
    /// racing unloads one wins), unloads it on every target and removes the
    /// record. Returns each monitor's final results.
    ///
    /// # Errors
    /// `unknown_deployment`, `not_owner` (without `force`), a concurrent
    /// change, or a bus error.
    pub async fn unload(&self, id: &str, force: bool) -> Result<Collected, ErrorBody> {
        let (mut record, revision) = self.existing(id).await?;
        self.check_owner(&record, force)?;
        record.desired = DesiredState::Unloaded;
        record.updated_unix_ms = now_ms();
        let revision = self.write(&record, revision).await?;
        let request = UnloadRequest {
            deployment: id.to_owned(),
            requester: self.id.clone(),
            force,
        };
        let (monitors, replies) = tokio::join!(
            self.monitors(),
            join_all(record.targets.iter().map(|t| {
                let request = &request;
                async move {
                    let reply: Result<UnloadReply, ErrorBody> = self
                        .request(
                            subject::monitor_unload(&t.monitor, &self.id),
                            request,
                            COMMAND_TIMEOUT,
                        )
                        .await;
                    (t.monitor.clone(), reply.map(|r| r.final_results))
                }
            }))
        );
        let collected = gather(id, &monitors.unwrap_or_default(), replies);
        // A monitor that already lost it (restarted without its snapshot)
        // has nothing left to unload.
        let gone = collected
            .missing
            .iter()
            .all(|m| m.error.code == ErrorCode::UnknownDeployment);
        if gone {
            self.deployments
                .delete_expect_revision(id, Some(revision))
                .await
                .map_err(|e| bus("tm_deployments", e))?;
        }
        Ok(collected)
    }

    /// Takes ownership of a deployment whose owner is gone (no record in
    /// `tm_managers`), or of any deployment with `force`. Monitors accept
    /// the new owner from the record on its next configure or unload.
    /// Returns the previous owner.
    ///
    /// # Errors
    /// `unknown_deployment`, `not_owner` if the owner is alive (without
    /// `force`), a concurrent adoption, or a bus error.
    pub async fn adopt(&self, id: &str, force: bool) -> Result<String, ErrorBody> {
        let (mut record, revision) = self.existing(id).await?;
        let previous = record.owner.clone();
        if previous == self.id {
            return Ok(previous);
        }
        if !force
            && let Some(m) = self.managers().await?.get(&previous)
            && m.is_up(now_ms())
        {
            return refuse(
                ErrorCode::NotOwner,
                format!(
                    "deployment {id:?} is owned by {previous:?}, which is up (heartbeat {} s ago): use force to take it anyway",
                    now_ms().saturating_sub(m.heartbeat_unix_ms) / 1000
                ),
            );
        }
        record.owner = self.id.clone();
        record.updated_unix_ms = now_ms();
        self.write(&record, revision).await?;
        Ok(previous)
    }

    /// Status of the given monitors (all that are up if empty), each with
    /// `timeout`.
    ///
    /// # Errors
    /// If the monitor list cannot be read.
    pub async fn status(
        &self,
        monitors: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, Result<MonitorStatus, ErrorBody>)>, ErrorBody> {
        let ids: Vec<String> = if monitors.is_empty() {
            self.monitors().await?.into_keys().collect()
        } else {
            monitors.to_vec()
        };
        Ok(join_all(ids.into_iter().map(|id| async move {
            let reply = self
                .request(
                    subject::monitor_status(&id, &self.id),
                    &StatusRequest::default(),
                    timeout,
                )
                .await;
            (id, reply)
        }))
        .await)
    }
}

/// Monitor records that hold their addresses (by id), and those ignored
/// (key, record, why).
pub type Holding = (
    BTreeMap<String, MonitorRecord>,
    Vec<(String, MonitorRecord, &'static str)>,
);

/// Splits monitor records (by KV key) into those that hold the address
/// they claim and those that do not, with why. A record counts only under
/// its own id; where identities are `enforced` only if that id is its
/// address's ([`bus_schema::holds_address`]): a monitor may write only its
/// own record, so none can pose as the one at another address. Without
/// enforced identities any id may claim an address, unless a monitor
/// whose id is that address's is up.
#[must_use]
pub fn holding_monitors(records: BTreeMap<String, MonitorRecord>, enforced: bool) -> Holding {
    let held: HashMap<String, String> = records
        .iter()
        .filter(|(key, r)| **key == r.monitor && bus_schema::holds_address(key, &r.address))
        .map(|(key, r)| (r.address.clone(), key.clone()))
        .collect();
    let mut kept = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, r) in records {
        let why = if key != r.monitor {
            Some("stored under another monitor's key")
        } else {
            match held.get(&r.address) {
                Some(holder) if *holder == key => None,
                Some(_) => Some("claims the address of the monitor whose id is that address's"),
                None if enforced => Some("its id is not its address's, as identities require"),
                None => None,
            }
        };
        match why {
            None => {
                kept.insert(key, r);
            }
            Some(why) => ignored.push((key, r, why)),
        }
    }
    (kept, ignored)
}

fn gather(
    id: &str,
    monitors: &BTreeMap<String, MonitorRecord>,
    replies: Vec<(String, Result<ResultWindow, ErrorBody>)>,
) -> Collected {
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (monitor, reply) in replies {
        match reply {
            Ok(window) => results.push(MonitorResults {
                address: monitors
                    .get(&monitor)
                    .map(|m| m.address.clone())
                    .unwrap_or_default(),
                window,
            }),
            Err(error) => missing.push(Missing { monitor, error }),
        }
    }
    results.sort_by(|a, b| a.window.monitor.cmp(&b.window.monitor));
    missing.sort_by(|a, b| a.monitor.cmp(&b.monitor));
    Collected {
        deployment: id.to_owned(),
        results,
        missing,
    }
}

async fn keys(store: &kv::Store, name: &str) -> Result<Vec<String>, ErrorBody> {
    use futures::TryStreamExt;
    let keys = store.keys().await.map_err(|e| bus(name, e))?;
    keys.try_collect().await.map_err(|e| bus(name, e))
}

/// Every live record of a bucket keyed by id, read concurrently.
async fn read_all<T: DeserializeOwned>(
    store: &kv::Store,
    name: &str,
) -> Result<BTreeMap<String, T>, ErrorBody> {
    let keys = keys(store, name).await?;
    let values = join_all(keys.iter().map(|k| store.get(k))).await;
    let mut out = BTreeMap::new();
    let mut unreadable = HashMap::new();
    for (key, value) in keys.into_iter().zip(values) {
        if let Some(bytes) = value.map_err(|e| bus(name, e))? {
            match bus_schema::decode::<T>(&bytes) {
                Ok(r) => {
                    out.insert(key, r);
                }
                Err(e) => {
                    unreadable.insert(key, e.to_string());
                }
            }
        }
    }
    for (key, e) in unreadable {
        tracing::warn!(bucket = name, key = %key, error = %e, "unreadable record skipped");
    }
    Ok(out)
}
