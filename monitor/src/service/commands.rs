//! Command handlers: one per monitor command subject in the catalogue,
//! served through the NATS service API, each run in its own tracing span.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_nats::service::ServiceExt;
use bus_schema::subject::{self, SubjectKind, SubjectSpec};
use bus_schema::{
    CollectRequest, ConfigureReply, ConfigureRequest, DeploymentState, ErrorBody, ErrorCode,
    EventKind, LoadReply, LoadRequest, MonitorStatus, Reply, ResultWindow, StatusRequest,
    UnloadReply, UnloadRequest, UpgradeReply, UpgradeRequest, Value, store,
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{DEPLOYMENT_REPLY_TIMEOUT, Monitor, err, token};
use crate::deployment::Shared;
use crate::inbox::{DepMsg, UpgradeError};

/// The commands a monitor answers, one per command subject the catalogue
/// has a monitor answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Load,
    Unload,
    Collect,
    Configure,
    Upgrade,
    Status,
}

impl Command {
    fn from_name(name: &str) -> Option<Command> {
        Some(match name {
            "load" => Command::Load,
            "unload" => Command::Unload,
            "collect" => Command::Collect,
            "configure" => Command::Configure,
            "upgrade" => Command::Upgrade,
            "status" => Command::Status,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Command::Load => "load",
            Command::Unload => "unload",
            Command::Collect => "collect",
            Command::Configure => "configure",
            Command::Upgrade => "upgrade",
            Command::Status => "status",
        }
    }
}

/// The catalogue's command subjects a monitor answers.
fn monitor_commands() -> Vec<SubjectSpec> {
    subject::catalog()
        .into_iter()
        .filter(|s| {
            s.kind == SubjectKind::Command && s.subscribers.contains(&bus_schema::Role::Monitor)
        })
        .collect()
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
    /// Registers one endpoint per monitor command of the subject catalogue
    /// with the NATS service API and serves them until the client closes.
    ///
    /// # Errors
    /// If the service cannot be registered, or the catalogue names a
    /// command this monitor has no handler for.
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
        let mut tasks = Vec::new();
        for spec in monitor_commands() {
            // The last token is the requester, which the permissions prove.
            let subj = spec
                .pattern
                .replace("{monitor}", &self.id)
                .replace("{requester}", "*");
            let name = subject::command_of(&subj).unwrap_or_default().to_owned();
            let command = Command::from_name(&name).ok_or_else(|| {
                anyhow::anyhow!("the subject catalogue's {subj} has no handler here")
            })?;
            let mut endpoint = service
                .endpoint_builder()
                .name(&name)
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
                        let reply = monitor.run(command, requester, &payload).await;
                        if let Err(e) = request.respond(Ok(reply)).await {
                            tracing::warn!(command = command.name(), error = %e, "cannot send reply");
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

    /// Decodes and runs one command (`load`, `collect`, …) sent by
    /// `requester` (the subject's last token), returning the encoded reply
    /// envelope: `bad_request` for a command that does not exist.
    pub async fn handle(
        self: &Arc<Self>,
        command: &str,
        requester: &str,
        payload: &[u8],
    ) -> bytes::Bytes {
        match Command::from_name(command) {
            Some(command) => self.run(command, requester, payload).await,
            None => encode_reply(&Reply::<()>::error(
                ErrorCode::BadRequest,
                format!("unknown command {command}"),
            )),
        }
    }

    /// Runs one command in its own span; the reply, encoded.
    async fn run(
        self: &Arc<Self>,
        command: Command,
        requester: &str,
        payload: &[u8],
    ) -> bytes::Bytes {
        let span = tracing::info_span!("command", command = command.name(), requester);
        async {
            let started = Instant::now();
            let reply = match command {
                Command::Load => encode_reply(&Reply::from(self.load(requester, payload).await)),
                Command::Unload => {
                    encode_reply(&Reply::from(self.unload(requester, payload).await))
                }
                Command::Collect => encode_reply(&Reply::from(self.collect(payload).await)),
                Command::Configure => {
                    encode_reply(&Reply::from(self.configure(requester, payload).await))
                }
                Command::Upgrade => {
                    encode_reply(&Reply::from(self.upgrade(requester, payload).await))
                }
                Command::Status => encode_reply(&Reply::from(self.status(payload))),
            };
            let reply = self.fits_the_bus(command, reply);
            self.commands.observe(command.name(), started.elapsed());
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "command handled"
            );
            reply
        }
        .instrument(span)
        .await
    }

    /// A reply the bus cannot carry would leave the requester waiting: it
    /// becomes a `resource_limit` error saying so.
    fn fits_the_bus(&self, command: Command, reply: bytes::Bytes) -> bytes::Bytes {
        let max = self.outbox.max_message();
        if reply.len() <= max {
            return reply;
        }
        tracing::warn!(size = reply.len(), max, "reply too large for the bus");
        encode_reply(&Reply::<()>::error(
            ErrorCode::ResourceLimit,
            format!(
                "the {} reply takes {} bytes, more than the bus's max payload ({max} bytes): ask for less (params such as top_n) or raise max_payload",
                command.name(),
                reply.len()
            ),
        ))
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

    async fn collect(self: &Arc<Self>, payload: &[u8]) -> Result<ResultWindow, ErrorBody> {
        let req: CollectRequest = decode_required(payload)?;
        let (shared, tx) = self.find(&req.deployment)?;
        if shared.state().0 == DeploymentState::Running {
            self.flush_links(&shared).await;
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
        self.flush_links(&shared).await;
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

    /// Another module for a running deployment, its state carried over;
    /// on any refusal the running analyzer goes on.
    async fn upgrade(
        self: &Arc<Self>,
        requester: &str,
        payload: &[u8],
    ) -> Result<UpgradeReply, ErrorBody> {
        let req: UpgradeRequest = decode_required(payload)?;
        proven("requester", &req.requester, requester)?;
        let (shared, tx) = self.find(&req.deployment)?;
        self.check_owner(&shared, &req.requester, req.force).await?;
        let failed = |why: Option<String>| {
            err(
                ErrorCode::GuestTrap,
                format!(
                    "deployment {:?} failed: {}",
                    req.deployment,
                    why.unwrap_or_default()
                ),
            )
        };
        if let (DeploymentState::Failed, why) = shared.state() {
            return failed(why);
        }
        let previous = shared.request().analyzer;
        let to = self
            .upgrade_instance(&shared, &req.analyzer, req.params)
            .await?;
        let analyzer = to.blob.clone();
        self.flush_links(&shared).await;
        match Self::ask(&tx, |r| DepMsg::Upgrade(Box::new(to), r)).await {
            Some(Ok(held)) => {
                shared.event(
                    EventKind::Upgraded,
                    format!(
                        "{} ({}) took over from {} ({})",
                        analyzer.name, analyzer.sha256, previous.name, previous.sha256
                    ),
                    Value::Map(vec![
                        ("previous".into(), blob_value(&previous)),
                        ("analyzer".into(), blob_value(&analyzer)),
                    ]),
                );
                Ok(UpgradeReply {
                    deployment: req.deployment,
                    previous,
                    analyzer,
                    swap_us: held.as_micros() as u64,
                })
            }
            Some(Err(e)) => {
                let code = match &e {
                    UpgradeError::SnapLen { .. } => ErrorCode::BadModule,
                    UpgradeError::RestoreRefused(_) => ErrorCode::RestoreRefused,
                    UpgradeError::StateVersion(_) => ErrorCode::StateVersion,
                    UpgradeError::RestoreTrapped(_)
                    | UpgradeError::Snapshot(_)
                    | UpgradeError::Failed(_) => ErrorCode::GuestTrap,
                };
                err(code, format!("analyzer = {:?}: {e}", req.analyzer.name))
            }
            None => failed(shared.state().1),
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
    pub(super) async fn unload_deployment(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<ResultWindow, ErrorBody> {
        let (shared, tx) = self.find(id)?;
        let mut window = None;
        if shared.state().0 == DeploymentState::Running {
            self.flush_links(&shared).await;
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

    /// With `[trust] owners` set, only those may own deployments here:
    /// a load naming another owner, and a configure or unload by another
    /// requester (even with `force`), is refused.
    pub(super) fn authorised(&self, field: &str, who: &str) -> Result<(), ErrorBody> {
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

    /// Hands partial batches of the deployment's links to it, so that what
    /// is asked next of it sees every packet captured so far. Nothing to do
    /// (no thread woken) when none of its taps holds a partial batch: every
    /// packet offered to them is then in its queue already.
    pub(super) async fn flush_links(self: &Arc<Self>, shared: &Shared) {
        if shared.counters.partial_taps.load(Ordering::Acquire) == 0 {
            return;
        }
        let monitor = self.clone();
        let links = shared.info.links.clone();
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
        tx: &flume::Sender<DepMsg>,
        make: impl FnOnce(oneshot::Sender<T>) -> DepMsg,
    ) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let msg = make(reply);
        let sent = match tx.try_send(msg) {
            Ok(()) => true,
            // The queue is full of batches: wait for room off the runtime.
            Err(flume::TrySendError::Full(msg)) => {
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || {
                    tx.send_timeout(msg, DEPLOYMENT_REPLY_TIMEOUT).is_ok()
                })
                .await
                .unwrap_or(false)
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        };
        if !sent {
            return None;
        }
        tokio::time::timeout(DEPLOYMENT_REPLY_TIMEOUT, rx)
            .await
            .ok()?
            .ok()
    }
}

/// A blob reference as an event's data carries it.
fn blob_value(blob: &bus_schema::BlobRef) -> Value {
    Value::Map(vec![
        ("name".into(), blob.name.clone().into()),
        ("sha256".into(), blob.sha256.clone().into()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_monitor_command_of_the_catalogue_has_a_handler() {
        let commands = monitor_commands();
        assert_eq!(commands.len(), 6, "{commands:?}");
        for spec in commands {
            let name = subject::command_of(&spec.pattern).unwrap();
            let command = Command::from_name(name)
                .unwrap_or_else(|| panic!("no handler for {}", spec.pattern));
            assert_eq!(command.name(), name);
        }
    }
}
