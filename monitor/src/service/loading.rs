//! Loading a deployment, in steps: check the request, fetch and verify the
//! blob, then off the runtime compile the module and its filters,
//! instantiate the analyzer, start its thread and attach its taps.
//! Recovery after a crash loads again from the saved snapshots.

use std::sync::Arc;
use std::time::Duration;

use bus_schema::{
    BlobRef, DeploymentSnapshot, ErrorBody, ErrorCode, EventKind, LoadReply, LoadRequest,
    ResultWindow, Value, store, subject,
};
use futures::StreamExt;

use super::{Deployment, MAX_BLOB_BYTES, Monitor, err, token};
use crate::deployment::{self, DeploymentInfo, Shared, Timers};
use crate::engine::Engine;
use crate::filter::{Bpf, CompiledFilter, compile_bpf};
use crate::guest::{Analyzer, InstanceConfig};
use crate::inbox::Upgrade;
use crate::tap::{Tap, guest_batch_bytes};
use crate::unix_ms;

/// A load request checked: its links resolved, its filter compiled, its
/// params encoded.
struct Checked {
    req: LoadRequest,
    links: Vec<u32>,
    filter: Arc<CompiledFilter>,
    params: Vec<u8>,
}

/// A blob whose SHA-256 and signature were checked against the request.
struct VerifiedBlob {
    sha256: String,
    bytes: Arc<[u8]>,
}

/// Verified blobs a monitor keeps ([`Monitor::verified_blob`]).
const VERIFIED_KEPT: usize = 8;

/// A request's `analyzer.sha256` must be 64 hex digits.
fn digest_form(analyzer: &BlobRef) -> Result<(), ErrorBody> {
    let want = &analyzer.sha256;
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return err(
            ErrorCode::BadRequest,
            format!("analyzer.sha256 = {want:?}: expected 64 hex digits"),
        );
    }
    Ok(())
}

