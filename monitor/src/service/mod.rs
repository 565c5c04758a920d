//! The monitor on the bus: the [`Monitor`] and its parts —
//! `commands` (one handler per command subject of the catalogue),
//! `loading` (a load in small steps, and recovery from snapshots) and
//! `liveness` (status, the liveness record, link state events).
//! Publishing is [`crate::outbox`]'s.

mod commands;
mod liveness;
mod loading;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bus_schema::{ErrorBody, ErrorCode};
use wasm_host::Sandbox;

use crate::config::Config;
use crate::deployment::Shared;
use crate::inbox::DepMsg;
use crate::link::LinkHandle;
use crate::outbox::Outbox;

/// Largest analyzer blob a monitor accepts.
pub const MAX_BLOB_BYTES: usize = 64 << 20;
/// How long a command waits for a deployment thread.
const DEPLOYMENT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A deployment as the service holds it: its state, its inbox, its thread.
struct Deployment {
    shared: Arc<Shared>,
    tx: flume::Sender<DepMsg>,
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
    /// Blobs this monitor fetched and verified, by (name, digest), so a
    /// redeploy of the same module reads nothing from the object store.
    verified: Mutex<VerifiedBlobs>,
}

/// Verified blobs by (name, digest), oldest first.
type VerifiedBlobs = VecDeque<((String, String), Arc<[u8]>)>;

fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ErrorBody> {
    Err(ErrorBody::new(code, message))
}

fn token(field: &str, value: &str) -> Result<(), ErrorBody> {
    bus_schema::validate_token(field, value)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
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
            ..wasm_host::SandboxConfig::for_call_timeout(Duration::from_millis(
                config.limits.call_timeout_ms,
            ))
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
            verified: Mutex::default(),
        });
        Ok((monitor, outbox))
    }

    /// How long commands took (for the metrics endpoint).
    #[must_use]
    pub fn commands(&self) -> &wasm_host::metrics::CommandTimes {
        &self.commands
    }

    pub(super) fn find(
        &self,
        deployment: &str,
    ) -> Result<(Arc<Shared>, flume::Sender<DepMsg>), ErrorBody> {
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
}
