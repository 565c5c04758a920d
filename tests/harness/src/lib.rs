//! Real `nats-server` processes for tests.
//!
//! [`NatsServer::start`] runs `nats-server -js` on a free loopback port with
//! its own temporary store directory and returns once a client is connected
//! and JetStream answers. [`NatsCluster::start`] does the same for a 3-node
//! cluster with routes. Everything is killed and removed on drop, so tests
//! run in parallel without colliding.
//!
//! The binary is `$NATS_SERVER_BIN` if set, else `nats-server` on `PATH`.
//! `xtask/setup.sh` installs one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

pub mod browser;
pub mod collector;
pub mod compose;
pub mod lab;
pub mod metrics;
pub mod monitor;
pub mod site;
pub mod wire;

/// How long a server may take to accept clients and serve JetStream.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No `nats-server` binary was found.
    #[error(
        "nats-server not found: set NATS_SERVER_BIN or put it on PATH (xtask/setup.sh installs it)"
    )]
    BinaryNotFound,
    /// The process could not be spawned or exited early.
    #[error("nats-server {name}: {why}; log:\n{log}")]
    Start {
        /// Server name.
        name: String,
        /// What happened.
        why: String,
        /// The server's log.
        log: String,
    },
    /// I/O on the temp dir or ports file.
    #[error("harness I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The requester id test commands carry where identities are not
/// enforced.
pub const LAB_REQUESTER: &str = "t";

/// Finds the `nats-server` binary: `$NATS_SERVER_BIN`, then `PATH`.
pub fn nats_server_bin() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::BinaryNotFound)
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(HarnessError::BinaryNotFound)
}

/// Asks the kernel for a loopback port that is free right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Ports and names of one node, fixed after its first start so that a
/// restart comes back at the same address.
#[derive(Debug, Clone)]
struct NodeSpec {
    name: String,
    client_port: Option<u16>,
    cluster: Option<ClusterSpec>,
    /// An `authorization` block (`tmctl auth init`'s `auth.conf`) the server
    /// enforces, and the credentials the harness itself connects with.
    auth: Option<(PathBuf, PathBuf)>,
    /// More server configuration (e.g. a `jetstream { ... }` block).
    extra_conf: Option<String>,
    /// Runs JetStream itself (`-js`); a leaf node of a remote site does
    /// not: its clients' JetStream requests cross the leaf link.
    jetstream: bool,
    /// The JetStream domain its clients reach JetStream in (a leaf's: the
    /// hub's); none: the server's own.
    js_domain: Option<String>,
}

#[derive(Debug, Clone)]
struct ClusterSpec {
    name: String,
    port: u16,
    routes: Vec<u16>,
}

