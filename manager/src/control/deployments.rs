//! Deployments as desired state in `tm_deployments`: [`Control::deploy`]
//! *claims* the id with a KV create (exactly one of several racing managers
//! wins), then sends `load` to every target monitor. Configure and unload
//! check the recorded owner and write the record with the revision they
//! read, never a blind put; [`Control::adopt`] moves ownership the same way.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use bus_schema::store::{self, BlobKind, BlobMeta};
use bus_schema::{
    BlobRef, ConfigureReply, ConfigureRequest, DeploymentRecord, DeploymentTarget, DesiredState,
    ErrorBody, ErrorCode, Filter, LoadReply, LoadRequest, MonitorRecord, UnloadReply,
    UnloadRequest, UpgradeReply, UpgradeRequest, Value, subject,
};
use futures::future::join_all;

use super::gather::gather;
use super::{
    COMMAND_TIMEOUT, Collected, Control, LOAD_TIMEOUT, Missing, bus, keys, now_ms, refuse,
};

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

/// Outcome of a configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// Monitors that applied it, with their config revision.
    pub done: Vec<(String, u64)>,
    /// Monitors that did not.
    pub failed: Vec<Missing>,
}

/// Outcome of an upgrade, monitor after monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The module asked for.
    pub analyzer: BlobRef,
    /// Monitors that run it now, with their replies.
    pub done: Vec<(String, UpgradeReply)>,
    /// The monitor that refused (the upgrade stopped there).
    pub failed: Vec<Missing>,
    /// Monitors not asked because one before them refused.
    pub skipped: Vec<String>,
}

impl Control {
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

    pub(super) async fn existing(&self, id: &str) -> Result<(DeploymentRecord, u64), ErrorBody> {
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

    /// Replaces the deployment's analyzer by the blob `blob` on its
    /// monitors one after another, each keeping its state; stops at the
    /// first refusal (the monitors before it run the new module, the
    /// others the old one). Once every monitor took it, the record's
    /// analyzer is the new one (and `params`, if given, its params).
    ///
    /// # Errors
    /// `unknown_deployment`, `not_owner` (without `force`), an unknown or
    /// wrong blob, a concurrent change of the record, or a bus error.
    pub async fn upgrade(
        &self,
        id: &str,
        blob: &str,
        params: Option<Value>,
        force: bool,
    ) -> Result<Upgraded, ErrorBody> {
        let (mut record, revision) = self.existing(id).await?;
        self.check_owner(&record, force)?;
        let analyzer = self.analyzer_blob(blob, None).await?;
        let request = UpgradeRequest {
            deployment: id.to_owned(),
            requester: self.id.clone(),
            analyzer: analyzer.clone(),
            params: params.clone(),
            force,
        };
        let mut out = Upgraded {
            analyzer: analyzer.clone(),
            done: Vec::new(),
            failed: Vec::new(),
            skipped: Vec::new(),
        };
        for t in &record.targets {
            if !out.failed.is_empty() {
                out.skipped.push(t.monitor.clone());
                continue;
            }
            let reply: Result<UpgradeReply, ErrorBody> = self
                .request(
                    subject::monitor_upgrade(&t.monitor, &self.id),
                    &request,
                    LOAD_TIMEOUT,
                )
                .await;
            match reply {
                Ok(r) => out.done.push((t.monitor.clone(), r)),
                Err(error) => out.failed.push(Missing {
                    monitor: t.monitor.clone(),
                    error,
                }),
            }
        }
        if out.failed.is_empty() {
            record.analyzer = analyzer;
            if let Some(params) = params {
                record.params = params;
            }
            record.updated_unix_ms = now_ms();
            self.write(&record, revision).await?;
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
}
