//! `tmctl`: the operator's command line. Talks to the system only over NATS.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use async_nats::jetstream;
use bus_schema::MonitorRecord;
use bus_schema::store;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use manager::control::{Control, now_ms};

#[path = "tmctl/apps.rs"]
mod apps;
#[path = "tmctl/auth.rs"]
mod auth;
#[path = "tmctl/blobs.rs"]
mod blobs;
#[path = "tmctl/ops.rs"]
mod ops;
#[path = "tmctl/topology.rs"]
mod topology;
#[path = "tmctl/watch.rs"]
mod watch;

/// Operates a tm system over NATS: analyzer and app modules in the object
/// store, deployments of analyzers on monitors (deploy, configure, collect,
/// unload, adopt), mgmt apps on managers, the network topology, and a live
/// view of results, events and reports.
#[derive(Parser, Debug)]
#[command(
    name = "tmctl",
    version,
    after_help = "Exit codes: 0 done; 1 the system failed or refused (NATS unreachable, \
                  conflict); 2 bad input (usage, an invalid file); 3 not found."
)]
struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        global = true,
        env = "TM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// NATS identity: an nkey seed file (`tmctl auth init`) or a JWT
    /// `.creds` file.
    #[arg(long, global = true, env = "NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Identity commands are sent as: owner of what `deploy` creates; only
    /// the owner may configure or unload (or `--force`). Default `tmctl`,
    /// or with `--nats-creds operator-NAME.nk` (as `tmctl auth init`
    /// names them) NAME: with enforced identities an operator may send
    /// commands only as its own name.
    #[arg(long = "as", global = true, env = "TMCTL_AS")]
    identity: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates an ed25519 key for signing blobs: writes the secret to FILE
    /// (mode 0600, never overwritten) and prints the public key, which
    /// monitors (`[trust] keys`) and managers (`--trusted-key`) list.
    Keygen {
        /// Where the secret key goes.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// NATS identities and permissions of monitors, managers, operators,
    /// subscribers and viewers.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Creates every stream and bucket of the contract that is missing and
    /// checks that each has the contract's settings (exit 1 naming any
    /// difference). Where identities are enforced, only the admin identity
    /// (`tmctl auth init` writes `admin-admin.nk`) may create them: run this
    /// once, with `--nats-creds` of the admin, before the first monitor
    /// or manager starts.
    Setup {
        /// Replicas of what it creates (1 on a single server, 3 on a cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Analyzer modules in the object store (`tm_blobs`).
    Analyzer {
        #[command(subcommand)]
        command: AnalyzerCommand,
    },
    /// The network topology every manager shares (`tm_topology`).
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Monitors that are up (their liveness records in `tm_monitors`).
    Monitors,
    /// Deploys an analyzer (claims the id in `tm_deployments`, loads it on
    /// every target); prints where it runs.
    Deploy(DeployArgs),
    /// Unloads a deployment everywhere; prints each monitor's final figures.
    Unload {
        /// Deployment id.
        #[arg(value_parser = id_arg)]
        deployment: String,
        /// Even if another identity owns it.
        #[arg(long)]
        force: bool,
    },
    /// Sends new params to a running deployment.
    Configure {
        /// Deployment id.
        #[arg(value_parser = id_arg)]
        deployment: String,
        /// The new params, JSON (or `@FILE`).
        #[arg(long)]
        params: String,
        /// Even if another identity owns it.
        #[arg(long)]
        force: bool,
    },
    /// Replaces a running deployment's analyzer by another module, keeping
    /// its state, on its monitors one after another; stops at the first
    /// monitor that refuses (the others keep the module they run).
    Upgrade {
        /// Deployment id.
        #[arg(value_parser = id_arg)]
        deployment: String,
        /// The new module's blob name in tm_blobs (`tmctl analyzer put`).
        #[arg(long)]
        blob: String,
        /// Params for the new module, JSON (or `@FILE`); default: the
        /// deployment's current params.
        #[arg(long)]
        params: Option<String>,
        /// Even if another identity owns it.
        #[arg(long)]
        force: bool,
    },
    /// Collects a deployment's results from every monitor it runs on.
    Collect {
        /// Deployment id.
        #[arg(value_parser = id_arg)]
        deployment: String,
        /// How long each monitor gets to answer, ms.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Also write them to this archive (directory or URL).
        #[arg(long)]
        archive: Option<String>,
    },
    /// Takes ownership of a deployment whose owner is gone (`--force`: even
    /// if it is up).
    Adopt {
        /// Deployment id.
        #[arg(value_parser = id_arg)]
        deployment: String,
        /// Even if its owner is up.
        #[arg(long)]
        force: bool,
    },
    /// Deployment records (desired state) in `tm_deployments`.
    Deployments,
    /// Status of monitors: links and deployments (all monitors if none given).
    Status {
        /// Monitor ids.
        #[arg(value_parser = id_arg)]
        monitors: Vec<String>,
        /// How long each monitor gets to answer, ms.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Management apps on managers.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Prints results, events and reports as they arrive (JetStream
    /// consumers on TM_RESULTS, TM_EVENTS, TM_REPORTS).
    Watch {
        /// What to watch.
        #[arg(value_enum, default_value = "all")]
        what: Watched,
        /// Only this deployment (results and events) or app (reports).
        #[arg(long, value_parser = id_arg)]
        only: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Start with what the streams already hold, not just new messages.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many seconds without a message.
        #[arg(long)]
        idle_s: Option<u64>,
    },
}

#[derive(clap::Args, Debug)]
struct DeployArgs {
    /// Analyzer blob name (see `tmctl analyzer list`).
    analyzer: String,
    /// Deployment id (letters, digits, `-`, `_`).
    #[arg(long, value_parser = id_arg)]
    id: String,
    /// Expected SHA-256 of the blob.
    #[arg(long)]
    sha256: Option<String>,
    /// Analyzer params, JSON (or `@FILE`).
    #[arg(long)]
    params: Option<String>,
    /// Run on this monitor (repeatable; default: every monitor that is up).
    #[arg(long = "monitor", conflicts_with = "links", value_parser = id_arg)]
    monitors: Vec<String>,
    /// Run on this link, `MONITOR_ADDRESS:LINK_ID` as in the topology (repeatable).
    #[arg(long = "link", value_name = "ADDRESS:ID")]
    links: Vec<String>,
    /// Filter: source CIDR (repeatable).
    #[arg(long)]
    src: Vec<String>,
    /// Filter: destination CIDR (repeatable).
    #[arg(long)]
    dst: Vec<String>,
    /// Filter: source ports, `N` or `N-M` (repeatable).
    #[arg(long)]
    sport: Vec<String>,
    /// Filter: destination ports, `N` or `N-M` (repeatable).
    #[arg(long)]
    dport: Vec<String>,
    /// Filter: IP protocol number (repeatable).
    #[arg(long)]
    proto: Vec<u8>,
    /// Filter: a BPF expression.
    #[arg(long)]
    bpf: Option<String>,
    /// Publish results to TM_RESULTS every this many ms.
    #[arg(long)]
    report_every_ms: Option<u64>,
}

/// What `analyzer put` and `apps put` take.
#[derive(clap::Args, Debug)]
pub(crate) struct PutArgs {
    /// The `.wasm` file.
    file: PathBuf,
    /// Name to store it under (default: the file name without `.wasm`).
    #[arg(long)]
    name: Option<String>,
    /// The module's version.
    #[arg(long, default_value = "0.1.0")]
    version: String,
    /// One line saying what it does.
    #[arg(long, default_value = "")]
    description: String,
    /// Sign the blob with this ed25519 key file (`tmctl keygen`): the
    /// signature and the public key go into the object's metadata, and
    /// monitors and managers that list the key as trusted will run it.
    #[arg(long, env = "TM_SIGN_KEY", value_name = "FILE")]
    sign_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AppsCommand {
    /// Stores a mgmt-app module in the object store (signed with
    /// --sign-key); prints its name and SHA-256 digest.
    Put(PutArgs),
    /// Loads and starts an app on a manager (S1).
    Load {
        /// Name the app runs under on that manager.
        #[arg(value_parser = id_arg)]
        app: String,
        /// The manager's id.
        #[arg(long, value_parser = id_arg)]
        manager: String,
        /// A `.wasm` file the manager can read.
        #[arg(long, conflicts_with = "blob", required_unless_present = "blob")]
        file: Option<PathBuf>,
        /// A mgmt-app blob in the object store.
        #[arg(long)]
        blob: Option<String>,
        /// Its expected SHA-256 (with --blob).
        #[arg(long, requires = "blob")]
        sha256: Option<String>,
        /// The app's params, JSON (or `@FILE`).
        #[arg(long)]
        params: Option<String>,
    },
    /// Stops and unloads an app (S8).
    Unload {
        /// The app's name.
        #[arg(value_parser = id_arg)]
        app: String,
        /// The manager's id.
        #[arg(long, value_parser = id_arg)]
        manager: String,
    },
    /// Lists the apps of one manager, or of every manager that is up.
    List {
        /// The manager's id.
        #[arg(long, value_parser = id_arg)]
        manager: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Results,
    Events,
    Reports,
    All,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Creates an nkey seed file per identity in DIR (keeping those already
    /// there) and writes DIR/auth.conf, the nats-server `authorization`
    /// block that lets each identity publish and subscribe only where its
    /// role must (docs/security.md lists the rights). Connects to nothing.
    Init(auth::InitArgs),
}

#[derive(Subcommand, Debug)]
enum AnalyzerCommand {
    /// Stores an analyzer module (signed with --sign-key); prints its name
    /// and SHA-256 digest.
    Put(PutArgs),
    /// Lists the stored modules.
    List,
    /// Removes a stored module.
    Rm {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum TopologyCommand {
    /// Imports the figure-5 table from a `.toml` or `.csv` file.
    Import {
        /// The file.
        file: PathBuf,
        /// Replace the topology already stored.
        #[arg(long)]
        replace: bool,
    },
    /// Prints the stored topology as the figure-5 table.
    Show {
        /// Print Graphviz instead.
        #[arg(long)]
        dot: bool,
    },
}

/// A failure and the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

pub(crate) fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 1, error }
    }
}

pub(crate) const BAD_INPUT: u8 = 2;
pub(crate) const NOT_FOUND: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tmctl: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Keygen { out } = &cli.command {
        return blobs::keygen(out, cli.json);
    }
    if let Command::Auth {
        command: AuthCommand::Init(args),
    } = &cli.command
    {
        return auth::init(args, cli.json);
    }
    let options = connect_options(&cli).await?;
    let identity = identity(&cli)?;
    let client = options
        .connect(cli.nats.as_str())
        .await
        .with_context(|| format!("cannot reach NATS at {}", cli.nats))?;
    let js = jetstream::new(client.clone());
    let json = cli.json;
    let enforced = cli.nats_creds.is_some();
    if let Command::Setup { replicas } = cli.command {
        return setup(&js, replicas, json).await;
    }
    // Whatever it does next, tmctl uses no stream or bucket whose
    // settings differ from the contract's.
    bus_schema::nats::check_stores(&js, bus_schema::Role::Operator, false)
        .await
        .context("a stream or bucket differs from the contract")?;
    match cli.command {
        Command::Setup { .. } => unreachable!("handled above"),
        Command::Analyzer { command } => blobs::analyzer(&js, command, json).await,
        Command::Topology { command } => topology::topology(&js, command, json).await,
        Command::Monitors => monitors(&js, enforced, json).await,
        Command::Watch {
            what,
            only,
            count,
            from_start,
            idle_s,
        } => watch::watch(&js, what, only, count, from_start, idle_s, json).await,
        Command::Apps { command } => apps::apps(&client, &js, command, json).await,
        command => {
            let control = Control::connect_with(client, &identity, 1, enforced)
                .await
                .map_err(ops::refused)?;
            ops::run(&control, command, json).await
        }
    }
}

/// How to connect: with `--nats-creds`' identity, if given.
async fn connect_options(cli: &Cli) -> Result<async_nats::ConnectOptions, Failure> {
    let options =
        async_nats::ConnectOptions::new().connection_timeout(std::time::Duration::from_secs(5));
    match &cli.nats_creds {
        Some(creds) => bus_schema::nats::with_credentials(options, creds)
            .await
            .map_err(|e| fail(BAD_INPUT, e)),
        None => Ok(options),
    }
}

/// The identity commands are sent as: `--as`, else the operator of the
/// `--nats-creds` seed file, else `tmctl`; an operator's seed allows only
/// its own name.
fn identity(cli: &Cli) -> Result<String, Failure> {
    let from_seed = cli
        .nats_creds
        .as_deref()
        .and_then(auth::identity_of_seed_file)
        .filter(|(role, _)| *role == bus_schema::Role::Operator)
        .map(|(_, id)| id);
    match (&cli.identity, &from_seed) {
        (Some(given), Some(seed)) if given != seed => Err(fail(
            BAD_INPUT,
            anyhow!(
                "--as {given}: the identity in --nats-creds is operator {seed:?}, which may send commands only as {seed:?}"
            ),
        )),
        (Some(given), _) => Ok(given.clone()),
        (None, Some(seed)) => Ok(seed.clone()),
        (None, None) => Ok("tmctl".to_owned()),
    }
}

/// An id argument (deployment, monitor, manager, app): a subject token,
/// checked before anything is sent (clap names the argument).
fn id_arg(value: &str) -> Result<String, String> {
    bus_schema::validate_token("id", value)
        .map(|()| value.to_owned())
        .map_err(|e| e.why.to_owned())
}

/// `tmctl setup`: the admin's step that creates the streams and buckets.
async fn setup(js: &jetstream::Context, replicas: usize, json: bool) -> Result<(), Failure> {
    if !(1..=5).contains(&replicas) {
        return Err(fail(
            BAD_INPUT,
            anyhow!("--replicas {replicas}: must be 1 to 5"),
        ));
    }
    bus_schema::nats::ensure_stores(js, replicas, bus_schema::Role::Admin)
        .await
        .context("cannot create the streams and buckets")?;
    bus_schema::nats::check_stores(js, bus_schema::Role::Admin, true)
        .await
        .context("a stream or bucket differs from the contract")?;
    let mut names: Vec<String> = store::streams().iter().map(|s| s.name.to_owned()).collect();
    names.extend(
        store::buckets()
            .iter()
            .map(|b| bus_schema::auth::stream_of_bucket(b.name, b.kind)),
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"streams": names, "replicas": replicas})
        );
    } else {
        for n in &names {
            println!("{n:<20} ok: the contract's settings");
        }
    }
    Ok(())
}