/// One running `nats-server -js`.
///
/// Killed (SIGKILL) and its store directory removed on drop.
pub struct NatsServer {
    spec: NodeSpec,
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("name", &self.spec.name)
            .field("url", &self.url())
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl NatsServer {
    /// Starts a single server with JetStream on a free port and waits until
    /// a client connects and JetStream answers.
    pub async fn start() -> Result<Self, HarnessError> {
        let spec = NodeSpec {
            name: "tm-test".into(),
            client_port: None,
            cluster: None,
            auth: None,
            extra_conf: None,
            jetstream: true,
            js_domain: None,
        };
        let mut server = Self::spawn(spec).await?;
        server.wait_ready(STARTUP_TIMEOUT).await?;
        Ok(server)
    }

    /// [`NatsServer::start`] with more server configuration, e.g.
    /// `jetstream { max_file_store: 8MB }` for a store that fills up.
    pub async fn start_with_conf(conf: &str) -> Result<Self, HarnessError> {
        let spec = NodeSpec {
            name: "tm-test".into(),
            client_port: None,
            cluster: None,
            auth: None,
            extra_conf: Some(conf.to_owned()),
            jetstream: true,
            js_domain: None,
        };
        let mut server = Self::spawn(spec).await?;
        server.wait_ready(STARTUP_TIMEOUT).await?;
        Ok(server)
    }

    /// [`NatsServer::start`] enforcing the users and permissions of
    /// `auth_conf` (an `authorization` block, as `tmctl auth init` writes);
    /// the harness's own clients ([`NatsServer::client`]) connect with
    /// `creds` (a seed file of one of those users).
    pub async fn start_with_auth(auth_conf: &Path, creds: &Path) -> Result<Self, HarnessError> {
        let spec = NodeSpec {
            name: "tm-test".into(),
            client_port: None,
            cluster: None,
            auth: Some((auth_conf.to_owned(), creds.to_owned())),
            extra_conf: None,
            jetstream: true,
            js_domain: None,
        };
        let mut server = Self::spawn(spec).await?;
        server.wait_ready(STARTUP_TIMEOUT).await?;
        Ok(server)
    }

    async fn spawn(spec: NodeSpec) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new().prefix("tm-nats-").tempdir()?;
        let mut server = NatsServer {
            spec,
            dir,
            child: None,
            port: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    /// Spawns the process and learns its client port (from the ports file
    /// when the port is chosen by the server).
    async fn launch(&mut self) -> Result<(), HarnessError> {
        let bin = nats_server_bin()?;
        let ports_dir = self.dir.path().join("ports");
        // A fresh ports dir each launch, so the file found is this process's.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let mut cmd = Command::new(bin);
        if self.spec.jetstream {
            cmd.arg("-js");
        }
        cmd.args(["-a", "127.0.0.1"])
            .args([
                "-p",
                &self
                    .spec
                    .client_port
                    .map_or("-1".to_owned(), |p| p.to_string()),
            ])
            .args(["--server_name", &self.spec.name])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.spec.auth.is_some() || self.spec.extra_conf.is_some() {
            let conf = self.dir.path().join("server.conf");
            let mut text = self.spec.extra_conf.clone().unwrap_or_default();
            if let Some((auth, _)) = &self.spec.auth {
                std::fs::copy(auth, self.dir.path().join("auth.conf"))?;
                text.push_str("\ninclude \"auth.conf\"\n");
            }
            std::fs::write(&conf, text)?;
            cmd.arg("-c").arg(conf);
        }
        if let Some(cluster) = &self.spec.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster", &format!("nats://127.0.0.1:{}", cluster.port)])
                .args(["--cluster_name", &cluster.name])
                .args(["--routes", &routes.join(",")]);
        }
        let child = cmd
            .spawn()
            .map_err(|e| self.start_error(format!("cannot spawn: {e}")))?;
        self.child = Some(child);
        self.port = self.read_port(&ports_dir).await?;
        self.spec.client_port = Some(self.port);
        Ok(())
    }

    async fn read_port(&mut self, ports_dir: &Path) -> Result<u16, HarnessError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.check_alive()?;
            if let Some(port) = std::fs::read_dir(ports_dir)?
                .filter_map(Result::ok)
                .find_map(|entry| parse_ports_file(&entry.path()))
            {
                return Ok(port);
            }
            if Instant::now() > deadline {
                return Err(self.start_error("no ports file appeared".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), HarnessError> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            return Err(self.start_error(format!("exited with {status}")));
        }
        Ok(())
    }

    fn start_error(&self, why: String) -> HarnessError {
        HarnessError::Start {
            name: self.spec.name.clone(),
            why,
            log: self.log(),
        }
    }

    /// Waits until a client connects and JetStream answers an account query.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            self.check_alive()?;
            match self.try_client().await {
                Ok(client) => {
                    let js = match &self.spec.js_domain {
                        Some(domain) => jetstream::with_domain(client, domain),
                        None => jetstream::new(client),
                    };
                    match js.query_account().await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("JetStream not ready: {e}"),
                    }
                }
                Err(e) => last = format!("cannot connect: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(self.start_error(format!("not ready after {timeout:?}: {last}")))
    }

    /// Client URL, `nats://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's name (unique within a cluster).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Path of the server's log file.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The server's log so far (for failure messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Pid of the running process.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new client connection.
    ///
    /// The id the harness's clients send monitor commands as: the
    /// operator named by the credentials' file (`operator-NAME.nk`, as
    /// `tmctl auth init` names them), else [`LAB_REQUESTER`].
    #[must_use]
    pub fn requester(&self) -> String {
        self.spec
            .auth
            .as_ref()
            .and_then(|(_, creds)| {
                creds
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".nk")?
                    .strip_prefix("operator-")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| LAB_REQUESTER.to_owned())
    }

    /// Creates every stream and bucket as the admin identity whose seed
    /// is `admin_seed` (what `tmctl setup` does), on a server that
    /// enforces identities.
    ///
    /// # Panics
    /// If the admin cannot connect or create them.
    pub async fn setup_as(&self, admin_seed: &Path) {
        let client =
            bus_schema::nats::with_credentials(async_nats::ConnectOptions::new(), admin_seed)
                .await
                .unwrap()
                .connect(self.url())
                .await
                .unwrap();
        let js = jetstream::new(client);
        bus_schema::nats::ensure_stores(&js, 1, bus_schema::Role::Admin)
            .await
            .unwrap();
    }

    /// A client and its JetStream context, with every stream and bucket of
    /// the contract created (as the admin would on a bus with identities).
    ///
    /// # Panics
    /// If the server does not accept the connection or the stores.
    pub async fn client_with_stores(&self) -> (async_nats::Client, jetstream::Context) {
        let client = self.client().await;
        let js = jetstream::new(client.clone());
        bus_schema::nats::ensure_stores(&js, 1, bus_schema::Role::Admin)
            .await
            .unwrap();
        (client, js)
    }

    /// # Panics
    /// If the server does not accept the connection: tests want to stop there.
    pub async fn client(&self) -> async_nats::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }

