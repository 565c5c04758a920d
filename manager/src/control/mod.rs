//! Driving monitors on behalf of one identity (a manager, or `tmctl --as`).
//!
//! [`Control`] holds the connection and the buckets, sends each monitor
//! command with its own timeout ([`Control::request`]) and reads which
//! monitors and managers are up ([`holding_monitors`]). Deployments as
//! desired state are in `deployments`, collect and status across monitors
//! in `gather`. Commands go to all targets at once, each with its own
//! timeout, so one slow or dead monitor only costs its own timeout and is
//! reported as missing, never fatal.

mod deployments;
mod gather;
mod liveness;

pub use deployments::{Configured, DeploySpec, Deployed, Placed, Targets, Upgraded};
pub use gather::{Collected, Missing, MonitorResults};
pub use liveness::{GONE_AFTER, PROBE_EVERY};

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, object_store};
use bus_schema::store;
use bus_schema::{ErrorBody, ErrorCode, ManagerRecord, MonitorRecord, Reply, subject};
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
    /// Who answered the last liveness probes ([`Control::watch_liveness`]).
    liveness: liveness::Liveness,
    /// The monitor records last read, and when ([`Control::records_within`]).
    records: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, MonitorRecords)>>>,
    /// The monitor records as a watch delivers them ([`Control::watch_records`]).
    watched: liveness::Watched,
}

/// Monitor records by id.
type MonitorRecords = BTreeMap<String, MonitorRecord>;

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
            liveness: liveness::Liveness::default(),
            records: std::sync::Arc::default(),
            watched: liveness::Watched::default(),
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

    /// Monitors that are up (records younger than the bucket's max_age,
    /// and, where [`Control::watch_liveness`] runs, answering its probes),
    /// by id.
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
        let mut up = self.records_within(Duration::ZERO).await?;
        up.retain(|id, r| !self.liveness.gone(id, r));
        Ok(up)
    }

    /// The monitor records (as [`Control::monitors`], without asking who
    /// answers) as read at most `fresh` ago, read again if older: for what
    /// needs only the monitors' addresses, so that a collect round from a
    /// thousand monitors does not read a thousand records each time. Where
    /// [`Control::watch_records`] runs and `fresh` is not zero, its copy
    /// (current to within the watch's delivery) is used and nothing is read.
    ///
    /// # Errors
    /// If the bucket cannot be read.
    pub async fn records_within(&self, fresh: Duration) -> Result<MonitorRecords, ErrorBody> {
        if !fresh.is_zero()
            && let Some(records) = self.watched.current(self.enforced)
        {
            return Ok(records);
        }
        if let Some((at, records)) = &*self.records.lock().expect("records")
            && at.elapsed() < fresh
        {
            return Ok(records.clone());
        }
        let all: MonitorRecords = read_all(&self.monitors, "tm_monitors").await?;
        let (kept, ignored) = holding_monitors(all, self.enforced);
        for (key, r, why) in ignored {
            tracing::warn!(monitor = %key, address = %r.address, why, "monitor record ignored");
        }
        *self.records.lock().expect("records") = Some((std::time::Instant::now(), kept.clone()));
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