async fn monitors(js: &jetstream::Context, enforced: bool, json: bool) -> Result<(), Failure> {
    let mut all = std::collections::BTreeMap::new();
    if let Ok(kv) = js.get_key_value(store::MONITORS_BUCKET).await {
        let mut keys = kv.keys().await.context("cannot list monitors")?;
        while let Some(key) = keys.next().await {
            let key = key.context("cannot list monitors")?;
            if let Some(bytes) = kv.get(&key).await.context("cannot read a monitor record")? {
                match bus_schema::decode::<MonitorRecord>(&bytes) {
                    Ok(r) => {
                        all.insert(key, r);
                    }
                    Err(e) => eprintln!("tmctl: monitor record {key:?} is unreadable: {e}"),
                }
            }
        }
    }
    let (kept, ignored) = manager::control::holding_monitors(all, enforced);
    for (key, r, why) in &ignored {
        eprintln!(
            "tmctl: monitor {key:?} claiming address {:?} ignored: {why}",
            r.address
        );
    }
    let records: Vec<MonitorRecord> = kept.into_values().collect();
    let now = now_ms();
    if json {
        let v: Vec<_> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "monitor": r.monitor, "address": r.address, "version": r.version,
                    "links": r.links.iter().map(|l| serde_json::json!({
                        "id": l.id, "from_router": l.from_router, "to_router": l.to_router, "source": l.source,
                    })).collect::<Vec<_>>(),
                    "started_unix_ms": r.started_unix_ms, "heartbeat_unix_ms": r.heartbeat_unix_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!(
        "{:<24} {:<16} {:<9} {:>5}  {:>13}  LINKS",
        "MONITOR", "ADDRESS", "VERSION", "UP_S", "HEARTBEAT_AGO"
    );
    for r in &records {
        let links: Vec<String> = r
            .links
            .iter()
            .map(|l| format!("{}:{}->{}", l.id, l.from_router, l.to_router))
            .collect();
        println!(
            "{:<24} {:<16} {:<9} {:>5}  {:>12}s  {}",
            r.monitor,
            r.address,
            r.version,
            now.saturating_sub(r.started_unix_ms) / 1000,
            now.saturating_sub(r.heartbeat_unix_ms) / 1000,
            links.join(" ")
        );
    }
    if records.is_empty() {
        eprintln!("tmctl: no monitor is up");
    }
    Ok(())
}