    /// A new connection, with the harness's credentials on a server that
    /// enforces permissions.
    async fn try_client(&self) -> Result<async_nats::Client, String> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((_, creds)) = &self.spec.auth {
            options = bus_schema::nats::with_credentials(options, creds)
                .await
                .map_err(|e| e.to_string())?;
        }
        options.connect(self.url()).await.map_err(|e| e.to_string())
    }

    /// A JetStream context on a new client connection.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// Kills the server with SIGKILL (as a crash would), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a killed server on the same port with the same store, and
    /// waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        // The port was ours a moment ago; retry briefly while the kernel frees it.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.launch().await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.wait_ready(STARTUP_TIMEOUT).await
    }

    /// Sends SIGSTOP: the process freezes, connections stay open but silent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Sends SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "kill -{sig} {pid} failed: {status:?}"
            );
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if self.pid().is_some() {
            // A paused process must be resumed to die promptly on some kernels.
            self.signal("CONT");
        }
        self.kill();
    }
}

fn parse_ports_file(path: &Path) -> Option<u16> {
    if path.extension()? != "ports" {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A 3-node `nats-server` cluster with JetStream and full routes.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
    /// Each node's leafnode port, in node order (a hub's; empty otherwise).
    pub leafnode_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts three nodes with routes to each other and waits until
    /// JetStream has a meta leader and answers on every node.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_as(false).await
    }

    /// [`NatsCluster::start`] as the hub of several sites: JetStream in
    /// domain [`site::DOMAIN`] and a leafnode port on every node. The
    /// nodes do not advertise their leafnode URLs, so a leaf reaches them
    /// only the way it was told (here: the test's link, which it can cut).
    pub async fn start_hub() -> Result<Self, HarnessError> {
        Self::start_as(true).await
    }

    async fn start_as(hub: bool) -> Result<Self, HarnessError> {
        const ATTEMPTS: usize = 5;
        let mut last_error = None;
        // Ports are picked before the servers bind them; another process may
        // take one in between, so a failed start is retried with new ports.
        for _ in 0..ATTEMPTS {
            match Self::try_start(hub).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn try_start(hub: bool) -> Result<Self, HarnessError> {
        let cluster_ports = [free_port()?, free_port()?, free_port()?];
        let client_ports = [free_port()?, free_port()?, free_port()?];
        let leafnode_ports = if hub {
            vec![free_port()?, free_port()?, free_port()?]
        } else {
            Vec::new()
        };
        let cluster_name = format!("tm-test-{}", cluster_ports[0]);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let spec = NodeSpec {
                name: format!("n{}", i + 1),
                client_port: Some(client_ports[i]),
                cluster: Some(ClusterSpec {
                    name: cluster_name.clone(),
                    port: cluster_ports[i],
                    routes: cluster_ports
                        .iter()
                        .copied()
                        .filter(|&p| p != cluster_ports[i])
                        .collect(),
                }),
                auth: None,
                extra_conf: leafnode_ports.get(i).map(|p| {
                    format!(
                        "jetstream {{ domain: {} }}\nleafnodes {{ listen: \"127.0.0.1:{p}\", no_advertise: true }}\n",
                        site::DOMAIN
                    )
                }),
                jetstream: true,
                js_domain: None,
            };
            nodes.push(NatsServer::spawn(spec).await?);
        }
        for node in &mut nodes {
            node.wait_ready(Duration::from_secs(30)).await?;
        }
        let cluster = NatsCluster {
            nodes,
            leafnode_ports,
        };
        cluster.wait_for_peers(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Waits until JetStream can place a 3-replica stream, i.e. every node
    /// has joined the meta group.
    async fn wait_for_peers(&self, timeout: Duration) -> Result<(), HarnessError> {
        let js = jetstream::new(self.client().await);
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let config = jetstream::stream::Config {
                name: "HARNESS_PROBE".into(),
                subjects: vec!["harness.probe".into()],
                num_replicas: 3,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => {
                    let _ = js.delete_stream("HARNESS_PROBE").await;
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(self.nodes[0].start_error(format!("cluster peers not ready after {timeout:?}: {last}")))
    }

    /// All client URLs, comma-separated, for a client that fails over.
    #[must_use]
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that knows every node and fails over between them.
    ///
    /// # Panics
    /// If no node accepts the connection.
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("valid url"))
            .collect();
        async_nats::connect(addrs)
            .await
            .unwrap_or_else(|e| panic!("connect to cluster {}: {e}", self.urls()))
    }
}

/// Every result window of `deployment` held in the `TM_RESULTS` stream, in
/// stream order, with its stream sequence: what an outside subscriber reads.
///
/// In a cluster the JetStream API may not answer while a restarted node's
/// stream leader is being elected; like any subscriber this retries for
/// up to 20 s.
///
/// # Panics
/// If the stream cannot be read for 20 s or holds a window that does not
/// decode.
pub async fn stream_windows(
    js: &jetstream::Context,
    deployment: &str,
) -> Vec<(u64, bus_schema::ResultWindow)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (stream, state) = loop {
        let read = async {
            let mut stream = js.get_stream(bus_schema::store::RESULTS_STREAM).await?;
            let state = stream.info().await?.state.clone();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((stream, state))
        };
        match read.await {
            Ok(r) => break r,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("TM_RESULTS not readable yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("TM_RESULTS unreadable for 20 s: {e}"),
        }
    };
    let mut held = Vec::new();
    if state.messages == 0 {
        // An empty stream reports sequences 0..=0; there is nothing to read.
        return held;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for seq in state.first_sequence..=state.last_sequence {
        let msg = loop {
            use async_nats::jetstream::stream::RawMessageErrorKind as Kind;
            match stream.get_raw_message(seq).await {
                Ok(msg) => break Some(msg),
                // A sequence with no message (deleted): nothing to read.
                // (async-nats maps JetStream's code 10037 to this kind.)
                Err(e) if e.kind() == Kind::NoMessageFound => break None,
                // Anything else (a timeout while a leader is elected, say)
                // is retried: skipping it would hide a window.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("TM_RESULTS message {seq} not readable yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("TM_RESULTS message {seq} unreadable for 20 s: {e}"),
            }
        };
        let Some(msg) = msg else { continue };
        let w: bus_schema::ResultWindow =
            bus_schema::decode(&msg.payload).expect("a ResultWindow in TM_RESULTS");
        if w.deployment == deployment {
            held.push((seq, w));
        }
    }
    held
}

/// Stores `bytes` in `tm_blobs` (created with `replicas` if missing) as
/// module `name` of `kind`, with its metadata; returns its SHA-256.
///
/// # Panics
/// If the object store cannot be opened or written.
pub async fn put_module(
    js: &jetstream::Context,
    name: &str,
    kind: bus_schema::store::BlobKind,
    bytes: &[u8],
    replicas: usize,
) -> String {
    use sha2::Digest;
    let objects = bus_schema::nats::open_blobs(js, replicas)
        .await
        .expect("tm_blobs");
    let sha256 = hex::encode(sha2::Sha256::digest(bytes));
    let meta = bus_schema::store::BlobMeta {
        kind,
        version: "test".into(),
        sha256: sha256.clone(),
        abi_version: 1,
        description: format!("{name} for tests"),
    };
    objects
        .put(
            jetstream::object_store::ObjectMetadata {
                name: name.into(),
                metadata: meta.to_map(),
                ..Default::default()
            },
            &mut &bytes[..],
        )
        .await
        .expect("put into tm_blobs");
    sha256
}

/// A benchmark's `--NAME=N` flag from the command line, `default` if absent.
///
/// # Panics
/// If the value is not a number (the message names the flag).
#[must_use]
pub fn bench_arg(name: &str, default: usize) -> usize {
    std::env::args()
        .find_map(|a| {
            a.strip_prefix(&format!("--{name}=")).map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{name}={v}: not a number"))
            })
        })
        .unwrap_or(default)
}