impl Monitor {
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
            let snap: DeploymentSnapshot = match bus_schema::decode(&bytes) {
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
            let snap = self.past_stored_windows(snap).await;
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

    /// The snapshot with its window numbering moved past the last window of
    /// the same run that the results stream holds. Windows published after
    /// the snapshot was saved have taken the seqs that follow it; numbered
    /// again from the snapshot, the recovered deployment's windows would
    /// carry their message ids and be dropped by the stream as duplicates.
    /// Without the stream (unreachable), the snapshot's numbering stands.
    async fn past_stored_windows(&self, mut snap: DeploymentSnapshot) -> DeploymentSnapshot {
        let subject = subject::results(&self.id, &snap.request.deployment);
        let Ok(stream) = self.js.get_stream(store::RESULTS_STREAM).await else {
            return snap;
        };
        if let Ok(msg) = stream.get_last_raw_message_by_subject(&subject).await
            && let Ok(last) = bus_schema::decode::<ResultWindow>(&msg.payload)
            && last.run == snap.run
            && last.seq > snap.published_seq
        {
            tracing::info!(deployment = %snap.request.deployment, snapshot_seq = snap.published_seq, stored_seq = last.seq, "windows numbered on from the last one stored");
            snap.published_seq = last.seq;
        }
        snap
    }

    /// Loads a deployment (`restore`: from its snapshot, after a crash).
    pub(super) async fn load_request(
        self: &Arc<Self>,
        req: LoadRequest,
        restore: Option<DeploymentSnapshot>,
    ) -> Result<LoadReply, ErrorBody> {
        let checked = self.check_request(req)?;
        let blob = self.verified_blob(&checked.req.analyzer).await?;
        // Compiling and instantiating are CPU work: keep them off the runtime.
        let monitor = self.clone();
        tokio::task::spawn_blocking(move || monitor.start_deployment(checked, &blob, restore))
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("load task: {e}")))?
    }

    /// Everything about a load request that can be checked before its blob
    /// is fetched: ids, owner, limits, links, filter, params, digest form.
    fn check_request(&self, req: LoadRequest) -> Result<Checked, ErrorBody> {
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
        let links = self.resolve_links(&req.links)?;
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
        digest_form(&req.analyzer)?;
        let params = bus_schema::encode(&req.params)
            .map_err(|e| ErrorBody::new(ErrorCode::BadParams, e.to_string()))?;
        self.params_fit(&params)?;
        Ok(Checked {
            req,
            links,
            filter,
            params,
        })
    }

    /// The links a load names (all of the monitor's if none), each known
    /// and given once.
    fn resolve_links(&self, asked: &[u32]) -> Result<Vec<u32>, ErrorBody> {
        let links: Vec<u32> = if asked.is_empty() {
            self.links.keys().copied().collect()
        } else {
            asked.to_vec()
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
        Ok(links)
    }

    /// The analyzer's blob (read without leaving a consumer behind, at
    /// most [`MAX_BLOB_BYTES`]), its digest the request's and its signature
    /// trusted, stored for this monitor's ABI: checked before anything is
    /// compiled. The last [`VERIFIED_KEPT`] verified are kept by name and
    /// digest: the same request again reads nothing from the store (the
    /// bytes are the digest's; the signers trusted do not change while the
    /// monitor runs).
    async fn verified_blob(&self, analyzer: &BlobRef) -> Result<VerifiedBlob, ErrorBody> {
        let name = &analyzer.name;
        let want = analyzer.sha256.to_ascii_lowercase();
        let key = (name.clone(), want.clone());
        if let Some((_, bytes)) = self
            .verified
            .lock()
            .expect("verified blobs")
            .iter()
            .find(|(k, _)| *k == key)
        {
            return Ok(VerifiedBlob {
                sha256: want,
                bytes: bytes.clone(),
            });
        }
        let blob = wasm_host::blob::fetch_verified(
            &self.js,
            &self.trusted,
            store::BlobKind::Analyzer,
            "analyzer.name",
            name,
            MAX_BLOB_BYTES,
        )
        .await?;
        let (got, metadata) = (blob.sha256, blob.metadata);
        if got != want {
            return err(
                ErrorCode::DigestMismatch,
                format!("blob {name:?} has sha256 {got}, the request asked for {want}"),
            );
        }
        if let Some(abi) = metadata.get(store::meta_key::ABI).filter(|a| !a.is_empty())
            && abi.parse::<u32>().ok() != Some(tm_abi::ABI_VERSION)
        {
            return err(
                ErrorCode::AbiMismatch,
                format!(
                    "blob {name:?} is stored with {} = {abi:?}; this monitor runs analyzers of ABI v{}",
                    store::meta_key::ABI,
                    tm_abi::ABI_VERSION
                ),
            );
        }
        let bytes: Arc<[u8]> = blob.bytes.into();
        let mut kept = self.verified.lock().expect("verified blobs");
        kept.push_back((key, bytes.clone()));
        while kept.len() > VERIFIED_KEPT {
            kept.pop_front();
        }
        Ok(VerifiedBlob { sha256: got, bytes })
    }

    /// Snapshots carry the params: they must leave room for the state.
    pub(super) fn params_fit(&self, params: &[u8]) -> Result<(), ErrorBody> {
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

    /// The filter's BPF compiled for each link's link type.
    fn link_bpfs(
        &self,
        links: &[u32],
        filter: &CompiledFilter,
    ) -> Result<Vec<Option<Bpf>>, ErrorBody> {
        links
            .iter()
            .map(|l| {
                let Some(expr) = &filter.bpf else {
                    return Ok(None);
                };
                let dlt = self.links[l].shared.dlt().ok_or_else(|| {
                    ErrorBody::new(
                        ErrorCode::BadFilter,
                        format!("filter.bpf: link {l} is not capturing"),
                    )
                })?;
                compile_bpf(expr, dlt)
                    .map(Some)
                    .map_err(|e| ErrorBody::new(ErrorCode::BadFilter, e.0))
            })
            .collect()
    }

    /// The deployment's shared state (a recovery keeps its run).
    fn new_shared(
        &self,
        checked: &Checked,
        sha256: &str,
        restore: Option<&DeploymentSnapshot>,
    ) -> Arc<Shared> {
        let (req, links) = (&checked.req, &checked.links);
        Shared::new(
            DeploymentInfo {
                monitor: self.id.clone(),
                deployment: req.deployment.clone(),
                links: links.clone(),
                link_stats: links.iter().map(|l| self.links[l].shared.clone()).collect(),
                started_unix_ms: unix_ms(),
                run: restore
                    .map(|snap| snap.run.clone())
                    .unwrap_or_else(|| nuid::next().to_string()),
            },
            // The module as verified: status and windows name it.
            LoadRequest {
                links: links.clone(),
                analyzer: BlobRef {
                    name: req.analyzer.name.clone(),
                    sha256: sha256.to_owned(),
                },
                ..req.clone()
            },
            self.outbox.clone(),
        )
    }

    /// The analyzer instantiated under the monitor's limits, its alerts
    /// going out as the deployment's events, its state restored if given.
    fn instantiate(
        &self,
        checked: &Checked,
        blob: &VerifiedBlob,
        shared: &Arc<Shared>,
        restore: Option<&DeploymentSnapshot>,
    ) -> Result<Analyzer, ErrorBody> {
        let req = &checked.req;
        let mut analyzer = self.new_analyzer(
            &req.deployment,
            &req.analyzer.name,
            &checked.links,
            blob,
            &checked.params,
            shared,
        )?;
        if let Some(snap) = restore {
            if !snap.state.is_nil()
                && let Err(e) = analyzer.restore(&snap.state)
            {
                tracing::warn!(deployment = %req.deployment, error = ?e, "analyzer state not restored; it starts afresh");
            }
            shared.restore_from(snap);
        }
        Ok(analyzer)
    }

    /// A fresh instance of `blob` for a deployment on `links` with `params`,
    /// under the monitor's limits, its alerts the deployment's events.
    fn new_analyzer(
        &self,
        deployment: &str,
        name: &str,
        links: &[u32],
        blob: &VerifiedBlob,
        params: &[u8],
        shared: &Arc<Shared>,
    ) -> Result<Analyzer, ErrorBody> {
        let module = self
            .sandbox
            .module(&blob.sha256, &blob.bytes)
            .map_err(|e| ErrorBody::new(ErrorCode::BadModule, format!("blob {name:?}: {e}")))?;
        let limits = &self.config.limits;
        let snaplen = links
            .iter()
            .map(|l| self.links[l].shared.config.snaplen)
            .max()
            .unwrap_or(65535);
        let emit_shared = Arc::downgrade(shared);
        Analyzer::new(
            &self.sandbox,
            &module,
            &InstanceConfig {
                memory_bytes: (limits.memory_mb as usize) << 20,
                call_timeout: Duration::from_millis(limits.call_timeout_ms),
                batch_bytes: guest_batch_bytes(snaplen),
                deployment: deployment.to_owned(),
            },
            params,
            Box::new(move |value: Value| {
                if let Some(shared) = emit_shared.upgrade() {
                    let message = value["message"].as_str().unwrap_or("alert").to_owned();
                    shared.event(EventKind::Alert, message, value);
                }
            }),
        )
        .map_err(|e| ErrorBody::new(e.code, e.message))
    }

    /// An instance of `analyzer` to take over `shared`'s deployment: the
    /// blob checked as for a load, compiled and instantiated with `params`
    /// (default: the deployment's current ones) off the runtime.
    pub(super) async fn upgrade_instance(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        analyzer: &BlobRef,
        params: Option<Value>,
    ) -> Result<Upgrade, ErrorBody> {
        digest_form(analyzer)?;
        let blob = self.verified_blob(analyzer).await?;
        let request = shared.request();
        let encoded = bus_schema::encode(params.as_ref().unwrap_or(&request.params))
            .map_err(|e| ErrorBody::new(ErrorCode::BadParams, e.to_string()))?;
        let (monitor, shared, name) = (self.clone(), shared.clone(), analyzer.name.clone());
        let sha256 = blob.sha256.clone();
        let instance = tokio::task::spawn_blocking(move || {
            monitor.new_analyzer(
                &request.deployment,
                &name,
                &shared.info.links,
                &blob,
                &encoded,
                &shared,
            )
        })
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("upgrade task: {e}")))??;
        Ok(Upgrade {
            analyzer: Box::new(instance),
            blob: BlobRef {
                name: analyzer.name.clone(),
                sha256,
            },
            params,
        })
    }

    /// Compiles, instantiates and starts the deployment, then attaches it
    /// to its links.
    fn start_deployment(
        self: &Arc<Self>,
        checked: Checked,
        blob: &VerifiedBlob,
        restore: Option<DeploymentSnapshot>,
    ) -> Result<LoadReply, ErrorBody> {
        let bpfs = self.link_bpfs(&checked.links, &checked.filter)?;
        let shared = self.new_shared(&checked, &blob.sha256, restore.as_ref());
        let analyzer = self.instantiate(&checked, blob, &shared, restore.as_ref())?;
        let snap_len = analyzer.snap_len();
        let engine = Engine::new(analyzer);
        let Checked {
            req, links, filter, ..
        } = checked;
        let limits = &self.config.limits;
        // Room for a partial batch from every link's capture thread besides
        // the budget's full ones: the taps hold the queue to its budget in
        // packets.
        let captures: usize = links
            .iter()
            .map(|l| self.links[l].shared.capture_threads())
            .sum();
        let (tx, rx) = flume::bounded(limits.queue_batches * 4 + captures);
        let timers = Timers {
            tick: Duration::from_millis(limits.tick_ms),
            report: req.report_every_ms.map(Duration::from_millis),
            snapshot: Duration::from_millis(limits.snapshot_ms),
        };
        let thread = {
            let (shared, engine) = (shared.clone(), engine.clone());
            std::thread::Builder::new()
                .name(format!("dep-{}", req.deployment))
                .spawn(move || deployment::run_engine(&engine, rx, shared, timers))
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
            let link = &self.links[l];
            let here = link.shared.config.analyses_on_capture_thread();
            link.attach(|| {
                let tap = Tap::new(
                    req.deployment.clone(),
                    filter.clone(),
                    bpf.clone(),
                    tx.clone(),
                    shared.counters.clone(),
                    limits.batch_packets,
                    snap_len,
                )
                .with_queue_budget(limits.queue_batches as u64 * u64::from(limits.batch_packets));
                if here {
                    tap.analysing_on_capture_thread(engine.clone())
                } else {
                    tap
                }
            });
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
            abi_version: tm_abi::ABI_VERSION,
            run: shared.info.run.clone(),
            not_capturing,
        })
    }
}
